"""lctx.validate: every stage is checked before the first trains; errors name the field."""
import os

import pytest

import tiny_runs
from configs import common
from lctx import run as run_lib
from lctx import trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory, sp_model_path):
    d = tmp_path_factory.mktemp("vdata")
    return tiny_runs.write_shards(str(d), tiny_runs.qa_records(16)), sp_model_path


def config(data, **stage2):
    path, tok = data
    c = common.base_config()
    c.model.update(tiny_runs.TINY_MODEL, max_seq_len=1024)
    c.mesh.update(data=-1, fsdp=1)
    c.data.update(path=path, tokenizer=tok, batch_size=8)
    c.ckpt.update(every_steps=2, async_save=False)
    c.log.progress = False
    c.stages.s1 = common.stage(seq_len=256, steps=1, rope_cfg=common.rope(theta=1e4),
                               export_hf=False)
    c.stages.s2 = common.stage(**dict(dict(seq_len=512, steps=1, export_hf=False,
                                           rope_cfg=common.rope(theta=4e4)), **stage2))
    return c


def fails(cfg, workdir, match):
    with pytest.raises(run_lib.ConfigError, match=match):
        trainer.train_and_evaluate(cfg, str(workdir))
    assert not os.path.exists(workdir), "a config error must write nothing"


def test_zero_checkpoint_interval_is_a_config_error(data, tmp_path):
    cfg = config(data)
    cfg.ckpt.every_steps = 0
    fails(cfg, tmp_path / "w", r"^ckpt.every_steps=0 must be >= 1")


def test_a_bad_stage_2_fails_before_stage_1_trains(data, tmp_path):
    fails(config(data, rope_cfg=common.rope(type="ntk", theta=1e4)), tmp_path / "a",
          r"stages.s2.rope=.*ntk")  # ntk needs a factor
    cfg = config(data, seq_len=520)  # 8-way ring: 520 is not a multiple of 2 x 8
    cfg.mesh.update(data=1, fsdp=1, context=8)
    cfg.attn.impl = "ring"
    fails(cfg, tmp_path / "b", r"^stages.s2.seq_len=520 is not divisible by 16 \(2 x "
                               r"mesh.context=8, the ring's zigzag layout\); use a multiple")
    cfg = config(data, seq_len=480)  # balanced: chunks of 30 give blocks 10 and 15
    cfg.mesh.update(data=1, fsdp=1, context=8)
    cfg.attn.update(impl="ring", ring_layout="balanced", block_q=10, block_k=15)
    fails(cfg, tmp_path / "d", r"^attn.ring_layout='balanced': the balanced layout moves "
                               r"whole ring blocks.*attn.block_q=10 and attn.block_k=15 give "
                               r"blocks of 10 and 15 tokens for stages.s2.seq_len=480")
    fails(config(data, data_path="/nowhere/*.arrayrecord"), tmp_path / "c",
          r"^stages.s2.data_path='/nowhere/\*.arrayrecord' matches no files")


def test_data_shorter_than_steps_times_batch(data, tmp_path):
    fails(config(data, steps=3), tmp_path / "w",
          r"stages.s2.steps=3 x data.batch_size=8 = 24 rows, but data.path has 16 records "
          r"and data.epochs=1: the data would repeat. Set stages.s2.steps=2 or -1")
    cfg = config(data, steps=3)
    cfg.data.epochs = 2  # repeating on purpose is allowed
    from lctx import validate
    plan = validate.validate(run_lib.Run(cfg, str(tmp_path / "x")), trainer.make_mesh(
        run_lib.Run(cfg, "/x")))
    assert plan.todo == ["s1", "s2"] and plan.found is None


def test_init_from_must_match_the_model_section(data, tmp_path, sp_model_path):
    from flax import nnx

    from lctx import hf
    from lctx.model import Llama, ModelConfig
    hf_dir = hf.export_hf(Llama(ModelConfig(**dict(tiny_runs.TINY_MODEL, d_model=64)),
                                rngs=nnx.Rngs(0)), str(tmp_path / "hf"), tokenizer=sp_model_path)
    cfg = config(data)
    cfg.ckpt.init_from = hf_dir
    fails(cfg, tmp_path / "w", r"ckpt.init_from=.* does not match the model section: "
                               r"model.d_model=32 \(HF: 64\)")
