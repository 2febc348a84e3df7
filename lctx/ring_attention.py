"""Ring attention: exact attention with the sequence sharded over a mesh axis.

Each device of the context axis holds T/C query positions and the matching K/V. K/V (and
their segment and position ids) travel around the ring with `lax.ppermute`; every device
merges the partial result of each visiting shard into fp32 (output, logsumexp) accumulators.
Each step sends its K/V on before computing on them, so the transfer can overlap the compute.
A ring-level `jax.custom_vjp` runs a second ring in the backward pass in which K, V and,
one step behind them, dK and dV travel, reusing the saved output and logsumexp, so memory per
device stays O(T/C) and no kernel's own VJP is used (cuDNN's drops the logsumexp cotangent).

Masking is by segment and position ids only, `allowed = (seg_q == seg_k != 0) & (pos_q >=
pos_k)`, so any token order works: a layout just permutes tokens, positions, segment ids and
loss masks together once at data loading (`lctx.layout`). With the zigzag layout and causal
masking, which chunk pairs each step needs is static (`_plan`: two per step, the same on every
device); other layouts visit every block pair. Either way a block pair is computed only when
its mask is not empty. The block math (mask, exact empty-block skip, block kernels, block
loops) is `lctx.blocks`, shared with blockwise attention.

Axis letters: B batch, T query positions, S key positions, N query heads, K kv heads,
G = N/K, H head dim, C context-axis size, Q/R query/key block length.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from lctx import blocks, sharding
# Layouts live in the JAX-free lctx.layout (the data pipeline applies them); re-exported here.
from lctx.layout import (balanced_indices, contiguous_indices, inverse_indices,  # noqa: F401
                         layout_indices, ring_blocks, zigzag_indices)

_F32 = jnp.float32
LAYOUTS = ("zigzag", "balanced", "contiguous")


# --------------------------------------------------------------------- per-device ring
class _Cfg(tuple):
    """Static ring settings (hashable): axis, size, causal, scale, blocks, kernel, plan, axes."""
    __slots__ = ()
    fields = ("axis", "n", "causal", "scale", "bq", "bk", "kernel", "static", "vary",
              "seg_vary")

    def __new__(cls, **kw):
        return tuple.__new__(cls, tuple(kw[f] for f in cls.fields))

    def __getattr__(self, name):
        return self[self.fields.index(name)]


def _vary(x, axes):
    """Mark x device-varying over `axes` (loop carries must match the body's type)."""
    have = jax.typeof(x).manual_axis_type.varying
    missing = tuple(a for a in axes if a not in have)
    return lax.pcast(x, missing, to="varying") if missing else x


def _rotate(cfg, xs):
    """Send to the next device of the ring (device j -> j + 1)."""
    perm = [(j, (j + 1) % cfg.n) for j in range(cfg.n)]
    return tuple(lax.ppermute(x, cfg.axis, perm) for x in xs)


def _pick(lo, a, b):
    """a where `lo` else b (a Python bool picks at trace time)."""
    if isinstance(lo, bool):
        return a if lo else b
    return jax.tree.map(lambda x, y: jnp.where(lo, x, y), a, b)


def _put(lo, a, b, new, xs):
    """(xs[a], xs[b]) after writing `new` to xs[a] if lo else to xs[b]."""
    if a == b:
        return new, new
    return _pick(lo, new, xs[a]), _pick(lo, xs[b], new)


def _chunks(cfg, xs):
    """Split shard arrays [B, T/C, ...] into the layout's chunks: 2 (A, B) for the static
    zigzag plan, else 1."""
    nc = 2 if cfg.static else 1
    return [tuple(x[:, c * x.shape[1] // nc:(c + 1) * x.shape[1] // nc] for x in xs)
            for c in range(nc)]


def _plan(cfg, i):
    """Chunk pairs of ring step `i`: (computed, skipped) lists of (lo, pair if lo, pair if not).

    Static zigzag plan: device r holds chunks A = r and B = 2C-1-r of the token order and at
    step i >= 1 receives the shard of device s = (r - i) mod C. Causal attention within
    ordered segments then needs (A, A), (B, A), (B, B) at step 0, and at every later step
    (B, A) plus (A, A) if s < r, else (B, B): two chunk pairs, the same work on every device.
    (A, B) and the other pair are empty. The exact plan computes the one pair (shard, shard).
    """
    if not cfg.static:
        return [(True, (0, 0), (0, 0))], []
    if isinstance(i, int) and i == 0:
        return ([(True, (0, 0), (0, 0)), (True, (1, 0), (1, 0)), (True, (1, 1), (1, 1))],
                [(True, (0, 1), (0, 1))])
    r = lax.axis_index(cfg.axis)
    lo = (r - i) % cfg.n < r  # the visiting shard's chunks precede this device's
    return [(True, (1, 0), (1, 0)), (lo, (0, 0), (1, 1))], [(True, (0, 1), (0, 1)),
                                                             (lo, (1, 1), (0, 0))]


def _violated(cfg, q_ids, kv_ids, skipped):
    """Does a chunk pair the static plan skips hold an allowed pair (premise broken)?"""
    bad = False
    for lo, (qa, ka), (qb, kb) in skipped:
        (qs, qp), (ks, kp) = _pick(lo, q_ids[qa], q_ids[qb]), _pick(lo, kv_ids[ka], kv_ids[kb])
        bad = bad | blocks.make_mask(qs, ks, qp, kp, cfg.causal).any()
    return bad


def _q_spans(cfg, *xs):
    """Per chunk: the chunk's arrays split into query blocks."""
    return [tuple(blocks.split_blocks(x, x.shape[1] // cfg.bq) for x in c)
            for c in _chunks(cfg, xs)]


def _kv_span(cfg, kv):
    return tuple(blocks.split_blocks(x, x.shape[1] // cfg.bk) for x in kv)


def _visit_fwd(cfg, q_spans, q_ids, kv, accs, count, bad, i):
    """Merge the visiting K/V shard into the per-chunk accumulators (step i's plan)."""
    kernel = blocks.KERNELS[cfg.kernel]
    kv_chunks = _chunks(cfg, kv)
    computed, skipped = _plan(cfg, i)
    for lo, (qa, ka), (qb, kb) in computed:
        acc = _pick(lo, accs[qa], accs[qb])
        o_n, lse_n, count = blocks.span_fwd(
            kernel, _pick(lo, q_spans[qa], q_spans[qb]),
            _kv_span(cfg, _pick(lo, kv_chunks[ka], kv_chunks[kb])), (*acc, count),
            causal=cfg.causal, scale=cfg.scale)
        accs[qa], accs[qb] = _put(lo, qa, qb, (o_n, lse_n), accs)
    if skipped:
        bad = bad | _violated(cfg, q_ids, [c[2:] for c in kv_chunks], skipped)
    return accs, count, bad


def _ring_fwd_impl(cfg, *args):
    q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS = blocks.tie(*args)
    q_spans = _q_spans(cfg, q_BTNH, q_seg_BT, q_pos_BT)
    q_ids = [c[1:] for c in _chunks(cfg, (q_BTNH, q_seg_BT, q_pos_BT))]
    accs = [(_vary(jnp.zeros(qn.shape, _F32), cfg.vary),
             _vary(jnp.full(qn.shape[:2] + (qn.shape[3], qn.shape[2]), -jnp.inf, _F32),
                   cfg.vary)) for qn, _, _ in q_spans]
    count = _vary(jnp.zeros((), jnp.int32), cfg.seg_vary)
    bad = _vary(jnp.zeros((), bool), cfg.seg_vary)
    visit = functools.partial(_visit_fwd, cfg, q_spans, q_ids)

    def step(i, carry):
        kv, accs, count, bad = carry
        # Sent before this step's compute, which does not read it: the transfer overlaps.
        return (_rotate(cfg, kv), *visit(kv, accs, count, bad, i))

    # Step 0 (the device's own shard) has its own plan; the last step's send is spare (it
    # overlaps that step's compute) and keeps one loop body instead of a peeled copy.
    carry = step(0, ((k_BSKH, v_BSKH, k_seg_BS, k_pos_BS), accs, count, bad))
    _, accs, count, bad = lax.fori_loop(1, cfg.n, step, carry)
    out_BTNH = jnp.concatenate([blocks.join_blocks(o_n) for o_n, _ in accs], axis=1)
    if cfg.static:  # a broken premise poisons this device's rows: never silently wrong
        out_BTNH = jnp.where(bad, jnp.nan, out_BTNH)
    out_BTNH = out_BTNH.astype(q_BTNH.dtype)
    return out_BTNH, [lse_n for _, lse_n in accs], count


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, *args):
    return _ring_fwd_impl(cfg, *args)[0]


def _ring_fwd(cfg, *args):
    out_BTNH, lses, _ = _ring_fwd_impl(cfg, *args)
    return out_BTNH, (args, out_BTNH, lses)


def _visit_bwd(cfg, q_spans, kv, dqs, i):
    """Add the visiting shard's part to the per-chunk dQ; return its dK, dV (float32)."""
    kernel = blocks.KERNELS[cfg.kernel]
    kv_chunks = _chunks(cfg, kv)
    dkv = [tuple(jnp.zeros_like(x, _F32) for x in c[:2]) for c in kv_chunks]
    for lo, (qa, ka), (qb, kb) in _plan(cfg, i)[0]:
        dq_n, dk_m, dv_m = blocks.span_bwd(
            kernel, _pick(lo, q_spans[qa], q_spans[qb]),
            _kv_span(cfg, _pick(lo, kv_chunks[ka], kv_chunks[kb])), _pick(lo, dqs[qa], dqs[qb]),
            causal=cfg.causal, scale=cfg.scale)
        dqs[qa], dqs[qb] = _put(lo, qa, qb, dq_n, dqs)
        d = (blocks.join_blocks(dk_m), blocks.join_blocks(dv_m))
        zero = tuple(jnp.zeros_like(x) for x in d)
        parts = [(ka, d)] if ka == kb else [(ka, _pick(lo, d, zero)), (kb, _pick(lo, zero, d))]
        for c, x in parts:
            dkv[c] = (dkv[c][0] + x[0], dkv[c][1] + x[1])
    return dqs, tuple(jnp.concatenate(parts, axis=1) for parts in zip(*dkv))


def _ring_bwd(cfg, res, do_BTNH):
    """Second ring: K, V travel as in the forward; each shard's dK, dV travel one step
    behind it, accumulating the contribution of every device they pass.

    K/V travel in the input dtype, dK/dV in float32: sent in bf16 they raised the ring's
    bf16 gradient error 1.7-2.5x (dK 0.44% -> 0.76%, dV 0.26% -> 0.66% of the largest
    entry; T=1024, 8 devices) to save a third of the backward traffic, which long shards
    hide behind their compute anyway (compute per step grows with the shard squared).
    """
    args, out_BTNH, lses = res
    q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS = args
    q_spans = [(*qs, o, lse, do) for qs, (o, do), lse in zip(
        _q_spans(cfg, q_BTNH, q_seg_BT, q_pos_BT), _q_spans(cfg, out_BTNH, do_BTNH), lses)]
    visit = functools.partial(_visit_bwd, cfg, q_spans)

    def step(i, carry):
        kv, dqs, dkv = carry
        # Both sends are issued before this step's compute, which reads neither.
        nxt, arrived = _rotate(cfg, kv), None if dkv is None else _rotate(cfg, dkv)
        dqs, d = visit(kv, dqs, i)
        return nxt, dqs, d if arrived is None else tuple(a + x for a, x in zip(arrived, d))

    dqs = [jnp.zeros_like(sp[-1], _F32) for sp in q_spans]
    carry = step(0, ((k_BSKH, v_BSKH, k_seg_BS, k_pos_BS), dqs, None))
    _, dqs, dkv = lax.fori_loop(1, cfg.n, step, carry)
    dk_BSKH, dv_BSKH = _rotate(cfg, dkv)  # one more hop brings dK, dV home
    dq_BTNH = jnp.concatenate([blocks.join_blocks(dq_n) for dq_n in dqs], axis=1)
    return (dq_BTNH.astype(q_BTNH.dtype), dk_BSKH.astype(k_BSKH.dtype),
            dv_BSKH.astype(v_BSKH.dtype), None, None, None, None)


_ring.defvjp(_ring_fwd, _ring_bwd)


# ------------------------------------------------------------------------- public API
def _setup(q_BTNH, k_BSKH, *, causal, scale, mesh, axis_name, batch_axes, head_axes, block_q,
           block_k, layout, kernel):
    """Validate shapes against the mesh and build the shard_map specs and static config."""
    if mesh is None:
        mesh = sharding.current_mesh()
        if mesh is None:
            raise ValueError("ring_attention needs a mesh: pass mesh= or activate one with "
                             "lctx.sharding.use_mesh(mesh, rules).")
    if axis_name not in mesh.shape:
        raise ValueError(f"context axis {axis_name!r} is not in the mesh axes "
                         f"{dict(mesh.shape)}.")
    blocks.check_kernel(kernel)
    if batch_axes is None:
        batch_axes = tuple(a for a in (sharding.DATA, sharding.FSDP) if a in mesh.shape)
    if head_axes is None:
        head_axes = tuple(a for a in (sharding.TENSOR,) if a in mesh.shape)
    batch_axes, head_axes = tuple(batch_axes), tuple(head_axes)
    c = mesh.shape[axis_name]
    (b, t, n, _), (_, s, kh, _) = q_BTNH.shape, k_BSKH.shape
    n_batch = int(np.prod([mesh.shape[a] for a in batch_axes]))
    n_head = int(np.prod([mesh.shape[a] for a in head_axes]))
    if t != s:
        raise ValueError(f"ring attention needs equal query and key lengths, got T={t}, S={s}.")
    if n % kh:
        raise ValueError(f"query heads N={n} must be a multiple of kv heads K={kh} (GQA).")
    if kh % n_head:
        raise ValueError(f"kv heads K={kh} are not divisible by the head mesh axes "
                         f"{head_axes} of total size {n_head}.")
    if b % n_batch:
        raise ValueError(f"batch B={b} is not divisible by the batch mesh axes {batch_axes} "
                         f"of total size {n_batch}.")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}.")
    bq, bk = ring_blocks(t, c, block_q, block_k,
                         layout="contiguous" if layout == "contiguous" else "zigzag",
                         names=("sequence length", "context size", "block_q", "block_k"))
    cfg = _Cfg(axis=axis_name, n=c, causal=bool(causal), scale=float(scale), bq=bq, bk=bk,
               kernel=kernel, static=layout == "zigzag" and bool(causal),
               vary=batch_axes + (axis_name,) + head_axes, seg_vary=batch_axes + (axis_name,))
    spec_x = P(_axes_entry(batch_axes), axis_name, _axes_entry(head_axes), None)
    spec_s = P(_axes_entry(batch_axes), axis_name)
    return mesh, cfg, spec_x, spec_s


def _axes_entry(axes):
    return None if not axes else (axes[0] if len(axes) == 1 else tuple(axes))


def ring_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                   causal: bool, scale: float, mesh: Mesh | None = None,
                   axis_name: str = sharding.CONTEXT, batch_axes: Sequence[str] | None = None,
                   head_axes: Sequence[str] | None = None, block_q: int = 512,
                   block_k: int = 512, layout: str = "zigzag", kernel: str = "xla"):
    """Exact attention with T sharded over `axis_name`; same contract as dense `attend`.

    Inputs are global arrays (sharded or not); the sequence dimension is split contiguously
    over the context axis, so the layout must already be applied to the token order
    (`lctx.layout`), and `layout` says which one it was:

    - 'zigzag' (`zigzag_indices`): with causal=True the ring runs a static plan (`_plan`):
      which chunk pairs each step computes is fixed, the empty ones are never visited. Its
      premise: within a segment, positions increase along the un-permuted token order (what
      lctx.data produces), so no key in a later chunk than its query is allowed. It is
      checked on the pairs it skips; a device where it fails returns NaN, never a wrong value.
    - 'balanced' (`balanced_indices`, per row) and 'contiguous': every step visits every block
      pair and skips exactly the empty ones; no premise.

    Args:
      q_BTNH, k_BSKH, v_BSKH: queries, keys, values; GQA by N = K * G (K/V never repeated).
      q_seg_BT, k_seg_BS: segment ids (0 = padding); q_pos_BT, k_pos_BS: position ids.
      causal: mask `pos_q >= pos_k` on top of segment equality.
      scale: logit scale, usually H ** -0.5.
      mesh: mesh to run on; default the one active in `lctx.sharding.use_mesh`.
      axis_name: mesh axis holding the sequence shards (the ring).
      batch_axes: mesh axes sharding B; default those of (data, fsdp) in the mesh.
      head_axes: mesh axes sharding heads; default (tensor,) when in the mesh.
      block_q, block_k: query / key block lengths inside a shard (upper bounds: `ring_blocks`).
      layout: 'zigzag' | 'balanced' (blocks from chunks of T/2C) | 'contiguous' (of T/C).
      kernel: block kernel, a name in `lctx.blocks.KERNELS` ('xla' portable, 'cudnn' GPU).

    Returns:
      out_BTNH in the dtype of q, sharded like q.
    """
    mesh, cfg, spec_x, spec_s = _setup(
        q_BTNH, k_BSKH, causal=causal, scale=scale, mesh=mesh, axis_name=axis_name,
        batch_axes=batch_axes, head_axes=head_axes, block_q=block_q, block_k=block_k,
        layout=layout, kernel=kernel)
    fn = jax.shard_map(functools.partial(_ring, cfg), mesh=mesh,
                       in_specs=(spec_x,) * 3 + (spec_s,) * 4, out_specs=spec_x)
    return fn(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS)


def ring_block_counts(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                      causal: bool, scale: float, **kw) -> np.ndarray:
    """Block pairs each device actually computed in the forward ring (the skip is measured).

    Takes the arguments of `ring_attention`. Returns:
      int array [batch shards, context shards] of computed (query block, key block) pairs.
    """
    kw = {"mesh": None, "axis_name": sharding.CONTEXT, "batch_axes": None, "head_axes": None,
          "block_q": 512, "block_k": 512, "layout": "zigzag", "kernel": "xla", **kw}
    mesh, cfg, spec_x, spec_s = _setup(q_BTNH, k_BSKH, causal=causal, scale=scale, **kw)
    count_fn = lambda *a: _ring_fwd_impl(cfg, *a)[2].reshape(1, 1)
    fn = jax.shard_map(count_fn, mesh=mesh, in_specs=(spec_x,) * 3 + (spec_s,) * 4,
                       out_specs=P(spec_s[0], cfg.axis))
    return np.asarray(jax.jit(fn)(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT,
                                  k_pos_BS))
