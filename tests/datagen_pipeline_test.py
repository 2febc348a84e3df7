"""Crash safety: kill -9 then rerun is byte-identical and repeats no completed call; bad
input (garbage generator, binary document, bad paths, bad tokenizer) loses nothing."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from datagen.backends.base import Completion
from datagen.config import Config
from datagen.corpus import load_corpus
from datagen.pipeline import MergeError, build_dataset, merge
from datagen.tokens import TokenizerError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = r'''
import json, os, sys, time
from datagen.backends.extractive import ExtractiveGenerator
from datagen.config import Config
from datagen.corpus import load_corpus
from datagen.pipeline import build_dataset

tok, out, log = sys.argv[1:4]

class Logged(ExtractiveGenerator):
    """Records every request that reaches the backend (fsynced) so the test can count them."""
    def generate(self, reqs):
        time.sleep(0.04)  # spread the run out so kills land at many different points
        outs = super().generate(reqs)
        with open(log, "a") as f:
            f.write("".join(r.cache_key(self.model) + "\n" for r in reqs))
            f.flush(); os.fsync(f.fileno())
        return outs

docs, _ = load_corpus("kjv")
docs = sorted(docs, key=lambda d: len(d.text))[:10]
cfg = Config(small_tokens=384, n_hierarchical=8, n_diverse=10, samples_per_length=3,
             batch_docs=1, write_jsonl=True)
build_dataset(docs, tok, Logged(), [4096, 8192], out, cfg, progress=False)
'''


def _lines(path):
    return open(path).read().split() if os.path.exists(path) else []


def _run(tok, out, log, kill_after=None):
    """Runs the worker; with kill_after=k, SIGKILLs it once it has issued k more calls."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.Popen([sys.executable, "-c", WORKER, tok, out, log], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if kill_after is None:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        return True
    start = len(_lines(log))
    while p.poll() is None and len(_lines(log)) < start + kill_after:
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.04))  # land anywhere: inside a batch, between writes
    finished = p.poll() is not None
    if not finished:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return finished


def _cache_keys(out):
    keys = set()
    for path in glob.glob(os.path.join(out, "cache", "calls-*.jsonl")):
        for line in open(path, "rb"):
            try:
                keys.add(json.loads(line)["key"])
            except (ValueError, KeyError):
                pass
    return keys


def _outputs(out):
    """Every output file (the call cache and timing log aside) by relative path."""
    files = {os.path.relpath(p, out): open(p, "rb").read()
             for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)
             if os.path.isfile(p) and not os.path.basename(p).startswith("runlog")
             and os.sep + "cache" + os.sep not in p}
    assert sum(f.endswith(".arrayrecord") for f in files) == 2 and len(files) >= 6, files
    return files


