"""Beacon benchmark: compressed (beacon) prefill vs full-attention prefill as inputs grow.

Run (CPU; ~3 min on 2 idle cores with the defaults):

    python3 bench/beacon_bench.py [--lengths 256,512,1024,2048,4096,8192,16384] [--reps 3]
    python3 bench/beacon_bench.py --smoke        # tiny, for tests/bench_test.py

Model: the shapes of `configs/beacon_demo.py`'s base (d_model 128, 2 layers, native window
320) with beacon window 64 (random weights: speed does not depend on them). For each length, side by
side in this run:
  * full: the base model's forward over all T tokens (blockwise attention, 64-token blocks),
  * beacon: `lctx.beacon_generate.prefill`, window by window, at the ratio `adapt-N` picks
    (ratios 2..64 are served, so 16K tokens still fit the 256-slot memory),
with median wall time over `--reps`, tokens/s, the ratio beacon/full (> 1: beacons faster)
and the crossover (first length where beacons are faster). Memory: XLA's compiled temporary
bytes of each program, and the KV bytes each keeps per token of context (full: every token;
beacon: one slot per `ratio` tokens). A second table holds the ratio fixed and grows the
number of windows (4 / 16 / 64): the compiled memory of the beacon prefill stays the same
and the time per window stays flat, because the memory has a static capacity (P - W slots).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from lctx import beacon as rules  # noqa: E402
from lctx import beacon_generate as bgen  # noqa: E402
from lctx.beacon_model import BeaconModel  # noqa: E402
from lctx.model import Llama, ModelConfig  # noqa: E402


def build(smoke: bool):
    d = 32 if smoke else 128
    mcfg = ModelConfig(vocab_size=1024, d_model=d, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=d // 4, mlp_dim=2 * d, max_seq_len=1 << 20,
                       attn_impl="blockwise", block_q=64, block_k=64)
    bcfg = rules.BeaconConfig(window=64, native_len=320, ratios=(2, 4, 8, 16, 32, 64),
                              headroom=64, rank=8, alpha=16.0)
    return BeaconModel(Llama(mcfg, rngs=nnx.Rngs(0)), bcfg, eos_id=2, rngs=nnx.Rngs(1))


def _timed(fn, args, reps):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), int(getattr(mem, "temp_size_in_bytes", 0))


def full_prefill(graphdef, state, toks):
    model = nnx.merge(graphdef, state)
    t = toks.shape[1]
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    return model.base(toks, pos, jnp.ones_like(pos))[:, -1]


def beacon_prefill(graphdef, state, toks, n, *, ratio, capacity):
    model = nnx.merge(graphdef, state)
    expert = model.bcfg.expert(ratio)
    mem, last = bgen.prefill(model, toks, n, ratio=ratio, expert=expert, capacity=capacity)
    return last, mem.length


def kv_bytes_per_token(cfg, ratio: int) -> float:
    per = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    return per / (ratio if ratio else 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="256,512,1024,2048,4096,8192,16384")
    p.add_argument("--windows", default="4,16,64", help="window counts for the flatness table")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny model, short lengths")
    a = p.parse_args(argv)
    if a.smoke:
        a.lengths, a.windows, a.reps = "256,512", "2,4", 1
    model = build(a.smoke)
    cfg, bcfg = model.base.cfg, model.bcfg
    graphdef, state = nnx.split(model)
    print(f"model d_model={cfg.d_model} layers={cfg.n_layers} kv_heads={cfg.n_kv_heads} "
          f"head_dim={cfg.head_dim}; beacon window {bcfg.window}, native {bcfg.native_len}; "
          f"median of {a.reps}; devices {jax.devices()[0].platform} x1, batch 1")
    print(f"{'T':>7} {'ratio':>5} {'full tok/s':>11} {'beacon tok/s':>13} {'beacon/full':>12} "
          f"{'full temp MB':>13} {'beacon temp MB':>15} {'KV B/tok full':>14} "
          f"{'KV B/tok beacon':>16}")
    crossover = None
    for t in (int(x) for x in a.lengths.split(",")):
        toks = jax.random.randint(jax.random.key(t), (1, t), 0, cfg.vocab_size)
        r, n, _, cap = bgen.plan(t, bcfg)
        if r == 0:  # short enough to be served uncompressed; time the smallest ratio
            r, cap = min(bcfg.ratios), bcfg.memory_capacity(min(bcfg.ratios), n)
        full_s, full_mem = _timed(lambda s, x: full_prefill(graphdef, s, x), (state, toks),
                                  a.reps)
        fn = lambda s, x, k: beacon_prefill(graphdef, s, x, k, ratio=r, capacity=cap)  # noqa
        b_s, b_mem = _timed(fn, (state, toks, jnp.int32(n)), a.reps)
        speed = full_s / b_s
        if crossover is None and speed > 1:
            crossover = t
        print(f"{t:>7} {r:>5} {t / full_s:>11.0f} {t / b_s:>13.0f} {speed:>11.2f}x "
              f"{full_mem / 2**20:>13.1f} {b_mem / 2**20:>15.1f} "
              f"{kv_bytes_per_token(cfg, 0):>14.0f} {kv_bytes_per_token(cfg, r):>16.0f}",
              flush=True)
    print(f"crossover: {'beacons faster from ' + str(crossover) + ' tokens' if crossover else 'none in these lengths'}")
    r = min(bcfg.ratios) * 4
    cap = bcfg.native_len - bcfg.window
    print(f"\nfixed ratio {r}, memory capacity {cap} slots: per-window cost as windows grow")
    print(f"{'windows':>8} {'tokens':>7} {'s/window':>9} {'compiled temp MB':>17}")
    for n in (int(x) for x in a.windows.split(",")):
        toks = jax.random.randint(jax.random.key(n), (1, n * bcfg.window), 0, cfg.vocab_size)
        fn = lambda s, x, k: beacon_prefill(graphdef, s, x, k, ratio=r, capacity=cap)  # noqa
        s, mem = _timed(fn, (state, toks, jnp.int32(n)), a.reps)
        print(f"{n:>8} {n * bcfg.window:>7} {s / n:>9.4f} {mem / 2**20:>17.2f}", flush=True)


if __name__ == "__main__":
    main()
