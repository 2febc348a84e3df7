"""Ring attention: exact attention with the sequence sharded over a mesh axis.

Each device of the context axis holds T/C query positions and the matching K/V. K/V (and
their segment and position ids) travel around the ring with `lax.ppermute`; every device
merges the partial result of each visiting block into fp32 (output, logsumexp) accumulators.
A ring-level `jax.custom_vjp` runs a second ring in the backward pass in which K, V, dK and dV
travel, reusing the saved output and logsumexp, so memory per device stays O(T/C).

Masking is by segment and position ids only, `allowed = (seg_q == seg_k) & (pos_q >= pos_k)`,
so any token order works: the zigzag (dual-chunk) layout just permutes tokens, positions,
segment ids and loss masks together once at data loading (`zigzag_indices`). Block pairs whose
position or segment ranges rule out every pair are skipped at run time (`lax.cond`).

Axis letters: B batch, T query positions, S key positions, N query heads, K kv heads,
G = N/K, H head dim, C context-axis size, Q/R query/key block length.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

_F32 = jnp.float32


# ----------------------------------------------------------------------------- layouts
def zigzag_indices(seq_len: int, n_shards: int) -> np.ndarray:
    """Permutation putting chunks r and 2C-1-r of a sequence on context shard r.

    Use as `x_zig = x[:, perm]` on tokens, targets, positions, segment ids and loss masks
    together (make next-token targets BEFORE permuting). Sharding the permuted sequence
    contiguously over C devices then balances causal attention work.

    Args:
      seq_len: sequence length T; must be divisible by 2 * n_shards.
      n_shards: context-axis size C.

    Returns:
      int64 array of shape [T]; `inverse_indices(perm)` undoes it.
    """
    if n_shards < 1 or seq_len % (2 * n_shards):
        raise ValueError(f"zigzag layout needs seq_len divisible by 2*n_shards: seq_len="
                         f"{seq_len}, n_shards={n_shards} (2*n_shards={2 * n_shards}).")
    chunk = seq_len // (2 * n_shards)
    order = [c for r in range(n_shards) for c in (r, 2 * n_shards - 1 - r)]
    return np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in order])


def contiguous_indices(seq_len: int, n_shards: int) -> np.ndarray:
    """Identity permutation (plain contiguous split), same contract as `zigzag_indices`."""
    if n_shards < 1 or seq_len % n_shards:
        raise ValueError(f"seq_len={seq_len} is not divisible by n_shards={n_shards}.")
    return np.arange(seq_len)


def inverse_indices(perm: np.ndarray) -> np.ndarray:
    """Inverse permutation: `x[:, perm][:, inverse_indices(perm)] == x`."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return inv


def layout_indices(layout: str, seq_len: int, n_shards: int) -> np.ndarray:
    """`zigzag_indices` or `contiguous_indices` by name."""
    fns = {"zigzag": zigzag_indices, "contiguous": contiguous_indices}
    if layout not in fns:
        raise ValueError(f"layout={layout!r}; expected one of {sorted(fns)}.")
    return fns[layout](seq_len, n_shards)


# ----------------------------------------------------------------------- block kernels
def _mask(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal):
    allowed_BQR = q_seg_BQ[:, :, None] == k_seg_BR[:, None, :]
    if causal:
        allowed_BQR &= q_pos_BQ[:, :, None] >= k_pos_BR[:, None, :]
    return allowed_BQR


def _safe(x):
    """-inf (fully masked row) -> 0, so exp(s - x) stays 0 and never NaN."""
    return jnp.where(jnp.isfinite(x), x, 0.0)


def xla_block_fwd(q_BQKGH, k_BRKH, v_BRKH, allowed_BQR, scale):
    """Portable block kernel: normalised block output and logsumexp, both fp32.

    Returns:
      (out_BQKGH fp32, lse_BKGQ fp32); rows with no allowed key give out 0, lse -inf.
    """
    s_BKGQR = jnp.einsum("bqkgh,brkh->bkgqr", q_BQKGH, k_BRKH,
                         preferred_element_type=_F32) * scale
    s_BKGQR = jnp.where(allowed_BQR[:, None, None], s_BKGQR, -jnp.inf)
    m_BKGQ = _safe(s_BKGQR.max(-1))
    p_BKGQR = jnp.exp(s_BKGQR - m_BKGQ[..., None])
    l_BKGQ = p_BKGQR.sum(-1)
    o_BQKGH = jnp.einsum("bkgqr,brkh->bqkgh", p_BKGQR, v_BRKH.astype(_F32))
    o_BQKGH = o_BQKGH / jnp.where(l_BKGQ > 0, l_BKGQ, 1.0).transpose(0, 3, 1, 2)[..., None]
    return o_BQKGH, m_BKGQ + jnp.log(l_BKGQ)


