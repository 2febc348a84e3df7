"""cuDNN fused attention as lctx's GPU block kernel, and its pure-XLA twin (same contract).

Why cuDNN: on an H200 (jax 0.11.2, N=32, K=8, H=128, bf16, causal, T=32K) cuDNN flash
attention ran 578 / 545 TFLOP/s fwd / fwd+bwd, sequence-packed 508 / 446, against 62 / 53 for
lctx's XLA blockwise kernel, 60 / 47 for JAX's (deprecated) Pallas Triton kernel and 25 / 25
for cuDNN behind a dense [T, S] mask (/work/tools/gpu/RESULTS_1.md).

Masking without a mask. Documents are the maximal runs of equal, non-zero segment ids in a
row; cuDNN is told where they are (sequence lengths and offsets), never given a [T, S] mask:

* kind 'causal': queries and keys are the same tokens; a query sees the keys of its document
  up to itself (cuDNN PADDING_CAUSAL). With positions increasing inside each document this is
  exactly lctx's `pos_q >= pos_k` mask.
* kind 'full': a query sees every key of its document (cuDNN PADDING). A ring step whose keys
  all precede its queries is 'full'; so is non-causal attention.
* Segment 0 is padding: its queries see nothing (output 0, logsumexp -inf) and its keys are
  seen by no query. (The XLA kernels let padding attend to padding; only padding rows' own
  outputs differ, and the loss masks them.)
* `max_docs` (static) bounds the documents per row. 1: one document per row from index 0,
  padding after it: cuDNN's plain padded call (per-row lengths). >= 2: sequence packing with
  lengths [B, M] and offsets [B, M + 1]; cuDNN then sees B * M virtual sequences and returns
  its softmax statistics as a dense [B * M, N, T] array (XLA's cuda_dnn.cc gives Q, K, V, O
  ragged offsets but the stats none): stats[v, n, i] belongs to query i of virtual sequence
  v, v counting the used (b, m) slots in order. `_stats_to_lse` / `_lse_to_stats` convert.

Preconditions, checked on device: non-zero ids increase from run to run (each id one run);
positions strictly increase inside a run; at most `max_docs` runs; 'causal' gets identical
query and key ids; 'full' with causal=True has every key position of a document <= every
query position of it; max_docs=1 has the document at index 0. A row that breaks one comes
back NaN: never silently wrong (lctx's packing and the zigzag layout satisfy them all).

Returned: out_BTNH in q's dtype, lse_BNT float32 (lctx's layout: cuDNN's own, not
jax.nn's transposed bf16 copy), zero rows / -inf where nothing is allowed. `block_bwd` is the
flash backward from a given (out, lse): the global ones in a ring. The backward runs cuDNN's
own backward primitive with those statistics, so no VJP that drops the logsumexp cotangent is
ever differentiated through.

backend='cudnn' runs on an NVIDIA GPU (bf16/fp16); backend='xla' is the twin: `_twin_fwd` /
`_twin_bwd` take cuDNN's exact arguments and return its exact layouts (poisoning what cuDNN
leaves unwritten with NaN), so on CPU every line here except the two cuDNN calls runs.

Axes: B batch, T query positions, S key positions, N query heads, K kv heads, G = N / K,
H head dim, M documents per row (`max_docs`), V = B * M virtual sequences.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_F32 = jnp.float32
KINDS = ("causal", "full")
BACKENDS = ("xla", "cudnn")
DEFAULT_MAX_DOCS = 16


def check_backend(backend: str, field: str = "attn.kernel") -> None:
    """Raise a ValueError naming `field` unless `backend` can run in this process."""
    if backend not in BACKENDS:
        raise ValueError(f"{field}={backend!r}; expected one of {BACKENDS}.")
    if backend == "cudnn" and not any(d.platform == "gpu" for d in jax.devices()):
        raise ValueError(f"{field}='cudnn' needs an NVIDIA GPU with cuDNN; this process sees "
                         f"only {sorted({d.platform for d in jax.devices()})}. Use 'xla'.")


# ---------------------------------------------------------------- documents -> cuDNN args
class _Plan(NamedTuple):
    q_len: jax.Array  # [B] (max_docs 1) or [B, M]; -1 marks an unused slot
    kv_len: jax.Array
    q_off: jax.Array | None  # [B, M + 1] token offsets, -1 unused; None when not packed
    kv_off: jax.Array | None
    q_in_BT: jax.Array  # query inside a computed document
    k_in_BS: jax.Array  # key inside a computed document
    q_v_BT: jax.Array  # virtual sequence of each query (its stats row)
    q_i_BT: jax.Array  # index of the query inside it
    ok_B: jax.Array  # preconditions hold


def _runs(seg_BT, pos_BT, m):
    """Documents of each row: start, length, id [B, M] (-1 unused), run of each token, ok."""
    b, t = seg_BT.shape
    idx_T = jnp.arange(t, dtype=jnp.int32)
    prev_BT = jnp.pad(seg_BT[:, :-1], ((0, 0), (1, 0)))
    first_BT = (idx_T == 0) | (seg_BT != prev_BT)
    start_BT = first_BT & (seg_BT != 0)
    run_BT = jnp.cumsum(start_BT, axis=1, dtype=jnp.int32) - 1
    real_BT = (seg_BT != 0) & (run_BT < m)
    slot_BT = jnp.where(real_BT, run_BT, m)  # m: out of range, dropped by the scatters
    rows = jnp.arange(b)[:, None]
    length_BM = jnp.zeros((b, m), jnp.int32).at[rows, slot_BT].add(1, mode="drop")
    used_BM = length_BM > 0
    start_BM = jnp.full((b, m), t, jnp.int32).at[rows, slot_BT].min(idx_T, mode="drop")
    id_BM = jnp.full((b, m), -1, jnp.int32).at[rows, slot_BT].max(seg_BT, mode="drop")
    start_BM = jnp.where(used_BM, start_BM, -1)
    length_BM = jnp.where(used_BM, length_BM, -1)
    ok_B = start_BT.sum(1) <= m
    ok_B &= jnp.all(~used_BM[:, 1:] | (id_BM[:, 1:] > id_BM[:, :-1]), axis=1)
    inside_BT = (seg_BT[:, 1:] == seg_BT[:, :-1]) & (seg_BT[:, 1:] != 0)
    ok_B &= jnp.all(~inside_BT | (pos_BT[:, 1:] > pos_BT[:, :-1]), axis=1)
    if m == 1:  # plain padded call: the document must start the row
        ok_B &= ~used_BM[:, 0] | (start_BM[:, 0] == 0)
    return start_BM, length_BM, id_BM, real_BT, run_BT, ok_B


def _plan(q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *, kind, causal, max_docs) -> _Plan:
    m = max_docs
    q_seg_BT, k_seg_BS = q_seg_BT.astype(jnp.int32), k_seg_BS.astype(jnp.int32)
    q_pos_BT, k_pos_BS = q_pos_BT.astype(jnp.int32), k_pos_BS.astype(jnp.int32)
    qs, ql, qid, q_real, q_run, ok_B = _runs(q_seg_BT, q_pos_BT, m)
    b = qs.shape[0]
    rows = jnp.arange(b)[:, None]
    if kind == "causal":  # the same tokens on both sides: key documents = query documents
        ok_B &= jnp.all((q_seg_BT == k_seg_BS) & (q_pos_BT == k_pos_BS), axis=1)
        match_BM, ks, kl, k_real, k_run = qs >= 0, qs, ql, q_real, q_run
        k_used_BM = match_BM
    else:  # pair each query document with the key document of the same id
        ks0, kl0, kid, k_real, k_run, k_ok = _runs(k_seg_BS, k_pos_BS, m)
        ok_B &= k_ok
        sorted_kid = jnp.where(kid >= 0, kid, jnp.iinfo(jnp.int32).max)
        j_BM = jnp.minimum(jax.vmap(jnp.searchsorted)(sorted_kid, qid), m - 1)
        match_BM = (qid >= 0) & (jnp.take_along_axis(kid, j_BM, 1) == qid)
        ks = jnp.where(match_BM, jnp.take_along_axis(ks0, j_BM, 1), -1)
        kl = jnp.where(match_BM, jnp.take_along_axis(kl0, j_BM, 1), -1)
        k_used_BM = jnp.zeros((b, m), bool).at[rows, jnp.where(match_BM, j_BM, m)].set(
            True, mode="drop")
        if causal:  # 'full' must not hide a causal constraint: last key <= first query
            k_last = jnp.take_along_axis(k_pos_BS, jnp.maximum(ks + kl - 1, 0), 1)
            q_first = jnp.take_along_axis(q_pos_BT, jnp.maximum(qs, 0), 1)
            ok_B &= jnp.all(~match_BM | (k_last <= q_first), axis=1)
    q_len = jnp.where(match_BM, ql, -1)
    kv_len = jnp.where(match_BM, kl, -1)
    q_in_BT = q_real & jnp.take_along_axis(match_BM, jnp.clip(q_run, 0, m - 1), 1)
    k_in_BS = k_real & jnp.take_along_axis(k_used_BM, jnp.clip(k_run, 0, m - 1), 1)
    q_i_BT = jnp.arange(q_seg_BT.shape[1], dtype=jnp.int32) - jnp.take_along_axis(
        jnp.maximum(qs, 0), jnp.clip(q_run, 0, m - 1), 1)
    if m == 1:  # one virtual sequence per row; an empty row gets length 0
        return _Plan(jnp.maximum(q_len[:, 0], 0), jnp.maximum(kv_len[:, 0], 0), None, None,
                     q_in_BT, k_in_BS, jnp.broadcast_to(rows, q_in_BT.shape), q_i_BT, ok_B)
    # Packed: JAX drops the -1 slots of the flattened [B, M] list, so virtual sequence v of a
    # used slot is the number of used slots before it (row-major).
    v_BM = (jnp.cumsum(match_BM.reshape(-1)) - 1).reshape(b, m).astype(jnp.int32)
    q_v_BT = jnp.take_along_axis(v_BM, jnp.clip(q_run, 0, m - 1), 1)
    col = jnp.full((b, 1), -1, jnp.int32)
    return _Plan(q_len, kv_len, jnp.concatenate([jnp.where(match_BM, qs, -1), col], 1),
                 jnp.concatenate([ks, col], 1), q_in_BT, k_in_BS, q_v_BT, q_i_BT, ok_B)


def _stats_to_lse(stats, plan: _Plan):
    """cuDNN stats ([B, N, T] plain, [B * M, N, T] packed) -> lse_BNT, -inf outside."""
    n = stats.shape[1]
    v_BNT = jnp.where(plan.q_in_BT, plan.q_v_BT, 0)[:, None, :]
    i_BNT = jnp.where(plan.q_in_BT, plan.q_i_BT, 0)[:, None, :]
    lse_BNT = stats[v_BNT, jnp.arange(n)[None, :, None], i_BNT]
    return jnp.where(plan.q_in_BT[:, None, :], lse_BNT.astype(_F32), -jnp.inf)


def _lse_to_stats(lse_BNT, plan: _Plan, v: int):
    """Inverse of `_stats_to_lse`: a [V, N, T] stats array, 0 where cuDNN reads nothing."""
    b, n, t = lse_BNT.shape
    v_BNT = jnp.where(plan.q_in_BT, plan.q_v_BT, v)[:, None, :]  # v: dropped
    val = jnp.where(jnp.isfinite(lse_BNT), lse_BNT, 0.0).astype(_F32)
    return jnp.zeros((v, n, t), _F32).at[v_BNT, jnp.arange(n)[None, :, None],
                                         plan.q_i_BT[:, None, :]].set(val, mode="drop")


# ------------------------------------------------------------------------ the two backends
def _mask_kind(kind):
    return "PADDING_CAUSAL" if kind == "causal" else "PADDING"


def _fa():
    """JAX's cuDNN attention module. Private API: only `_cudnn_fwd` / `_cudnn_bwd` use it."""
    from jax._src.cudnn import fused_attention_stablehlo as fa
    return fa


