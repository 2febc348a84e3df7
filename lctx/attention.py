"""Attention kernels: dense, blockwise (flash-style, custom_vjp) and cuDNN, one signature.

Every kernel is `attend(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
causal, scale) -> out_BTNH`. Masking is by ids, never by index (docs/DESIGN.md):
`allowed = (seg_q == seg_k != 0) & (pos_q >= pos_k if causal)`, which makes packed documents,
arbitrary position ids, KV caches and permuted (zigzag) layouts the same code. Segment 0 is
padding and attends nothing. A query with no allowed key returns 0 (its logsumexp is -inf).

GQA groups the N = K * G query heads by kv head (`q.reshape(B, T, K, G, H)`); K/V are never
repeated. Softmax statistics and accumulators are float32 whatever the input dtype.

Axes: B batch, T query positions, S key positions, N query heads, K kv heads, G = N / K,
H head dim, Q / R query / key block length.

`get_attention(impl, ...)` is the dispatch point the model uses ('dense', 'blockwise',
'cudnn', 'ring'); `validate` checks an `attn` config section up front. The block math that
blockwise and ring attention share (mask, exact empty-block skip, block kernels) is in
`lctx.blocks`.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from lctx import blocks
from lctx import layout as layout_lib
from lctx.sharding import CONTEXT

# Padding ids for blockwise tails: different from each other and from real ids (>= 0), so a
# padded query or key never matches anything.
_PAD_Q_SEG, _PAD_K_SEG = -1, -2
make_mask = blocks.make_mask


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


# One block pair, materialised: (out_BQNH float32, lse_BNQ float32), the XLA block kernel.
block_attend = blocks.xla_fwd


def dense_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                    causal: bool, scale: float):
    """Reference attention: the XLA block kernel over the whole sequence, differentiated by
    autodiff; materialises [B, N, T, S] fp32 scores. Output in q's dtype."""
    _check(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS)
    out_BTNH, _ = blocks.xla_fwd(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT,
                                 k_pos_BS, causal=causal, scale=scale)
    return out_BTNH.astype(q_BTNH.dtype)


# ------------------------------------------------------------------------------ blockwise
def _spans(nq, nk, q_BTNH, k_BSKH, v_BSKH, qs_BT, ks_BS, qp_BT, kp_BS):
    split = blocks.split_blocks
    return ((split(q_BTNH, nq), split(qs_BT, nq), split(qp_BT, nq)),
            (split(k_BSKH, nk), split(v_BSKH, nk), split(ks_BS, nk), split(kp_BS, nk)))


