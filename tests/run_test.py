"""lctx.run: what a run uses, decided in one place (tokenizer, stage data, steps, model, paths)."""
import json
import os

import pytest

import tiny_runs
from configs import common
from lctx import run as run_lib


def config(**data):
    c = common.base_config()
    c.model.update(tiny_runs.TINY_MODEL, max_seq_len=512)
    c.data.update(**data)
    c.stages.s1 = common.stage(seq_len=256, steps=3, rope_cfg=common.rope(theta=1e4))
    c.stages.s2 = common.stage(seq_len=512, steps=2, rope_cfg=common.rope(type="linear",
                                                                        factor=2.0))
    return c


def test_tokenizer_is_data_tokenizer_else_init_from():
    c = config(tokenizer="/tok.model")
    c.ckpt.init_from = "/hf"
    assert run_lib.Run(c, "/w").tokenizer == "/tok.model"
    c.data.tokenizer = ""
    assert run_lib.Run(c, "/w").tokenizer == "/hf"  # every paper config: the HF directory
    c.ckpt.init_from = ""
    with pytest.raises(run_lib.ConfigError, match="data.tokenizer and ckpt.init_from"):
        run_lib.Run(c, "/w").tokenizer  # noqa: B018


def test_stage_data_path_wins_and_data_path_is_never_read(tmp_path):
    """A stage with its own data_path never resolves data.path (the ablation configs)."""
    own = tiny_runs.write_shards(str(tmp_path / "own"), tiny_runs.qa_records(6), shards=3)
    c = config(path=str(tmp_path / "missing" / "*.arrayrecord"))
    c.stages.s1.data_path = own
    run = run_lib.Run(c, str(tmp_path / "w"))
    s1 = run.stage("s1")
    assert (s1.data_field, len(s1.data_paths), s1.records) == ("stages.s1.data_path", 3, 6)
    with pytest.raises(run_lib.ConfigError, match=r"^data.path=.*missing.* matches no files"):
        run.stage("s2").data_paths  # noqa: B018  (s2 has none of its own)


def test_steps_minus_one_is_one_epoch_of_the_records(tmp_path, sp_model_path):
    path = tiny_runs.write_shards(str(tmp_path / "d"), tiny_runs.qa_records(40))
    c = config(path=path, tokenizer=sp_model_path, batch_size=4, pack=False)
    c.stages.s1.update(steps=-1, seq_len=512)
    assert run_lib.Run(c, "/w").stage("s1").steps == 10  # one record a row: 40 / 4
    c.data.pack = True
    packed = run_lib.Run(c, "/w").stage("s1").steps
    assert 1 <= packed < 10  # several conversations share a 512-token row
    c.stages.s1.steps = 0
    with pytest.raises(run_lib.ConfigError, match=r"stages.s1.steps=0: use >= 1, or -1"):
        run_lib.Run(c, "/w").stage("s1")


def test_stage_model_has_the_stage_rope_and_errors_name_the_field():
    c = config()
    run = run_lib.Run(c, "/w")
    assert run.stage("s1").model.rope.theta == 1e4
    assert run.stage("s2").model.rope.type == "linear" and run.stage("s2").model.max_seq_len == 512
    assert run.stage("s2").export_dir == "/w/hf/s2" and run.stage("s1").ckpt_dir == "/w/ckpt/s1"
    c.stages.s2.rope = common.rope(type="yarn_typo")
    with pytest.raises(run_lib.ConfigError, match=r"stages.s2.rope=.*yarn_typo"):
        run_lib.Run(c, "/w").stage("s2")
    c = config()
    c.stages.s2.seq_len = 1024
    with pytest.raises(run_lib.ConfigError, match="stages.s2.seq_len=1024 exceeds"):
        run_lib.Run(c, "/w").stage("s2")


def test_open_and_locate_a_run_on_disk(tmp_path):
    wd = tmp_path / "w"
    os.makedirs(wd / "ckpt" / "s2" / "7" / "state")
    c = config(tokenizer="/t")
    (wd / "config.json").write_text(c.to_json_best_effort())
    for path, want in ((wd, (None, None)), (wd / "ckpt" / "s2", ("s2", None)),
                       (wd / "ckpt" / "s2" / "7", ("s2", 7))):
        run, stage, step = run_lib.locate(str(path))
        assert (stage, step) == want and run.workdir == str(wd)
        assert run.stage("s2").model == run_lib.Run(c, str(wd)).stage("s2").model
    assert json.loads((wd / "config.json").read_text())["data"]["tokenizer"] == "/t"
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        run_lib.Run.open(str(tmp_path))


def test_mesh_rules_are_config_data():
    """cfg.mesh.rules decide the shardings (here: embed replicated instead of fsdp x context)."""
    from lctx import sharding, step
    c = config()
    c.mesh.update(data=1, fsdp=-1)
    run = run_lib.Run(c, "/w")
    mesh = sharding.make_mesh([(a, c.mesh[a]) for a in sharding.MESH_AXES])
    def embed_axes(r):  # the mesh axes of wq's [L, D, N, H] embed (D) dimension
        spec = step.build_stage(r, r.stage("s1"), mesh).abstract["params"]["layers"]["attn"][
            "wq"].sharding.spec
        return spec[1]

    assert "fsdp" in embed_axes(run)
    c.mesh.rules = tuple((k, None if k == "embed" else v) for k, v in sharding.DEFAULT_RULES)
    assert embed_axes(run_lib.Run(c, "/w")) is None
