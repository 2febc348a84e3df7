"""Training beacon adapters on a frozen base: the trainer's loop with a windowed loss.

The loss of a [B, T] batch (T a multiple of the window W) scans over its T / W windows: each
window is one `BeaconModel.step` whose raw tokens' next-token loss is summed (answer-only for
conversation records, every token for plain text), the memory is the scan carry, so gradients
flow back through every earlier window's beacons (BPTT, as the reference: no detach). The
window body is rematerialised: the backward recomputes a window's activations, and what is
kept per window is its memory carry, bounded by the static capacity.

Each optimizer step trains one ratio, drawn in the step from `beacon.train_ratios` (weights
`beacon.ratio_weights`) with a key folded from (seed, step), so a resumed run draws the same
ratios; with adapter 'experts' the step's ratio picks its expert, so each expert only ever
sees its own ratio (Li et al.); 'shared' and 'clone' train one adapter on all of them. A
ratio fixes the number of beacons (a static shape), so the step is a `lax.switch` over one
branch per ratio: one compiled program, one branch run per step.

The trainer runs beacon stages as any other (`lctx.trainer`, `lctx.step`): a config with a
`beacon` section makes `lctx.step.build_stage` call `build_stage` here (a plug-in named in
`lctx.step.STAGE_PLUGINS`), whose state is {params: the adapter (`lora.AdapterParam`),
frozen: the base, opt, step, rng} and whose `Built` carries `restore` (the base comes from
`ckpt.resume_from`, an lctx run, or `ckpt.init_from`, HF weights; the adapter starts fresh)
and, with `beacon.data_mix`, `mixed_dataset` (sources mixed by weight). Rows are one
document each (data.pack=False).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx

from lctx import beacon as rules
from lctx import loss as loss_lib
from lctx import lora


def beacon_config(section) -> rules.BeaconConfig:
    """`BeaconConfig` from a run config's `beacon` section (unknown fields are ignored)."""
    names = {f for f in rules.BeaconConfig.__dataclass_fields__}
    kw = {k: section[k] for k in section.keys() if k in names}
    for k in ("ratios", "targets"):
        if k in kw and isinstance(kw[k], str):
            kw[k] = tuple(x.strip() for x in kw[k].split(",") if x.strip())
    if "ratios" in kw:
        kw["ratios"] = tuple(int(r) for r in kw["ratios"])
    return rules.BeaconConfig(**kw)


def window_loss_sums(model, batch: dict, *, ratio: int, expert, chunk: int = 1024,
                     remat: bool = True):
    """(loss sum, loss tokens) of a batch read window by window through the beacons."""
    inputs_BT = batch["inputs"]
    b, t = inputs_BT.shape
    w = model.bcfg.window
    if t % w:
        raise rules.BeaconError(f"training length {t} is not a multiple of beacon.window={w}; "
                                "set the stage seq_len to n * window.")
    n = t // w
    cap = n * rules.beacons_per_window(w, ratio)
    windows = lambda x: jnp.moveaxis(x.reshape(b, n, w), 1, 0)  # noqa: E731
    unembed = model.base.unembedding()

    def body(mem, xs):
        tok_BW, tgt_BW, wt_BW = xs
        hidden_BWD, mem = model.step(tok_BW, mem, ratio=ratio, expert=expert)
        return mem, loss_lib.chunked_cross_entropy_sum(hidden_BWD, unembed, tgt_BW, wt_BW,
                                                       chunk=min(chunk, w))

    if remat:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    _, sums = jax.lax.scan(body, model.init_memory(b, cap), (
        windows(inputs_BT), windows(batch["targets"]), windows(batch["weights"])))
    return sums.sum(), batch["weights"].sum()


