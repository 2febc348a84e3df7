"""Block math shared by blockwise and ring attention: the id mask, the exact empty-block
test, the block kernels, and the loops that run a kernel over every block pair.

`lctx.attention.blockwise_attention` runs the loops once over the whole sequence;
`lctx.ring_attention` runs them once per ring step on the K/V shard that is visiting. Both
merge partial results by logsumexp in float32, and both skip a block pair exactly when its
mask is all false (`needed`), so packed rows cost only the block pairs their documents fill.

Block kernel contract (a `BlockKernel`; a new kernel registers in `KERNELS`):

  fwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, *, causal, scale)
      -> (out_BQNH, lse_BNQ)
    Attention of one query block over one key block, with `allowed = (q_seg == k_seg != 0)
    & (q_pos >= k_pos if causal)` (segment 0 is padding); GQA: query head n reads kv
    head n // G (N = K * G), K/V are never repeated. `out_BQNH` is normalised over this key
    block alone, float32 or the input dtype, and 0 for a query with no allowed key.
    `lse_BNQ` is float32, laid out [B, N, Q]: the natural-log logsumexp over the allowed keys
    of `scale * q.k`, -inf for a query with no allowed key (padding rows included).

  bwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, out_BQNH, lse_BNQ,
      do_BQNH, *, causal, scale) -> (dq_BQNH, dk_BRKH, dv_BRKH), float32
    The flash-attention backward of one block pair, where `out_BQNH` and `lse_BNQ` (float32)
    belong to the whole attention row (every key block, every ring step), so
    `exp(scale * q.k - lse)` are the row's true probabilities and `rowsum(dO * out)` its
    softmax-Jacobian term. The loops never differentiate through `fwd`: a kernel's own VJP
    is not used. The 'cudnn' kernel is `lctx.cudnn_attention.pair_fwd/pair_bwd`; its
    `fused` whole-sequence call is what blockwise attention runs when T == S.

Axes: B batch, Q / R query / key block length, N query heads, K kv heads, G = N / K,
H head dim; a leading `n` / `m` is the query / key block index of a stacked span.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32


def make_mask(q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, causal: bool):
    """Boolean [B, T, S]: same non-zero segment and (if causal) key position <= query position.

    Segment 0 is padding: it attends nothing and nothing attends it (its rows give 0), as in
    `lctx.cudnn_attention`. Padding then costs no block pairs, and the ring's static zigzag
    plan is exact for it too (padding positions are all 0, so padding "attending padding"
    would run against the token order).
    """
    allowed_BTS = (q_seg_BT[:, :, None] == k_seg_BS[:, None, :]) & (q_seg_BT[:, :, None] != 0)
    if causal:
        allowed_BTS &= q_pos_BT[:, :, None] >= k_pos_BS[:, None, :]
    return allowed_BTS


def needed(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal: bool):
    """False exactly when every (query, key) pair of the block pair is masked.

    The block's own mask, [B, Q, R] booleans: ~1% of the block's score FLOPs at head dim
    32. Id *ranges* are not enough for packed rows: positions restart at every document, so
    above the diagonal no range test proves a block masked (the 1536-token demo stage ran
    3.97 s a step with the range test, 2.19 s with this one).
    """
    return make_mask(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal).any()


def safe(x):
    """-inf (a row with no allowed key) -> 0, so exp(s - x) is 0, never NaN."""
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _grouped(q_BQNH, kh):
    b, q, n, h = q_BQNH.shape
    return q_BQNH.reshape(b, q, kh, n // kh, h)


# ---------------------------------------------------------------------------- kernels
def xla_fwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, *, causal: bool,
            scale: float):
    """Portable block kernel (any backend): materialises the [B, K, G, Q, R] scores."""
    b, q, n, h = q_BQNH.shape
    kh = k_BRKH.shape[2]
    s_BKGQR = jnp.einsum("bqkgh,brkh->bkgqr", _grouped(q_BQNH, kh), k_BRKH,
                         preferred_element_type=_F32) * scale
    allowed_BQR = make_mask(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal)
    s_BKGQR = jnp.where(allowed_BQR[:, None, None], s_BKGQR, -jnp.inf)
    m_BKGQ = lax.stop_gradient(safe(s_BKGQR.max(-1)))  # softmax is shift-invariant
    p_BKGQR = jnp.exp(s_BKGQR - m_BKGQ[..., None])
    l_BKGQ = p_BKGQR.sum(-1)
    l_pos = jnp.where(l_BKGQ > 0, l_BKGQ, 1.0)
    # Probabilities go to the matmul in V's dtype (bf16 on GPU), accumulated in float32.
    o_BQKGH = jnp.einsum("bkgqr,brkh->bqkgh", p_BKGQR.astype(v_BRKH.dtype), v_BRKH,
                         preferred_element_type=_F32)
    o_BQKGH = o_BQKGH / l_pos.transpose(0, 3, 1, 2)[..., None]
    lse_BKGQ = jnp.where(l_BKGQ > 0, m_BKGQ + jnp.log(l_pos), -jnp.inf)
    return o_BQKGH.reshape(b, q, n, h), lse_BKGQ.reshape(b, n, q)


def xla_bwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, out_BQNH, lse_BNQ,
            do_BQNH, *, causal: bool, scale: float):
    """Flash backward of one block pair from the row's output and logsumexp.

    Matmul operands are in the input dtype (bf16 on GPU) with float32 accumulation; the
    softmax algebra (p, dS) is float32. With float32 inputs everything is float32.
    """
    b, q, n, h = q_BQNH.shape
    kh, dt = k_BRKH.shape[2], q_BQNH.dtype
    q_BQKGH, do_BQKGH = _grouped(q_BQNH, kh), _grouped(do_BQNH.astype(dt), kh)
    # rowsum(dO * O): Q*N*H multiply-adds, ~1/(8R) of this pair's matmul work.
    delta_BNQ = jnp.swapaxes((do_BQNH.astype(_F32) * out_BQNH.astype(_F32)).sum(-1), -1, -2)
    lse_BKGQ, delta_BKGQ = lse_BNQ.reshape(b, kh, n // kh, q), delta_BNQ.reshape(b, kh, n // kh, q)
    mm = functools.partial(jnp.einsum, preferred_element_type=_F32)
    s_BKGQR = mm("bqkgh,brkh->bkgqr", q_BQKGH, k_BRKH) * scale
    allowed_BQR = make_mask(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal)
    p_BKGQR = jnp.where(allowed_BQR[:, None, None], jnp.exp(s_BKGQR - safe(lse_BKGQ)[..., None]),
                        0.0)
    dv_BRKH = mm("bkgqr,bqkgh->brkh", p_BKGQR.astype(dt), do_BQKGH)
    dp_BKGQR = mm("bqkgh,brkh->bkgqr", do_BQKGH, v_BRKH)
    ds_BKGQR = (p_BKGQR * (dp_BKGQR - delta_BKGQ[..., None]) * scale).astype(dt)
    dq_BQKGH = mm("bkgqr,brkh->bqkgh", ds_BKGQR, k_BRKH)
    dk_BRKH = mm("bkgqr,bqkgh->brkh", ds_BKGQR, q_BQKGH)
    return dq_BQKGH.reshape(b, q, n, h), dk_BRKH, dv_BRKH


class BlockKernel(NamedTuple):
    """A block kernel: `fwd`/`bwd` as in the module docstring; `gpu`: needs an NVIDIA GPU;
    `fused`: optional whole-sequence `attend` (queries and keys the same tokens) that
    blockwise attention calls instead of its block loop."""
    fwd: Callable
    bwd: Callable
    gpu: bool = False
    fused: Callable | None = None


def _cudnn_kernel(backend: str) -> BlockKernel:
    """lctx.cudnn_attention (cuDNN fused attention with sequence packing); backend 'xla' is
    its CPU twin, the same code with cuDNN's two calls emulated."""
    from lctx import cudnn_attention as cda
    return BlockKernel(functools.partial(cda.pair_fwd, fallback=xla_fwd, backend=backend),
                       functools.partial(cda.pair_bwd, fallback=xla_bwd, backend=backend),
                       gpu=backend == "cudnn",
                       fused=functools.partial(cda.cudnn_attention, backend=backend))


