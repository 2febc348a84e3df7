"""kill -9 during passage generation and during sample assembly: the rerun re-sends no call
that was cached before the kill and writes byte-identical passages, records and manifests."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

from datagen.selfgen import build, config, offline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(num_nouns=96, batch_nouns=8, batch_samples=3)
SPEC = dict(bucket="0-8k", per_task=2)
WORKER = r'''
import json, os, sys, time
from datagen.selfgen import assemble, build, config, offline, prompts

tok, out, log, progress = sys.argv[1:5]

class Logged(offline.OfflineGenerator):
    """Logs (fsynced) every request that reaches the backend, with its prompt kind."""
    def generate(self, reqs):
        time.sleep(0.05)
        outs = super().generate(reqs)
        with open(log, "a") as f:
            for r in reqs:
                kind = (prompts.parse_prompt(r.messages[-1][1]) or ("?",))[0]
                f.write(json.dumps([kind, r.cache_key(self.model)]) + "\n")
            f.flush(); os.fsync(f.fileno())
        return outs

real = assemble.assemble
def slow(*a, **k):  # spread assembly out so a kill lands in the middle of it
    got = real(*a, **k)
    with open(progress, "a") as f:
        f.write("sample\n"); f.flush(); os.fsync(f.fileno())
    time.sleep(0.15)
    return got
assemble.assemble = slow
build.build(out, tok, Logged(), config.make_spec(**%(spec)r),
            config.SelfGenConfig(**%(cfg)r), progress=False)
''' % {"spec": SPEC, "cfg": CFG}


def _log(path):
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def _cached_keys(out):
    keys = set()
    for path in glob.glob(os.path.join(out, "**", "calls-*.jsonl"), recursive=True):
        for line in open(path, "rb"):
            try:
                keys.add(json.loads(line)["key"])
            except (ValueError, KeyError):
                pass
    return keys


def _run_until(tok, out, log, progress, stop):
    """Starts the worker and SIGKILLs it once stop() holds (or lets it finish: stop=None)."""
    p = subprocess.Popen([sys.executable, "-c", WORKER, tok, out, log, progress],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stop is None:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
        return
    deadline = time.time() + 240
    while not stop():
        assert p.poll() is None, p.communicate()[1].decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()


def _files(out):
    names = sorted(glob.glob(os.path.join(out, "passages", "*-of-*.*")) +
                   glob.glob(os.path.join(out, "0-8k", "*-of-*.*")))
    return {os.path.relpath(n, out): open(n, "rb").read() for n in names
            if "runlog" not in n}


def test_kill9_in_passages_and_in_assembly_then_rerun_is_identical(tmp_path,
                                                                    sp_model_path):
    ref = str(tmp_path / "ref")
    build.build(ref, sp_model_path, offline.OfflineGenerator(), config.make_spec(**SPEC),
                config.SelfGenConfig(**CFG), progress=False)
    out, log, progress = (str(tmp_path / x) for x in ("run", "log.jsonl", "progress"))

    def n_passage_calls():
        return sum(k == "passage" for k, _ in _log(log))
    _run_until(sp_model_path, out, log, progress, lambda: n_passage_calls() >= 24)
    assert not glob.glob(os.path.join(out, "passages", "passages-*"))  # killed mid-way
    cached, sent = _cached_keys(out), len(_log(log))
    assert len(cached) >= 16
    _run_until(sp_model_path, out, log, progress,
               lambda: os.path.exists(progress) and len(open(progress).read().split()) >= 5)
    assert glob.glob(os.path.join(out, "0-8k", ".conversations-*.tmp-*"))  # mid-assembly
    assert not glob.glob(os.path.join(out, "0-8k", "conversations-*"))
    resent = [k for _, k in _log(log)[sent:] if k in cached]
    assert resent == [], f"{len(resent)} cached calls were sent again"
    cached, sent = _cached_keys(out), len(_log(log))
    _run_until(sp_model_path, out, log, progress, None)
    assert [k for _, k in _log(log)[sent:] if k in cached] == []
    got, want = _files(out), _files(ref)
    assert sorted(got) == sorted(want) and len(want) == 5
    for name in want:
        assert got[name] == want[name], name
    assert not glob.glob(os.path.join(out, "**", ".*.tmp-*"), recursive=True)
    man = json.load(open(os.path.join(out, "0-8k", "manifest-00000-of-00001.json")))
    assert man["samples"]["written"] == 12
