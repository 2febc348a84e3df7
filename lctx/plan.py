r"""Will it fit, and how long will it take? Per-device memory, FLOPs and projected step time
of a run config's training steps, from abstract shapes only.

    python3 -m lctx.plan --config=configs/1m.py --devices=8,16,32
    python3 -m lctx.plan --config=configs/1m.py:rope=llama3 --config.data.batch_size=16 \
        --seq=1M --devices=32 --analytic

The config is loaded as `lctx.train` loads it (`--config.x=y` overrides, locked). Every
stage is planned at its own length and RoPE (or at each `--seq`), on each device count.

Nothing is allocated: parameters and optimizer state come from `nnx.eval_shape` and the
mesh shardings (exact). Activations come from compiling the real `lctx.trainer.train_step`
with 2 and 3 scanned layers for the target mesh on simulated CPU devices (XLA
memory_analysis) and extrapolating linearly to L layers (estimate). Beside it, `resid` is
the analytic floor of remat='full': the bf16 residual stream saved at every layer input for
one micro-batch, L x (B / grad_accum) x T / shards x D x bytes(dtype). FLOPs per step are
analytic: 6 x matmul params + causal attention 6 x L x N x H x T per token
(`lctx.trainer.flops_per_token`). Step time is a PROJECTION (`lctx.perf`) from the
throughput table in the config's `perf` section (H200 numbers measured in issue 17).

Why scanned probes: XLA CPU removes optimization barriers before it schedules (GPU only
after), so with unrolled layers it moves every layer's remat recompute into the forward
pass and keeps all of its intermediates; remat='full' then measures the same as 'none'
(53 x D x 2 bytes per token per layer on a small model, vs 2.9 scanned). Inside the layer
scan the recompute stays in the backward loop. The scanned CPU figure still stores the
saved bf16 residual as float32 (CPU upcast), so its per-layer part can be ~2x a GPU's.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from lctx import perf
from lctx.sharding import CONTEXT, DATA, FSDP

GiB = 1024**3


def parse_tokens(s: str) -> int:
    """'180K' -> 184320, '1M' -> 1048576, '4096' -> 4096 (binary K/M, as context lengths)."""
    s = s.strip().upper()
    mult = {"K": 1024, "M": 1024**2}.get(s[-1:], 1)
    try:
        return int(float(s[:-1] if mult > 1 else s) * mult)
    except ValueError:
        raise ValueError(f"--seq entry {s!r} is not a token count like 4096, 180K or 1M.") from None


@dataclasses.dataclass
class Cell:
    """One (stage, sequence length, device count) plan row; bytes are per device."""
    stage: str
    seq: int
    devices: int
    mesh: dict
    params: int
    grads: int
    opt: int
    activations: int
    flops_step: float
    compile_s: float
    compiled: bool = True  # False: activations not measured (--analytic)
    act_layer: int = 0  # measured activation bytes per extra layer (compiled probes)
    resid: int = 0  # ANALYTIC saved residual stream of remat='full', all layers; 0 otherwise
    tokens: int = 0  # tokens per device per micro-batch: (B / grad_accum) x T / shards
    steps: int = 0  # optimizer steps of the stage
    step: perf.StepTime | None = None  # PROJECTED time per optimizer step

    @property
    def total(self) -> int:
        return self.params + self.grads + self.opt + self.activations

    @property
    def stage_hours(self) -> float:
        return self.steps * self.step.seconds / 3600 if self.step else float("nan")


def _bytes_per_device(tree, shardings) -> int:
    import jax
    import numpy as np
    return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def _abstract_state(mcfg, mesh, tx):
    """(graphdef, abstract train state, shardings, params bytes, opt bytes)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from lctx import model as model_lib
    from lctx import sharding
    graphdef, abs_params = nnx.split(
        nnx.eval_shape(lambda: model_lib.Llama(mcfg, rngs=nnx.Rngs(0))), nnx.Param)
    p_shard = sharding.param_shardings(abs_params, mesh)
    abs_opt = jax.eval_shape(tx.init, abs_params)
    # Moments mirror their parameter (as `sharding.shard_train_state` places them).
    by_shape = {x.shape: s for x, s in zip(jax.tree.leaves(abs_params), jax.tree.leaves(p_shard))}
    rep = NamedSharding(mesh, P())
    o_shard = jax.tree.map(lambda x: by_shape.get(x.shape, rep) if x.ndim else rep, abs_opt)
    state = {"params": abs_params, "opt": abs_opt,
             "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    shard = {"params": p_shard, "opt": o_shard, "step": rep, "rng": rep}
    return (graphdef, state, shard, _bytes_per_device(abs_params, p_shard),
            _bytes_per_device(abs_opt, o_shard))


def _compiled_temp(cfg, mcfg, mesh, seq: int) -> int:
    """Temp bytes per device of the compiled train step (activations, grads, buffers)."""
    import functools

    import jax
    import jax.numpy as jnp

    from lctx import optim, sharding, trainer
    tx = optim.make_tx(cfg.opt)
    graphdef, state, shard, _, _ = _abstract_state(mcfg, mesh, tx)
    sched = optim.make_schedule(lr=cfg.opt.lr, warmup_steps=1, total_steps=2, kind="constant",
                                end_lr_frac=1.0)
    b = cfg.data.batch_size
    bs = trainer.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((b, seq), dt, sharding=bs) for k, dt in
             (("inputs", jnp.int32), ("positions", jnp.int32), ("segment_ids", jnp.int32),
              ("targets", jnp.int32), ("weights", jnp.float32))}
    abs_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             state, shard)
    step = functools.partial(trainer.train_step, graphdef=graphdef, tx=tx, schedule=sched,
                             grad_accum=cfg.opt.grad_accum, loss_chunk=cfg.opt.loss_chunk)
    with sharding.use_mesh(mesh):
        compiled = jax.jit(step, out_shardings=(shard, None), donate_argnums=0).lower(
            abs_state, batch).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def plan_cell(cfg, stage: str, seq: int, devices: int, compile_layers: bool = True) -> Cell:
    """Per-device plan for stage `stage` of `cfg` (a run config) at `seq` tokens."""
    import jax

    from lctx import attention, optim, sharding, trainer
    mesh = sharding.make_mesh({k: int(cfg.mesh[k]) for k in sharding.MESH_AXES},
                              devices=jax.devices()[:devices])
    scfg = cfg.stages[stage]
    a = cfg.attn  # checked as lctx.validate checks a stage (the data's layout included)
    attention.validate(a.impl, a.get("kernel", "xla"), a.block_q, a.block_k, seq_len=seq,
                       context=mesh.shape.get(CONTEXT, 1), layout=a.get("ring_layout", "zigzag"),
                       seq_field=(f"stages.{stage}.seq_len" if seq == int(scfg.seq_len) else
                                  "--seq"))
    mcfg = dataclasses.replace(trainer.model_config(cfg, scfg.rope),
                               max_seq_len=max(seq, cfg.model.max_seq_len))
    _, _, _, params, opt = _abstract_state(mcfg, mesh, optim.make_tx(cfg.opt))
    t0 = time.time()
    acts = per_layer = 0
    if compile_layers:
        # Two small compiles give base + per-layer temp; L layers are extrapolated. Scanned
        # (see the module docstring); XLA inlines a 1-step scan, so probe 2 and 3 layers.
        t2, t3 = (_compiled_temp(cfg, dataclasses.replace(mcfg, n_layers=n, scan_layers=True),
                                 mesh, seq) for n in (2, 3))
        per_layer = max(t3 - t2, 0)
        temp = t2 + (mcfg.n_layers - 2) * per_layer
        acts = max(temp - params, 0)  # the step's fp32 gradient accumulator is in temp
    shards = mesh.shape.get(CONTEXT, 1) * mesh.shape.get(DATA, 1) * mesh.shape.get(FSDP, 1)
    # The train step scans over grad_accum micro-batches: one micro-batch is live at a time.
    micro_rows = cfg.data.batch_size // cfg.opt.grad_accum
    tokens = seq * micro_rows // shards
    resid = (mcfg.n_layers * tokens * mcfg.d_model * _itemsize(mcfg.dtype)
             if mcfg.remat == "full" else 0)
    flops = trainer.flops_per_token(mcfg, seq) * seq * cfg.data.batch_size
    return Cell(stage, seq, devices, dict(mesh.shape), params, params, opt, acts, flops,
                time.time() - t0, compile_layers, per_layer, resid, tokens, int(scfg.steps),
                perf.step_time(cfg, mcfg, seq, devices))


