"""Beacon runs through the trainer: only the adapter trains, the base comes from another run
and stays frozen, ratios are drawn per step reproducibly, and a killed run resumes exactly."""
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

import tiny_runs
from configs import common
from lctx import beacon_train
from lctx import checkpoint as ckpt_lib
from lctx import trainer


def tiny(data_glob, tok, steps, beacon=None):
    c = common.base_config()
    c.model.update(**tiny_runs.TINY_MODEL, max_seq_len=256)
    c.data.update(path=data_glob, tokenizer=tok, batch_size=8, pack=False, epochs=100)
    c.mesh.update(data=1, fsdp=-1)  # 8 simulated devices: the adapter and base are sharded
    c.ckpt.update(every_steps=2, async_save=False, keep=3)
    c.log.update(progress=False)
    c.attn.update(impl="blockwise", block_q=32, block_k=32)
    c.stages["s1"] = common.stage(seq_len=128, steps=steps, rope_cfg=common.rope(),
                                  export_hf=False)
    if beacon:
        c.beacon = mc.ConfigDict(dict(window=32, native_len=96, ratios="4,8", headroom=32,
                                      rank=4, alpha=8.0, train_ratios="4", ratio_weights="",
                                      data_mix="", remat=True, **beacon))
    return c


def params(workdir, stage="s1"):
    mgr = ckpt_lib.StageCheckpoints(f"{workdir}/ckpt", stage, async_save=False)
    step = mgr.latest_step()
    import orbax.checkpoint as ocp
    state = ocp.PyTreeCheckpointer().restore(f"{workdir}/ckpt/{stage}/{step}/state")
    mgr.close()
    return state


@pytest.fixture(scope="module")
def data(tmp_path_factory, sp_model_path):
    d = tmp_path_factory.mktemp("beacon_data")
    return tiny_runs.write_shards(str(d), tiny_runs.qa_records(64)), sp_model_path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data):
    d = str(tmp_path_factory.mktemp("base"))
    trainer.train_and_evaluate(tiny(*data, 1), d)
    return d


def test_ratio_draws_are_seeded_by_step():
    draw = jax.jit(jax.vmap(lambda s, w=(1.0, 1.0, 1.0): beacon_train.ratio_index(0, s, w)))
    steps = jnp.arange(300)
    a = np.asarray(draw(steps))
    np.testing.assert_array_equal(a, np.asarray(draw(steps)))  # a resumed step draws the same
    assert set(a.tolist()) == {0, 1, 2}
    heavy = np.asarray(jax.vmap(lambda s: beacon_train.ratio_index(0, s, (9.0, 1.0)))(steps))
    assert (heavy == 0).mean() > 0.8


def test_adapter_trains_base_frozen_and_resume_is_exact(base_run, data, tmp_path):
    cfg = tiny(*data, 4, dict(adapter="experts"))
    cfg.ckpt.resume_from = f"{base_run}/ckpt/s1"
    trainer.train_and_evaluate(cfg, str(tmp_path / "a"))
    got = params(str(tmp_path / "a"))
    base = params(base_run)["params"]
    # The frozen base is the base run's, bit for bit; the beacon embedding started from it.
    for a, b in zip(jax.tree.leaves(got["frozen"]["base"]), jax.tree.leaves(base)):
        np.testing.assert_array_equal(a, b)
    assert np.abs(jax.tree.leaves(got["params"]["bank"]["bq"])[0]).max() > 0  # B left zero
    # Kill after step 2: drop the later checkpoint and rerun the same command; it resumes
    # from step 2 (state, data position, ratio draws) and ends where the whole run ended.
    import shutil
    shutil.rmtree(tmp_path / "a" / "ckpt" / "s1" / "4")
    trainer.train_and_evaluate(cfg, str(tmp_path / "a"))
    resumed = params(str(tmp_path / "a"))
    assert int(resumed["step"]) == 4
    for a, b in zip(jax.tree.leaves(resumed["params"]), jax.tree.leaves(got["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_beacon_llama2_config_trains_a_step(tmp_path, kjv_text):
    """configs/beacon_llama2.py (the clone baseline) with size overrides only: a tiny HF
    Llama as ckpt.init_from (its base goes into the frozen state), two ratios' branches."""
    from configs import beacon_llama2
    hf_dir = tiny_runs.tiny_hf_dir(str(tmp_path / "llama"), kjv_text[:150_000])
    cfg = beacon_llama2.get_config("adapter=clone")
    cfg.model.update(tiny_runs.TINY_MODEL, max_seq_len=256)
    cfg.attn.update(block_q=16, block_k=16)
    cfg.beacon.update(window=32, native_len=96, ratios="2,4,8,16,32", headroom=32,
                      train_ratios="2,32")
    cfg.stages["s1_beacon"].update(seq_len=256, steps=1)
    cfg.ckpt.update(init_from=hf_dir, async_save=False)
    cfg.data.path = tiny_runs.write_shards(str(tmp_path / "data"), tiny_runs.qa_records(16))
    cfg.log.progress = False
    res = trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
    m = res["s1_beacon"]
    assert m["train/loss_tokens"] > 0 and 0 < m["train/loss"] < 10
    assert m["beacon/ratio"] in (2.0, 32.0)
    state = params(str(tmp_path / "run"), "s1_beacon")
    assert set(state["params"]["bank"]) == {"dq", "dk", "dv", "do"}  # the cloned q/k/v/o
