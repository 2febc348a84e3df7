"""InfiniteBench against the reference (OpenBMB/InfiniteBench 88b3daa, src/): prompts, model
inputs, scorers (on its own published predictions), presets, the CLI."""
import gzip
import json
import os
import random

import pytest

from evals.infinitebench import (MAX_NEW_TOKENS, build_input, create_prompt, labels,
                                 read_jsonl, score_one, score_task, truncate_middle)
from evals.infinitebench import synthetic
from evals.infinitebench.__main__ import parse_args
from evals.infinitebench.scoring import rouge_lsum
from evals.ruler.text import load_tokenizer
from evals.tokens import HFText

from deps import require

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "infinitebench")


@pytest.fixture(scope="module")
def tok(sp_model_path):
    return load_tokenizer(sp_model_path)


def test_truncate_middle_matches_the_open_model_script():
    ids = list(range(10))
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 5) == [0, 1, 8, 9]  # split = 5 // 2 on both sides
    assert truncate_middle(ids, 10) == ids


def test_open_passkey_prompt_is_the_open_model_wording():
    # Mismatch 1: the open-model template is yarn_mistral_templates["passkey"], not GPT-4's.
    row = {"context": "NOISE", "input": "What is the pass key?", "answer": ["1"]}
    assert create_prompt(row, "passkey") == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize it. I will quiz you about the important information.\n\nNOISE\n\n"
        "What is the pass key?\n\nThe pass key is")
    assert create_prompt(row, "passkey", "chat") == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize them. I will quiz you about the important information there.\n\nNOISE"
        "\n\nWhat is the pass key?")


@pytest.mark.parametrize("question,prefix", [
    ("You should answer with only one number, no other words. The largest number of the list "
     "is: ", "What is the largest number in the following list?"),
    ("You should answer with only one number, no other words. The second largest number of "
     "the list is: ", "What is the second largest number in the following list?"),
    ("You should answer with only one number, no other words. The median of the list is: ",
     "What is the median in the following list?"),
])
def test_math_find_prefix_is_the_references(question, prefix):
    # Mismatch 3: `The .+ of` (greedy), lower-cased, ' of' dropped; the old `The \w+ number`
    # raised on the second/median questions.
    row = {"context": "[1, 5, 3]", "input": question, "answer": 5}
    assert create_prompt(row, "math_find") == f"{prefix}\n\n[1, 5, 3]\n\n{question}"


@pytest.mark.parametrize("model,score", [("yi-6b-200k", 36.68), ("yi-34b-200k", 38.43),
                                         ("chatglm3", 10.48), ("gpt4", 67.25)])
def test_choice_scorer_reproduces_the_reference_readme(model, score):
    # Mismatch 2: strip, then "prediction contained in the label"; the README's En.MC column.
    with gzip.open(os.path.join(DATA, f"choice_{model}.json.gz"), "rt") as f:
        pairs = json.load(f)
    assert len(pairs) == 229
    assert score_task("longbook_choice_eng", [p for p, _ in pairs], [g for _, g in pairs]) \
        == score


def test_default_max_len_and_he2025_preset(tmp_path):
    # Mismatch 4: 131,072 (128 * 1024) for open models, 127,000 for the GPT-4 style.
    base = ["--model=m", "--tokenizer=t", f"--out={tmp_path}"]
    a = parse_args(base)
    assert (a.max_len, a.style, a.limit, len(a.tasks)) == (131072, "open", None, 12)
    assert parse_args(base + ["--style=chat"]).max_len == 127000
    h = parse_args(base + ["--preset=he2025"])
    assert h.limit == 150 and h.max_len == 131072
    assert h.tasks == ["passkey", "number_string", "kv_retrieval", "longbook_sum_eng",
                       "longbook_qa_eng", "longbook_choice_eng", "longdialogue_qa_eng",
                       "math_find"]
    assert parse_args(base + ["--preset=he2025", "--limit=3"]).limit == 3