def _cudnn_args(fa, q, k, v, plan, kind):
    packed = plan.q_off is not None
    if packed and k.shape[2] != q.shape[2] and jax.__version_info__ < (0, 11, 1):
        # jax < 0.11.1 scales kv offsets by the query head count (fixed upstream 2026-07-30).
        raise ValueError("cuDNN sequence packing with GQA needs jax >= 0.11.1; set "
                         "max_docs=1 (one document per row) or upgrade jax.")
    unused = jnp.zeros(0, q.dtype)
    layout = fa.AttentionLayout.BTNH
    fa.check_layout(q, k, v, None, plan.q_len, plan.kv_len, plan.q_off, plan.kv_off, None,
                    None, layout)
    fa.check_is_flash_attention(q, k, v, layout.value, fa.check_cudnn_version(), False, True,
                                packed)
    args = (q, k, v, unused, plan.q_len, plan.kv_len,
            plan.q_off if packed else unused, plan.kv_off if packed else unused, unused, unused)
    params = dict(seed=0, dropout_rate=0.0, variadic_args=(False, False), layout=layout.value,
                  mask_type=getattr(fa.MaskType, _mask_kind(kind)), sliding_window_length=None)
    return args, params


def _cudnn_fwd(q, k, v, plan, *, kind, scale):
    fa = _fa()
    args, params = _cudnn_args(fa, q, k, v, plan, kind)
    out, stats = fa._dot_product_attention_fwd_p_wrapper.bind(*args, scale=scale,
                                                               is_training=True, **params)
    return out, stats


