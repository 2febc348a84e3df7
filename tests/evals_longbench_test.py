"""LongBench v1 against THUDM/LongBench 2e00731 (and the activation-beacon pipeline): the
verbatim config, golden prompts per dataset and preset, truncation on token lists, every
metric from hand-made predictions, the averages of the papers' tables, the CLI."""
import hashlib
import json
import os

import pytest

from evals.longbench import datasets as ds
from evals.longbench import metrics, prompts
from evals.longbench.__main__ import main
from evals.tokens import HFText

from deps import require


@pytest.fixture(scope="module")
def text(sp_model_path):
    from lctx.tokenizer import load_tokenizer
    return HFText(load_tokenizer(sp_model_path))


def test_config_is_the_references_verbatim():
    digests = {"dataset2prompt.json": "56d22ad4f382169c2b8a11ff4c982a4a1bea096c8152b0f0b85b64686"
                                      "b157c30",
               "dataset2maxlen.json": "72966b3c0933e214591637fb085798c5e687ebff4ddaab5d99bbc311"
                                      "20532022"}
    for name, want in digests.items():
        with open(os.path.join(ds.CONFIG_DIR, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == want, name
    assert set(json.load(open(os.path.join(ds.CONFIG_DIR, "dataset2prompt.json")))) == \
        set(ds.DATASETS)
    # The quirks are facts: kept.
    assert ds.prompt_template("narrativeqa").count("asconcisely") == 2
    assert "\n\n Answer the question based on the above article" in \
        ds.prompt_template("qasper")
    assert ds.prompt_template("lcc") == ("Please complete the code given below. \n{context}"
                                         "Next line of code:\n")
    assert ds.max_new_tokens("gov_report") == 512 and ds.max_new_tokens("hotpotqa") == 32
    assert sum(1 for d in ds.LI2025) == 14 and len(ds.PRESETS["he2025"].datasets) == 19


ROW = {"context": "CTX", "input": "INP", "answers": ["a"], "all_classes": None, "length": 3}
LLAMA3 = ("<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>"
          "assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("preset", sorted(ds.PRESETS))
@pytest.mark.parametrize("dataset", sorted(ds.DATASETS))
def test_golden_input_per_dataset_and_preset(text, dataset, preset):
    p = ds.PRESETS[preset]
    body = ds.prompt_template(dataset).replace("{context}", "CTX").replace("{input}", "INP")
    # The rules written out: the beacon pipeline never templates; official (Llama-2's
    # build_chat) and he2025 (Llama-3's) skip the few-shot and code datasets.
    skip = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    if preset == "beacon" or dataset in skip:
        want = body
    elif preset == "official":
        want = f"[INST]{body}[/INST]"
    else:
        want = LLAMA3.format(body.strip())
    ids = prompts.build_input(dataset, ROW, text, 1000, p.chat_template, p.chat_skip)
    assert ids[0] == text.tok.bos_id  # tokenizer(prompt) adds BOS once
    assert ids[1:] == text.encode(want)


def test_golden_strings():
    row = dict(ROW, context="Once upon a time.", input="Who?")
    assert prompts.format_prompt("narrativeqa", row) == (
        "You are given a story, which can be either a novel or a movie script, and a question. "
        "Answer the question asconcisely as you can, using a single phrase if possible. Do not "
        "provide any explanation.\n\nStory: Once upon a time.\n\nNow, answer the question "
        "based on the story asconcisely as you can, using a single phrase if possible. Do not "
        "provide any explanation.\n\nQuestion: Who?\n\nAnswer:")
    assert prompts.format_prompt("repobench-p", dict(ROW, context="import os\n",
                                                     input="x = 1\n")) == (
        "Please complete the code given below. \nimport os\nx = 1\nNext line of code:\n")
    assert prompts.apply_chat("Hi ", "llama2") == "[INST]Hi [/INST]"
    assert prompts.apply_chat(" Hi \n", "llama3") == LLAMA3.format("Hi")  # the template trims
    assert prompts.apply_chat("Hi", "<s>{prompt}</s>") == "<s>Hi</s>"
    with pytest.raises(ValueError, match="containing"):
        prompts.check_template("chatml")


def test_truncation_on_token_lists(text):
    prompt = "In the beginning God created the heaven and the earth. " * 40
    ids = text(prompt)
    assert ids[0] == text.tok.bos_id and len(ids) > 101
    for max_length in (100, 101):  # half = int(max_length / 2): 101 keeps 50 + 50
        cut = prompts.truncate_middle_text(prompt, text, max_length)
        assert cut == text.tok.decode(ids[1:50]) + text.tok.decode(ids[-50:])  # BOS dropped
    assert prompts.truncate_middle_text("Short.", text, 100) == "Short."
    # The model input re-tokenises the cut text (with BOS): about max_length tokens.
    full = prompts.build_input("gov_report", {"context": prompt, "input": ""}, text, 100,
                               "none", ())
    assert full[0] == text.tok.bos_id and abs(len(full) - 100) <= 3


def test_decode_matches_transformers_skip_special_and_cleanup(tmp_path, kjv_text):
    transformers = require("transformers")
    from lctx.tokenizer import load_tokenizer
    from vllm_helpers import train_tokenizer
    train_tokenizer(kjv_text[:200_000], str(tmp_path), 1024)
    s = "<|begin_of_text|>And God said , Let there be light : and there was light . n't 's"
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    ids = hf_tok(s, add_special_tokens=False)["input_ids"]
    plain = HFText(load_tokenizer(str(tmp_path)), clean_up_spaces=False)
    assert plain.encode(s) == ids
    assert plain.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    assert plain(s) == hf_tok(s)["input_ids"]  # this tokenizer.json adds no BOS
    cleaned = HFText(load_tokenizer(str(tmp_path)), clean_up_spaces=True).decode(ids)
    assert cleaned == hf_tok.clean_up_tokenization(hf_tok.decode(ids, skip_special_tokens=True))
    assert cleaned.endswith("light.n't's") and ", Let" in cleaned and " ," not in cleaned


@pytest.mark.parametrize("metric,pred,gold,want", [
    ("qa_f1_score", "The Eiffel Tower!", "eiffel tower", 1.0),
    ("qa_f1_score", "Paris France", "Paris", pytest.approx(2 / 3)),
    ("qa_f1_score", "", "Paris", 0.0),
    # `rouge` 1.0.1 is case-sensitive (rouge-score gives 1.0) and raises on an empty or
    # punctuation-only hypothesis (scored 0); its union LCS counts a repeated word once
    # (0.8 here; rouge-score's rougeL gives 0.833).
    ("rouge_score", "A B C", "a b c", 0.0),
    ("rouge_score", "", "a b", 0.0),
    ("rouge_score", "...", "a b", 0.0),
    ("rouge_score", "the cat sat on the mat", "the cat is on the mat", pytest.approx(0.8)),
    ("count_score", "There are 12 unique paragraphs, not 13.", "12", 0.5),
    ("count_score", "none", "12", 0.0),
    ("retrieval_score", "Paragraph 3", "Paragraph 3", 1.0),
    ("retrieval_score", "Paragraph 3 or Paragraph 13", "Paragraph 3", 0.5),
    ("retrieval_zh_score", "段落2", "段落2", 1.0),
    # code_sim: the first line with no ` # //; fuzzywuzzy on Levenshtein gives 59 here, its
    # difflib fallback 24.
    ("code_sim_score", "```python\n# a comment\naaa caaa\nzzz", " c bcabaa", 0.59),
    ("code_sim_score", "\n\nx = f(y)  // js\n", "x = f(y)", 0.0),  # no usable line: ''
    ("qa_f1_zh_score", "北京是首都。", "北京", 0.5),  # jieba: 北京/是/首都
])
def test_metrics_on_hand_made_predictions(metric, pred, gold, want):
    assert metrics.METRICS[metric](pred, gold, all_classes=None) == want


def test_classification_keeps_the_list_mutation_quirk():
    # Matches [A, AB, ABC] for gold ABC: removing 'A' makes the loop skip 'AB', which stays:
    # 1 / 2. Removing every partial match would give 1.0.
    classes = ["A", "AB", "ABC", "X"]
    assert metrics.classification_score("ABC", "ABC", all_classes=classes) == 0.5
    assert metrics.classification_score("AB", "ABC", all_classes=classes) == 0.0
    assert metrics.classification_score("X and ABC", "X", all_classes=classes) == 0.25


def test_score_one_first_line_and_max_over_answers():
    assert metrics.score_one("triviaqa", "\n\nParis\nQuestion: next", ["paris"], None) == 1.0
    assert metrics.score_one("hotpotqa", "\nParis\nQuestion", ["paris"], None) < 1.0
    assert metrics.score_one("hotpotqa", "Paris", ["London", "Paris"], None) == 1.0
    assert metrics.score_dataset("hotpotqa", ["Paris", "x"], [["paris"], ["y"]], None) == 50.0
    assert metrics.score_dataset_e("hotpotqa", ["Paris", "x", "y"], [["paris"], ["y"], ["y"]],
                                   [100, 5000, 9000], None) == {"0-4k": 100.0, "4-8k": 0.0,
                                                                "8k+": 100.0}


def test_averages_reproduce_the_papers_tables():
    li = dict(zip(ds.LI2025, [22.85, 17.86, 30.97, 35.9, 30.97, 15.89, 24.89, 21.68, 25.27,
                              52.5, 82.04, 42.11, 60.12, 51.26]))
    a = metrics.averages(li, "datasets")  # Li et al. Table 1, Llama-2-7B-chat MHA
    assert a["avg"] == 36.74
    assert a["categories"] == {"Single-Doc QA": 23.89, "Multi-Doc QA": 27.59,
                               "Summarization": 23.95, "Few-shot Learning": 58.88,
                               "Code Completion": 55.69}
    he = dict(zip(ds.PRESETS["he2025"].datasets,  # He et al. Table 10, Llama-3.1-8B-Instruct
                  [25.48, 45.33, 54.98, 61.83, 55.00, 44.95, 31.76, 34.10, 35.07, 25.13, 27.08,
                   17.10, 72.50, 91.65, 43.77, 46.00, 6.55, 99.50, 96.38]))
    assert metrics.averages(he, "datasets")["avg"] == 48.11
    readme = dict(zip(ds.DATASETS, [18.7, 19.2, 36.8, 11.9, 25.4, 32.8, 9.4, 5.2, 27.3, 20.8,
                                    25.8, 0.2, 61.5, 77.8, 40.7, 19.8, 2.1, 9.8, 0.5, 52.4,
                                    43.8]))  # LongBench README, Llama2-7B-chat-4k
    off = metrics.averages(readme, "categories")
    assert round(off["en"]["avg"], 1) == 31.0 and round(off["zh"]["avg"], 1) == 14.3
    assert off["en"]["categories"]["Synthetic Tasks"] == 5.95  # the README prints 5.9
    assert off["zh"]["categories"]["Code Completion"] == 48.1


class EchoRunner:
    """Answers 'Paris' (then a newline and more); records prompts and generation kwargs."""
    calls = []

    def __init__(self, model):
        pass

    def generate(self, prompts_, max_new_tokens, stop, **kw):
        EchoRunner.calls.append((len(prompts_), max_new_tokens, kw))
        assert all(isinstance(p, list) for p in prompts_)
        return ["Paris\nQuestion: more"] * len(prompts_)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_beacon_and_official_resume_and_refuse(tmp_path, sp_model_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "hotpotqa.jsonl", [dict(ROW, answers=["Paris"]), dict(ROW, answers=["Rome"])])
    _write(data / "samsum.jsonl", [dict(ROW, answers=["Paris"])])
    base = ["--model=m", "--runner=evals_longbench_test:EchoRunner",
            f"--tokenizer={sp_model_path}", f"--data_dir={data}"]
    out = tmp_path / "beacon"
    EchoRunner.calls = []
    assert main(base + ["--preset=beacon", "--datasets=hotpotqa,samsum", f"--out={out}"]) == 0
    doc = json.loads((out / "scores.json").read_text())
    # hotpotqa is not first-line scored: "Paris Question more" vs Paris -> F1 0.5; Rome 0.
    assert doc["scores"] == {"hotpotqa": 25.0, "samsum": 100.0}
    assert doc["averages"]["avg"] == 62.5 and doc["settings"]["max_length"] == 15500
    nl = HFText(__import__("lctx.tokenizer").tokenizer.load_tokenizer(sp_model_path)).newline_id()
    assert [c[1:] for c in EchoRunner.calls] == [(32, {"stop_ids": [nl]}),
                                                 (128, {"stop_ids": [nl]})]
    rows = [json.loads(x) for x in (out / "preds" / "hotpotqa.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and rows[0]["prompt_sha"]
    assert "| **average** | | **62.50** |" in capsys.readouterr().out
    assert main(base + ["--preset=beacon", "--datasets=hotpotqa,samsum", f"--out={out}"]) == 0
    assert len(EchoRunner.calls) == 2  # resumed: nothing generated again
    assert main(base + ["--preset=beacon", "--datasets=hotpotqa", "--max_length=3500",
                        f"--out={out}"]) == 2
    assert "other settings" in capsys.readouterr().err
    EchoRunner.calls = []
    out2 = tmp_path / "official"
    assert main(base + ["--datasets=samsum", "--max_length=3500", f"--out={out2}"]) == 0
    assert EchoRunner.calls[0][2] == {"stop_ids": [nl], "min_new_tokens": 1}
    doc = json.loads((out2 / "scores.json").read_text())
    assert doc["averages"]["en"]["avg"] == 100.0


def test_cli_bad_input_is_a_clear_error(tmp_path, sp_model_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    base = ["--model=m", "--runner=evals_longbench_test:EchoRunner",
            f"--tokenizer={sp_model_path}", f"--data_dir={data}", f"--out={tmp_path / 'o'}",
            "--preset=beacon"]
    assert main(base + ["--datasets=trec"]) == 2
    assert "trec.jsonl does not exist" in capsys.readouterr().err
    (data / "trec.jsonl").write_text('{"context": "c", "input": "i", "answers": ["x"]}\n')
    assert main(base + ["--datasets=trec"]) == 2
    assert "trec rows need 'all_classes'" in capsys.readouterr().err
    (data / "trec.jsonl").write_text('{"context": "c",\n')
    assert main(base + ["--datasets=trec"]) == 2
    assert "trec.jsonl:1: not JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base[:-1] + ["--datasets=trec"])  # official needs --max_length
    assert "needs --max_length" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--datasets=narrativeqa", "--e"])
    assert "not in LongBench-E" in capsys.readouterr().err
