"""Model benchmark: lctx vs HF transformers training step, achieved FLOP/s, compiled memory.

Run (CPU, ~2-4 min on 2 cores):

    python3 bench/model_bench.py [--steps 5] [--batch 2] [--seq 512] [--mem_max 16384]
        [--threads=1]

Prints, measured side by side in one run:
  1. training-step time of the same small Llama in lctx (jitted JAX, AdamW) and in HF
     transformers (PyTorch eager, sdpa attention, AdamW), same batch, steps interleaved
     (lctx, HF, lctx, ...) so machine load hits both alike, and their ratio;
  2. achieved FLOP/s of each step (6 x matmul params + causal attention, the trainer's
     count) against this machine's measured fp32 matmul FLOP/s;
  3. compiled peak temporary memory of an lctx training step vs sequence length for dense vs
     blockwise attention (`compiled.memory_analysis()`, compile only: nothing big runs).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--threads=1" in sys.argv:  # read before JAX starts: XLA:CPU's thread pool is fixed then
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lctx import loss as loss_lib  # noqa: E402
from lctx.model import Llama, ModelConfig  # noqa: E402
from lctx.trainer import flops_per_token  # noqa: E402

GiB = 1 << 30


def bench_config(seq: int, **kw) -> ModelConfig:
    """A ~9M-parameter Llama (GQA 8/4 heads); big enough that matmuls dominate."""
    base = dict(vocab_size=8192, d_model=384, n_layers=4, n_heads=8, n_kv_heads=4,
                head_dim=48, mlp_dim=1024, max_seq_len=max(seq, 1024), block_q=512,
                block_k=512)
    base.update(kw)
    return ModelConfig(**base)


def make_lctx_step(cfg: ModelConfig, lr: float = 1e-4):
    """(jitted step, params, opt_state): AdamW on the mean next-token loss."""
    model = Llama(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(lr)

    def loss(params, batch):
        m = nnx.merge(graphdef, params)
        hidden_BTD = m(batch["tokens"], batch["positions"], batch["segment_ids"])
        return loss_lib.chunked_cross_entropy(hidden_BTD, m.unembedding(), batch["targets"],
                                              batch["loss_mask"], chunk=512)[0]

    def step(params, opt, batch):
        l, g = jax.value_and_grad(loss)(params, batch)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, l

    return jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params)


def make_batch(b: int, t: int, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
    return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
            "segment_ids": np.ones((b, t), np.int32), "loss_mask": np.ones((b, t), np.float32)}


def lctx_runner(cfg, batch):
    """A callable running one lctx step (after compiling it) -> loss."""
    step, params, opt = make_lctx_step(cfg)
    state = [params, opt]

    def run():
        state[0], state[1], loss = step(state[0], state[1], batch)
        return float(jax.block_until_ready(loss))
    run()  # compile + first step
    return run


def hf_runner(cfg, batch):
    """A callable running one HF transformers step (eager torch, sdpa, AdamW) -> loss."""
    import torch
    import transformers
    hcfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope.theta},
        attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hcfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.tensor(batch["tokens"], dtype=torch.long)
    y = torch.tensor(batch["targets"], dtype=torch.long)

    def run():
        logits = model(input_ids=x).logits  # targets are already shifted: plain CE
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    run()
    return run


def time_lctx(cfg, batch, steps):
    """(median step seconds, last loss) of the lctx step alone (bench/demo_attn_bench.py)."""
    run = lctx_runner(cfg, batch)
    t, loss, _ = time_side_by_side({"lctx": run}, steps)["lctx"]
    return t, loss


def time_side_by_side(runners: dict, steps: int) -> dict:
    """Median step seconds and last loss of each runner, steps interleaved (A B A B ...) so
    that load on a shared machine falls on both alike."""
    times = {name: [] for name in runners}
    loss = {}
    for _ in tqdm(range(steps), desc="steps (interleaved)", leave=False):
        for name, run in runners.items():
            t0 = time.perf_counter()
            loss[name] = run()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), loss[name], ts) for name, ts in times.items()}


def matmul_flops(n: int = 2048, reps: int = 10) -> tuple[float, float]:
    """Measured fp32 [n,n]@[n,n] FLOP/s in JAX and in PyTorch: min time of `reps`, the two
    interleaved, so load can only lower the ceiling's estimate, never inflate a fraction."""
    import torch
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    ta = torch.randn(n, n)
    ta @ ta
    jt, tt = [], []
    for _ in range(reps):
        jt.append(_timed(lambda: f(a).block_until_ready()))
        tt.append(_timed(lambda: ta @ ta))
    return 2 * n ** 3 / min(jt), 2 * n ** 3 / min(tt)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compiled_memory(cfg: ModelConfig, seq: int) -> tuple[float, float]:
    """(temp GiB, argument+output GiB) of a compiled batch-1 training step (not run)."""
    step, params, opt = make_lctx_step(cfg)
    shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
             for k, v in make_batch(1, seq, cfg.vocab_size).items()}
    compiled = step.lower(jax.tree.map(shape, params), jax.tree.map(shape, opt),
                          batch).compile()
    mem = compiled.memory_analysis()
    return (mem.temp_size_in_bytes / GiB,
            (mem.argument_size_in_bytes + mem.output_size_in_bytes) / GiB)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per framework")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--mem_max", type=int, default=16384, help="largest T for the memory table")
    ap.add_argument("--threads", type=int, default=0,
                    help="0: each framework's default; 1 (as --threads=1): both single-threaded, "
                    "fairer on a machine shared with other jobs (no spin-waiting thread teams)")
    args = ap.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args.seq)
    batch = make_batch(args.batch, args.seq, cfg.vocab_size)
    print(f"devices: {jax.devices()[0].platform} x{jax.device_count()}, "
          f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    print(f"model: {cfg.n_params() / 1e6:.1f}M params, L={cfg.n_layers} D={cfg.d_model} "
          f"N/K={cfg.n_heads}/{cfg.n_kv_heads} H={cfg.head_dim} F={cfg.mlp_dim} "
          f"V={cfg.vocab_size}; batch {args.batch} x T {args.seq}, fp32, AdamW")

    load0 = os.getloadavg()
    jax_mm, torch_mm = matmul_flops()
    peak = max(jax_mm, torch_mm)
    res = time_side_by_side({"lctx (JAX, jit)": lctx_runner(cfg, batch),
                             "HF transformers (torch)": hf_runner(cfg, batch)}, args.steps)
    jax_mm2, torch_mm2 = matmul_flops()  # again after: the ceiling is the best of both
    peak = max(peak, jax_mm2, torch_mm2)
    flops = flops_per_token(cfg, args.seq) * args.batch * args.seq
    print("\n== training step (median of %d, the two interleaved) ==" % args.steps)
    print(f"{'':24}{'step s':>10}{'tokens/s':>11}{'GFLOP/s':>10}{'of matmul peak':>16}"
          f"{'loss':>8}")
    for name, (t, l, _) in res.items():
        print(f"{name:24}{t:10.3f}{args.batch * args.seq / t:11.0f}{flops / t / 1e9:10.2f}"
              f"{flops / t / peak:16.1%}{l:8.3f}")
    (t_lctx, _, ts_l), (t_hf, _, ts_h) = res.values()
    ratios = sorted(a / b for a, b in zip(ts_l, ts_h))
    print(f"ratio lctx / HF step time: {t_lctx / t_hf:.2f} (median of per-pair ratios "
          f"{statistics.median(ratios):.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}; "
          f"{flops / 1e9:.2f} GFLOP per step, trainer's 6N + attention count)")
    print(f"measured fp32 {2048}^3 matmul (min of 10, before and after): JAX "
          f"{max(jax_mm, jax_mm2) / 1e9:.1f} GFLOP/s, torch {max(torch_mm, torch_mm2) / 1e9:.1f}"
          f" GFLOP/s (peak used: the larger); load average {load0[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores")

    print("\n== compiled training-step memory, batch 1 (compile only) ==")
    lengths = [t for t in (1024, 2048, 4096, 8192, 16384) if t <= args.mem_max]
    rows = []
    for t in tqdm(lengths, desc="compiling", leave=False):
        row = [t]
        for impl, scan in (("dense", True), ("blockwise", True), ("blockwise", False)):
            row += compiled_memory(dataclasses.replace(
                bench_config(t), attn_impl=impl, max_seq_len=t, scan_layers=scan), t)
        rows.append(row)
    # The unscanned column isolates the layer scan's share of the blockwise step's memory.
    print(f"{'T':>7}{'dense temp GiB':>16}{'blockwise temp GiB':>20}{'dense/blockwise':>17}"
          f"{'blockwise unscanned':>21}{'args+out GiB':>14}")
    for t, dt, _, bt, bio, ut, _ in rows:
        print(f"{t:7d}{dt:16.3f}{bt:20.3f}{dt / bt:16.1f}x{ut:21.3f}{bio:14.3f}")


if __name__ == "__main__":
    main()