KERNELS: dict[str, BlockKernel] = {"xla": BlockKernel(xla_fwd, xla_bwd),
                                   "cudnn": _cudnn_kernel("cudnn")}


def gpu_available() -> bool:
    """True when JAX sees an NVIDIA GPU."""
    return any(d.platform == "gpu" for d in jax.devices())


def check_kernel(name: str, field: str = "kernel") -> BlockKernel:
    """The registered kernel `name`, or a ValueError naming `field` and the fix."""
    if name not in KERNELS:
        raise ValueError(f"{field}={name!r} is not a block kernel; expected one of "
                         f"{sorted(KERNELS)} ('xla' runs everywhere).")
    if KERNELS[name].gpu and not gpu_available():
        raise ValueError(f"{field}={name!r} needs an NVIDIA GPU; this process sees only "
                         f"{sorted({d.platform for d in jax.devices()})}. Use {field}='xla'.")
    return KERNELS[name]


# ------------------------------------------------------------------------------ loops
def split_blocks(x, nb):
    """[B, T, ...] -> [nb, B, T / nb, ...] (a span of blocks to scan over)."""
    x = x.reshape((x.shape[0], nb, x.shape[1] // nb) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def join_blocks(x):
    """Inverse of `split_blocks`."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def merge(o_BQNH, lse_BNQ, ob_BQNH, lb_BNQ):
    """Combine two normalised partial results over disjoint key sets by their logsumexp."""
    new_BNQ = jnp.logaddexp(lse_BNQ, lb_BNQ)
    w_old = jnp.exp(lse_BNQ - safe(new_BNQ)).transpose(0, 2, 1)[..., None]
    w_blk = jnp.exp(lb_BNQ - safe(new_BNQ)).transpose(0, 2, 1)[..., None]
    return o_BQNH * w_old + ob_BQNH.astype(_F32) * w_blk, new_BNQ


def span_fwd(kernel: BlockKernel, q_span, kv_span, acc, *, causal: bool, scale: float):
    """Merges every needed (query block, key block) pair of two spans into `acc`.

    Args:
      kernel: the block kernel.
      q_span: (q_nBQNH, q_seg_nBQ, q_pos_nBQ), stacked over query blocks.
      kv_span: (k_mBRKH, v_mBRKH, k_seg_mBR, k_pos_mBR), stacked over key blocks.
      acc: (o_nBQNH float32, lse_nBNQ float32, computed pairs int32 scalar).

    Returns:
      `acc` with this key span merged in.
    """
    fwd = functools.partial(kernel.fwd, causal=causal, scale=scale)

    def q_block(count, xs):
        q_BQNH, q_seg_BQ, q_pos_BQ, o_BQNH, lse_BNQ = xs

        def k_block(carry, kv):
            k_BRKH, v_BRKH, k_seg_BR, k_pos_BR = kv

            def compute(carry):
                o_BQNH, lse_BNQ, count = carry
                ob, lb = fwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR)
                return (*merge(o_BQNH, lse_BNQ, ob, lb), count + 1)

            need = needed(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal)
            return lax.cond(need, compute, lambda c: c, carry), None

        (o_BQNH, lse_BNQ, count), _ = lax.scan(k_block, (o_BQNH, lse_BNQ, count), kv_span)
        return count, (o_BQNH, lse_BNQ)

    o_acc, lse_acc, count = acc
    count, (o_acc, lse_acc) = lax.scan(q_block, count, (*q_span, o_acc, lse_acc))
    return o_acc, lse_acc, count


def span_bwd(kernel: BlockKernel, q_span, kv_span, dq_acc, *, causal: bool, scale: float):
    """Backward of `span_fwd`: adds to dQ and returns this key span's dK, dV.

    Args:
      kernel: the block kernel.
      q_span: (q, q_seg, q_pos, out_nBQNH, lse_nBNQ, do_nBQNH), stacked over query blocks;
        out and lse are the whole row's.
      kv_span: as in `span_fwd`.
      dq_acc: dq_nBQNH float32.

    Returns:
      (dq_acc + this span's dQ, dk_mBRKH float32, dv_mBRKH float32).
    """
    bwd = functools.partial(kernel.bwd, causal=causal, scale=scale)

    def k_block(dq_acc, kv):
        k_BRKH, v_BRKH, k_seg_BR, k_pos_BR = kv
        zero_kv = jnp.zeros_like(k_BRKH, _F32)

        def q_block(dkv, xs):
            q_BQNH, q_seg_BQ, q_pos_BQ, out_BQNH, lse_BNQ, do_BQNH = xs

            def compute(_):
                return bwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR,
                           out_BQNH, lse_BNQ, do_BQNH)

            def skip(_):
                return jnp.zeros_like(do_BQNH, _F32), zero_kv, zero_kv

            need = needed(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal)
            dq, dk, dv = lax.cond(need, compute, skip, None)
            return (dkv[0] + dk, dkv[1] + dv), dq

        (dk_BRKH, dv_BRKH), dq_n = lax.scan(q_block, (zero_kv, zero_kv), q_span)
        return dq_acc + dq_n, (dk_BRKH, dv_BRKH)

    dq_acc, (dk_m, dv_m) = lax.scan(k_block, dq_acc, kv_span)
    return dq_acc, dk_m, dv_m


def tie(*xs):
    """Makes ids as loop-variant as the activations they are passed with.

    Under a layer `lax.scan`, linearize hoists computations that depend only on
    loop-invariant inputs (ids made outside the layer) out of the loop, stacked over all
    iterations: here the per-block masks of every block pair, O(T^2) memory.
    """
    return lax.optimization_barrier(xs)
