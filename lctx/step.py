"""The pure train step and a stage built abstractly around it (shapes, shardings, jit).

`train_step(state, batch) -> (state, metrics)` is a module-level pure function; `build_stage`
wraps it for one stage: the optimizer and schedule, the state as ShapeDtypeStructs carrying
their shardings (no array is made), and the step jitted with those shardings and the state
donated. The trainer compiles and runs it; validation traces it abstractly; the planner
compiles it for memory.

State: {params (fp32 master weights, an NNX Param state), opt (optax), step (this stage's
optimizer steps), rng}. Batch: `lctx.data.KEYS`, each [B, T].
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lctx import data as data_lib
from lctx import loss as loss_lib
from lctx import model as model_lib
from lctx import optim
from lctx import run as run_lib
from lctx import sharding


def batch_sharding(mesh) -> NamedSharding:
    """Rows over the data-parallel axes, T over the context axis (zigzag-ordered by data)."""
    rows = tuple(a for a in (sharding.DATA, sharding.FSDP) if a in mesh.shape)
    return NamedSharding(mesh, P(rows, sharding.CONTEXT if sharding.CONTEXT in mesh.shape
                                 else None))


def flops_per_token(mcfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params + causal attention 6 x L x N x H x T."""
    emb = mcfg.vocab_size * mcfg.d_model  # the embedding lookup is a gather, not a matmul
    dense = 6.0 * (mcfg.n_params() - emb)
    return dense + 6.0 * mcfg.n_layers * mcfg.n_heads * mcfg.head_dim * seq_len


def _micro_loss(params, graphdef, batch, loss_chunk, frozen=None):
    """Sum over answer tokens of the next-token cross-entropy (never builds [T, V] logits).
    `frozen`: the untrained part of the model state (state["frozen"]), if the run has one."""
    model = nnx.merge(graphdef, params, *(() if frozen is None else (frozen,)))
    hidden_BTD = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    return loss_lib.chunked_cross_entropy_sum(hidden_BTD, model.unembedding(), batch["targets"],
                                              batch["weights"], chunk=loss_chunk)


def train_step(state: dict, batch: dict, *, graphdef: Any, tx: optax.GradientTransformation,
               schedule: optim.Schedule, grad_accum: int, loss_chunk: int,
               micro_loss=None) -> tuple[dict, dict]:
    """One optimizer step over a global batch, split into `grad_accum` micro-batches.

    The loss is the sum of answer-token cross-entropies divided by the global number of
    answer tokens in the whole batch, so micro-batching and sharding do not change it.
    `micro_loss(params, graphdef, batch, loss_chunk, frozen)` replaces the LM loss (beacon
    runs, `lctx.beacon_train`); a `state["frozen"]` entry is passed to it and kept as is.
    """
    def split(x):
        return x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

    micro = jax.tree.map(split, batch)
    grad_fn = jax.value_and_grad(micro_loss or _micro_loss)

    def body(carry, mb):
        g_acc, l_acc = carry
        l_sum, g = grad_fn(state["params"], graphdef, mb, loss_chunk, state.get("frozen"))
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + l_sum), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    (g_sum, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), micro)
    n_tok = jnp.maximum(batch["weights"].sum(), 1.0)
    grads = jax.tree.map(lambda g: g / n_tok, g_sum)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    lr = schedule(state["step"])
    params = jax.tree.map(lambda p, u: p - lr * u.astype(p.dtype), state["params"], updates)
    metrics = {"train/loss": loss_sum / n_tok, "train/grad_norm": optax.global_norm(grads),
               "train/lr": lr, "train/loss_tokens": batch["weights"].sum(),
               "train/param_norm": optax.global_norm(params)}
    new = {"params": params, "opt": opt, "step": state["step"] + 1,
           "rng": jax.random.fold_in(state["rng"], state["step"])}
    if "frozen" in state:
        new["frozen"] = state["frozen"]
    return new, metrics


def eval_step(params, batch, *, graphdef, loss_chunk):
    l_sum = _micro_loss(params, graphdef, batch, loss_chunk)
    return {"eval/loss_sum": l_sum, "eval/loss_tokens": batch["weights"].sum()}


def fresh_state(mcfg, tx, seed: int) -> dict:
    """A from-scratch state (traced under `jit`/`eval_shape`, never run eagerly)."""
    params = nnx.state(model_lib.Llama(mcfg, rngs=nnx.Rngs(seed)), nnx.Param)
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed))}


@dataclasses.dataclass
class Built:
    """A stage ready to run: its abstract state (with shardings) and jitted functions."""
    stage: run_lib.Stage
    mesh: Any
    graphdef: Any
    tx: optax.GradientTransformation
    abstract: dict  # ShapeDtypeStructs with their shardings
    step_fn: Any  # jitted train_step (state donated)
    batch_sharding: NamedSharding
    # A plug-in stage's own state sources and batches (lctx.trainer.restore / stage_dataset
    # signatures); None: the trainer's.
    restore: Any = None
    dataset: Any = None

    @property
    def shardings(self) -> dict:
        return jax.tree.map(lambda x: x.sharding, self.abstract)


# Config sections whose stages a plug-in builds (`build_stage(run, stage, mesh) -> Built`),
# imported by name when a config has the section, so lctx.step does not import them.
STAGE_PLUGINS = {"beacon": "lctx.beacon_train"}


def build_stage(run: run_lib.Run, stage: run_lib.Stage, mesh) -> Built:
    """Optimizer, schedule, abstract state and the jitted step of a stage; computes nothing."""
    cfg = run.cfg
    for section, module in STAGE_PLUGINS.items():  # e.g. a frozen base + beacon adapters
        if section in cfg:
            return importlib.import_module(module).build_stage(run, stage, mesh)
    tx = optim.make_tx(cfg.opt)
    schedule = optim.make_schedule(lr=stage.lr, warmup_steps=stage.warmup_steps,
                                   total_steps=stage.steps, kind=cfg.opt.schedule,
                                   end_lr_frac=cfg.opt.end_lr_frac)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_lib.Llama(stage.model,
                                                                   rngs=nnx.Rngs(0))), nnx.Param)
    shapes = jax.eval_shape(functools.partial(fresh_state, stage.model, tx, cfg.seed))
    param_sh = sharding.param_shardings(shapes["params"], mesh, run.rules)
    shard = sharding.train_state_shardings(shapes, mesh, param_sh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, shard)
    bs = batch_sharding(mesh)
    step = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                             grad_accum=cfg.opt.grad_accum, loss_chunk=cfg.opt.loss_chunk)
    step_fn = jax.jit(step, in_shardings=(shard, bs), out_shardings=(shard, None),
                      donate_argnums=(0,))
    return Built(stage, mesh, graphdef, tx, abstract, step_fn, bs)


def abstract_batch(built: Built, batch_size: int) -> dict:
    t = built.stage.seq_len
    return {k: jax.ShapeDtypeStruct((batch_size, t), jnp.float32 if k == "weights" else
                                    jnp.int32, sharding=built.batch_sharding)
            for k in data_lib.KEYS}
