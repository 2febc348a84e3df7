"""Attention kernels: dense, blockwise (flash-style, custom_vjp) and cuDNN, one signature.

Every kernel is `attend(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
causal, scale) -> out_BTNH`. Masking is by ids, never by index (docs/DESIGN.md):
`allowed = (seg_q == seg_k) & (pos_q >= pos_k if causal)`, which makes packed documents,
arbitrary position ids, KV caches and permuted (zigzag) layouts the same code. A query with no
allowed key returns 0 (its logsumexp is -inf).

GQA groups the N = K * G query heads by kv head (`q.reshape(B, T, K, G, H)`); K/V are never
repeated. Softmax statistics and accumulators are float32 whatever the input dtype.

Axes: B batch, T query positions, S key positions, N query heads, K kv heads, G = N / K,
H head dim, Q / R query / key block length.

`get_attention(impl, ...)` is the dispatch point the model uses ('dense', 'blockwise',
'cudnn', 'ring').
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
# Padding ids for blockwise tails: different from each other and from real ids (>= 0), so a
# padded query or key never matches anything.
_PAD_Q_SEG, _PAD_K_SEG = -1, -2


def make_mask(q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, causal: bool):
    """Boolean [B, T, S]: same segment and (if causal) key position <= query position."""
    allowed_BTS = q_seg_BT[:, :, None] == k_seg_BS[:, None, :]
    if causal:
        allowed_BTS &= q_pos_BT[:, :, None] >= k_pos_BS[:, None, :]
    return allowed_BTS


def _safe(x):
    """-inf (row with no allowed key) -> 0, so exp(s - x) is 0, never NaN."""
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _check(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS):
    (b, t, n, h), (bk, s, kh, hk) = q_BTNH.shape, k_BSKH.shape
    if v_BSKH.shape != k_BSKH.shape:
        raise ValueError(f"v shape {v_BSKH.shape} must equal k shape {k_BSKH.shape}.")
    if bk != b or hk != h:
        raise ValueError(f"q {q_BTNH.shape} and k {k_BSKH.shape} disagree on batch or head dim.")
    if n % kh:
        raise ValueError(f"query heads N={n} must be a multiple of kv heads K={kh} (GQA).")
    for name, x, want in (("q_seg", q_seg_BT, (b, t)), ("q_pos", q_pos_BT, (b, t)),
                          ("k_seg", k_seg_BS, (b, s)), ("k_pos", k_pos_BS, (b, s))):
        if x.shape != want:
            raise ValueError(f"{name} has shape {x.shape}, expected {want}.")
    return b, t, n, h, s, kh


def block_attend(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, *,
                 causal: bool, scale: float):
    """One block pair, materialised: normalised output and logsumexp, both float32.

    The building block for ring attention (merge partial results by logsumexp).

    Returns:
      (out_BQNH float32, lse_BNQ float32); a row with no allowed key gives out 0, lse -inf.
    """
    b, t, n, h, s, kh = _check(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR)
    q_BQKGH = q_BQNH.reshape(b, t, kh, n // kh, h)
    s_BKGQR = jnp.einsum("bqkgh,brkh->bkgqr", q_BQKGH, k_BRKH, preferred_element_type=_F32)
    allowed_BQR = make_mask(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal)
    s_BKGQR = jnp.where(allowed_BQR[:, None, None], s_BKGQR * scale, -jnp.inf)
    m_BKGQ = lax.stop_gradient(_safe(s_BKGQR.max(-1)))  # softmax is shift-invariant
    p_BKGQR = jnp.exp(s_BKGQR - m_BKGQ[..., None])
    l_BKGQ = p_BKGQR.sum(-1)
    p_BKGQR = p_BKGQR / jnp.where(l_BKGQ > 0, l_BKGQ, 1.0)[..., None]
    o_BQKGH = jnp.einsum("bkgqr,brkh->bqkgh", p_BKGQR.astype(v_BRKH.dtype), v_BRKH,
                         preferred_element_type=_F32)
    lse_BKGQ = jnp.where(l_BKGQ > 0, m_BKGQ + jnp.log(jnp.where(l_BKGQ > 0, l_BKGQ, 1.0)),
                         -jnp.inf)
    return o_BQKGH.reshape(b, t, n, h), lse_BKGQ.reshape(b, n, t)


def dense_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                    causal: bool, scale: float):
    """Reference attention: materialises [B, N, T, S] fp32 scores. Output in q's dtype."""
    out_BTNH, _ = block_attend(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS,
                               causal=causal, scale=scale)
    return out_BTNH.astype(q_BTNH.dtype)