def micro_loss(params, graphdef, batch, loss_chunk, frozen, *, ratio: int, expert: int,
               remat: bool = True):
    """`lctx.trainer.train_step`'s micro-batch loss for beacon training (adapter params)."""
    model = nnx.merge(graphdef, params, frozen)
    return window_loss_sums(model, batch, ratio=ratio, expert=expert, chunk=loss_chunk,
                            remat=remat)[0]


def ratio_index(seed: int, step, weights):
    """Index of the ratio trained at `step` (traced), drawn from `weights` with a key folded
    from (seed, step): the same every time a step runs, so resumes draw the same ratios."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    p = jnp.asarray(weights, jnp.float32)
    return jax.random.choice(key, p.shape[0], p=p / p.sum())


def split_model(model):
    """(graphdef, adapter state, frozen base state) of a `BeaconModel`."""
    return nnx.split(model, lora.AdapterParam, ...)


def load_base_params(path: str, abstract_params):
    """Parameters of an lctx run's latest checkpoint (`<workdir>`, `ckpt/<stage>` or a step
    directory) restored into `abstract_params` (the base model's state); the optimizer
    state is never read."""
    import orbax.checkpoint as ocp

    from lctx import checkpoint as ckpt_lib
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, "state")):
        if os.path.isdir(os.path.join(path, "ckpt")):
            root = os.path.join(path, "ckpt")
            found = ckpt_lib.find_resume(root, sorted(os.listdir(root)))
            if found is None:
                raise FileNotFoundError(f"{path}: no checkpoint under {root}")
            path = found.directory
        mgr = ckpt_lib.StageCheckpoints(os.path.dirname(path), os.path.basename(path),
                                        async_save=False)
        step = mgr.latest_step()
        mgr.close()
        if step is None:
            raise FileNotFoundError(f"ckpt.resume_from={path!r} has no checkpoint; point it at "
                                    "the base run's workdir or <workdir>/ckpt/<stage>")
        path = os.path.join(path, str(step))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)
    out = ocp.PyTreeCheckpointer().restore(
        os.path.join(path, "state"), args=ocp.args.PyTreeRestore(
            item={"params": target}, partial_restore=True,
            restore_args={"params": ocp.checkpoint_utils.construct_restore_args(target)}))
    return out["params"]


# ---- the trainer's stage: build, state, step, restore, data --------------------------------

def _settings(run, stage):
    """(BeaconConfig, train ratios, weights) of a run, checked; ConfigError names the field."""
    from lctx.run import ConfigError
    cfg = run.cfg
    try:
        bcfg = beacon_config(cfg.beacon)
        ratios = [int(r) for r in str(cfg.beacon.train_ratios).split(",") if r.strip()]
        weights = [float(x) for x in str(cfg.beacon.get("ratio_weights", "")).split(",")
                   if x.strip()] or [1.0] * len(ratios)
        for r in ratios:
            bcfg.expert(r)
    except (rules.BeaconError, ValueError) as e:
        raise ConfigError(f"beacon section: {e}") from e
    problems = [
        (not ratios, "beacon.train_ratios is empty; give ratios from beacon.ratios"),
        (len(weights) != len(ratios), f"beacon.ratio_weights has {len(weights)} entries for "
                                      f"{len(ratios)} train_ratios"),
        (stage.seq_len % bcfg.window, f"stages.{stage.name}.seq_len={stage.seq_len} is not a "
                                      f"multiple of beacon.window={bcfg.window}"),
        (cfg.data.pack, "data.pack=True: beacon rows are one document each (the memory "
                        "would cross documents); set data.pack=False"),
        (stage.export_hf, f"stages.{stage.name}.export_hf: a beacon stage's base is unchanged "
                          "(export it from its own run) and its adapter lives in the "
                          "checkpoint; set export_hf=False"),
        (cfg.eval.every_steps, "eval.every_steps > 0: a beacon stage has no held-out loss here; "
                               "evaluate with --runner=beacon (RULER/LongBench); set it to 0"),
    ]
    for bad, why in problems:
        if bad:
            raise ConfigError(why)
    return bcfg, ratios, weights


def _eos(run) -> int:
    from lctx.tokenizer import load_tokenizer
    tok = load_tokenizer(run.tokenizer)
    return tok.eot_id if tok.eot_id is not None else min(tok.eos_ids)


def fresh_state(mcfg, bcfg, eos: int, tx, seed: int) -> dict:
    """A from-scratch beacon state (traced under jit/eval_shape)."""
    from lctx.beacon_model import BeaconModel
    from lctx.model import Llama
    model = BeaconModel(Llama(mcfg, rngs=nnx.Rngs(seed)), bcfg, eos_id=eos,
                        rngs=nnx.Rngs(seed + 1))
    _, params, frozen = split_model(model)
    return {"params": params, "frozen": frozen, "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed))}


def beacon_step(state, batch, *, graphdef, tx, schedule, grad_accum, loss_chunk, ratios,
                experts, weights, seed, remat):
    """`lctx.step.train_step` at the step's ratio: a `lax.switch` over one branch per ratio."""
    from lctx import step as step_lib
    branches = [functools.partial(
        step_lib.train_step, graphdef=graphdef, tx=tx, schedule=schedule,
        grad_accum=grad_accum, loss_chunk=loss_chunk,
        micro_loss=functools.partial(micro_loss, ratio=r, expert=e, remat=remat))
        for r, e in zip(ratios, experts)]
    idx = ratio_index(seed, state["step"], weights)
    new, metrics = jax.lax.switch(idx, branches, state, batch)
    return new, dict(metrics, **{"beacon/ratio": jnp.asarray(ratios, jnp.float32)[idx]})


def build_stage(run, stage, mesh):
    """`lctx.step.build_stage` for a beacon stage: abstract state, shardings, jitted step."""
    from lctx import optim
    from lctx import sharding
    from lctx import step as step_lib
    from lctx.beacon_model import BeaconModel
    from lctx.model import Llama
    cfg = run.cfg
    bcfg, ratios, weights = _settings(run, stage)
    tx = optim.make_tx(cfg.opt)
    schedule = optim.make_schedule(lr=stage.lr, warmup_steps=stage.warmup_steps,
                                   total_steps=stage.steps, kind=cfg.opt.schedule,
                                   end_lr_frac=cfg.opt.end_lr_frac)
    eos = _eos(run)
    graphdef, _, _ = split_model(nnx.eval_shape(lambda: BeaconModel(
        Llama(stage.model, rngs=nnx.Rngs(0)), bcfg, eos_id=eos, rngs=nnx.Rngs(1))))
    shapes = jax.eval_shape(functools.partial(fresh_state, stage.model, bcfg, eos, tx,
                                              cfg.seed))
    frozen_sh = sharding.param_shardings(shapes["frozen"], mesh, run.rules)
    param_sh = sharding.param_shardings(shapes["params"], mesh, run.rules)
    rest = {k: v for k, v in shapes.items() if k != "frozen"}
    shard = dict(sharding.train_state_shardings(rest, mesh, param_sh), frozen=frozen_sh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, shard)
    bs = step_lib.batch_sharding(mesh)
    step = functools.partial(
        beacon_step, graphdef=graphdef, tx=tx, schedule=schedule,
        grad_accum=cfg.opt.grad_accum, loss_chunk=cfg.opt.loss_chunk, ratios=tuple(ratios),
        experts=tuple(bcfg.expert(r) for r in ratios), weights=tuple(weights), seed=cfg.seed,
        remat=bool(cfg.beacon.get("remat", True)))
    step_fn = jax.jit(step, in_shardings=(shard, bs), out_shardings=(shard, None),
                      donate_argnums=(0,))
    mixed = bool(str(cfg.beacon.get("data_mix", "")).strip())
    return step_lib.Built(stage, mesh, graphdef, tx, abstract, step_fn, bs, restore=restore,
                          dataset=mixed_dataset if mixed else None)


def restore(run, built, data_iter, found):
    """A beacon stage's starting state: its own checkpoint > the previous (beacon) stage >
    a fresh adapter on the base of ckpt.resume_from (an lctx run) or ckpt.init_from (HF) or
    a random base (scratch). Returns (state, where it came from)."""
    stage, cfg = built.stage, run.cfg
    sh = built.shardings
    if found is not None and found.stage == stage.name:
        with run.checkpoints(stage.name, async_save=False) as mgr:
            state, _ = mgr.restore(found.step, built.abstract, data_iter)
        return state, f"its own checkpoint, step {found.step}"
    prev = run.previous(stage)
    bcfg, _, _ = _settings(run, stage)
    fresh = jax.jit(functools.partial(fresh_state, stage.model, bcfg, _eos(run), built.tx,
                                      cfg.seed), out_shardings=sh)()
    if prev is not None:
        with run.checkpoints(prev.name, async_save=False) as mgr:
            step = mgr.latest_step()
            st, _ = mgr.restore(step, built.abstract)
        opt = st["opt"] if stage.carry_opt_state else fresh["opt"]
        return dict(fresh, params=st["params"], frozen=st["frozen"], opt=opt), (
            f"{prev.name} step {step}")
    if cfg.ckpt.resume_from:
        base, where = load_base_params(cfg.ckpt.resume_from, built.abstract["frozen"]["base"]), \
            f"base of ckpt.resume_from={cfg.ckpt.resume_from}"
    elif cfg.ckpt.init_from:
        from lctx import hf
        fields = {f: getattr(stage.model, f) for f in stage.model.__dataclass_fields__
                  if f != "dtype"}
        _, model = hf.load_hf(cfg.ckpt.init_from, shardings=sh["frozen"]["base"], **fields)
        base, where = nnx.state(model, nnx.Param), f"HF base ckpt.init_from={cfg.ckpt.init_from}"
    else:
        return fresh, f"scratch (seed {cfg.seed}; random base)"
    base = jax.device_put(base, sh["frozen"]["base"])
    frozen = fresh["frozen"]
    frozen["base"] = base
    params = fresh["params"]
    emb = params["beacon_embed"]  # the reference initialises it from the base's eos row
    emb[...] = jnp.broadcast_to(base["embed"][...][_eos(run)], emb[...].shape).astype(
        emb[...].dtype)
    return dict(fresh, params=params, frozen=frozen), where + "; fresh adapter"


def mixed_dataset(run, stage, mesh, *, seed=None, stats=None, epochs=None):
    """Batches of `beacon.data_mix` ('glob=weight;glob=weight'): one pipeline per source
    (`lctx.trainer.stage_dataset`), batch i drawn from source j in proportion to weights."""
    import grain

    from lctx import data as data_lib
    from lctx import trainer
    from lctx.run import ConfigError
    parts = [p.rsplit("=", 1) for p in str(run.cfg.beacon.data_mix).split(";") if p.strip()]
    try:
        sources = [(data_lib.resolve_paths(g), float(w)) for g, w in parts]
    except (ValueError, data_lib.DataError) as e:
        raise ConfigError(f"beacon.data_mix={run.cfg.beacon.data_mix!r}: {e}; use "
                          "'glob=weight;glob=weight'") from e
    if not sources or min(w for _, w in sources) <= 0:
        raise ConfigError(f"beacon.data_mix={run.cfg.beacon.data_mix!r}: weights must be > 0")
    base = run.cfg.data.seed if seed is None else seed
    dsets = [trainer.stage_dataset(run, stage, mesh, paths=ps, seed=base + i, stats=stats,
                                   epochs=epochs) for i, (ps, _) in enumerate(sources)]
    total = sum(w for _, w in sources)
    return grain.IterDataset.mix(dsets, [w / total for _, w in sources])
