r"""Ring vs dense attention on 8 simulated CPU devices, side by side in one run.

    python3 bench/ring_bench.py [--seqs=4K,8K,16K,32K,64K] [--time_seq=2048] [--repeats=3]
                                [--packed=4K:4:11:128,16K:8:8:256]

0. Block pairs computed on packed rows (T:devices:documents:block; documents cut at seeded
   random points): blockwise over the unpermuted row, the ring before (zigzag with the old
   id-range skip test, counted here as a reference) and now (exact skip), zigzag and the
   balanced layout; per-device max/mean is the load balance (counts, not time).
1. Compiled peak memory per device (XLA memory_analysis: arguments + outputs + temps) of
   forward + backward attention as T grows: ring over 8 context shards (O(T/8) per device)
   vs dense on one device (O(T^2) scores). Nothing is run, so 64K dense costs only compile.
2. Wall time of forward + backward at one small T, ring vs dense, same inputs.
Ratios are dense / ring. CPU timings say nothing about GPU speed; they show the ring's
overhead (8 simulated devices share the host cores).
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lctx import attention, blocks, sharding  # noqa: E402
from lctx import ring_attention as ra  # noqa: E402
from lctx.plan import parse_tokens  # noqa: E402

N, K, H = 8, 2, 64  # query heads, kv heads (GQA 4), head dim


def _inputs(t, mesh=None):
    """Abstract (mesh=None: one device) or placed-by-spec ShapeDtypeStructs."""
    put = (lambda spec: NamedSharding(mesh, spec)) if mesh else (lambda spec: None)
    x = lambda shape, dt, spec: jax.ShapeDtypeStruct(shape, dt, sharding=put(spec))
    qkv = P(None, sharding.CONTEXT, None, None)
    return (x((1, t, N, H), jnp.float32, qkv), x((1, t, K, H), jnp.float32, qkv),
            x((1, t, K, H), jnp.float32, qkv)) + tuple(
                x((1, t), jnp.int32, P(None, sharding.CONTEXT)) for _ in range(4))


def _fwd_bwd(attend):
    def loss(q, k, v, qs, ks, qp, kp):
        return attend(q, k, v, qs, ks, qp, kp, causal=True, scale=H**-0.5).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _ring(mesh, block):
    return lambda *a, **kw: ra.ring_attention(*a, **kw, mesh=mesh, block_q=block, block_k=block)


def packed_row(t, n_docs, seed=0):
    """Segment and position ids of `n_docs` documents cut at seeded random points."""
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, t), n_docs - 1, replace=False))
    bounds = np.array([0, *cuts, t])
    seg = np.repeat(np.arange(1, n_docs + 1), np.diff(bounds)).astype(np.int32)
    return seg, (np.arange(t) - bounds[seg - 1]).astype(np.int32)


def _old_range_rule_pairs(seg, pos, c, block):
    """Reference count: block pairs the ring computed before the exact skip (it skipped a pair
    only when id ranges proved it empty), per device, on the zigzag layout."""
    sb, pb = seg.reshape(-1, block), pos.reshape(-1, block)
    keep = ~((sb.max(1)[:, None] < sb.min(1)[None]) | (sb.min(1)[:, None] > sb.max(1)[None]) |
             (pb.max(1)[:, None] < pb.min(1)[None]))
    return keep.reshape(c, -1, keep.shape[1]).sum((1, 2))


def _blockwise_pairs(seg, pos, block):
    """Block pairs blockwise attention computes (its own loop, `blocks.span_fwd`)."""
    nb, split = len(seg) // block, blocks.split_blocks
    z = jnp.zeros((1, len(seg), 1, 4))
    s, p = jnp.asarray(seg)[None], jnp.asarray(pos)[None]
    acc = (jnp.zeros((nb, 1, block, 1, 4)), jnp.full((nb, 1, 1, block), -jnp.inf),
           jnp.zeros((), jnp.int32))
    count = lambda: blocks.span_fwd(blocks.KERNELS["xla"], (split(z, nb), split(s, nb), split(
        p, nb)), (split(z, nb), split(z, nb), split(s, nb), split(p, nb)), acc, causal=True,
        scale=1.0)[2]
    return int(jax.jit(count)())


def pairs_table(specs):
    print("\nBlock pairs computed on one packed row (causal), per device: total, max/mean")
    print(f"{'T':>6} {'C':>2} {'docs':>4} {'block':>5} {'blockwise':>9} {'ring before':>16} "
          f"{'ring zigzag':>16} {'ring balanced':>16}")
    rows = []
    for t, c, n_docs, block in specs:
        mesh = sharding.make_mesh({sharding.CONTEXT: c}, devices=jax.devices()[:c])
        seg, pos = packed_row(t, n_docs)
        z = jnp.zeros((1, t, 1, 4), jnp.float32)
        got = {"blockwise": _blockwise_pairs(seg, pos, block)}
        zig = ra.zigzag_indices(t, c)
        got["before"] = _old_range_rule_pairs(seg[zig], pos[zig], c, block)
        for name, perm in (("zigzag", zig), ("balanced", ra.balanced_indices(seg, pos, c, block))):
            s, p = jnp.asarray(seg[perm])[None], jnp.asarray(pos[perm])[None]
            got[name] = ra.ring_block_counts(z, z, z, s, s, p, p, causal=True, scale=1.0,
                                             mesh=mesh, block_q=block, block_k=block,
                                             layout=name)[0]
        cell = lambda x: f"{x.sum():>7} {x.max() / x.mean():>7.2f}x"  # noqa: E731
        print(f"{t:>6} {c:>2} {n_docs:>4} {block:>5} {got['blockwise']:>9} "
              f"{cell(got['before']):>16} {cell(got['zigzag']):>16} {cell(got['balanced']):>16}")
        rows.append(got)
    print("(ring before: the id-range skip test, reference count; zigzag / balanced: measured "
          "with the exact skip. The balanced layout is lctx.layout.balanced_indices.)")
    return rows


def _peak_bytes(fn, args) -> int:
    m = fn.lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def memory_table(seqs, mesh, block):
    rows = []
    for t in tqdm(seqs, desc="compile (memory)", file=sys.stderr):
        ring = _peak_bytes(_fwd_bwd(_ring(mesh, block)), _inputs(t, mesh))
        dense = _peak_bytes(_fwd_bwd(attention.dense_attention), _inputs(t))
        rows.append((t, ring, dense))
    print(f"\nPeak compiled memory per device, attention fwd+bwd, B=1 N={N} K={K} H={H}, "
          f"ring over {mesh.shape[sharding.CONTEXT]} devices (block {block}) vs dense on one "
          "device")
    print(f"{'T':>7} {'ring MiB':>10} {'dense MiB':>11} {'dense/ring':>10} "
          f"{'ring growth':>11} {'dense growth':>12}")
    for i, (t, r, d) in enumerate(rows):
        gr = "" if i == 0 else f"{r / rows[i - 1][1]:.2f}x"
        gd = "" if i == 0 else f"{d / rows[i - 1][2]:.2f}x"
        print(f"{t:>7} {r / 2**20:10.1f} {d / 2**20:11.1f} {d / r:10.1f} {gr:>11} {gd:>12}")
    print("(T doubles per row: O(T/N) memory grows ~2x, O(T^2) ~4x.)")
    return rows


def time_table(t, mesh, block, repeats):
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=s.shape), jnp.float32) for s in _inputs(t)[:3])
    perm = ra.zigzag_indices(t, mesh.shape[sharding.CONTEXT])
    seg = jnp.ones((1, t), jnp.int32)
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    spec = lambda x: NamedSharding(mesh, P(None, sharding.CONTEXT, *(None,) * (x.ndim - 2)))
    ring_args = [jax.device_put(x[:, perm], spec(x)) for x in (q, k, v, seg, seg, pos, pos)]
    results = {}
    for name, fn, args in (("ring", _fwd_bwd(_ring(mesh, block)), ring_args),
                           ("dense", _fwd_bwd(attention.dense_attention),
                            (q, k, v, seg, seg, pos, pos))):
        jax.block_until_ready(fn(*args))  # compile + warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        results[name] = float(np.median(times))
    ratio = results["ring"] / results["dense"]
    print(f"\nWall time fwd+bwd at T={t} (median of {repeats}): ring "
          f"{results['ring'] * 1e3:.1f} ms, dense {results['dense'] * 1e3:.1f} ms, "
          f"ring/dense {ratio:.2f}")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="4K,8K,16K,32K,64K")
    ap.add_argument("--time_seq", type=int, default=2048)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--packed", default="4K:4:11:128,16K:8:8:256",
                    help="packed-row block-pair counts, T:devices:documents:block,...")
    args = ap.parse_args()
    if args.packed:
        pairs_table([(parse_tokens(t), int(c), int(d), int(b)) for t, c, d, b in
                     (x.split(":") for x in args.packed.split(","))])
    mesh = sharding.make_mesh({sharding.CONTEXT: 8})
    memory_table([parse_tokens(s) for s in args.seqs.split(",")], mesh, args.block)
    time_table(args.time_seq, mesh, min(args.block, args.time_seq // 16), args.repeats)


if __name__ == "__main__":
    main()