@pytest.mark.slow
def test_kill9_then_rerun_is_byte_identical_and_repeats_no_call(sp_model_path, tmp_path):
    ref = str(tmp_path / "ref")
    _run(sp_model_path, ref, str(tmp_path / "ref.log"))
    ref_calls = open(tmp_path / "ref.log").read().split()
    assert len(ref_calls) == len(set(ref_calls)) > 100
    out, log = str(tmp_path / "out"), str(tmp_path / "out.log")
    rng = random.Random(0)
    for _ in range(3):
        before = _cache_keys(out)
        kill_after = rng.randint(1, (len(ref_calls) - len(before)) // 2)
        start = len(open(log).read().split()) if os.path.exists(log) else 0
        assert not _run(sp_model_path, out, log, kill_after=kill_after)
        issued = open(log).read().split()[start:] if os.path.exists(log) else []
        assert not before & set(issued), "a completed (cached) call was sent again"
    before = _cache_keys(out)
    assert 0 < len(before) < len(ref_calls)  # the kills really interrupted the work
    start = len(open(log).read().split())
    _run(sp_model_path, out, log)
    issued = open(log).read().split()[start:]
    assert not before & set(issued)
    assert len(set(open(log).read().split())) == len(ref_calls)  # every call made, once
    assert _outputs(out) == _outputs(ref)  # byte-identical output, manifest included
    left = [f for _, _, fs in os.walk(out) for f in fs if ".tmp-" in f]
    assert not left, left  # temp files of killed runs are cleaned up


class Garbage:
    """Returns unusable output for every call, cycling through the failure modes."""
    model = "garbage"
    MODES = [Completion("", "stop"), Completion("I'm sorry, I cannot do that", "stop"),
             Completion("{'question': 'What is", "length"), Completion("", "error", "boom"),
             Completion('{"question": "q only"}', "stop"), Completion("[1, 2, 3]", "stop")]

    def __init__(self):
        self.i = 0

    def generate(self, reqs):
        out = []
        for _ in reqs:
            out.append(self.MODES[self.i % len(self.MODES)])
            self.i += 1
        return out

    def describe(self):
        return {"model": self.model}


def test_garbage_generator_records_failures(sp_model_path, tmp_path):
    docs, _ = load_corpus("kjv")
    docs = sorted(docs, key=lambda d: len(d.text))[:3]
    cfg = Config(small_tokens=384, n_hierarchical=4, n_diverse=4, samples_per_length=2)
    man = build_dataset(docs, sp_model_path, Garbage(), [4096], str(tmp_path), cfg,
                        progress=False)
    assert man["documents"]["used"] == 0 and len(man["skipped_docs"]) == 3
    assert man["calls"]["failed/specific"] > 0 and man["failure_reasons"]
    assert man["lengths"]["4096"]["conversations"] == 0
    assert merge(str(tmp_path))["conversations"] == {"4096": 0}


def test_bad_inputs_lose_nothing(sp_model_path, tmp_path):
    from datagen.backends.extractive import ExtractiveGenerator
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs, _ = load_corpus("kjv")
    for d in sorted(docs, key=lambda d: len(d.text))[:4]:
        (corpus / f"{d.doc_id}.txt").write_text(d.text)
    (corpus / "image.png").write_bytes(bytes(range(256)) * 40)
    out = tmp_path / "out"
    cfg = Config(small_tokens=384, n_hierarchical=10, n_diverse=40, samples_per_length=2)
    docs, skips = load_corpus(str(corpus))
    for shard in (0, 1):
        man = build_dataset(docs + skips, sp_model_path, ExtractiveGenerator(), [2600],
                            str(out), cfg, shard=shard, num_shards=2, progress=False)
    merged = merge(str(out))
    assert man["lengths"]["2600"]["rejected"] == {}, man
    assert merged["skipped_docs"]["image.png"].startswith("binary")
    assert merged["conversations"]["2600"] == 2
    before = {p: open(p, "rb").read() for p in glob.glob(str(out / "*"))
              if os.path.isfile(p)}
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerError, match="bad.model"):
        build_dataset(docs, str(bad), ExtractiveGenerator(), [2600], str(out), cfg)
    env = {**os.environ, "PYTHONPATH": ROOT}
    cli = [sys.executable, "-m", "datagen", f"--out={out}", f"--tokenizer={sp_model_path}"]
    r = subprocess.run(cli + ["--corpus=/no/such/corpus"], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = subprocess.run(cli + ["--corpus=kjv", "--set", "composition=x-y"], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "composition" in r.stderr
    after = {p: open(p, "rb").read() for p in before}
    assert after == before
    os.remove(out / "manifest-00001-of-00002.json")
    with pytest.raises(MergeError, match=r"shards \[1\] of 2 missing"):
        merge(str(out))


def test_cli_recipe_build_and_merge(sp_model_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    corpus = tmp_path / "c.jsonl"
    docs, _ = load_corpus("kjv")
    with open(corpus, "w") as f:
        for d in sorted(docs, key=lambda d: len(d.text))[:10]:
            f.write(json.dumps({"id": d.doc_id, "text": d.text}) + "\n")
        f.write(json.dumps({"id": "tiny", "text": "Too short."}) + "\n")
    out = tmp_path / "ds"
    for shard in (0, 1):
        r = subprocess.run([sys.executable, "-m", "datagen", f"--corpus={corpus}",
                            f"--tokenizer={sp_model_path}", "--lengths=4k", "--names=.",
                            "--samples=4", "--recipe=h-h-s-fixed", f"--out={out}",
                            f"--shard={shard}", "--num-shards=2", "--no-progress",
                            "--set", "small_tokens=384", "--set", "n_diverse=30",
                            "--set", "words_global=60"],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "datagen", "merge", f"--out={out}"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    merged = json.loads(r.stdout)
    assert merged["conversations"] == {"4096": 4} and "tiny" in merged["skipped_docs"]
    assert merged["config"]["composition"] == "h-h-s" and merged["config"]["n1"] == 6
    assert len(glob.glob(str(out / "*.arrayrecord"))) == 2  # the layout configs/ expect