def dpa_block_fwd(q_BQKGH, k_BRKH, v_BRKH, allowed_BQR, scale, *, implementation="cudnn"):
    """Block kernel on `jax.nn.dot_product_attention` (cuDNN on GPU); contract of `xla_block_fwd`.

    With `return_residual=True` JAX returns the logsumexp as [B, Q, N] in the input dtype
    (cuDNN computes it as [B, N, Q] fp32; JAX transposes and casts it): read it that way and
    upcast. `implementation="xla"` is the CPU twin the layout test runs. Only the forward uses
    this: the ring's backward recomputes probabilities from the ring-level logsumexp with the
    XLA block math, so cuDNN's VJP (which drops the logsumexp cotangent) is never used.
    """
    b, q, k, g, h = q_BQKGH.shape
    out_BQNH, lse_BQN = jax.nn.dot_product_attention(
        q_BQKGH.reshape(b, q, k * g, h), k_BRKH, v_BRKH, mask=allowed_BQR[:, None],
        scale=scale, implementation=implementation, return_residual=True)
    # A row with no allowed key is not guaranteed to be 0 by cuDNN: force the contract.
    any_BQ = allowed_BQR.any(-1)
    out_BQKGH = jnp.where(any_BQ[:, :, None, None, None],
                          out_BQNH.reshape(b, q, k, g, h).astype(_F32), 0.0)
    lse_BKGQ = lse_BQN.astype(_F32).transpose(0, 2, 1).reshape(b, k, g, q)
    return out_BQKGH, jnp.where(any_BQ[:, None, None], lse_BKGQ, -jnp.inf)


def _check_cudnn():
    if not any(d.platform == "gpu" for d in jax.devices()):
        raise ValueError("kernel='cudnn' needs an NVIDIA GPU with cuDNN; this process sees "
                         f"only {sorted({d.platform for d in jax.devices()})}. Use "
                         "kernel='xla' (portable).")


BLOCK_KERNELS: dict[str, Callable] = {
    "xla": xla_block_fwd, "cudnn": functools.partial(dpa_block_fwd, implementation="cudnn")}


def _block_bwd(q_BQKGH, k_BRKH, v_BRKH, do_BQKGH, lse_BKGQ, delta_BKGQ, allowed_BQR, scale):
    """Flash backward for one block pair from the ring-level (global) logsumexp."""
    s_BKGQR = jnp.einsum("bqkgh,brkh->bkgqr", q_BQKGH, k_BRKH,
                         preferred_element_type=_F32) * scale
    p_BKGQR = jnp.where(allowed_BQR[:, None, None],
                        jnp.exp(s_BKGQR - _safe(lse_BKGQ)[..., None]), 0.0)
    dv_BRKH = jnp.einsum("bkgqr,bqkgh->brkh", p_BKGQR, do_BQKGH)
    dp_BKGQR = jnp.einsum("bqkgh,brkh->bkgqr", do_BQKGH, v_BRKH.astype(_F32))
    ds_BKGQR = p_BKGQR * (dp_BKGQR - delta_BKGQ[..., None]) * scale
    dq_BQKGH = jnp.einsum("bkgqr,brkh->bqkgh", ds_BKGQR, k_BRKH.astype(_F32))
    dk_BRKH = jnp.einsum("bkgqr,bqkgh->brkh", ds_BKGQR, q_BQKGH.astype(_F32))
    return dq_BQKGH, dk_BRKH, dv_BRKH


def _needed(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal):
    """False only when ranges prove every pair masked (conservative, never wrong)."""
    disjoint = (q_seg_BQ.max() < k_seg_BR.min()) | (q_seg_BQ.min() > k_seg_BR.max())
    if causal:
        disjoint |= q_pos_BQ.max() < k_pos_BR.min()
    return ~disjoint


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


