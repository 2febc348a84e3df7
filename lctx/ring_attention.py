"""Ring attention: exact attention with the sequence sharded over a mesh axis.

Each device of the context axis holds T/C query positions and the matching K/V. K/V (and
their segment and position ids) travel around the ring with `lax.ppermute`; every device
merges the partial result of each visiting shard into fp32 (output, logsumexp) accumulators.
Each step sends its K/V on before computing on them, so the transfer can overlap the compute.
A ring-level `jax.custom_vjp` runs a second ring in the backward pass in which K, V and,
one step behind them, dK and dV travel, reusing the saved output and logsumexp, so memory per
device stays O(T/C) and no kernel's own VJP is used (cuDNN's drops the logsumexp cotangent).

Masking is by segment and position ids only, `allowed = (seg_q == seg_k) & (pos_q >= pos_k)`,
so any token order works: the zigzag (dual-chunk) layout just permutes tokens, positions,
segment ids and loss masks together once at data loading (`lctx.layout`). The block math
(mask, exact empty-block skip, block kernels, block loops) is `lctx.blocks`, shared with
blockwise attention.

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


# --------------------------------------------------------------------- per-device ring
class _Cfg(tuple):
    """Static ring settings (hashable): axis, size, causal, scale, blocks, kernel, axes."""
    __slots__ = ()
    fields = ("axis", "n", "causal", "scale", "bq", "bk", "kernel", "vary", "seg_vary")

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


def _kv_span(cfg, kv):
    nk = kv[0].shape[1] // cfg.bk
    return tuple(blocks.split_blocks(x, nk) for x in kv)


def _ring_fwd_impl(cfg, *args):
    q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS = blocks.tie(*args)
    b, t, n, h = q_BTNH.shape
    nq = t // cfg.bq
    q_span = tuple(blocks.split_blocks(x, nq) for x in (q_BTNH, q_seg_BT, q_pos_BT))
    acc = (_vary(jnp.zeros((nq, b, cfg.bq, n, h), _F32), cfg.vary),
           _vary(jnp.full((nq, b, n, cfg.bq), -jnp.inf, _F32), cfg.vary),
           _vary(jnp.zeros((), jnp.int32), cfg.seg_vary))
    visit = functools.partial(blocks.span_fwd, blocks.KERNELS[cfg.kernel], q_span,
                              causal=cfg.causal, scale=cfg.scale)

    def step(_, carry):
        kv, acc = carry
        # Sent before this step's compute, which does not read it: the transfer overlaps.
        return _rotate(cfg, kv), visit(_kv_span(cfg, kv), acc)

    kv = (k_BSKH, v_BSKH, k_seg_BS, k_pos_BS)
    kv, acc = lax.fori_loop(0, cfg.n - 1, step, (kv, acc))
    o_n, lse_n, count = visit(_kv_span(cfg, kv), acc)  # the last visitor is not sent on
    return blocks.join_blocks(o_n).astype(q_BTNH.dtype), lse_n, count


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, *args):
    return _ring_fwd_impl(cfg, *args)[0]


def _ring_fwd(cfg, *args):
    out_BTNH, lse_n, _ = _ring_fwd_impl(cfg, *args)
    return out_BTNH, (args, out_BTNH, lse_n)


def _ring_bwd(cfg, res, do_BTNH):
    """Second ring: K, V travel as in the forward; each shard's dK, dV travel one step
    behind it, accumulating the contribution of every device they pass.

    K/V travel in the input dtype, dK/dV in float32: sent in bf16 they raised the ring's
    bf16 gradient error 1.7-2.5x (dK 0.44% -> 0.76%, dV 0.26% -> 0.66% of the largest
    entry; T=1024, 8 devices) to save a third of the backward traffic, which long shards
    hide behind their compute anyway (compute per step grows with the shard squared).
    """
    args, out_BTNH, lse_n = res
    q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS = args
    nq = q_BTNH.shape[1] // cfg.bq
    split = functools.partial(blocks.split_blocks, nb=nq)
    do_n = split(do_BTNH)
    q_span = (split(q_BTNH), split(q_seg_BT), split(q_pos_BT), split(out_BTNH), lse_n, do_n)
    kernel = blocks.KERNELS[cfg.kernel]

    def visit(kv, dq_n, arrived):
        """dQ += this shard's part; returns the shard's dK, dV so far (float32)."""
        dq_n, dk_m, dv_m = blocks.span_bwd(kernel, q_span, _kv_span(cfg, kv), dq_n,
                                           causal=cfg.causal, scale=cfg.scale)
        d = (blocks.join_blocks(dk_m), blocks.join_blocks(dv_m))
        return dq_n, d if arrived is None else (arrived[0] + d[0], arrived[1] + d[1])

    def step(kv, dq_n, dkv, *, first, last):
        # Both sends are issued before this step's compute, which reads neither.
        nxt = kv if last else _rotate(cfg, kv)
        arrived = None if first else _rotate(cfg, dkv)
        dq_n, dkv = visit(kv, dq_n, arrived)
        return nxt, dq_n, dkv

    kv = (k_BSKH, v_BSKH, k_seg_BS, k_pos_BS)
    dq_n = jnp.zeros_like(do_n, _F32)
    kv, dq_n, dkv = step(kv, dq_n, None, first=True, last=cfg.n == 1)
    middle = functools.partial(step, first=False, last=False)
    kv, dq_n, dkv = lax.fori_loop(1, cfg.n - 1, lambda _, c: middle(*c), (kv, dq_n, dkv))
    if cfg.n > 1:
        kv, dq_n, dkv = step(kv, dq_n, dkv, first=False, last=True)
    dk_BSKH, dv_BSKH = _rotate(cfg, dkv)  # one more hop brings dK, dV home
    return (blocks.join_blocks(dq_n).astype(q_BTNH.dtype), dk_BSKH.astype(k_BSKH.dtype),
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
    if layout not in ("zigzag", "contiguous"):
        raise ValueError(f"layout={layout!r}; expected 'zigzag' or 'contiguous'.")
    bq, bk = ring_blocks(t, c, block_q, block_k, layout=layout,
                         names=("sequence length", "context size", "block_q", "block_k"))
    cfg = _Cfg(axis=axis_name, n=c, causal=bool(causal), scale=float(scale), bq=bq, bk=bk,
               kernel=kernel, vary=batch_axes + (axis_name,) + head_axes,
               seg_vary=batch_axes + (axis_name,))
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
    over the context axis, so a zigzag layout must already be applied to the token order
    (`zigzag_indices`); `layout` only selects the divisibility check.

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
      layout: 'zigzag' (two chunks of T/2C per device) or 'contiguous' (one of T/C).
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
