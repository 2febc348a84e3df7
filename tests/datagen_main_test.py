"""The CLI's bad-input table: every user mistake is one line naming the flag and the fix,
exit 2 with nothing written; a run that writes fewer conversations than asked exits 3 with
one line per length saying why (0 with --allow-short)."""
import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

from datagen.__main__ import main
from datagen.corpus import load_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--set", "small_tokens=256", "--set", "n_hierarchical=4", "--set", "n_diverse=6",
         "--set", "words_global=40", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five short KJV books as text files, one in a subfolder with a clashing name."""
    d = tmp_path_factory.mktemp("corpus")
    docs, _ = load_corpus("kjv")
    for i, doc in enumerate(sorted(docs, key=lambda x: len(x.text))[:5]):
        sub = d / ("b" if i == 4 else "a")
        sub.mkdir(exist_ok=True)
        (sub / (f"{doc.doc_id}.txt" if i < 4 else "2Jn.txt")).write_text(doc.text)
    return d


def _cli(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, [x for x in err.splitlines() if x.startswith(("error:", "warning:"))]


def _snapshot(path):
    return {os.path.relpath(os.path.join(r, f), path): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(path) for f in fs}


def test_bad_input_table(corpus, sp_model_path, tmp_path, capsys, monkeypatch):
    good = tmp_path / "good"
    base = [f"--corpus={corpus}", f"--tokenizer={sp_model_path}", "--lengths=4096",
            "--samples=2", "--set", "length_tolerance=0.2", *SMALL]
    assert _cli(capsys, base + [f"--out={good}"])[0] == 0
    before = _snapshot(good)
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    readonly = "/sys/datagen-test-out" if os.geteuid() == 0 else str(tmp_path / "ro" / "x")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
    cases = [  # (extra argv, what the one line must say)
        (["--backend=openai", '--backend-args={"modle": "m"}'], "unknown argument(s) ['modle']"),
        (["--backend=openai", "--backend-args={bad"], "--backend-args is not valid JSON"),
        (["--backend=extractive", '--backend-args={"model": "m"}'], "takes no --backend-args"),
        (["--set", "n1"], "--set n1: expected KEY=VALUE"),
        (["--set", "global_summary=ture"], "global_summary is a boolean; use true or false"),
        (["--set", "n1=-5"], "n1=-5: must be >= 0"),
        (["--set", "n1=abc"], "--set n1=abc: n1 must be an integer"),
        (["--set", "rand_min=8", "--set", "rand_max=3"], "rand_min=8 > rand_max=3"),
        (["--set", "nope=1"], "unknown config field 'nope'"),
        (["--set", "docs_per_sample=4k:x"], "docs_per_sample='4k:x'"),
        (["--samples=-3"], "--samples=-3: counts must be >= 0"),
        (["--samples=1,2"], "--samples=1,2: 2 entries for 1 lengths"),
        (["--lengths=abc"], "--lengths=abc"),
        (["--recipe=paper"], "docs_per_sample=paper: 4096 tokens is not a paper length"),
        (["--recipe=nope"], "recipe 'nope' is unknown"),
        (["--shard=2", "--num-shards=2"], "--shard=2 must be in [0, --num-shards=2)"),
        (["--tokenizer=/no/such.model"], "tokenizer '/no/such.model' does not exist"),
        (["--corpus=/no/such/corpus"], "does not exist; pass --corpus=kjv"),
    ]
    for extra, what in cases:
        rc, _, lines = _cli(capsys, base + [f"--out={good}"] + extra)
        assert rc == 2 and len(lines) == 1 and what in lines[0], (extra, lines)
    assert _snapshot(good) == before  # nothing written, nothing lost
    for out, what in [(afile, "is a file"), (afile / "sub", "is under a file"),
                      (readonly, "is not writable")]:
        rc, _, lines = _cli(capsys, base + [f"--out={out}"])
        assert rc == 2 and len(lines) == 1 and what in lines[0], (out, lines)
    assert afile.read_text() == "not a directory"
    for out, what in [(tmp_path / "missing", "is not a directory"),
                      (tmp_path, "no manifest-*.json")]:
        rc, _, lines = _cli(capsys, ["merge", f"--out={out}"])
        assert rc == 2 and len(lines) == 1 and what in lines[0], lines
    # --backend=vllm: with no model (a stand-in vllm module) / in a python without vLLM.
    if importlib.util.find_spec("vllm") is None:
        rc, _, lines = _cli(capsys, base + [f"--out={good}", "--backend=vllm",
                                            '--backend-args={"model": "m"}'])
        assert rc == 2 and "needs 'vllm'" in lines[0] and ".venv-vllm" in lines[0], lines
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    rc, _, lines = _cli(capsys, base + [f"--out={good}", "--backend=vllm"])
    assert rc == 2 and "--backend=vllm needs ['model'] in --backend-args" in lines[0], lines


def test_short_output_exits_nonzero_with_one_line_why(corpus, sp_model_path, tmp_path,
                                                      capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   ")
    (empty / "b.txt").write_text("")
    one = tmp_path / "one"
    one.mkdir()
    (one / "x.txt").write_text((corpus / "a" / "2Jn.txt").read_text())
    common = [f"--tokenizer={sp_model_path}", "--samples=2", *SMALL]
    cases = [  # (argv, the reason its line must give)
        ([f"--corpus={corpus}", "--lengths=128"],
         "no document fits the target (the shortest is"),
        ([f"--corpus={one}", "--lengths=8k", "--recipe=h-h-s-fixed"],
         "docs_per_sample=2 but only 1 usable documents fit the target"),
        ([f"--corpus={empty}", "--lengths=4k"],
         "no usable document (every one was unreadable or failed generation)"),
    ]
    for i, (argv, why) in enumerate(cases):
        out = f"--out={tmp_path / f'out{i}'}"
        rc, _, lines = _cli(capsys, argv + common + [out])
        assert rc == 3 and len(lines) == 1, lines
        assert "0 of 2 conversations written" in lines[0] and why in lines[0], lines
        assert "--allow-short" in lines[0]
        rc, _, lines = _cli(capsys, argv + common + [out, "--allow-short"])
        assert rc == 0 and lines[0].startswith("warning: short output") and why in lines[0]
    rc, out, _ = _cli(capsys, ["merge", f"--out={tmp_path / 'out1'}"])
    assert rc == 3  # merge checks the totals too


def test_unreachable_server_is_exit_3_and_garbage_parquet_is_skipped(corpus, sp_model_path,
                                                                     tmp_path):
    """Run as users run it: `python -m datagen` in a subprocess."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted((corpus / "a").iterdir())[:3]:
        (mixed / p.name).write_text(p.read_text())
    (mixed / "junk.parquet").write_bytes(b"PAR1 not really parquet" * 20)
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "datagen", f"--corpus={mixed}", f"--tokenizer={sp_model_path}",
           "--lengths=4k", "--samples=2", *SMALL]
    r = subprocess.run(cmd + [f"--out={tmp_path / 'ok'}", "--allow-short"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.load(open(tmp_path / "ok" / "manifest-00000-of-00001.json"))
    assert man["skipped_docs"]["junk.parquet"].startswith("unreadable Parquet file")
    assert man["documents"]["used"] == 3
    args = json.dumps({"model": "m", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0,
                       "progress": False})
    r = subprocess.run(cmd + [f"--out={tmp_path / 'down'}", "--backend=openai",
                              f"--backend-args={args}"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 3 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "0 of 2 conversations written: no usable document" in lines[0]
    assert "most frequent call failure" in lines[0] and "ConnectError" in lines[0]
    man = json.load(open(tmp_path / "down" / "manifest-00000-of-00001.json"))
    # Summaries failed, so no document's QA call was sent.
    assert set(man["calls"]) == {"calls", "failed/summary"}, man["calls"]


def test_document_ids_are_paths_from_the_corpus_root(corpus):
    docs, _ = load_corpus(str(corpus))
    ids = [d.doc_id for d in docs]
    assert "a/2Jn.txt" in ids and "b/2Jn.txt" in ids and len(set(ids)) == len(ids) == 5