def _blocks(x, nb, axis=1):
    """[B, T, ...] -> [nb, B, T/nb, ...]: scan over query blocks."""
    shape = x.shape[:axis] + (nb, x.shape[axis] // nb) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x):
    """Inverse of `_blocks` for axis=1."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _kv_block(j, bk, *xs):
    return [lax.dynamic_slice_in_dim(x, j * bk, bk, axis=1) for x in xs]


def _shard_fwd(cfg, qb, kv, acc):
    """Merge one visiting K/V shard into the accumulators, block pair by block pair."""
    k_BSKH, v_BSKH, k_seg_BS, k_pos_BS = kv
    o_acc, lse_acc, count = acc
    block_fwd = BLOCK_KERNELS[cfg.kernel]
    nk = k_BSKH.shape[1] // cfg.bk

    def q_block(count, xs):
        q_BQKGH, q_seg_BQ, q_pos_BQ, o_BQKGH, lse_BKGQ = xs

        def kv_step(j, carry):
            o_BQKGH, lse_BKGQ, count = carry
            k_BRKH, v_BRKH, k_seg_BR, k_pos_BR = _kv_block(j, cfg.bk, *kv)

            def compute(o_BQKGH, lse_BKGQ, count):
                allowed_BQR = _mask(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, cfg.causal)
                ob_BQKGH, lb_BKGQ = block_fwd(q_BQKGH, k_BRKH, v_BRKH, allowed_BQR, cfg.scale)
                new_BKGQ = jnp.logaddexp(lse_BKGQ, lb_BKGQ)
                w_old = jnp.exp(lse_BKGQ - _safe(new_BKGQ)).transpose(0, 3, 1, 2)[..., None]
                w_blk = jnp.exp(lb_BKGQ - _safe(new_BKGQ)).transpose(0, 3, 1, 2)[..., None]
                return o_BQKGH * w_old + ob_BQKGH * w_blk, new_BKGQ, count + 1

            need = _needed(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, cfg.causal)
            return lax.cond(need, compute, lambda *a: a, o_BQKGH, lse_BKGQ, count)

        o_BQKGH, lse_BKGQ, count = lax.fori_loop(0, nk, kv_step, (o_BQKGH, lse_BKGQ, count))
        return count, (o_BQKGH, lse_BKGQ)

    count, (o_acc, lse_acc) = lax.scan(q_block, count, (*qb, o_acc, lse_acc))
    return o_acc, lse_acc, count


def _rotate(cfg, xs, reverse=False):
    perm = [(j, (j + 1) % cfg.n) for j in range(cfg.n)]
    if reverse:
        perm = [(b, a) for a, b in perm]
    return [lax.ppermute(x, cfg.axis, perm) for x in xs]


def _ring_fwd_impl(cfg, q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS):
    # Under a layer `lax.scan`, linearize hoists what depends only on loop-invariant inputs
    # (ids made outside the layer) out of the loop, stacked: the per-block masks, O(T^2).
    # Tying the ids to the activations keeps them inside (see lctx.attention._flash_fwd_impl).
    q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS = lax.optimization_barrier(
        (q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS))
    b, t, n, h = q_BTNH.shape
    kh = k_BSKH.shape[2]
    nq = t // cfg.bq
    qb = (_blocks(q_BTNH.reshape(b, t, kh, n // kh, h), nq), _blocks(q_seg_BT, nq),
          _blocks(q_pos_BT, nq))
    o_acc = _vary(jnp.zeros((nq, b, cfg.bq, kh, n // kh, h), _F32), cfg.vary)
    lse_acc = _vary(jnp.full((nq, b, kh, n // kh, cfg.bq), -jnp.inf, _F32), cfg.vary)
    count = _vary(jnp.zeros((), jnp.int32), cfg.seg_vary)
    kv = (k_BSKH, v_BSKH, k_seg_BS, k_pos_BS)
    acc = _shard_fwd(cfg, qb, kv, (o_acc, lse_acc, count))

    def step(_, carry):
        kv, acc = carry
        kv = tuple(_rotate(cfg, kv))
        return kv, _shard_fwd(cfg, qb, kv, acc)

    _, (o_acc, lse_acc, count) = lax.fori_loop(1, cfg.n, step, (kv, acc))
    out_BTNH = _unblocks(o_acc).reshape(b, t, n, h).astype(q_BTNH.dtype)
    return out_BTNH, lse_acc, count


def _shard_bwd(cfg, qb, kv, dq_acc, dkv):
    """Add one visiting shard's contribution to dQ (local) and to the travelling dK, dV."""
    k_BSKH, v_BSKH, k_seg_BS, k_pos_BS = kv
    nk = k_BSKH.shape[1] // cfg.bk

    def q_block(dkv, xs):
        q_BQKGH, q_seg_BQ, q_pos_BQ, do_BQKGH, lse_BKGQ, delta_BKGQ, dq_BQKGH = xs

        def kv_step(j, carry):
            dq_BQKGH, dk_BSKH, dv_BSKH = carry
            k_BRKH, v_BRKH, k_seg_BR, k_pos_BR = _kv_block(j, cfg.bk, *kv)

            def compute(dq_BQKGH, dk_BSKH, dv_BSKH):
                allowed_BQR = _mask(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, cfg.causal)
                dq, dk, dv = _block_bwd(q_BQKGH, k_BRKH, v_BRKH, do_BQKGH, lse_BKGQ,
                                        delta_BKGQ, allowed_BQR, cfg.scale)
                add = lambda acc, d: lax.dynamic_update_slice_in_dim(
                    acc, lax.dynamic_slice_in_dim(acc, j * cfg.bk, cfg.bk, 1) + d,
                    j * cfg.bk, 1)
                return dq_BQKGH + dq, add(dk_BSKH, dk), add(dv_BSKH, dv)

            need = _needed(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, cfg.causal)
            return lax.cond(need, compute, lambda *a: a, dq_BQKGH, dk_BSKH, dv_BSKH)

        dq_BQKGH, dk, dv = lax.fori_loop(0, nk, kv_step, (dq_BQKGH, *dkv))
        return (dk, dv), dq_BQKGH

    dkv, dq_acc = lax.scan(q_block, dkv, (*qb, dq_acc))
    return dq_acc, dkv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS):
    return _ring_fwd_impl(cfg, q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT,
                          k_pos_BS)[0]