def _flash_fwd_impl(kernel, causal, scale, nq, nk, *args):
    q_BTNH, k_BSKH, v_BSKH, qs_BT, ks_BS, qp_BT, kp_BS = blocks.tie(*args)
    b, t, n, h = q_BTNH.shape
    q_span, kv_span = _spans(nq, nk, q_BTNH, k_BSKH, v_BSKH, qs_BT, ks_BS, qp_BT, kp_BS)
    acc = (jnp.zeros((nq, b, t // nq, n, h), jnp.float32),
           jnp.full((nq, b, n, t // nq), -jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))
    o_n, lse_n, _ = blocks.span_fwd(blocks.KERNELS[kernel], q_span, kv_span, acc,
                                    causal=causal, scale=scale)
    return blocks.join_blocks(o_n).astype(q_BTNH.dtype), lse_n


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _flash(kernel, causal, scale, nq, nk, *args):
    return _flash_fwd_impl(kernel, causal, scale, nq, nk, *args)[0]


def _flash_fwd(kernel, causal, scale, nq, nk, *args):
    out_BTNH, lse_n = _flash_fwd_impl(kernel, causal, scale, nq, nk, *args)
    return out_BTNH, (args, out_BTNH, lse_n)


def _flash_bwd(kernel, causal, scale, nq, nk, res, do_BTNH):
    """Flash backward: recompute probabilities per block from the saved logsumexp."""
    args, out_BTNH, lse_n = res
    q_BTNH, k_BSKH, v_BSKH = args[:3]
    q_span, kv_span = _spans(nq, nk, *args)
    do_n, out_n = blocks.split_blocks(do_BTNH, nq), blocks.split_blocks(out_BTNH, nq)
    dq_n, dk_m, dv_m = blocks.span_bwd(
        blocks.KERNELS[kernel], (*q_span, out_n, lse_n, do_n), kv_span,
        jnp.zeros(do_n.shape, jnp.float32), causal=causal, scale=scale)
    join = blocks.join_blocks
    return (join(dq_n).astype(q_BTNH.dtype), join(dk_m).astype(k_BSKH.dtype),
            join(dv_m).astype(v_BSKH.dtype), None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad(x, length, value):
    if x.shape[1] == length:
        return x
    widths = [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                        causal: bool, scale: float, block_q: int = 512, block_k: int = 512,
                        kernel: str = "xla"):
    """Flash-style attention: partial results per key block merged by logsumexp, O(T) memory.

    The custom_vjp backward saves only (output, logsumexp) and recomputes each block's
    probabilities. A block pair whose mask is all false is skipped (`blocks.needed`).
    Lengths that are not block multiples are padded with ids that match nothing.

    Args:
      q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, causal, scale: as `attend`.
      block_q: query block length (clipped to T).
      block_k: key block length (clipped to S).
      kernel: block kernel name in `lctx.blocks.KERNELS` ('xla' portable, 'cudnn' GPU).

    Returns:
      out_BTNH in q's dtype.
    """
    b, t, n, h, s, kh = _check(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q={block_q} and block_k={block_k} must be positive.")
    fused = blocks.check_kernel(kernel).fused
    if fused is not None and t == s:  # one fused call (cuDNN) beats a loop over blocks
        return fused(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS,
                     causal=causal, scale=scale)
    bq, bk = min(block_q, t), min(block_k, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    q_seg_BT, k_seg_BS = q_seg_BT.astype(jnp.int32), k_seg_BS.astype(jnp.int32)
    q_pos_BT, k_pos_BS = q_pos_BT.astype(jnp.int32), k_pos_BS.astype(jnp.int32)
    out_BTNH = _flash(kernel, bool(causal), float(scale), tp // bq, sp // bk,
                      _pad(q_BTNH, tp, 0), _pad(k_BSKH, sp, 0), _pad(v_BSKH, sp, 0),
                      _pad(q_seg_BT, tp, _PAD_Q_SEG), _pad(k_seg_BS, sp, _PAD_K_SEG),
                      _pad(q_pos_BT, tp, 0), _pad(k_pos_BS, sp, 0))
    return out_BTNH[:, :t]


# ---------------------------------------------------------------------------------- cuDNN
def cudnn_available() -> bool:
    """True when JAX sees an NVIDIA GPU (cuDNN flash attention is possible)."""
    return blocks.gpu_available()


def _require_cudnn():
    if not cudnn_available():
        raise ValueError("attn_impl='cudnn' needs an NVIDIA GPU with cuDNN; this process sees "
                         f"only {sorted({d.platform for d in jax.devices()})}. Use 'blockwise'.")


def cudnn_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                    causal: bool, scale: float):
    """cuDNN fused attention, one call over the whole sequence (`lctx.cudnn_attention`:
    documents from segment ids as cuDNN sequence packing, never a dense [T, S] mask; GPU,
    bf16/fp16). The same kernel as blockwise attention with kernel='cudnn'."""
    _require_cudnn()
    _check(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS)
    return blockwise_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS,
                               causal=causal, scale=scale, kernel="cudnn")


# ------------------------------------------------------------------------------- dispatch
IMPLS = ("dense", "blockwise", "cudnn", "ring")


def validate(impl: str, kernel: str = "xla", block_q: int = 512, block_k: int = 512, *,
             seq_len: int | None = None, context: int = 1, prefix: str = "attn",
             seq_field: str = "seq_len", layout: str = "zigzag") -> None:
    """Checks an attention config before anything runs; errors name the field and the fix.

    Args:
      impl, kernel, block_q, block_k: the `attn` section's fields.
      seq_len: a stage's T (checked against the ring's blocks and the token layout the data
        applies when given).
      context: size of the mesh's context axis.
      prefix: how the config spells the section ('attn').
      seq_field: how the config spells seq_len (e.g. 'stages.s1_180k.seq_len').
      layout: the `ring_layout` field: the token layout the data applies when context > 1
        ('zigzag' | 'balanced', `lctx.layout.batch_layout`).
    """
    if impl not in IMPLS:
        raise ValueError(f"{prefix}.impl={impl!r}; expected one of {IMPLS}.")
    for name, v in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{prefix}.{name}={v!r} must be a positive number of tokens.")
    if layout not in layout_lib.LAYOUTS:
        raise ValueError(f"{prefix}.ring_layout={layout!r}; expected one of "
                         f"{layout_lib.LAYOUTS}.")
    if impl == "cudnn":
        _require_cudnn()
    if impl in ("blockwise", "ring"):
        blocks.check_kernel(kernel, field=f"{prefix}.kernel")
    if seq_len is None:
        return
    names = (seq_field, "mesh.context", f"{prefix}.block_q", f"{prefix}.block_k")
    if impl == "ring":
        layout_lib.ring_blocks(seq_len, context, block_q, block_k, names=names)
    if context > 1:  # the data pipeline applies the layout whatever the kernel
        if layout == "balanced":
            try:
                layout_lib.layout_unit(seq_len, context, block_q, block_k, names=names)
            except ValueError as e:
                raise ValueError(f"{prefix}.ring_layout='balanced': {e}") from None
        else:  # blocks of 1 token always fit: this checks only that the zigzag splits T
            layout_lib.ring_blocks(seq_len, context, 1, 1, names=names)


def get_attention(impl: str, *, block_q: int = 512, block_k: int = 512, kernel: str = "xla",
                  ring_axis: str = CONTEXT, ring_layout: str = "zigzag") -> Callable:
    """The `attend` function for an implementation name, with its options bound.

    Args:
      impl: 'dense' | 'blockwise' | 'cudnn' | 'ring' (ring needs an active mesh, see
        `lctx.sharding`).
      block_q, block_k: block lengths of blockwise and of the ring's steps (the ring uses
        the largest divisor of its layout chunk not above them, see `ring_blocks`).
      kernel: block kernel of blockwise and ring ('xla' | 'cudnn', `lctx.blocks.KERNELS`).
      ring_axis: mesh axis holding the sequence shards for 'ring'.
      ring_layout: the token layout the data applied for 'ring' ('zigzag' | 'balanced').
    """
    if impl in ("blockwise", "ring"):
        blocks.check_kernel(kernel)  # fail when the model is built, not inside a trace
    if impl == "dense":
        return dense_attention
    if impl == "blockwise":
        return functools.partial(blockwise_attention, block_q=block_q, block_k=block_k,
                                 kernel=kernel)
    if impl == "cudnn":
        _require_cudnn()
        return cudnn_attention
    if impl == "ring":
        from lctx import ring_attention  # lazy: needs the mesh machinery only when used
        return functools.partial(ring_attention.ring_attention, axis_name=ring_axis,
                                 block_q=block_q, block_k=block_k, kernel=kernel,
                                 layout=ring_layout)
    raise ValueError(f"attn_impl={impl!r}; expected one of {IMPLS}.")
