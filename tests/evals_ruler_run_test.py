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
            "--lengths=4096", "--tasks=niah_single_1", "--samples=2", f"--out={tmp_path}",
            "--workers=1"]
    assert main(args) == 0
    assert "effective length: 4096" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args[:4] + ["--tasks=nope"] + args[5:])
    assert "known tasks" in capsys.readouterr().err


def test_cli_short_lengths_report_a_minimum_that_works(sp_model_path, tmp_path, capsys):
    import re as re_
    base = ["--model=m", "--runner=evals_ruler_run_test:RegexRunner",
            f"--tokenizer={sp_model_path}", "--samples=1", "--workers=1"]
    # One length too short for one task: the others run; the status says not everything did.
    assert main(base + ["--lengths=100,2048", "--tasks=niah_single_1,fwe",
                        f"--out={tmp_path / 'a'}"]) == 1
    err = capsys.readouterr().err
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(doc["scores"]["2048"]) == {"niah_single_1", "fwe"}
    assert set(doc["not_run"]) == {"niah_single_1@100", "fwe@100"}
    for task in ("niah_single_1", "fwe"):
        least = int(re_.search(task + r" needs --lengths >= (\d+)", err).group(1))
        assert 100 < least < 2048
        # The reported minimum works, one token less does not.
        assert main(base + [f"--lengths={least}", f"--tasks={task}",
                            f"--out={tmp_path / task}"]) == 0
        assert main(base + [f"--lengths={least - 1}", f"--tasks={task}",
                            f"--out={tmp_path / (task + '-1')}"]) == 1
        capsys.readouterr()


def test_cli_bad_qa_files_are_clear_errors(sp_model_path, tmp_path, capsys):
    base = ["--model=m", "--runner=evals_ruler_run_test:RegexRunner",
            f"--tokenizer={sp_model_path}", "--lengths=4096", f"--out={tmp_path / 'o'}"]
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"version": "v2.0"}))
    cases = [(["--tasks=qa_1"], "needs --squad=PATH"),
             (["--tasks=qa_1", f"--squad={tmp_path / 'missing.json'}"], "no such file"),
             (["--tasks=qa_1", f"--squad={tmp_path}"], "no such file"),
             (["--tasks=qa_1", f"--squad={tmp_path / 'bad.json'}"], "cannot read it as a SQuAD"),
             (["--tasks=all", f"--squad={tmp_path / 'odd.json'}"], "not a SQuAD v2 dev JSON"),
             (["--tasks=qa_2", f"--hotpotqa={tmp_path / 'odd.json'}"], "not a HotpotQA")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "o").exists()  # nothing was started


def test_he2025_preset_and_parallel_data_equal_serial(sp_model_path, tmp_path):
    from evals.ruler.__main__ import parse_args
    from evals.ruler.run import prepare_all
    a = parse_args(["--model=m", f"--tokenizer={sp_model_path}", "--preset=he2025",
                    f"--out={tmp_path}"])
    assert a.lengths == [4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1000000]
    assert (a.samples, a.chat_template, a.repeat_haystack, len(a.tasks)) == (
        10, "meta-llama3", True, 13)
    b = parse_args(["--model=m", f"--tokenizer={sp_model_path}", "--preset=he2025",
                    "--samples=3", "--lengths=4096", f"--out={tmp_path}"])
    assert (b.samples, b.lengths) == (3, [4096])
    tok = load_tokenizer(sp_model_path)
    kw = dict(tasks=["niah_single_1", "vt", "fwe"], lengths=[2048, 3000], num_samples=2,
              tokenizer=tok, tokenizer_name="kjv1k", opts=Options(chat_template="meta-llama3"),
              res=Resources())
    assert prepare_all(out=str(tmp_path / "serial"), **kw) == {}
    assert prepare_all(out=str(tmp_path / "par"), workers=2, tokenizer_path=sp_model_path,
                       **kw) == {}
    for task in kw["tasks"]:
        for length in kw["lengths"]:
            rel = f"data/{task}/{length}.jsonl"
            assert (tmp_path / "par" / rel).read_bytes() == (tmp_path / "serial" / rel
                                                             ).read_bytes()
