"""Every shipped config loads, validates, and traces one train step (shapes shrunk for CPU)."""
import glob
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from lctx import model as model_lib, optim, rope as rope_lib, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs/*.py"))
               if not os.path.basename(p).startswith("_")
               and os.path.basename(p) not in ("common.py", "paper.py"))
VARIANTS = {"ablation_180k": ["h-h-s-fixed-no-sum", "hs-hs-hs-randomized"],
            "ablation_100k": ["4-hierarchies-multihop"], "1m": ["rope=llama3"],
            "demo": ["quick"]}
CASES = [(n, None) for n in NAMES] + [(n, a) for n, vs in VARIANTS.items() for a in vs]
SECTIONS = {"model", "rope", "attn", "mesh", "data", "opt", "ckpt", "eval", "stages"}


def load(name, arg):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def test_all_configs_listed():
    assert {"demo", "180k", "350k", "650k", "1m", "ablation_180k", "ablation_100k"} <= set(NAMES)


@pytest.mark.parametrize("name,arg", CASES)
def test_config_loads_and_traces_a_step(name, arg):
    cfg = load(name, arg)
    assert SECTIONS <= set(cfg.keys())
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert "python3 -m lctx.train --config=configs/" in doc and "Expected" in doc
    stages = sorted(cfg.stages.keys())
    assert stages
    for s in stages:
        st = cfg.stages[s]
        assert st.seq_len <= cfg.model.max_seq_len and st.steps >= 1
        rope_lib.make_rope(**st.rope.to_dict())  # every stage's RoPE is a valid registry entry
    # Shrink shapes only (not the recipe) so one step traces on CPU.
    cfg.model.update(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     head_dim=8, mlp_dim=64, dtype="float32")
    cfg.attn.impl = "dense"
    mcfg = trainer.model_config(cfg, cfg.stages[stages[-1]].rope)
    graphdef, params = nnx.split(model_lib.Llama(mcfg, rngs=nnx.Rngs(0)), nnx.Param)
    tx = optim.make_tx(cfg.opt)
    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.key_data(jax.random.key(0))}
    sched = optim.make_schedule(lr=cfg.opt.lr, warmup_steps=cfg.opt.warmup_steps,
                                total_steps=cfg.stages[stages[-1]].steps,
                                kind=cfg.opt.schedule, end_lr_frac=cfg.opt.end_lr_frac)
    b, t = cfg.data.batch_size, 32
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "weights" else jnp.int32)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    step = jax.jit(trainer.train_step, static_argnames=("graphdef", "tx", "schedule",
                                                        "grad_accum", "loss_chunk"))
    out_state, metrics = jax.eval_shape(
        lambda s, bt: step(s, bt, graphdef=graphdef, tx=tx, schedule=sched,
                           grad_accum=cfg.opt.grad_accum, loss_chunk=16), state, batch)
    assert metrics["train/loss"].shape == () and out_state["step"].dtype == jnp.int32


def test_paper_schedule_facts():
    c = load("1m", None)
    st = [c.stages[s] for s in sorted(c.stages.keys())]
    assert [s.seq_len for s in st] == [184320, 358400, 665600, 1048576]
    assert [s.steps * c.data.batch_size for s in st] == [2000, 1280, 600, 200]
    assert c.opt.lr == 6e-5 and c.model.vocab_size == 128256
    thetas = [rope_lib.make_rope(**s.rope.to_dict()).effective_theta(128) for s in st]
    assert all(a < b for a, b in zip(thetas, thetas[1:]))  # theta grows stage by stage


def test_parse_arg_errors():
    with pytest.raises(ValueError, match="unknown"):
        common.parse_arg("nope=1", variant="x")
    with pytest.raises(ValueError, match="variant"):
        load("ablation_180k", "h-h-x")
    assert common.parse_arg("docs=300", docs=500).docs == 300
