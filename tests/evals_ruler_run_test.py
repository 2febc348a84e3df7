"""RULER end to end: CLI, resumable predictions, results JSON, bad input."""
import json
import re

import pytest

from evals.ruler import Options, Resources
from evals.ruler.__main__ import main
from evals.ruler.run import run
from evals.ruler.text import load_tokenizer


class RegexRunner:
    """A retrieval heuristic standing in for a model: answers NIAH questions by looking the
    asked keys up in the prompt's needles, and gives up past `max_ctx` characters."""

    calls = 0

    def __init__(self, model, max_ctx=10**9, max_model_len=None):
        self.model, self.max_ctx = model, max_ctx
        if max_model_len:
            self.max_model_len = max_model_len

    def generate(self, prompts, max_new_tokens, stop):
        RegexRunner.calls += len(prompts)
        out = []
        for p in prompts:
            m = re.search(r"special magic \w+ for (.*?) mentioned in the provided text\?", p)
            if not m or len(p) > self.max_ctx:
                out.append("")
                continue
            keys = re.split(r", and |, ", m.group(1))
            vals = [v for k in keys for v in re.findall(
                r"One of the special magic \w+ for " + re.escape(k) + r" is: (\S+)\.", p)]
            out.append("\x00 " + ", ".join(vals) + "\n")
        return out


@pytest.fixture(scope="module")
def tok(sp_model_path):
    return load_tokenizer(sp_model_path)


def test_run_scores_resumes_and_reports_not_run(tok, tmp_path):
    kw = dict(model="regex", tokenizer=tok, tokenizer_name="kjv1k", lengths=[4096, 8192],
              tasks=["niah_single_1", "niah_multikey_2", "qa_1"], num_samples=3,
              out=str(tmp_path), opts=Options(), res=Resources())
    RegexRunner.calls = 0
    doc = run(RegexRunner("regex", max_ctx=10_000), **kw)
    assert RegexRunner.calls == 12
    assert doc["scores"]["4096"] == {"niah_single_1": 100.0, "niah_multikey_2": 100.0}
    assert doc["scores"]["8192"]["niah_multikey_2"] == 0.0  # longer than max_ctx
    assert doc["summary"]["effective_length"] == 4096
    assert "qa_1" in doc["not_run"]
    preds = doc["tasks"]["4096"]["niah_single_1"]["predictions"]
    assert len(preds) == 3 and preds[0]["pred"].startswith("\x00")
    # Resume: a cut last line and one missing sample are redone, nothing else.
    path = tmp_path / "preds" / "8192" / "niah_single_1.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:10])
    RegexRunner.calls = 0
    again = run(RegexRunner("regex", max_ctx=10_000), **kw)
    assert RegexRunner.calls == 2
    assert again["scores"] == doc["scores"]
    assert json.loads((tmp_path / "results.json").read_text())["scores"] == doc["scores"]


def test_model_window_shorter_than_length_is_an_error(tok, tmp_path):
    with pytest.raises(ValueError, match="model's window is 4096"):
        run(RegexRunner("m", max_model_len=4096), model="m", tokenizer=tok,
            tokenizer_name="t", lengths=[4096, 8192], tasks=["niah_single_1"],
            num_samples=1, out=str(tmp_path))


def test_cli(sp_model_path, tmp_path, capsys):
    args = [f"--model=m", "--runner=evals_ruler_run_test:RegexRunner",
            f"--tokenizer={sp_model_path}",
            "--lengths=4096", "--tasks=niah_single_1", "--samples=2", f"--out={tmp_path}"]
    assert main(args) == 0
    assert "effective length: 4096" in capsys.readouterr().out
    assert main(args[:4] + ["--lengths=300", "--tasks=niah_multikey_3"] + args[6:]) == 2
    assert "use a larger" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args[:5] + ["--tasks=nope"] + args[6:])
    assert "known tasks" in capsys.readouterr().err
