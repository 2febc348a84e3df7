"""lctx.export: any checkpoint of a run, exported through lctx.run, loads back to the
checkpoint's weights; the final one equals the trainer's own export; bad paths are one-line
errors."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import tiny_runs
from configs import common
from lctx import export, hf, trainer
from lctx import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sp_model_path):
    """One tiny stage (2 steps, a checkpoint every step, linear RoPE), exported by the
    trainer at its end."""
    d = tmp_path_factory.mktemp("export_run")
    c = common.base_config()
    c.model.update(tiny_runs.TINY_MODEL, max_seq_len=256)
    c.mesh.update(data=-1, fsdp=1)
    c.data.update(path=tiny_runs.write_shards(str(d / "data"), tiny_runs.qa_records(64)),
                  tokenizer=sp_model_path, batch_size=8)
    c.opt.update(warmup_steps=1, loss_chunk=128)
    c.ckpt.update(every_steps=1, keep=3, async_save=False)
    c.log.progress = False
    c.stages.s1 = common.stage(seq_len=128, steps=2, rope_cfg=common.rope(
        type="linear", theta=1e4, factor=2.0))
    trainer.train_and_evaluate(c, str(d / "run"))
    return str(d / "run")


def _params(model):
    return {"/".join(map(str, p)): np.asarray(x) for p, x in
            jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def test_final_checkpoint_export_equals_the_trainers(finished_run, tmp_path):
    out = export.export(finished_run, out=str(tmp_path / "again"))
    ours = open(os.path.join(out, "model.safetensors"), "rb").read()
    trainers = open(os.path.join(finished_run, "hf", "s1", "model.safetensors"), "rb").read()
    assert ours == trainers  # same weights, same bf16 bytes
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["rope_parameters"]["rope_type"] == "linear"
    # Default output: the trainer's place for a stage's final checkpoint.
    run = run_lib.Run.open(finished_run)
    assert export.default_out(run, "s1", 2) == os.path.join(finished_run, "hf", "s1")
    assert export.default_out(run, "s1", 1) == os.path.join(finished_run, "hf", "s1-step1")


def test_any_step_exports_its_weights(finished_run):
    """CLI on `<workdir>/ckpt/s1/1` (a mid-stage checkpoint), float32: the export loads back
    into lctx as exactly that checkpoint's weights, with the stage's RoPE."""
    proc = subprocess.run([sys.executable, "-m", "lctx.export",
                           os.path.join(finished_run, "ckpt", "s1", "1"), "--dtype=float32"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()[-1]
    assert out == os.path.join(finished_run, "hf", "s1-step1")
    cfg, model = hf.load_hf(out)
    mcfg, ckpt_model, _ = run_lib.Run.open(finished_run).load_model("s1", 1)
    assert cfg.rope == mcfg.rope
    theirs = _params(ckpt_model)
    for k, v in _params(model).items():
        np.testing.assert_array_equal(v, theirs[k], err_msg=k)
    final = _params(run_lib.Run.open(finished_run).load_model("s1", 2)[1])
    assert any(not np.array_equal(v, final[k]) for k, v in _params(model).items())


def test_bad_paths_are_one_line_errors(finished_run, tmp_path, capsys):
    for args, want in (([str(tmp_path)], "config.json is missing"),
                       ([finished_run, "--stage=s9"], "stage 's9' is not in the config"),
                       ([finished_run, "--stage=s1", "--step=7"], "step=7 not saved")):
        assert export.main(args) == 2
        err = capsys.readouterr().err
        assert want in err and len(err.strip().splitlines()) == 1, (args, err)


def _safetensors_dtypes(directory):
    """The dtypes in an export's safetensors headers (8-byte length, then JSON)."""
    out = set()
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            with open(os.path.join(directory, name), "rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            out |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return out


def test_export_dtype_comes_from_the_config(tmp_path, sp_model_path):
    """ckpt.export_dtype=float32: the trainer's export, the re-export of a run killed before
    its export and `python3 -m lctx.export` without --dtype all write fp32; a bad value is a
    config error naming the field."""
    c = common.base_config()
    c.model.update(tiny_runs.TINY_MODEL, max_seq_len=256)
    c.mesh.update(data=-1, fsdp=1)
    c.data.update(path=tiny_runs.write_shards(str(tmp_path / "data"),
                                              tiny_runs.qa_records(16)),
                  tokenizer=sp_model_path, batch_size=8)
    c.opt.update(warmup_steps=1, loss_chunk=128)
    c.ckpt.update(async_save=False)
    c.log.progress = False
    c.stages.s1 = common.stage(seq_len=128, steps=1, rope_cfg=common.rope(theta=1e4))
    c.ckpt.export_dtype = "int8"
    with pytest.raises(run_lib.ConfigError, match=r"^ckpt.export_dtype='int8'.*float32"):
        trainer.train_and_evaluate(c, str(tmp_path / "bad"))
    c.ckpt.export_dtype = "float32"
    run = str(tmp_path / "run")
    trainer.train_and_evaluate(c, run)
    final = os.path.join(run, "hf", "s1")
    assert _safetensors_dtypes(final) == {"F32"}
    os.rename(final, final + "-trainer")  # as if killed between the checkpoint and export
    trainer.train_and_evaluate(c, run)
    assert _safetensors_dtypes(final) == {"F32"}
    out = export.export(run, step=1, out=str(tmp_path / "cli"))
    assert _safetensors_dtypes(out) == {"F32"}
    assert _safetensors_dtypes(export.export(run, out=str(tmp_path / "bf16"),
                                             dtype="bfloat16")) == {"BF16"}