def test_model_input_has_bos_and_the_decode_retokenise_cut(tok):
    text = HFText(tok.tok)
    bos = tok.tok.bos_id
    row = {"context": "In the beginning God created the heaven and the earth. " * 300,
           "input": "q"}
    ids = build_input(row, "longbook_sum_eng", text, 1000)
    full = text(create_prompt(row, "longbook_sum_eng"))
    assert full[0] == bos and len(full) > 1000
    # The reference cuts [BOS] + prompt ids, decodes without BOS, tokenises again with BOS.
    assert ids == [bos] + tok.encode(tok.tok.decode(full[1:500]) + tok.tok.decode(full[-500:]))
    assert abs(len(ids) - 1000) <= 3
    short = {"context": "A short book.", "input": "q"}
    assert build_input(short, "longbook_sum_eng", text, 1000) == \
        text(create_prompt(short, "longbook_sum_eng"))
    assert len(build_input(row, "longbook_sum_eng", text, 1000, hard_max=990)) == 990


def test_prompts_from_official_rows(tmp_path):
    row = {"id": 0, "context": "BOOK", "input": "Who?", "answer": ["Bob"],
           "options": ["Al", "Bob", "Cy", "Di"]}
    p = create_prompt(row, "longbook_choice_eng")
    assert p == ("Read the book and answer the question.\n\nBOOK\n\nQuestion: Who?\nA. Al\n"
                 "B. Bob\nC. Cy\nD. Di\n\nThe letter of the correct answer is")
    assert labels(row, "longbook_choice_eng") == ["Bob", "B"]
    assert create_prompt(row, "longbook_qa_eng", "chat").endswith("Question: Who?\n\nBe very "
                                                                   "concise.")
    (tmp_path / "longbook_eng").mkdir()
    (tmp_path / "longbook_eng" / "b.txt").write_text("FROM FILE")
    assert "FROM FILE" in create_prompt({"document": "b.txt", "input": "q"},
                                        "longbook_sum_eng", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="known: passkey"):
        create_prompt(row, "code_walk")
    assert create_prompt({"context": "CODE", "input": "x = func_7(-3)"}, "code_run").endswith(
        "compute the exact value of func_7(-3). The value of func_7(-3) is")
    (tmp_path / "x.jsonl").write_text(json.dumps(row) + "\n\n")
    assert read_jsonl(str(tmp_path / "x.jsonl")) == [row]


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
    ("longbook_choice_eng", " Bob\n", ["Bob", "B"], 1.0),  # the option text, stripped
    ("longbook_choice_eng", " B", ["Bob", "B"], 1.0),
    ("longbook_choice_eng", "  ", ["Bob", "B"], 0.0),
    ("longbook_qa_chn", "是北京。", ["北京"], pytest.approx(0.8)),
    ("code_run", "The value is 42.", [42], 1.0),
    ("code_run", "42 then 7", [42], 0.0),  # the last word
    ("code_debug", "B. func_b", ["func_b", "B"], 1.0),
    ("code_debug", "The correct option is: func_b", ["func_b", "B"], 1.0),
    ("longbook_qa_eng", "The Bob", ["bob"], 1.0),
    ("longbook_qa_eng", "bob smith", ["bob"], pytest.approx(2 / 3)),
    ("math_find", "It is 42.", 42, 1.0),
    ("math_find", "about 4.5", [4.5], 1.0),
])
def test_scorers(task, pred, label, score):
    assert score_one(task, pred, label) == score


