"""BeaconRunner: a beacon run on disk generates as lctx.beacon_generate does, truncation is the
base on the middle-cut prompt, bad input fails clearly, and `--runner=beacon` drives RULER."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections as mc
import pytest
from flax import nnx

from evals.runners.base import PromptTooLongError
from evals.runners.beacon_runner import BeaconRunner
from configs import common
from evals.runners.registry import make_runner
from lctx import beacon as rules
from lctx import beacon_generate as bgen
from lctx import beacon_train
from lctx import run as run_lib
from lctx import generate as gen_lib
from lctx.beacon_model import BeaconModel
from lctx.model import Llama, ModelConfig

MODEL = dict(vocab_size=1024, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
             mlp_dim=64, max_seq_len=4096)
BEACON = dict(window=32, native_len=128, ratios="4,8", headroom=32, adapter="experts",
              rank=4, alpha=8.0, targets="q,k,v,o", embed_per_expert=True)


def write_run(workdir, tok, beacon=True):
    """A run on disk as the trainer writes it: config.json and ckpt/<stage>/<step>."""
    cfg = common.base_config()
    cfg.model.update(**MODEL)
    cfg.attn.update(impl="blockwise", block_q=32, block_k=32)
    cfg.data.tokenizer = tok
    cfg.stages["s1"] = common.stage(seq_len=128, steps=3, rope_cfg=common.rope())
    base = Llama(ModelConfig(**{**cfg.model.to_dict()}, attn_impl="blockwise", block_q=32,
                             block_k=32), rngs=nnx.Rngs(0))
    if beacon:
        cfg.beacon = mc.ConfigDict(BEACON)
        model = BeaconModel(base, beacon_train.beacon_config(BEACON), eos_id=2,
                            rngs=nnx.Rngs(1))
        for name in ("bq", "bk", "bv", "bo"):  # a "trained" adapter: B no longer zero
            w = getattr(model.bank, name)
            w[...] = 0.05 * jax.random.normal(jax.random.key(len(name)), w[...].shape)
        _, params, frozen = beacon_train.split_model(model)
        state = {"params": params, "frozen": frozen, "step": jnp.int32(3)}
    else:
        model, state = base, {"params": nnx.state(base, nnx.Param), "step": jnp.int32(3)}
    run = run_lib.Run(cfg, workdir)
    os.makedirs(workdir, exist_ok=True)
    run.save_config()
    with run.checkpoints("s1", async_save=False) as mgr:
        mgr.save(3, state, None, {"stage": "s1", "step": 3, "finished": True})
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sp_model_path):
    d = tmp_path_factory.mktemp("beacon_runs")
    model = write_run(str(d / "beacon"), sp_model_path)
    base = write_run(str(d / "plain"), sp_model_path, beacon=False)
    return str(d / "beacon"), str(d / "plain"), model, base


def prompt_ids(n, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(10, 1000, n)]


def test_runner_equals_beacon_generation(runs):
    path, _, model, _ = runs
    runner = make_runner("beacon", path, progress=False)
    assert isinstance(runner, BeaconRunner)
    p = prompt_ids(300)  # 300 + 32 headroom > 128: ratio 4 covers (128 - 32) * 4 + 32 = 416
    got = runner.generate_ids([p], 5)[0]
    want, info = bgen.generate(model, p, max_new_tokens=5, eos_ids=runner.tokenizer.eos_ids)
    assert info["ratio"] == 4 and runner.used == {4: 1}
    cut = next((k for k, t in enumerate(want) if t in runner.tokenizer.eos_ids), len(want))
    assert got == want[:cut]
    assert runner.max_len == (128 - 32) * 8 + 32 - 32  # largest ratio's capacity - headroom


def test_truncation_is_the_base_on_the_middle_cut_prompt(runs):
    path, plain, _, base = runs
    p = prompt_ids(300, seed=1)
    for model_dir in (path, plain):  # the base weights of a beacon run equal the plain run's
        runner = BeaconRunner(model_dir, truncate=True, progress=False,
                              **({} if model_dir == path else dict(native_len=128, window=32,
                                                                  headroom=32)))
        got = runner.generate_ids([p], 4)[0]
        keep = 128 - 32  # native window less the generation headroom
        cut = p[:keep // 2] + p[-(keep - keep // 2):]
        want, _ = gen_lib.generate(base, jnp.asarray([cut]), max_new_tokens=4)
        want = [int(t) for t in want[0]]
        k = next((i for i, t in enumerate(want) if t in runner.tokenizer.eos_ids), len(want))
        assert got == want[:k] and runner.used == {0: 1}


def test_bad_input(runs):
    path, plain, _, _ = runs
    with pytest.raises(rules.BeaconError, match="no expert for it"):
        BeaconRunner(path, ratio=16, progress=False)
    with pytest.raises(rules.BeaconError, match="has no beacon adapter"):
        BeaconRunner(plain, progress=False)
    runner = BeaconRunner(path, progress=False)
    with pytest.raises(PromptTooLongError):
        runner.generate([prompt_ids(2000)], 4)  # beyond ratio 8's 800 tokens
    with pytest.raises(rules.BeaconError, match="does not hold the adapter bank"):
        BeaconRunner(path, rank=8, progress=False)  # a bank the checkpoint does not have


def test_ruler_cli_runs_on_the_beacon_runner(runs, sp_model_path, tmp_path):
    from evals.ruler.__main__ import main
    path = runs[0]
    rc = main([f"--model={path}", "--runner=beacon", f"--tokenizer={sp_model_path}",
               "--runner_arg=progress=false", "--lengths=700", "--tasks=niah_single_1",
               "--samples=1", f"--out={tmp_path}"])
    assert rc == 0
    doc = json.load(open(tmp_path / "results.json"))
    assert "700" in json.dumps(doc["summary"]["length_means"])
