r"""Will it fit? Per-device memory and FLOPs of a training step, from abstract shapes only.

    python -m lctx.plan --preset=llama3-8b --seq=180K,350K,650K,1M --devices=8,16,32
    python -m lctx.plan --config=configs/1m.py --devices=32

Nothing is allocated: parameters and optimizer state come from `nnx.eval_shape` and the
mesh shardings (exact). Activations come from compiling the real `lctx.trainer.train_step`
with 2 and 3 scanned layers for the target mesh on simulated CPU devices (XLA
memory_analysis) and extrapolating linearly to L layers (estimate). Beside it, `resid` is
the analytic floor of remat='full': the bf16 residual stream saved at every layer input,
L x B x T/C x D x bytes(dtype). FLOPs per step are analytic: 6 x matmul params + causal
attention 6 x L x N x H x T per token (`lctx.trainer.flops_per_token`).

Why scanned probes: XLA CPU removes optimization barriers before it schedules (GPU only
after), so with unrolled layers it moves every layer's remat recompute into the forward
pass and keeps all of its intermediates; remat='full' then measures the same as 'none'
(53 x D x 2 bytes per token per layer on a small model, vs 2.9 scanned). Inside the layer
scan the recompute stays in the backward loop. The scanned CPU figure still stores the
saved bf16 residual as float32 (CPU upcast), so its per-layer part can be ~2x a GPU's.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import time
from typing import Any

GiB = 1024**3
PRESETS = {"llama3-8b": "LLAMA31_8B", "tiny": "TINY"}  # names in configs/common.py


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
    """One (sequence length, device count) plan row; bytes are per device."""
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
    tokens: int = 0  # tokens per device: B x T / (context x batch shards)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.opt + self.activations


def _load_config(spec: str):
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ValueError(f"--config={spec}: no file {path!r}.")
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    sys.path.insert(0, root)  # so `from configs import common` resolves
    mod_spec = importlib.util.spec_from_file_location("_plan_config", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def _preset_config(name: str, seq: int):
    from configs import common  # noqa: the presets live with the configs
    if name not in PRESETS:
        raise ValueError(f"--preset={name!r}; expected one of {sorted(PRESETS)}.")
    cfg = common.base_config()
    cfg.model.update(getattr(common, PRESETS[name]))
    cfg.model.update(max_seq_len=seq, dtype="bfloat16", param_dtype="float32", remat="full")
    cfg.attn.impl = "ring"
    cfg.mesh.update(data=1, fsdp=1, context=-1, tensor=1)
    cfg.data.batch_size, cfg.opt.grad_accum = 1, 1
    cfg.stages = {"plan": common.stage(seq_len=seq, steps=1, rope_cfg=common.rope(
        **common.LLAMA31_ROPE))}
    return cfg


def _bytes_per_device(tree, shardings) -> int:
    import jax
    import numpy as np
    return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def _abstract_state(mcfg, mesh, tx):
    """(graphdef, abstract train state with shardings, params bytes, opt bytes)."""
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
    from jax.sharding import NamedSharding

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
    out_shard = (shard, None)
    with sharding.use_mesh(mesh):
        compiled = jax.jit(step, out_shardings=out_shard, donate_argnums=0).lower(
            abs_state, batch).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def plan_cell(cfg, seq: int, devices: int, compile_layers: bool = True) -> Cell:
    """Per-device plan for `cfg` (a run config) at `seq` tokens on `devices` devices."""
    import jax

    from lctx import optim, sharding, trainer
    mesh_axes = {k: int(v) for k, v in cfg.mesh.items()}
    mesh = sharding.make_mesh(mesh_axes, devices=jax.devices()[:devices])
    stage = next(iter(cfg.stages.values()))
    mcfg = dataclasses.replace(trainer.model_config(cfg, stage.rope), max_seq_len=max(
        seq, cfg.model.max_seq_len))
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
    shards = mesh.shape.get("context", 1) * mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    tokens = seq * cfg.data.batch_size // shards
    resid = (mcfg.n_layers * tokens * mcfg.d_model * _itemsize(mcfg.dtype)
             if mcfg.remat == "full" else 0)
    flops = trainer.flops_per_token(mcfg, seq) * seq * cfg.data.batch_size
    return Cell(seq, devices, dict(mesh.shape), params, params, opt, acts, flops,
                time.time() - t0, compile_layers, per_layer, resid, tokens)


def _itemsize(dtype: str) -> int:
    """Bytes per element of a dtype name ('bfloat16' -> 2)."""
    import jax.numpy as jnp
    return int(jnp.dtype(dtype).itemsize)


def format_table(cells: list[Cell], hbm_gib: float = 80.0) -> str:
    """Plain-text table, GiB per device; `fits` against `hbm_gib`."""
    head = (f"{'seq':>8} {'dev':>4} {'mesh':<34} {'params':>7} {'grads':>7} {'adamw':>7} "
            f"{'acts*':>7} {'B/tok/L':>8} {'resid':>7} {'total':>7} {'fits':>5} "
            f"{'PFLOP/step':>10} {'TFLOP/dev':>9}")
    rows = [head, "-" * len(head)]
    for c in cells:
        mesh = ",".join(f"{k}={v}" for k, v in c.mesh.items())
        acts = f"{c.activations / GiB:7.2f}" if c.compiled else f"{'n/a':>7}"
        per_tok = (f"{c.act_layer / c.tokens:8.0f}" if c.compiled and c.tokens else
                   f"{'n/a':>8}")
        resid = f"{c.resid / GiB:7.2f}" if c.resid else f"{'n/a':>7}"
        fits = ("yes" if c.total < hbm_gib * GiB else "NO") if c.compiled else "?"
        rows.append(f"{c.seq:>8} {c.devices:>4} {mesh:<34} {c.params / GiB:7.2f} "
                    f"{c.grads / GiB:7.2f} {c.opt / GiB:7.2f} {acts} {per_tok} {resid} "
                    f"{c.total / GiB:7.2f} {fits:>5} "
                    f"{c.flops_step / 1e15:10.1f} {c.flops_step / c.devices / 1e12:9.1f}")
    rows.append("params/grads/adamw: exact from abstract shapes and shardings (fp32 master "
                "weights, 2 fp32 moments). acts*: ESTIMATE, CPU-compiled temp of a 2- and a "
                "3-layer scanned train step, extrapolated to all layers, minus the gradient "
                "buffer; B/tok/L: its bytes per token per extra layer (CPU keeps the saved "
                "bf16 residual as f32, so this part may be ~2x a GPU's). resid: ANALYTIC "
                "floor of remat=full, L x tokens/device x D x dtype bytes (not in total). "
                "FLOPs: ANALYTIC, 6 x matmul params + 6 x L x N x H x T per token.")
    return "\n".join(rows)


def main(argv=None) -> list[Cell]:
    """CLI entry; returns the computed cells (for tests)."""
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="configs/<name>.py[:arg]; every stage is planned")
    ap.add_argument("--preset", default="llama3-8b", help=f"one of {sorted(PRESETS)}")
    ap.add_argument("--seq", default="180K,350K,650K,1M", help="token counts, e.g. 180K,1M")
    ap.add_argument("--devices", default="8,16,32", help="device counts, e.g. 8,16,32")
    ap.add_argument("--analytic", action="store_true", help="skip compiles (no activations)")
    ap.add_argument("--hbm_gib", type=float, default=80.0, help="device memory, GiB (H100 80)")
    args = ap.parse_args(argv)
    counts = [int(d) for d in args.devices.split(",")]
    import jax
    if jax.device_count() < max(counts):
        raise ValueError(f"--devices={args.devices} needs {max(counts)} devices; this process "
                         f"has {jax.device_count()} (JAX was initialised before lctx.plan).")
    if args.config:
        cfg = _load_config(args.config)
        jobs = [(cfg, int(s.seq_len)) for s in cfg.stages.values()]
        if args.seq != ap.get_default("seq"):
            jobs = [(cfg, parse_tokens(s)) for s in args.seq.split(",")]
    else:
        jobs = [(_preset_config(args.preset, parse_tokens(s)), parse_tokens(s))
                for s in args.seq.split(",")]
    from tqdm import tqdm
    cells = []
    with tqdm(total=len(jobs) * len(counts), desc="plan", file=sys.stderr) as bar:
        for cfg, seq in jobs:
            for n in counts:
                bar.set_postfix(seq=seq, devices=n)
                cells.append(plan_cell(cfg, seq, n, compile_layers=not args.analytic))
                bar.write(format_table(cells[-1:], args.hbm_gib).splitlines()[2], file=sys.stderr)
                bar.update()
    print(format_table(cells, args.hbm_gib))
    return cells


def _simulate_devices(argv) -> None:
    """CPU runs: simulate the largest requested device count (before JAX starts)."""
    import argparse
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--devices", default="8,16,32")
    n = max(int(d) for d in ap.parse_known_args(argv)[0].devices.split(","))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}")


if __name__ == "__main__":
    _simulate_devices(sys.argv[1:])
    main()