# ------------------------------------------------------------------------------ blockwise
def _blocks(x, nb):
    """[B, T, ...] -> [nb, B, T / nb, ...] for scanning over blocks."""
    x = x.reshape((x.shape[0], nb, x.shape[1] // nb) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unblocks(x):
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _needed(q_seg, k_seg, q_pos, k_pos, causal):
    """False only when every (query, key) pair of the block is masked (then it is skipped).

    Exact: the block's own mask, [B, Q, R] booleans, ~1% of the block's score FLOPs at
    head_dim 32. Id *ranges* over the batch are not enough for packed rows: positions restart
    at every document, so above the diagonal no range test proves the block masked and a
    causal packed step computed every block (1536-token demo stage: 3.97 s vs 2.19 s a step).
    """
    return make_mask(q_seg, k_seg, q_pos, k_pos, causal).any()


def _scores(q_BQKGH, k_BRKH, qs, ks, qp, kp, causal, scale):
    s_BKGQR = jnp.einsum("bqkgh,brkh->bkgqr", q_BQKGH, k_BRKH, preferred_element_type=_F32)
    allowed_BQR = make_mask(qs, ks, qp, kp, causal)
    return s_BKGQR * scale, allowed_BQR[:, None, None]


def _flash_fwd_impl(causal, scale, nq, nk, q_BTNH, k_BSKH, v_BSKH, qs_BT, ks_BS, qp_BT, kp_BS):
    # Tie the ids to the activations. Under a layer `lax.scan`, linearize hoists every
    # computation that depends only on loop-invariant inputs (ids made outside the layer) out
    # of the loop, stacked over all iterations: here the per-block masks of both inner scans,
    # i.e. O(T^2) memory. The barrier makes the ids as loop-variant as q, so nothing is hoisted.
    q_BTNH, k_BSKH, v_BSKH, qs_BT, ks_BS, qp_BT, kp_BS = lax.optimization_barrier(
        (q_BTNH, k_BSKH, v_BSKH, qs_BT, ks_BS, qp_BT, kp_BS))
    b, t, n, h = q_BTNH.shape
    kh = k_BSKH.shape[2]
    g = n // kh
    qb = (_blocks(q_BTNH.reshape(b, t, kh, g, h), nq), _blocks(qs_BT, nq), _blocks(qp_BT, nq))
    kb = (_blocks(k_BSKH, nk), _blocks(v_BSKH, nk), _blocks(ks_BS, nk), _blocks(kp_BS, nk))
    bq = t // nq

    def q_step(_, q_in):
        q_BQKGH, qs, qp = q_in

        def k_step(carry, k_in):
            k_BRKH, v_BRKH, ks, kp = k_in

            def merge(carry):  # online softmax: rescale running sums to the new running max
                o_BQKGH, m_BKGQ, l_BKGQ = carry
                s_BKGQR, allowed = _scores(q_BQKGH, k_BRKH, qs, ks, qp, kp, causal, scale)
                s_BKGQR = jnp.where(allowed, s_BKGQR, -jnp.inf)
                m_new = jnp.maximum(m_BKGQ, s_BKGQR.max(-1))
                m_safe = _safe(m_new)
                p_BKGQR = jnp.exp(s_BKGQR - m_safe[..., None])
                corr_BKGQ = jnp.exp(m_BKGQ - m_safe)
                l_new = l_BKGQ * corr_BKGQ + p_BKGQR.sum(-1)
                pv = jnp.einsum("bkgqr,brkh->bqkgh", p_BKGQR.astype(v_BRKH.dtype), v_BRKH,
                                preferred_element_type=_F32)
                o_new = o_BQKGH * corr_BKGQ.transpose(0, 3, 1, 2)[..., None] + pv
                return o_new, m_new, l_new

            return lax.cond(_needed(qs, ks, qp, kp, causal), merge, lambda c: c, carry), None

        init = (jnp.zeros((b, bq, kh, g, h), _F32), jnp.full((b, kh, g, bq), -jnp.inf, _F32),
                jnp.zeros((b, kh, g, bq), _F32))
        (o_BQKGH, m_BKGQ, l_BKGQ), _ = lax.scan(k_step, init, kb)
        l_pos = jnp.where(l_BKGQ > 0, l_BKGQ, 1.0)
        o_BQKGH = o_BQKGH / l_pos.transpose(0, 3, 1, 2)[..., None]
        lse_BKGQ = jnp.where(l_BKGQ > 0, m_BKGQ + jnp.log(l_pos), -jnp.inf)
        return None, (o_BQKGH, lse_BKGQ)

    _, (o_blk, lse_blk) = lax.scan(q_step, None, qb)
    return _unblocks(o_blk).reshape(b, t, n, h).astype(q_BTNH.dtype), lse_blk


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _flash(causal, scale, nq, nk, q, k, v, qs, ks, qp, kp):
    return _flash_fwd_impl(causal, scale, nq, nk, q, k, v, qs, ks, qp, kp)[0]


def _flash_fwd(causal, scale, nq, nk, q, k, v, qs, ks, qp, kp):
    out, lse = _flash_fwd_impl(causal, scale, nq, nk, q, k, v, qs, ks, qp, kp)
    return out, (q, k, v, qs, ks, qp, kp, out, lse)


def _flash_bwd(causal, scale, nq, nk, res, do_BTNH):
    """Flash backward: recompute probabilities per block from the saved logsumexp."""
    q_BTNH, k_BSKH, v_BSKH, qs_BT, ks_BS, qp_BT, kp_BS, out_BTNH, lse_blk = res
    b, t, n, h = q_BTNH.shape
    kh = k_BSKH.shape[2]
    grp = lambda x: _blocks(x.reshape(b, t, kh, n // kh, h), nq)  # noqa: E731
    do_blk = grp(do_BTNH.astype(_F32))
    # delta = rowsum(dO * O), the softmax-Jacobian term, from the saved output.
    delta_blk = (do_blk * grp(out_BTNH.astype(_F32))).sum(-1).transpose(0, 1, 3, 4, 2)
    qb = (grp(q_BTNH), _blocks(qs_BT, nq), _blocks(qp_BT, nq), do_blk, lse_blk, delta_blk)
    kb = (_blocks(k_BSKH, nk), _blocks(v_BSKH, nk), _blocks(ks_BS, nk), _blocks(kp_BS, nk))

    def k_step(dq_acc, k_in):
        k_BRKH, v_BRKH, ks, kp = k_in
        zeros_kv = jnp.zeros(k_BRKH.shape, _F32)

        def q_step(dkv, q_in):
            q_BQKGH, qs, qp, do_BQKGH, lse_BKGQ, delta_BKGQ = q_in

            def compute(_):
                s_BKGQR, allowed = _scores(q_BQKGH, k_BRKH, qs, ks, qp, kp, causal, scale)
                p_BKGQR = jnp.where(allowed, jnp.exp(s_BKGQR - _safe(lse_BKGQ)[..., None]), 0.0)
                dv_BRKH = jnp.einsum("bkgqr,bqkgh->brkh", p_BKGQR, do_BQKGH)
                dp_BKGQR = jnp.einsum("bqkgh,brkh->bkgqr", do_BQKGH, v_BRKH.astype(_F32))
                ds_BKGQR = p_BKGQR * (dp_BKGQR - delta_BKGQ[..., None]) * scale
                dq_BQKGH = jnp.einsum("bkgqr,brkh->bqkgh", ds_BKGQR, k_BRKH.astype(_F32))
                dk_BRKH = jnp.einsum("bkgqr,bqkgh->brkh", ds_BKGQR, q_BQKGH.astype(_F32))
                return dq_BQKGH, dk_BRKH, dv_BRKH

            skip = lambda _: (jnp.zeros(do_BQKGH.shape, _F32), zeros_kv, zeros_kv)  # noqa: E731
            dq, dk, dv = lax.cond(_needed(qs, ks, qp, kp, causal), compute, skip, None)
            return (dkv[0] + dk, dkv[1] + dv), dq

        (dk_BRKH, dv_BRKH), dq_blk = lax.scan(q_step, (zeros_kv, zeros_kv), qb)
        return dq_acc + dq_blk, (dk_BRKH, dv_BRKH)

    dq_blk, (dk_blk, dv_blk) = lax.scan(k_step, jnp.zeros(do_blk.shape, _F32), kb)
    dq_BTNH = _unblocks(dq_blk).reshape(b, t, n, h)
    return (dq_BTNH.astype(q_BTNH.dtype), _unblocks(dk_blk).astype(k_BSKH.dtype),
            _unblocks(dv_blk).astype(v_BSKH.dtype), None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad(x, length, value):
    if x.shape[1] == length:
        return x
    widths = [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                        causal: bool, scale: float, block_q: int = 512, block_k: int = 512):
    """Flash-style attention: online softmax over key blocks, O(T) activation memory.

    The custom_vjp backward saves only (output, logsumexp) and recomputes each block's
    probabilities. Block pairs whose id ranges rule out every pair are skipped (`lax.cond`).
    Lengths that are not block multiples are padded with ids that match nothing.

    Args:
      q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, causal, scale: as `attend`.
      block_q: query block length (clipped to T).
      block_k: key block length (clipped to S).

    Returns:
      out_BTNH in q's dtype.
    """
    b, t, n, h, s, kh = _check(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q={block_q} and block_k={block_k} must be positive.")
    bq, bk = min(block_q, t), min(block_k, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    q_seg_BT, k_seg_BS = q_seg_BT.astype(jnp.int32), k_seg_BS.astype(jnp.int32)
    q_pos_BT, k_pos_BS = q_pos_BT.astype(jnp.int32), k_pos_BS.astype(jnp.int32)
    out_BTNH = _flash(bool(causal), float(scale), tp // bq, sp // bk,
                      _pad(q_BTNH, tp, 0), _pad(k_BSKH, sp, 0), _pad(v_BSKH, sp, 0),
                      _pad(q_seg_BT, tp, _PAD_Q_SEG), _pad(k_seg_BS, sp, _PAD_K_SEG),
                      _pad(q_pos_BT, tp, 0), _pad(k_pos_BS, sp, 0))
    return out_BTNH[:, :t]


# ---------------------------------------------------------------------------------- cuDNN
def cudnn_available() -> bool:
    """True when JAX sees an NVIDIA GPU (cuDNN flash attention is possible)."""
    return any(d.platform == "gpu" for d in jax.devices())


def _require_cudnn():
    if not cudnn_available():
        raise ValueError("attn_impl='cudnn' needs an NVIDIA GPU with cuDNN; this process sees "
                         f"only {sorted({d.platform for d in jax.devices()})}. Use 'blockwise'.")


def cudnn_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                    causal: bool, scale: float):
    """cuDNN fused attention via `jax.nn.dot_product_attention` (GPU, bf16/fp16 only).

    The id mask is passed as a dense boolean [B, 1, T, S] mask, so memory is O(T * S) bits.
    """
    _require_cudnn()
    if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attn_impl='cudnn' needs bfloat16 or float16 inputs, got {q_BTNH.dtype}; "
                         "set dtype='bfloat16' or use 'blockwise'.")
    _check(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS)
    allowed_BTS = make_mask(q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, causal)
    out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=allowed_BTS[:, None],
                                            scale=scale, implementation="cudnn")
    # Rows with no allowed key are not guaranteed 0 by cuDNN: force the shared contract.
    return jnp.where(allowed_BTS.any(-1)[:, :, None, None], out_BTNH, 0).astype(q_BTNH.dtype)


# ------------------------------------------------------------------------------- dispatch
IMPLS = ("dense", "blockwise", "cudnn", "ring")


def get_attention(impl: str, *, block_q: int = 512, block_k: int = 512,
                  ring_axis: str = "context") -> Callable:
    """The `attend` function for an implementation name, with its options bound.

    Args:
      impl: 'dense' | 'blockwise' | 'cudnn' | 'ring' (ring needs an active mesh, see
        `lctx.sharding`).
      block_q, block_k: blockwise block lengths.
      ring_axis: mesh axis holding the sequence shards for 'ring'.
    """
    if impl == "dense":
        return dense_attention
    if impl == "blockwise":
        return functools.partial(blockwise_attention, block_q=block_q, block_k=block_k)
    if impl == "cudnn":
        _require_cudnn()  # fail when the model is built, not deep inside a trace
        return cudnn_attention
    if impl == "ring":
        from lctx import ring_attention  # lazy: needs the mesh machinery only when used
        # Ring picks its inner block from the shard length (gcd with 512).
        return functools.partial(ring_attention.ring_attention, axis_name=ring_axis)
    raise ValueError(f"attn_impl={impl!r}; expected one of {IMPLS}.")
