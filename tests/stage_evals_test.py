"""lctx.stage_evals: each stage's export evaluated (RULER, InfiniteBench) as the stage ends."""
import json
import os

import pytest

import tiny_runs
from configs import common
from lctx import run as run_lib
from lctx import stage_evals, trainer


def config(path, tok):
    c = common.base_config()
    c.model.update(tiny_runs.TINY_MODEL, max_seq_len=512)
    c.mesh.update(data=-1, fsdp=1)
    c.data.update(path=path, tokenizer=tok, batch_size=8)
    c.ckpt.update(async_save=False)
    c.log.progress = False
    c.stages.s1 = common.stage(seq_len=256, steps=1, rope_cfg=common.rope(theta=1e4))
    return c


def test_commands_and_checks():
    c = config("/d/*.arrayrecord", "/t.model")
    c.stages.s2 = common.stage(seq_len=20000, steps=1, rope_cfg=common.rope(theta=4e4))
    c.model.max_seq_len = 20000
    run = run_lib.Run(c, "/w")
    assert stage_evals.enabled(run) == []
    c.eval.ruler.enabled = c.eval.infinitebench.enabled = True
    cmd = stage_evals.command(run, run.stage("s2"), "ruler")
    assert cmd[1:] == ["-m", "evals.ruler", "--model=/w/hf/s2", "--runner=vllm",
                       "--tokenizer=/w/hf/s2", "--out=/w/eval/s2/ruler",
                       "--lengths=4096,8192,16384,20000", "--preset=he2025"]
    # He et al.'s RULER (13 tasks, 10 samples, Llama-3 template) at the stage's lengths.
    from evals.ruler import __main__ as ruler_cli
    from evals.ruler import constants
    args = ruler_cli.parse_args(cmd[3:])
    assert (args.lengths, args.samples, args.chat_template, args.repeat_haystack) == (
        [4096, 8192, 16384, 20000], 10, "meta-llama3", True)
    assert args.tasks == list(constants.TASKS) and len(args.tasks) == 13
    assert stage_evals.command(run, run.stage("s1"), "infinitebench")[-1] == "--preset=he2025"
    c.stages.s1.export_hf = False
    with pytest.raises(run_lib.ConfigError, match=r"eval.ruler.enabled=True .* "
                                                  r"stages.s1.export_hf=False"):
        stage_evals.check(run_lib.Run(c, "/w"))


@pytest.mark.slow
def test_each_stage_export_is_evaluated_when_it_finishes(tmp_path, sp_model_path):
    path = tiny_runs.write_shards(str(tmp_path / "d"), tiny_runs.qa_records(8))
    c = config(path, sp_model_path)
    c.eval.ruler.update(enabled=True, runner="lctx", lengths="4096",
                        args="--tasks=niah_single_1 --samples=1 --runner_arg max_model_len=4352")
    c.eval.infinitebench.update(enabled=True, runner="lctx",
                                args="--tasks=passkey --synthetic=1 --max_len=512")
    wd = tmp_path / "w"
    trainer.train_and_evaluate(c, str(wd))
    ruler = json.loads((wd / "eval" / "s1" / "ruler" / "results.json").read_text())
    assert set(ruler["summary"]["length_means"]) == {"4096"}
    scores = json.loads((wd / "eval" / "s1" / "infinitebench" / "scores.json").read_text())
    assert "passkey" in json.dumps(scores)
    # A rerun of the finished run evaluates only what is missing.
    os.remove(wd / "eval" / "s1" / "infinitebench" / "scores.json")
    assert trainer.train_and_evaluate(c, str(wd)) == {}
    assert (wd / "eval" / "s1" / "infinitebench" / "scores.json").exists()