def _cudnn_bwd(q, k, v, plan, stats, out, do, *, kind, scale):
    fa = _fa()
    args, params = _cudnn_args(fa, q, k, v, plan, kind)
    dq, dk, dv = fa._dot_product_attention_bwd_p_wrapper.bind(*args, stats, out, do,
                                                              scale=scale, **params)
    return dq, dk, dv


def _virtual(length, off, t, packed):
    """Token ranges of the virtual sequences in the flattened [B * T] axis: (start_V, len_V)."""
    b = length.shape[0]
    if not packed:
        return jnp.arange(b, dtype=jnp.int32) * t, length
    used = length >= 0
    start = off[:, :-1] + jnp.arange(b, dtype=jnp.int32)[:, None] * t
    order = jnp.argsort(~used.reshape(-1), stable=True)  # used slots first, in order
    return (jnp.where(used, start, 0).reshape(-1)[order],
            jnp.where(used, length, 0).reshape(-1)[order])


def _twin_mask(q, k, plan, kind):
    """Dense [B*T, B*S] mask and per-query (virtual sequence, index) as cuDNN computes them."""
    (b, t), s = q.shape[:2], k.shape[1]
    packed = plan.q_off is not None
    qs_V, ql_V = _virtual(plan.q_len, plan.q_off, t, packed)
    ks_V, kl_V = _virtual(plan.kv_len, plan.kv_off, s, packed)
    p_P, u_U = jnp.arange(b * t)[:, None], jnp.arange(b * s)[:, None]
    in_q_PV = (p_P >= qs_V) & (p_P < qs_V + ql_V)
    in_k_UV = (u_U >= ks_V) & (u_U < ks_V + kl_V)
    ok_PUV = in_q_PV[:, None] & in_k_UV[None]
    if kind == "causal":  # top-left aligned inside each virtual sequence
        ok_PUV &= (p_P - qs_V)[:, None] >= (u_U - ks_V)[None]
    return ok_PUV.any(-1), in_q_PV, in_k_UV.any(-1), qs_V