def _ring_fwd(cfg, *args):
    out_BTNH, lse_acc, _ = _ring_fwd_impl(cfg, *args)
    return out_BTNH, (args, out_BTNH, lse_acc)


def _ring_bwd(cfg, res, do_BTNH):
    (q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS), out_BTNH, lse = res
    b, t, n, h = q_BTNH.shape
    kh = k_BSKH.shape[2]
    nq = t // cfg.bq
    grp = lambda x: _blocks(x.reshape(b, t, kh, n // kh, h), nq)
    do_blk = grp(do_BTNH.astype(_F32))
    # delta = rowsum(dO * O): the softmax-Jacobian term, computed once from the saved output.
    delta = (do_blk * grp(out_BTNH.astype(_F32))).sum(-1).transpose(0, 1, 3, 4, 2)
    qb = (grp(q_BTNH), _blocks(q_seg_BT, nq), _blocks(q_pos_BT, nq), do_blk, lse, delta)
    dq_acc = _vary(jnp.zeros(do_blk.shape, _F32), cfg.vary)
    dkv = tuple(_vary(jnp.zeros(k_BSKH.shape, _F32), cfg.vary) for _ in range(2))
    kv = (k_BSKH, v_BSKH, k_seg_BS, k_pos_BS)
    dq_acc, dkv = _shard_bwd(cfg, qb, kv, dq_acc, dkv)

    def step(_, carry):
        kv, dq_acc, dkv = carry
        kv, dkv = tuple(_rotate(cfg, kv)), tuple(_rotate(cfg, dkv))
        dq_acc, dkv = _shard_bwd(cfg, qb, kv, dq_acc, dkv)
        return kv, dq_acc, dkv

    _, dq_acc, dkv = lax.fori_loop(1, cfg.n, step, (kv, dq_acc, dkv))
    dk_BSKH, dv_BSKH = _rotate(cfg, dkv)  # one more hop brings dK, dV home
    dq_BTNH = _unblocks(dq_acc).reshape(b, t, n, h)
    return (dq_BTNH.astype(q_BTNH.dtype), dk_BSKH.astype(k_BSKH.dtype),
            dv_BSKH.astype(v_BSKH.dtype), None, None, None, None)


_ring.defvjp(_ring_fwd, _ring_bwd)


# ------------------------------------------------------------------------- public API
def _axes_entry(axes):
    return None if not axes else (axes[0] if len(axes) == 1 else tuple(axes))


def _setup(q_BTNH, k_BSKH, *, causal, scale, mesh, axis_name, batch_axes, head_axes, block,
           layout, kernel):
    """Validate shapes against the mesh and build the shard_map specs and static config."""
    if mesh is None:
        from lctx import sharding  # lazy: sharding imports nothing from here
        mesh = sharding.current_mesh()
        if mesh is None:
            raise ValueError("ring_attention needs a mesh: pass mesh= or activate one with "
                             "lctx.sharding.use_mesh(mesh, rules).")
    if axis_name not in mesh.shape:
        raise ValueError(f"context axis {axis_name!r} is not in the mesh axes "
                         f"{dict(mesh.shape)}.")
    if kernel not in BLOCK_KERNELS:
        raise ValueError(f"kernel={kernel!r}; expected one of {sorted(BLOCK_KERNELS)}.")
    if kernel == "cudnn":
        _check_cudnn()
    if batch_axes is None:
        batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    if head_axes is None:
        head_axes = tuple(a for a in ("tensor",) if a in mesh.shape)
    batch_axes, head_axes = tuple(batch_axes), tuple(head_axes)
    c = mesh.shape[axis_name]
    (b, t, n, h), (_, s, kh, _) = q_BTNH.shape, k_BSKH.shape
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
    parts = 2 * c if layout == "zigzag" else c
    if t % parts:
        raise ValueError(f"sequence length {t} is not divisible by {parts} "
                         f"({'2 x ' if layout == 'zigzag' else ''}context size {c}).")
    # Default block: largest power-of-two divisor of a layout chunk, at most 512.
    block = block or int(np.gcd(t // parts, 512))
    if t % (parts * block):
        raise ValueError(
            f"sequence length {t} is not divisible by {parts * block} = "
            f"{'2 x ' if layout == 'zigzag' else ''}context size {c} x block {block}; pick a "
            f"block dividing {t // parts}.")
    cfg = _Cfg(axis=axis_name, n=c, causal=bool(causal), scale=float(scale), bq=block,
               bk=block, kernel=kernel, vary=batch_axes + (axis_name,) + head_axes,
               seg_vary=batch_axes + (axis_name,))
    spec_x = P(_axes_entry(batch_axes), axis_name, _axes_entry(head_axes), None)
    spec_s = P(_axes_entry(batch_axes), axis_name)
    return mesh, cfg, spec_x, spec_s


def ring_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                   causal: bool, scale: float, mesh: Mesh | None = None,
                   axis_name: str = "context", batch_axes: Sequence[str] | None = None,
                   head_axes: Sequence[str] | None = None, block: int | None = None,
                   layout: str = "zigzag", kernel: str = "xla"):
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
      batch_axes: mesh axes sharding B; default those of ('data', 'fsdp') in the mesh.
      head_axes: mesh axes sharding heads; default ('tensor',) when in the mesh.
      block: query/key block length inside a shard; default gcd(chunk, 512).
      layout: 'zigzag' (T divisible by 2*C*block) or 'contiguous' (C*block).
      kernel: inner block kernel, 'xla' (portable) or 'cudnn' (GPU forward).

    Returns:
      out_BTNH in the dtype of q, sharded like q.
    """
    mesh, cfg, spec_x, spec_s = _setup(
        q_BTNH, k_BSKH, causal=causal, scale=scale, mesh=mesh, axis_name=axis_name,
        batch_axes=batch_axes, head_axes=head_axes, block=block, layout=layout, kernel=kernel)
    fn = jax.shard_map(functools.partial(_ring, cfg), mesh=mesh,
                       in_specs=(spec_x,) * 3 + (spec_s,) * 4, out_specs=spec_x)
    return fn(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS)


def ring_block_counts(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                      causal: bool, scale: float, **kw) -> np.ndarray:
    """Block pairs each device actually computed in the forward ring (the skip is measured).

    Takes the arguments of `ring_attention`. Returns:
      int array [batch shards, context shards] of computed (query block, key block) pairs.
    """
    mesh, cfg, spec_x, spec_s = _setup(q_BTNH, k_BSKH, causal=causal, scale=scale,
                                       mesh=kw.pop("mesh", None), **{
                                           "axis_name": "context", "batch_axes": None,
                                           "head_axes": None, "block": None,
                                           "layout": "zigzag", "kernel": "xla", **kw})
    batch = spec_s[0]
    count_fn = lambda *a: _ring_fwd_impl(cfg, *a)[2].reshape(1, 1)
    fn = jax.shard_map(count_fn, mesh=mesh, in_specs=(spec_x,) * 3 + (spec_s,) * 4,
                       out_specs=P(batch, cfg.axis))
    return np.asarray(jax.jit(fn)(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT,
                                  k_pos_BS))