def test_score_task_mean_average_and_math_calc():
    from evals.infinitebench.scoring import average
    assert score_task("passkey", ["1", "2"], [["1"], ["3"]]) == 50.0
    # He et al. Table 1, Llama-3.1-8B-Instruct: the Average (51.31) is the plain mean of the 8
    # unrounded task scores (its cells are cut to 2 decimals: 64/150 prints as 42.66).
    assert average({"a": 100.0, "b": 100 * 143 / 150, "c": 100 * 64 / 150, "d": 27.63,
                    "e": 24.83, "f": 68.0, "g": 100 * 25 / 150, "h": 100 * 53 / 150}) == 51.31
    assert score_one("math_calc", "[1, 4, 9, 3]", [1, 4, 8, 3]) == 0.5
    assert score_one("math_calc", "1 = [1, 4, 8]", [1, 4, 8], "chat") == 1.0  # 1st dropped
    assert score_one("math_calc", "[1, 4, 8]", [1, 4, 8], "chat") == 0.0
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
    """Answers from the decoded prompt ids: the pass key in the needle, else the number at the
    end of a math_find list ("[...]"), else 'A'; records the prompts."""

    def __init__(self, model, tok):
        from lctx.tokenizer import load_tokenizer
        self.tok, self.prompts = load_tokenizer(tok), []

    def generate(self, prompts_, max_new_tokens, stop):
        import re
        out = []
        for ids in prompts_:
            assert isinstance(ids, list) and ids[0] == self.tok.bos_id  # ids, BOS first
            p = self.tok.decode(ids[1:])
            self.prompts.append(p)
            key = re.findall(r"The pass key is (\d+)\.", p) or re.findall(r"(\d+)\]", p)
            out.append(" " + (key or ["A"])[0])
        return out


def test_cli_synthetic_passkey_and_not_run(sp_model_path, tmp_path, capsys):
    from evals.infinitebench.__main__ import main
    args = ["--model=m", "--runner=evals_infinitebench_test:EchoKeyRunner",
            f"--runner_arg=tok={sp_model_path}", f"--tokenizer={sp_model_path}",
            "--tasks=passkey,longbook_qa_eng", "--synthetic=3", "--max_len=2048",
            f"--out={tmp_path}"]
    assert main(args) == 0
    doc = json.loads((tmp_path / "scores.json").read_text())
    assert doc["scores"] == {"passkey": 100.0} and "longbook_qa_eng" in doc["not_run"]
    assert doc["average"] == 100.0
    assert len((tmp_path / "preds_passkey.jsonl").read_text().splitlines()) == 3
    assert main(args) == 0  # resumed: nothing left to generate
    assert len((tmp_path / "preds_passkey.jsonl").read_text().splitlines()) == 3


def test_cli_official_files_limit_average_and_bad_rows(sp_model_path, tmp_path, capsys):
    from evals.infinitebench.__main__ import main
    data = tmp_path / "data"
    data.mkdir()
    q = "You should answer with only one number, no other words. The median of the list is: "
    rows = [{"id": i, "context": f"[{i}, 2, {i + 7}]", "input": q, "answer": i + 7}
            for i in range(4)]
    (data / "math_find.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    choice = [{"id": 0, "context": "BOOK", "input": "Who?", "options": ["Al", "Bob", "Cy", "Di"],
               "answer": ["Al"]}, {"id": 1, "context": "BOOK", "input": "Who?",
                                   "options": ["Al", "Bob", "Cy", "Di"], "answer": ["Cy"]}]
    (data / "longbook_choice_eng.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                            for r in choice))
    args = ["--model=m", "--runner=evals_infinitebench_test:EchoKeyRunner",
            f"--runner_arg=tok={sp_model_path}", f"--tokenizer={sp_model_path}",
            f"--data_dir={data}", "--tasks=math_find,longbook_choice_eng", "--limit=3",
            f"--out={tmp_path / 'out'}"]
    assert main(args) == 0
    doc = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert doc["scores"] == {"math_find": 100.0, "longbook_choice_eng": 50.0}
    assert doc["average"] == 75.0 and doc["max_len"] == 131072 and doc["limit"] == 3
    assert len((tmp_path / "out" / "preds_math_find.jsonl").read_text().splitlines()) == 3
    (data / "math_find.jsonl").write_text('{"id": 0, "context": "[1]", "input": "Hm?", '
                                          '"answer": 1}\n')
    assert main(args + [f"--out={tmp_path / 'out2'}"]) == 2
    assert "holds no 'The ... of'" in capsys.readouterr().err
    (data / "math_find.jsonl").write_text('{"id": 0,\n')
    assert main(args + [f"--out={tmp_path / 'out3'}"]) == 2
    assert "math_find.jsonl:1: not JSON" in capsys.readouterr().err
