"""The demo package: the end-to-end miniature (configs/demo.py). Fast tests of its pieces; one slow
test runs the smoke variant, kills it with SIGKILL after the first stage, resumes it, checks
every artefact and that a third run redoes nothing."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from demo import data as demo_data
from demo import pipeline as demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_passages_group_and_size():
    units = [("Gen", "a b c"), ("Gen", "d e f"), ("Gen", "g h"), ("Exo", "i j k l")]
    got = demo_data.passages(units, doc_words=5)
    assert got == [("Gen/0000", "a b c d e f"), ("Gen/0001", "g h"), ("Exo/0000", "i j k l")]
    assert demo_data.passages([], 5) == []


def test_phases_run_once_and_markers_are_atomic(tmp_path, caplog):
    calls = []
    ph = demo.Phases(str(tmp_path))
    assert ph.run("x", lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert demo.Phases(str(tmp_path)).run("x", lambda: calls.append(2) or {"v": 2}) == {"v": 1}
    assert calls == [1]
    with caplog.at_level(logging.WARNING, logger="demo"):
        demo.Phases(str(tmp_path), "another-config").run("x", lambda: {"v": 3})
    assert "another config" in caplog.text
    assert sorted(os.listdir(tmp_path / "phases")) == ["x.json"]  # no temp files left

    def boom():
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        ph.run("y", boom)
    assert not ph.done("y")  # a phase that did not finish leaves no marker


def test_split_prompt_needs_separator():
    assert demo_data.split_prompt(f"task text\n{demo_data.SEP} The answer is") == (
        "task text", "The answer is")
    with pytest.raises(ValueError, match="CHAT_SPLIT_TEMPLATE"):
        demo_data.split_prompt("no separator here")


def test_short_ruler_fits_and_hides_the_needle(sp_model_path):
    from evals.ruler.text import PieceCounter, load_tokenizer
    tok = load_tokenizer(sp_model_path)
    counter = PieceCounter(tok)
    for task in ("niah_single_1", "niah_single_2", "niah_multikey_2"):
        samples = demo_data.ruler_samples(task, 384, 3, tok, counter, seed=42)
        for s in samples:
            user, prefix = demo_data.split_prompt(s["input"])
            assert s["length"] <= 384 and len(tok.encode(s["input"])) + demo_data.RESERVE <= 384
            assert all(f"is: {a}." in user for a in s["outputs"])  # the needle is in the text
            assert prefix.startswith("The special magic number")
    with pytest.raises(ValueError, match="unsupported"):
        demo_data.ruler_samples("vt", 384, 1, tok, counter, 0)


def test_training_records_match_the_eval_prompt(sp_model_path, tmp_path):
    """A retrieval record renders to exactly the ids the eval runner feeds the model, then the
    answer: what the model learns is what the evaluation asks."""
    from evals.ruler.text import PieceCounter, load_tokenizer as ruler_tok
    from lctx import records
    from lctx.tokenizer import ChatFormat, load_tokenizer

    class Capture:  # stands in for LctxRunner: records the prompt ids it is given
        max_len = 4096
        seen = []

        def generate(self, prompts, max_new_tokens, stop):
            self.seen.extend(prompts)
            return [""] * len(prompts)

    path = str(tmp_path / "r.arrayrecord")
    assert demo_data.retrieval_records(["niah_single_1"], [384], 2, sp_model_path, 7, path) == 2
    fmt = ChatFormat(load_tokenizer(sp_model_path))
    # The same generator and seed as the training shard's first cell, prepared for eval.
    tok = ruler_tok(sp_model_path)
    evals_ = demo_data.ruler_samples("niah_single_1", 384, 2, tok, PieceCounter(tok), seed=7)
    runner = demo.ChatPromptRunner(Capture(), sp_model_path)
    runner.generate([s["input"] for s in evals_], 32)
    recs = list(records.read_array_record(path))
    for rec, prompt, s in zip(recs, Capture.seen, evals_):
        ids, mask = fmt.render(rec["messages"])
        assert ids[:len(prompt)] == prompt
        value = fmt.tok.decode(ids[len(prompt):-1]).strip()
        assert [value] == s["outputs"] and value.isdigit()
        assert sum(mask[len(prompt):]) == len(ids) - len(prompt)  # answer and eot are trained


def test_copy_records_repeat_random_strings(sp_model_path, tmp_path):
    """Copy conversations: the answer is the user's string, exactly; strings are random
    (mostly distinct), carry digits at about the share asked, and are seeded."""
    from lctx import records
    from lctx.tokenizer import ChatFormat, load_tokenizer
    path, again = str(tmp_path / "c.arrayrecord"), str(tmp_path / "d.arrayrecord")
    assert demo_data.copy_records(sp_model_path, 200, 3, path, digit_share=0.3) == 200
    demo_data.copy_records(sp_model_path, 200, 3, again, digit_share=0.3)
    recs = list(records.read_array_record(path))
    assert recs == list(records.read_array_record(again))  # seeded
    texts = []
    for r in recs:
        user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        assert user == f"Repeat: {answer}" and answer and answer == answer.strip()
        texts.append(answer)
    assert len(set(texts)) == len(texts)
    chars = "".join(texts)
    digits = sum(c.isdigit() for c in chars)
    assert 0.05 < digits / len(chars) < 0.4  # a digit is one char, a piece one or more
    fmt = ChatFormat(load_tokenizer(sp_model_path))
    ids, mask = fmt.render(recs[0]["messages"])
    assert 10 < len(ids) < 200 and 0 < sum(mask) < len(ids)  # short: several pack into a row
    with pytest.raises(ValueError, match="digit_share"):
        demo_data.copy_records(sp_model_path, 2, 0, path, digit_share=1.5)


def test_copy_stage_settings_are_validated():
    from configs import demo as demo_cfg
    cfg = demo_cfg.get_config("smoke")
    assert demo.copy_stage_count(cfg) == 1
    cfg.demo.copy_stages = 2  # would leave no extension stage
    with pytest.raises(ValueError, match="demo.copy_stages=2"):
        demo.copy_stage_count(cfg)
    cfg.demo.copy_stages = 1
    cfg.demo.copy_share = 0.5  # 0.6 retrieval + 0.5 copy > 1
    with pytest.raises(ValueError, match="copy_share"):
        demo.copy_stage_count(cfg)


def _run(workdir, timeout):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the demo: one device
    return subprocess.Popen(
        [sys.executable, "-m", "lctx.train", "--config=configs/demo.py:smoke",
         f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=900):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_smoke_demo_resumes_after_sigkill_and_reruns_nothing(tmp_path):
    wd = tmp_path / "demo"
    phases = wd / "phases"
    proc = _run(wd, 900)
    deadline = time.time() + 900
    while not (phases / "train-s1_384.json").exists():  # kill -9 once stage 1 is done
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in phases.iterdir()}
    assert {"corpus.json", "tokenizer.json", "data.json", "train-s0_copy.json",
            "train-s1_384.json"} <= set(before)
    assert "report.json" not in before

    out = _finish(_run(wd, 900))
    for name, mtime in before.items():  # finished phases were not redone
        assert (phases / name).stat().st_mtime_ns == mtime, name
        assert f"phase {name[:-5]:<16} cached" in out
    want = ["corpus", "tokenizer", "data", "train-s0_copy", "train-s1_384", "eval-base",
            "eval-zero-shot", "train-s2_768", "eval-s2_768", "report"]
    assert sorted(p.name[:-5] for p in phases.iterdir()) == sorted(want)

    # Artefacts: results, curve, summary, stage metrics.
    from evals.ruler import scoring
    for m in ("base", "zero-shot", "s2_768"):
        doc = scoring.load_results(str(wd / "results" / f"{m}.json"))
        assert set(doc["summary"]["length_means"]) == {"384", "768"}
        assert all(0 <= v <= 100 for v in doc["summary"]["length_means"].values())
    png = (wd / "ruler_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    summary = json.loads((wd / "summary.json").read_text())
    assert set(summary["effective_length"]) == {"base", "zero-shot", "s2_768"}
    assert summary["at_4x_base"]["length"] == 4 * 384
    assert summary["stages"]["s2_768"]["rope"]["theta"] == 40000.0
    text = (wd / "summary.txt").read_text()
    assert "effective" in text and "zero-shot" in text and "s2_768" in text
    metrics = json.loads((wd / "stage_metrics.json").read_text())
    assert metrics["s0_copy"]["last_step"] == 3  # the copy stage ran and is not evaluated
    assert metrics["s1_384"]["last_step"] == 11 and metrics["s2_768"]["last_step"] == 3
    assert all(metrics[s]["train_loss_last"] < 8 for s in metrics)
    zs = json.loads((phases / "eval-zero-shot.json").read_text())["result"]
    assert zs["rope"]["theta"] == 40000.0  # the baseline: the last stage's RoPE, base weights

    # A third run redoes nothing and trains no step.
    n_metrics = len((wd / "metrics.jsonl").read_text().splitlines())
    out = _finish(_run(wd, 600))
    assert "phases run now: none, all cached" in out
    assert len((wd / "metrics.jsonl").read_text().splitlines()) == n_metrics


def test_user_corpus_by_config(tmp_path):
    """demo.corpus may name any datagen corpus (here a JSONL file) instead of the KJV."""
    src = tmp_path / "c.jsonl"
    text = "Alpha met Beta at the river. " * 30
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Doc {i}. " + text}) + "\n"
                           for i in range(3)))
    info = demo_data.build_corpus(str(src), doc_words=40, max_docs=4,
                                  out_path=str(tmp_path / "out" / "docs.jsonl"))
    docs = demo_data.read_docs(info["path"])
    assert info["documents"] == len(docs) == 4 and info["passages"] >= 6
    assert all(len(d.text.split()) <= 46 for d in docs)  # about doc_words, at sentence ends
    assert (tmp_path / "out" / "docs.txt").read_text().startswith("Doc 0.")
    with pytest.raises(ValueError, match="doc_words"):
        demo_data.build_corpus(str(src), doc_words=4, max_docs=4, out_path=str(tmp_path / "x"))