def _itemsize(dtype: str) -> int:
    """Bytes per element of a dtype name ('bfloat16' -> 2)."""
    import jax.numpy as jnp
    return int(jnp.dtype(dtype).itemsize)


def format_table(cells: list[Cell], hbm_gib: float = 80.0) -> str:
    """Plain-text table, GiB per device; `fits` against `hbm_gib`."""
    head = (f"{'stage':<9} {'seq':>8} {'dev':>4} {'mesh':<30} {'params':>7} {'grads':>7} "
            f"{'adamw':>7} {'acts*':>7} {'B/tok/L':>8} {'resid':>7} {'total':>7} {'fits':>5} "
            f"{'PFLOP/step':>10} {'step s':>8} {'stage h':>8}")
    rows = [head, "-" * len(head)]
    for c in cells:
        mesh = ",".join(f"{k}={v}" for k, v in c.mesh.items())
        acts = f"{c.activations / GiB:7.2f}" if c.compiled else f"{'n/a':>7}"
        per_tok = (f"{c.act_layer / c.tokens:8.0f}" if c.compiled and c.tokens else
                   f"{'n/a':>8}")
        resid = f"{c.resid / GiB:7.2f}" if c.resid else f"{'n/a':>7}"
        fits = ("yes" if c.total < hbm_gib * GiB else "NO") if c.compiled else "?"
        step = f"{c.step.seconds:8.1f}" if c.step else f"{'n/a':>8}"
        rows.append(f"{c.stage:<9} {c.seq:>8} {c.devices:>4} {mesh:<30} {c.params / GiB:7.2f} "
                    f"{c.grads / GiB:7.2f} {c.opt / GiB:7.2f} {acts} {per_tok} {resid} "
                    f"{c.total / GiB:7.2f} {fits:>5} {c.flops_step / 1e15:10.1f} {step} "
                    f"{c.stage_hours:8.1f}")
    rows.append("params/grads/adamw: EXACT from abstract shapes and shardings (fp32 master "
                "weights, 2 fp32 moments). acts*: ESTIMATE, CPU-compiled temp of a 2- and a "
                "3-layer scanned train step, extrapolated to all layers, minus the gradient "
                "buffer; B/tok/L: its bytes per token per extra layer (CPU keeps the saved "
                "bf16 residual as f32, so this part may be ~2x a GPU's). resid: ANALYTIC "
                "floor of remat=full for one micro-batch, L x tokens/device x D x dtype bytes "
                "(not in total). FLOPs: ANALYTIC, 6 x matmul params + 6 x L x N x H x T per "
                "token. step s / stage h: PROJECTION (see below).")
    return "\n".join(rows)