def _twin_scores(q, k, scale):
    (b, t, n, h), kh = q.shape, k.shape[2]
    q_PKGH = q.reshape(b * t, kh, n // kh, h).astype(_F32)
    k_UKH = k.reshape(-1, kh, h).astype(_F32)
    return jnp.einsum("pkgh,ukh->kgpu", q_PKGH, k_UKH) * scale


def _twin_fwd(q, k, v, plan, *, kind, scale):
    """What cuDNN returns for these arguments, NaN where it writes nothing."""
    (b, t, n, h), kh = q.shape, k.shape[2]
    ok_PU, in_q_PV, _, qs_V = _twin_mask(q, k, plan, kind)
    s_KGPU = jnp.where(ok_PU, _twin_scores(q, k, scale), -jnp.inf)
    lse_KGP = jax.nn.logsumexp(s_KGPU, axis=-1)
    p_KGPU = jnp.exp(s_KGPU - jnp.where(jnp.isfinite(lse_KGP), lse_KGP, 0.0)[..., None])
    o_PKGH = jnp.einsum("kgpu,ukh->pkgh", p_KGPU, v.reshape(-1, kh, h).astype(_F32))
    written_P = in_q_PV.any(-1)
    out = jnp.where(written_P[:, None, None, None], o_PKGH, jnp.nan)
    vcount = qs_V.shape[0]
    v_P = jnp.argmax(in_q_PV, axis=-1)
    i_P = jnp.arange(b * t) - qs_V[v_P]
    stats = jnp.full((vcount, n, t), jnp.nan, _F32).at[
        jnp.where(written_P, v_P, vcount)[:, None], jnp.arange(n)[None], i_P[:, None]].set(
        lse_KGP.reshape(n, b * t).T, mode="drop")
    return out.reshape(b, t, n, h).astype(q.dtype), stats


def _twin_bwd(q, k, v, plan, stats, out, do, *, kind, scale):
    """cuDNN's backward from given (O, stats): dQ, dK, dV, NaN in rows it does not write."""
    (b, t, n, h), (s, kh) = q.shape, k.shape[1:3]
    ok_PU, in_q_PV, in_k_U, qs_V = _twin_mask(q, k, plan, kind)
    written_P = in_q_PV.any(-1)
    v_P = jnp.argmax(in_q_PV, axis=-1)
    lse_PN = stats[v_P, :, jnp.clip(jnp.arange(b * t) - qs_V[v_P], 0, t - 1)]
    lse_KGP = lse_PN.T.reshape(kh, n // kh, b * t)
    s_KGPU = _twin_scores(q, k, scale)
    p_KGPU = jnp.where(ok_PU, jnp.exp(s_KGPU - lse_KGP[..., None]), 0.0)
    do_PKGH = do.reshape(b * t, kh, n // kh, h).astype(_F32)
    delta_KGP = jnp.einsum("pkgh,pkgh->kgp", do_PKGH,
                           out.reshape(b * t, kh, n // kh, h).astype(_F32))
    v_UKH, k_UKH = (x.reshape(-1, kh, h).astype(_F32) for x in (v, k))
    dp_KGPU = jnp.einsum("pkgh,ukh->kgpu", do_PKGH, v_UKH)
    # where, not a product: a NaN row elsewhere in the flattened batch must stay there
    ds_KGPU = jnp.where(ok_PU, p_KGPU * (dp_KGPU - delta_KGP[..., None]) * scale, 0.0)
    dq = jnp.einsum("kgpu,ukh->pkgh", ds_KGPU, k_UKH).reshape(b * t, n, h)
    dk = jnp.einsum("kgpu,pkgh->ukh", ds_KGPU, q.reshape(b * t, kh, n // kh, h).astype(_F32))
    dv = jnp.einsum("kgpu,pkgh->ukh", p_KGPU, do_PKGH)
    dq = jnp.where(written_P[:, None, None], dq, jnp.nan).reshape(q.shape)
    dk, dv = (jnp.where(in_k_U[:, None, None], x, jnp.nan).reshape(b, s, kh, h)
              for x in (dk, dv))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_FWD = {"cudnn": _cudnn_fwd, "xla": _twin_fwd}
_BWD = {"cudnn": _cudnn_bwd, "xla": _twin_bwd}


# ----------------------------------------------------------------------------- public API
def _validate(q, k, v, q_seg, k_seg, q_pos, k_pos, kind, causal, max_docs, backend):
    (b, t, n, h), (bk, s, kh, hk) = q.shape, k.shape
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {KINDS}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; expected one of {BACKENDS}.")
    if not isinstance(max_docs, int) or max_docs < 1:
        raise ValueError(f"max_docs={max_docs!r} must be a positive int (documents per row).")
    if v.shape != k.shape or bk != b or hk != h or n % kh:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: need k == v shapes, equal "
                         "batch and head dim, and query heads a multiple of kv heads.")
    if kind == "causal" and (s != t or not causal):
        raise ValueError(f"kind='causal' needs causal=True and the same tokens as queries and "
                         f"keys (T={t}, S={s}); attention over a KV cache uses 'blockwise'.")
    for name, x, want in (("q_seg", q_seg, (b, t)), ("q_pos", q_pos, (b, t)),
                          ("k_seg", k_seg, (b, s)), ("k_pos", k_pos, (b, s))):
        if x.shape != want:
            raise ValueError(f"{name} has shape {x.shape}, expected {want}.")
    if backend == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"the cuDNN kernel needs bfloat16 or float16 inputs, got {q.dtype}; "
                         "set model.dtype='bfloat16'.")


def block_fwd(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *, kind: str,
              scale: float, causal: bool = True, max_docs: int = DEFAULT_MAX_DOCS,
              backend: str = "cudnn"):
    """One block pair: normalised output and logsumexp.

    Args:
      q_BTNH, k_BSKH, v_BSKH: queries and keys/values (GQA: K divides N; never repeated).
      q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS: segment ids (0 = padding) and positions.
      kind: 'causal' (same tokens, causal inside documents) or 'full' (every key of the
        query's document); see the module docstring.
      scale: logit scale (H ** -0.5 usually).
      causal: with kind='full', whether the caller's mask is causal (then checked implied).
      max_docs: static bound on documents per row (1: plain padded cuDNN call).
      backend: 'cudnn' (GPU) or 'xla' (the twin).

    Returns:
      (out_BTNH in q's dtype, lse_BNT float32); a query with no allowed key gives 0 / -inf;
      a row breaking a precondition gives NaN.
    """
    _validate(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, kind, causal,
              max_docs, backend)
    plan = _plan(q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, kind=kind, causal=causal,
                 max_docs=max_docs)
    out, stats = _FWD[backend](q_BTNH, k_BSKH, v_BSKH, plan, kind=kind, scale=float(scale))
    lse_BNT = _stats_to_lse(stats, plan)
    out = jnp.where(plan.q_in_BT[:, :, None, None], out, 0).astype(q_BTNH.dtype)
    bad_B = ~plan.ok_B
    return (jnp.where(bad_B[:, None, None, None], jnp.nan, out),
            jnp.where(bad_B[:, None, None], jnp.nan, lse_BNT))


def block_bwd(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, out_BTNH,
              lse_BNT, do_BTNH, *, kind: str, scale: float, causal: bool = True,
              max_docs: int = DEFAULT_MAX_DOCS, backend: str = "cudnn"):
    """Flash backward of one block pair from a given output and logsumexp.

    In a ring, pass the global (merged) `out_BTNH` and `lse_BNT`: the block's probabilities
    are then exp(s - lse_global) and delta = rowsum(dO * O_global), so the per-block dQ, dK,
    dV sum to the exact gradient. Arguments as `block_fwd`, plus out_BTNH (cast to q's dtype,
    cuDNN's operand type), lse_BNT float32 and the output cotangent do_BTNH.

    Returns:
      (dq, dk, dv) in the dtypes of q, k, v; zero rows for tokens outside every computed
      document; NaN rows for rows breaking a precondition.
    """
    _validate(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, kind, causal,
              max_docs, backend)
    plan = _plan(q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, kind=kind, causal=causal,
                 max_docs=max_docs)
    b, t = q_seg_BT.shape
    stats = _lse_to_stats(lse_BNT, plan, b * max_docs if max_docs > 1 else b)
    dq, dk, dv = _BWD[backend](q_BTNH, k_BSKH, v_BSKH, plan, stats,
                               out_BTNH.astype(q_BTNH.dtype), do_BTNH.astype(q_BTNH.dtype),
                               kind=kind, scale=float(scale))
    bad_B = ~plan.ok_B[:, None, None, None]
    dq = jnp.where(plan.q_in_BT[:, :, None, None], dq, 0).astype(q_BTNH.dtype)
    dk, dv = (jnp.where(plan.k_in_BS[:, :, None, None], x, 0).astype(x.dtype) for x in (dk, dv))
    return tuple(jnp.where(bad_B, jnp.nan, x) for x in (dq, dk, dv))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _attend(q, k, v, q_seg, k_seg, q_pos, k_pos, causal, scale, max_docs, backend):
    kind = "causal" if causal else "full"
    return block_fwd(q, k, v, q_seg, k_seg, q_pos, k_pos, kind=kind, scale=scale,
                     causal=causal, max_docs=max_docs, backend=backend)[0]


def _attend_fwd(q, k, v, q_seg, k_seg, q_pos, k_pos, causal, scale, max_docs, backend):
    kind = "causal" if causal else "full"
    out, lse = block_fwd(q, k, v, q_seg, k_seg, q_pos, k_pos, kind=kind, scale=scale,
                         causal=causal, max_docs=max_docs, backend=backend)
    return out, (q, k, v, q_seg, k_seg, q_pos, k_pos, out, lse)


def _attend_bwd(causal, scale, max_docs, backend, res, do):
    q, k, v, q_seg, k_seg, q_pos, k_pos, out, lse = res
    grads = block_bwd(q, k, v, q_seg, k_seg, q_pos, k_pos, out, lse, do,
                      kind="causal" if causal else "full", scale=scale, causal=causal,
                      max_docs=max_docs, backend=backend)
    return grads + (None,) * 4


_attend.defvjp(_attend_fwd, _attend_bwd)


def cudnn_attention(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS, *,
                    causal: bool, scale: float, max_docs: int = DEFAULT_MAX_DOCS,
                    backend: str = "cudnn"):
    """Whole-sequence attention in one fused call with its own backward; lctx's `attend`
    signature (queries and keys the same tokens). Returns out_BTNH in q's dtype."""
    _validate(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS,
              "causal" if causal else "full", causal, max_docs, backend)
    return _attend(q_BTNH, k_BSKH, v_BSKH, q_seg_BT, k_seg_BS, q_pos_BT, k_pos_BS,
                   bool(causal), float(scale), int(max_docs), backend)


# ------------------------------------------------------------- lctx.blocks' kernel contract
def _pair_kind(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal):
    """'causal' when queries and keys are the same tokens (a diagonal block), else 'full'."""
    if not causal or q_seg_BQ.shape != k_seg_BR.shape:
        return None  # static: 'full'
    return jnp.all(q_seg_BQ == k_seg_BR) & jnp.all(q_pos_BQ == k_pos_BR)


def pair_fwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, *, causal: bool,
             scale: float, fallback, backend: str = "cudnn", max_docs: int = DEFAULT_MAX_DOCS):
    """`lctx.blocks` block-kernel forward: any block pair, exact.

    The kind is chosen at run time (a diagonal block is 'causal', any other 'full'); a block
    pair outside the preconditions (a partial causal overlap, non-monotone positions, more
    than `max_docs` documents) runs `fallback` (lctx.blocks' XLA kernel) instead (one
    `lax.cond`) when its scores fit in 1 GiB, so the result is exact on every input and
    cuDNN-fast on the ones lctx's layouts produce; larger pairs keep the NaN guard.
    """
    args = (q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR)
    kw = dict(scale=scale, causal=causal, max_docs=max_docs, backend=backend)
    same = _pair_kind(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal)

    def fused(kind):
        out, lse = block_fwd(*args, kind=kind, **kw)
        ok = jnp.all(jnp.isfinite(lse) | jnp.isneginf(lse))  # NaN: a row was poisoned
        return out.astype(_F32), lse, ok

    out, lse, ok = (fused("full") if same is None else
                    jax.lax.cond(same, lambda: fused("causal"), lambda: fused("full")))
    if not _fallback_fits(q_BQNH, k_BRKH):
        return out, lse  # rows breaking a precondition stay NaN (see `_fallback_fits`)
    return jax.lax.cond(ok, lambda: (out, lse), lambda: fallback(
        *args, causal=causal, scale=scale))


def _fallback_fits(q_BQNH, k_BRKH, limit: int = 1 << 30) -> bool:
    """Whether the XLA fallback's [B, N, Q, R] fp32 scores stay under `limit` bytes: XLA
    allocates a conditional's untaken branch too, so a ring with 64K-token blocks could not
    even compile one. Larger blocks keep the NaN guard instead."""
    (b, q, n, _), r = q_BQNH.shape, k_BRKH.shape[1]
    return b * n * q * r * 4 <= limit


def pair_bwd(q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, out_BQNH, lse_BNQ,
             do_BQNH, *, causal: bool, scale: float, fallback, backend: str = "cudnn",
             max_docs: int = DEFAULT_MAX_DOCS):
    """`lctx.blocks` block-kernel backward (float32), from the row's out and logsumexp;
    `fallback` (lctx.blocks' XLA backward) where the forward fell back."""
    args = (q_BQNH, k_BRKH, v_BRKH, q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR)
    kw = dict(scale=scale, causal=causal, max_docs=max_docs, backend=backend)
    same = _pair_kind(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, causal)
    ok_fn = lambda kind: jnp.all(_plan(q_seg_BQ, k_seg_BR, q_pos_BQ, k_pos_BR, kind=kind,  # noqa
                                       causal=causal, max_docs=max_docs).ok_B)

    def fused(kind):
        grads = block_bwd(*args, out_BQNH, lse_BNQ, do_BQNH, kind=kind, **kw)
        return tuple(g.astype(_F32) for g in grads)

    def xla():
        return fallback(*args, out_BQNH, lse_BNQ, do_BQNH, causal=causal, scale=scale)

    if not _fallback_fits(q_BQNH, k_BRKH):
        xla = lambda: tuple(jnp.full(x.shape, jnp.nan, _F32) for x in args[:3])  # noqa: E731
    if same is None:
        return jax.lax.cond(ok_fn("full"), lambda: fused("full"), xla)
    return jax.lax.cond(same, lambda: jax.lax.cond(ok_fn("causal"), lambda: fused("causal"),
                                                   xla),
                        lambda: jax.lax.cond(ok_fn("full"), lambda: fused("full"), xla))


def count_documents(seg_BT) -> np.ndarray:
    """Documents (runs of equal non-zero ids) per row, on the host: size `max_docs` with it."""
    seg = np.asarray(seg_BT)
    first = np.ones(seg.shape, bool)
    first[:, 1:] = seg[:, 1:] != seg[:, :-1]
    return (first & (seg != 0)).sum(1)


__all__ = ["block_fwd", "block_bwd", "cudnn_attention", "pair_fwd", "pair_bwd",
           "check_backend", "count_documents",
           "KINDS", "BACKENDS", "DEFAULT_MAX_DOCS"]
