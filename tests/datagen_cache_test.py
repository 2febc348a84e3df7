"""Per-call durability and determinism of the call cache: a kill -9 inside a large batch
re-sends no finished call, a torn line is repaired on open, a rerun after transient errors
is byte-identical, a call that failed for good is tried again."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

from datagen import qa
from datagen.backends.base import Completion, Request
from datagen.backends.extractive import ExtractiveGenerator
from datagen.cache import CachedGenerator
from datagen.config import Config
from datagen.corpus import load_corpus
from datagen.pipeline import build_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = r'''
import os, sys, time
from datagen.backends.extractive import ExtractiveGenerator
from datagen.config import Config
from datagen.corpus import load_corpus
from datagen.pipeline import build_dataset

tok, out, log = sys.argv[1:4]


class Logged(ExtractiveGenerator):
    """Streams its calls one at a time; logs each call the moment it is done."""

    def _one(self, req):
        time.sleep(0.002)
        c = super()._one(req)
        with open(log, "a") as f:
            f.write(req.cache_key(self.model) + "\n")
        return c


docs, _ = load_corpus("kjv")
docs = sorted(docs, key=lambda d: len(d.text))[:10]
cfg = Config(small_tokens=512, words_global=80, batch_docs=10, samples_per_length=2)
build_dataset(docs, tok, Logged(), [8192], out, cfg, progress=False)
'''


def _lines(path):
    return open(path).read().split() if os.path.exists(path) else []


def test_kill9_inside_a_large_batch_resends_no_finished_call(sp_model_path, tmp_path):
    """10 documents' 750 QA calls stream as one batch; a kill -9 in the middle of it loses
    at most the call in flight (the batch-at-the-end cache lost every finished call)."""
    out, log = str(tmp_path / "out"), str(tmp_path / "calls.log")
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-c", WORKER, sp_model_path, out, log]
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(_lines(log)) < 400:  # ~70 summary calls, then well inside the QA batch
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-2000:]
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = _lines(log)
    assert 400 <= len(done) < 820  # killed mid-batch: 10 x 75 QAs + summaries in all
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    resent = set(_lines(log)[len(done):]) & set(done)
    assert len(resent) <= 1, f"{len(resent)} finished calls were sent again"
    assert len(set(_lines(log))) == len(_lines(log)) - len(resent)  # the rest ran once


def test_torn_last_line_is_repaired_on_open(tmp_path):
    be = _Counting()
    reqs = [Request((("user", f"q{i}"),)) for i in range(6)]
    g = CachedGenerator(be, str(tmp_path), "0")
    g.generate(reqs[:3])
    g.close()
    with open(tmp_path / "calls-0.jsonl", "ab") as f:
        f.write(b'{"key": "abc", "te')  # a write torn by kill -9
    g = CachedGenerator(be, str(tmp_path), "0")  # the same worker resumes
    assert g.repaired_bytes == len(b'{"key": "abc", "te')
    g.generate(reqs[3:])
    g.close()
    assert open(tmp_path / "calls-0.jsonl", "rb").read().endswith(b"\n")
    be2 = _Counting()
    g = CachedGenerator(be2, str(tmp_path), "0")
    assert [c.text for c in g.generate(reqs)] == [f"answer to q{i}" for i in range(6)]
    assert be2.calls == 0  # every entry readable: none re-sent


class _Counting:
    model = "counting"

    def __init__(self):
        self.calls = 0

    def generate(self, reqs):
        self.calls += len(reqs)
        return [Completion(f"answer to {r.messages[0][1]}", "stop") for r in reqs]

    def describe(self):
        return {"model": self.model}


class Flaky(ExtractiveGenerator):
    """Streams; the 3rd, 10th, 17th... request fails with a transient error, `n` times."""

    def __init__(self, n: int):
        self.left, self.sent = n, 0

    def generate_stream(self, reqs):
        for i, r in enumerate(reqs):
            self.sent += 1
            if self.left and self.sent % 7 == 3:
                self.left -= 1
                yield i, Completion("", "error", "HTTP 503 (injected)")
            else:
                yield i, self._one(r)


def _outputs(out):
    return {os.path.relpath(p, out): open(p, "rb").read()
            for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)
            if os.path.isfile(p) and "runlog" not in p and os.sep + "cache" + os.sep not in p}


def test_rerun_after_transient_errors_is_byte_identical(sp_model_path, tmp_path):
    docs, _ = load_corpus("kjv")
    docs = sorted(docs, key=lambda d: len(d.text))[:6]
    cfg = Config(small_tokens=512, words_global=80, n_hierarchical=8, n_diverse=10,
                 samples_per_length=3, write_jsonl=True)
    out = str(tmp_path / "out")
    flaky = Flaky(9)
    man = build_dataset(docs, sp_model_path, flaky, [4096], out, cfg, progress=False)
    assert flaky.left == 0 and man["calls"]["retried_ok"] == 9, man["calls"]
    banks = [json.loads(x) for x in open(os.path.join(out, "banks-00000-of-00001.jsonl"))]
    assert sum(e["attempt"] for b in banks for e in b["hierarchical"] + b["diverse"]) >= 1
    first = _outputs(out)
    healthy = Flaky(0)
    man2 = build_dataset(docs, sp_model_path, healthy, [4096], out, cfg, progress=False)
    assert healthy.sent == 0  # recorded attempts replayed: nothing sent, errors included
    assert _outputs(out) == first and man2 == man  # byte-identical, manifest included
    runlog = json.load(open(os.path.join(out, "runlog-00000-of-00001.json")))
    assert runlog["replayed_errors"] == 9


def test_a_call_that_failed_for_good_is_tried_again(tmp_path):
    cfg = Config(max_attempts=2)
    jobs = [qa.Job("summary/small", prompt, seed=i, max_tokens=32, word_limit=20)
            for i, prompt in enumerate(["ok one. It is fine.", "down", "ok two. Fine too."])]

    class Down(_Counting):
        def generate(self, reqs):
            self.calls += len(reqs)
            return [Completion("", "error", "connection refused") if "down" in
                    r.messages[0][1] else Completion(r.messages[0][1], "stop") for r in reqs]

    gen = CachedGenerator(Down(), str(tmp_path), "0")
    first = qa.Caller(gen, cfg).run(jobs)
    assert first[1] is None and gen.backend.calls == 2 + 2  # 3 jobs, one retried once
    gen.close()
    up = _Counting()
    gen = CachedGenerator(up, str(tmp_path), "0")
    again = qa.Caller(gen, cfg).run(jobs)
    assert again[0] == first[0] and again[2] == first[2] and again[1] == "answer to down"
    assert up.calls == 1  # only the failed job, from its first attempt


def test_datagen_bench_smoke():
    """bench/datagen_bench.py as documented, at smoke size."""
    r = subprocess.run([sys.executable, "bench/datagen_bench.py", "--docs=3", "--samples=2",
                        "--length=4096", "--small-tokens=512", "--kills=1", "--kill-docs=1"],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "75 QAs" in r.stdout and "overhead" in r.stdout
    assert "stream finished calls lost per kill: mean 0.0" in r.stdout, r.stdout
    assert r.stdout.count("byte-identical to an uninterrupted run: True") == 2, r.stdout
