"""InfiniteBench: prompts, middle truncation, the reference's scorers, synthetic tasks."""
import json
import random

import pytest

from evals.infinitebench import (MAX_NEW_TOKENS, build_prompt, create_prompt, labels, read_jsonl,
                                 score_one, score_task, truncate_middle)
from evals.infinitebench import synthetic
from evals.infinitebench.scoring import rouge_lsum
from evals.ruler.text import load_tokenizer

from deps import require


@pytest.fixture(scope="module")
def tok(sp_model_path):
    return load_tokenizer(sp_model_path)


def test_truncate_middle_matches_reference_slicing():
    ids = list(range(10))
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 5) == [0, 1, 7, 8, 9]  # -5 // 2 == -3
    assert truncate_middle(ids, 10) == ids


def test_prompts_from_official_rows(tmp_path):
    row = {"id": 0, "context": "BOOK", "input": "Who?", "answer": ["Bob"],
           "options": ["Al", "Bob", "Cy", "Di"]}
    p = create_prompt(row, "longbook_choice_eng")
    assert p == ("Read the book and answer the question.\n\nBOOK\n\nQuestion: Who?\nA. Al\n"
                 "B. Bob\nC. Cy\nD. Di\n\nThe letter of the correct answer is")
    assert labels(row, "longbook_choice_eng") == ["Bob", "B"]
    assert create_prompt(row, "longbook_qa_eng", "chat").endswith("Question: Who?\n\nBe very "
                                                                   "concise.")
    mf = {"context": "[1, 5, 3]", "input": "The largest number is?", "answer": 5}
    assert create_prompt(mf, "math_find").startswith(
        "What is the largest number in the following list?\n\n[1, 5, 3]")
    (tmp_path / "longbook_eng").mkdir()
    (tmp_path / "longbook_eng" / "b.txt").write_text("FROM FILE")
    assert "FROM FILE" in create_prompt({"document": "b.txt", "input": "q"},
                                        "longbook_sum_eng", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="known: passkey"):
        create_prompt(row, "code_run")
    (tmp_path / "x.jsonl").write_text(json.dumps(row) + "\n\n")
    assert read_jsonl(str(tmp_path / "x.jsonl")) == [row]


def test_build_prompt_truncates_to_length(tok):
    row = {"context": "In the beginning God created the heaven and the earth. " * 400,
           "input": "q"}
    p = build_prompt(row, "longbook_sum_eng", tok, 1000)
    assert abs(len(tok.encode(p)) - 1000) <= 4
    assert p.startswith("Summarize the book below.") and p.endswith("Summary:")


@pytest.mark.parametrize("task,pred,label,score", [
    ("passkey", "The pass key is 71432.", ["71432"], 1.0),
    ("passkey", "7143 2", ["71432"], 0.0),  # first integer only
    ("number_string", "abc 0012345678 0", ["0012345678"], 1.0),
    ("kv_retrieval", "value: \"ab-cd\".", ["ab-cd"], 1.0),
    ("kv_retrieval", "ab-cde", ["ab-cd"], 0.0),  # word membership, not substring
    ("longdialogue_qa_eng", "It is Rick.", ["RICK"], 1.0),
    ("longbook_choice_eng", "B. Bob", ["Bob", "B"], 1.0),
    ("longbook_choice_eng", "The answer is: C", ["Bob", "B"], 0.0),
    ("longbook_choice_eng", "I think the answer is B", ["Bob", "B"], 1.0),
    ("longbook_qa_eng", "The Bob", ["bob"], 1.0),
    ("longbook_qa_eng", "bob smith", ["bob"], pytest.approx(2 / 3)),
    ("math_find", "It is 42.", 42, 1.0),
    ("math_find", "about 4.5", [4.5], 1.0),
])
def test_scorers(task, pred, label, score):
    assert score_one(task, pred, label) == score


def test_score_task_mean():
    assert score_task("passkey", ["1", "2"], [["1"], ["3"]]) == 50.0
    with pytest.raises(ValueError, match="no predictions"):
        score_task("passkey", [], [])


def test_rouge_lsum_matches_rouge_score_package():
    rouge_scorer = require("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeLsum"])
    rng = random.Random(0)
    words = "the cat sat on mat dog ran far away big red Cat. MAT, dog's".split()
    for _ in range(200):
        mk = lambda: "\n".join(" ".join(rng.choices(words, k=rng.randint(0, 9)))  # noqa
                               for _ in range(rng.randint(1, 4)))
        a, b = mk(), mk()
        assert rouge_lsum(a, b) == pytest.approx(scorer.score(b, a)["rougeLsum"].fmeasure,
                                                 abs=1e-12)
    assert rouge_lsum("", "a b") == 0.0


@pytest.mark.parametrize("task", ["passkey", "number_string", "kv_retrieval"])
def test_synthetic_tasks_fit_and_are_answerable(tok, task):
    rows = synthetic.generate(task, 2048, 3, tok, seed=1)
    assert rows == synthetic.generate(task, 2048, 3, tok, seed=1)
    depths = [r["depth"] for r in rows]
    assert depths[0] == 0 and depths[-1] == 1.0
    for r in rows:
        n = len(tok.encode(create_prompt(r, task))) + MAX_NEW_TOKENS[task]
        assert 2048 - 300 < n <= 2048
        assert r["answer"][0] in r["context"]
        assert score_one(task, f" {r['answer'][0]}.", r["answer"]) == 1.0
    if task == "number_string":
        assert all(len(r["answer"][0]) == 10 for r in rows)


class EchoKeyRunner:
    """Answers retrieval prompts by quoting the first number after 'is ' in the needle."""

    def __init__(self, model):
        self.calls = 0

    def generate(self, prompts_, max_new_tokens, stop):
        import re
        self.calls += len(prompts_)
        return [" " + (re.findall(r"The pass key is (\d+)\.", p) or ["none"])[0]
                for p in prompts_]


def test_cli_synthetic_passkey_and_not_run(sp_model_path, tmp_path, capsys):
    from evals.infinitebench.__main__ import main
    args = ["--model=m", "--runner=evals_infinitebench_test:EchoKeyRunner",
            f"--tokenizer={sp_model_path}", "--tasks=passkey,longbook_qa_eng", "--synthetic=3",
            "--max_len=2048", f"--out={tmp_path}"]
    assert main(args) == 0
    doc = json.loads((tmp_path / "scores.json").read_text())
    assert doc["scores"] == {"passkey": 100.0} and "longbook_qa_eng" in doc["not_run"]
    assert len((tmp_path / "preds_passkey.jsonl").read_text().splitlines()) == 3
    assert main(args) == 0  # resumed: nothing left to generate
    assert len((tmp_path / "preds_passkey.jsonl").read_text().splitlines()) == 3