def budget(cells: list[Cell]) -> str:
    """The paper schedule's projected cost: GPU-hours per stage (the same on any device
    count in this model) and wall hours with every stage on the most planned devices."""
    most = max(c.devices for c in cells)
    parts, gpu_h, wall_h = [], 0.0, 0.0
    for stage in dict.fromkeys(c.stage for c in cells):
        c = next((c for c in cells if c.stage == stage and c.devices == most and c.step), None)
        if c is None:
            parts.append(f"{stage} n/a")
            continue
        gpu_h += c.stage_hours * c.devices
        wall_h += c.stage_hours
        parts.append(f"{stage} {c.stage_hours * c.devices:,.0f} GPU-h")
    return (f"budget (PROJECTION): {'; '.join(parts)}; total {gpu_h:,.0f} GPU-h = {wall_h:.1f} h "
            f"on {most} devices. He et al. (8-32 H100s): 30 h through 650K, +52.5 h for 1M "
            "(82.5 h).")


def main(argv=None) -> list[Cell]:
    """CLI entry (argv without the program name); returns the computed cells (for tests)."""
    from absl import flags

    from lctx import config_cli

    def more(fv):
        flags.DEFINE_string("seq", "", "token counts, e.g. 180K,1M (default: each stage's "
                            "seq_len)", flag_values=fv)
        flags.DEFINE_string("devices", "8,16,32", "device counts, e.g. 8,16,32",
                            flag_values=fv)
        flags.DEFINE_bool("analytic", False, "skip compiles (no activations)", flag_values=fv)
        flags.DEFINE_float("hbm_gib", 80.0, "device memory, GiB (H100 80)", flag_values=fv)

    cfg, fv = config_cli.parse(sys.argv[1:] if argv is None else argv, more)
    counts = [int(d) for d in fv.devices.split(",")]
    import jax
    if jax.device_count() < max(counts):
        raise ValueError(f"--devices={fv.devices} needs {max(counts)} devices; this process "
                         f"has {jax.device_count()} (JAX was initialised before lctx.plan).")
    stages = sorted(cfg.stages.keys())
    jobs = [(s, int(cfg.stages[s].seq_len)) for s in stages]
    if fv.seq:
        jobs = [(stages[-1], parse_tokens(s)) for s in fv.seq.split(",")]
    from tqdm import tqdm
    cells = []
    with tqdm(total=len(jobs) * len(counts), desc="plan", file=sys.stderr) as bar:
        for stage, seq in jobs:
            for n in counts:
                bar.set_postfix(stage=stage, seq=seq, devices=n)
                cells.append(plan_cell(cfg, stage, seq, n, compile_layers=not fv.analytic))
                bar.write(format_table(cells[-1:], fv.hbm_gib).splitlines()[2], file=sys.stderr)
                bar.update()
    print(format_table(cells, fv.hbm_gib))
    print(perf.describe(cfg))
    print(budget(cells))
    return cells


def _simulate_devices(argv) -> None:
    """CPU runs: simulate the largest requested device count (before JAX starts)."""
    n = 32
    for a in argv:
        if a.startswith("--devices="):
            n = max(int(d) for d in a.split("=", 1)[1].split(","))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}")


if __name__ == "__main__":
    _simulate_devices(sys.argv[1:])
    try:
        main()
    except ValueError as e:  # a user's mistake: say it without a traceback
        sys.exit(f"lctx.plan: {e}")
