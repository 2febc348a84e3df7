"""The cuDNN block kernel through its XLA twin: equals dense attention (values, logsumexp,
gradients) on packed documents with padding and GQA, composes into a ring from the global
logsumexp, keeps cuDNN's stats layout, and turns every broken precondition into NaN."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lctx import cudnn_attention as C
from lctx.attention import block_attend

B, T, N, K, H = 2, 48, 4, 2, 8
SCALE = H ** -0.5
TOL = 1e-5  # fp32, per op (house rule)


def _ids(rows):
    """Segment ids from per-row (id, length) runs; positions restart per document."""
    seg = np.concatenate([np.concatenate([[i] * n for i, n in r])[None] for r in rows])
    pos = np.zeros_like(seg)
    for b in range(len(rows)):
        start = 0
        for _, n in rows[b]:
            pos[b, start:start + n] = np.arange(n)
            start += n
    return jnp.asarray(seg, jnp.int32), jnp.asarray(pos, jnp.int32)


# Row 0: three documents, the second crossing the middle; row 1: one document, then padding.
SEG, POS = _ids([[(1, 10), (2, 20), (3, 18)], [(4, 30), (0, 18)]])


def _qkv(seed, dtype=jnp.float32, t=T):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.normal(size=s), dtype)
                 for s in ((B, t, N, H), (B, t, K, H), (B, t, K, H), (B, t, N, H)))


def _dense(q, k, v, seg=SEG, pos=POS):
    """Reference: lctx's materialised block with padding made to match nothing."""
    return block_attend(q, k, v, jnp.where(seg > 0, seg, -1), jnp.where(seg > 0, seg, -2),
                        pos, pos, causal=True, scale=SCALE)


def test_twin_equals_dense_values_and_gradients(max_docs=4):
    """Row 0 fills 3 of the 4 document slots, row 1 one: unused slots are exercised too."""
    q, k, v, w = _qkv(0)
    out, lse = jax.jit(lambda q, k, v: C.block_fwd(
        q, k, v, SEG, SEG, POS, POS, kind="causal", scale=SCALE, max_docs=max_docs,
        backend="xla"))(q, k, v)
    ref_out, ref_lse = _dense(q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=TOL, rtol=0)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))
    np.testing.assert_allclose(np.where(np.isinf(lse), 0, lse),
                               np.where(np.isinf(ref_lse), 0, ref_lse), atol=TOL, rtol=0)
    loss = lambda f: lambda q, k, v: (f(q, k, v) * w).sum()  # noqa: E731
    ours = jax.jit(jax.grad(loss(lambda q, k, v: C.cudnn_attention(
        q, k, v, SEG, SEG, POS, POS, causal=True, scale=SCALE, max_docs=max_docs,
        backend="xla")), (0, 1, 2)))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: _dense(q, k, v)[0]), (0, 1, 2))(q, k, v)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("max_docs,rows", [
    (3, [[(1, 10), (2, 20), (3, 18)], [(4, 30), (0, 18)]]),
    (1, [[(7, 40), (0, 8)], [(4, 48)]]),
])
def test_ring_of_blocks_from_global_logsumexp(max_docs, rows):
    """Two chunks as a causal ring computes them: (0,0) and (1,1) 'causal', (1,0) 'full'
    (documents crossing the boundary, one query document with no key document), merged by
    logsumexp; the backward runs each block from the GLOBAL out and logsumexp and the pieces
    sum to dense attention's gradient."""
    seg, pos = _ids(rows)
    q, k, v, w = _qkv(1)
    half = T // 2
    cut = lambda x, c: x[:, c * half:(c + 1) * half]  # noqa: E731
    blocks = ((0, 0, "causal"), (1, 1, "causal"), (1, 0, "full"))
    kw = dict(scale=SCALE, max_docs=max_docs, backend="xla")

    def ids(a, c):
        return cut(seg, a), cut(seg, c), cut(pos, a), cut(pos, c)

    def forward(q, k, v):
        outs, lses = [], []
        for a in (0, 1):
            parts = [C.block_fwd(cut(q, a), cut(k, c), cut(v, c), *ids(a, c), kind=kind, **kw)
                     for qa, c, kind in blocks if qa == a]
            lse = jnp.logaddexp(*[p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
            out = sum(o * jnp.exp(l - safe).transpose(0, 2, 1)[..., None] for o, l in parts)
            outs.append(out)
            lses.append(lse)
        return outs, lses

    outs, lses = jax.jit(forward)(q, k, v)
    ref_out, ref_lse = _dense(q, k, v, seg, pos)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), ref_out, atol=TOL, rtol=0)
    dq, dk, dv = (jnp.zeros_like(x) for x in (q, k, v))
    for a, c, kind in blocks:
        gq, gk, gv = C.block_bwd(cut(q, a), cut(k, c), cut(v, c), *ids(a, c), outs[a],
                                 lses[a], cut(w, a), kind=kind, **kw)
        dq = dq.at[:, a * half:(a + 1) * half].add(gq)
        dk = dk.at[:, c * half:(c + 1) * half].add(gk)
        dv = dv.at[:, c * half:(c + 1) * half].add(gv)
    ref = jax.grad(lambda q, k, v: (_dense(q, k, v, seg, pos)[0] * w).sum(), (0, 1, 2))(q, k, v)
    for a, b in zip((dq, dk, dv), ref):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_layout_contract_bf16():
    """bf16 in: out bf16 [B, T, N, H], lse float32 [B, N, T] (lctx's layout, not jax.nn's
    [B, T, N] bf16); padding rows exactly 0 / -inf; nothing cuDNN leaves unwritten (the twin
    writes NaN there) leaks out."""
    q, k, v, _ = _qkv(2, jnp.bfloat16)
    out, lse = jax.jit(lambda q, k, v: C.block_fwd(
        q, k, v, SEG, SEG, POS, POS, kind="causal", scale=SCALE, max_docs=4,
        backend="xla"))(q, k, v)
    assert out.dtype == jnp.bfloat16 and out.shape == q.shape
    assert lse.dtype == jnp.float32 and lse.shape == (B, N, T)
    pad = np.asarray(SEG) == 0
    assert not np.any(np.asarray(out, np.float32)[pad]) and np.all(np.asarray(lse)[1, :, 30:]
                                                                   == -np.inf)
    assert np.all(np.isfinite(np.asarray(out, np.float32))) and np.all(np.isfinite(lse[~pad[
        :, None, :].repeat(N, 1)]))
    ref_out, ref_lse = _dense(*(x.astype(jnp.float32) for x in (q, k, v)))
    np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=3e-2, rtol=0)


def test_packed_stats_are_virtual_sequences():
    """The twin's packed stats follow cuDNN's layout: [B * M, N, T], row v = the v-th used
    (row, document) slot, column i = the i-th query of that document; the conversion to and
    from lctx's [B, N, T] layout round-trips."""
    q, k, v, _ = _qkv(3)
    plan = C._plan(SEG, SEG, POS, POS, kind="causal", causal=True, max_docs=4)
    _, stats = C._twin_fwd(q, k, v, plan, kind="causal", scale=SCALE)
    assert stats.shape == (B * 4, N, T)
    _, ref_lse = _dense(q, k, v)
    starts = [(0, 0, 10), (0, 10, 20), (0, 30, 18), (1, 0, 30)]  # (row, start, length)
    for vs, (b, s, n) in enumerate(starts):
        np.testing.assert_allclose(stats[vs, :, :n], ref_lse[b, :, s:s + n], atol=TOL, rtol=0)
    assert np.all(np.isnan(stats[len(starts):])) and np.all(np.isnan(stats[3, :, 30:]))
    lse = C._stats_to_lse(stats, plan)
    back = C._lse_to_stats(lse, plan, B * 4)
    np.testing.assert_array_equal(np.where(np.isnan(stats), 0, stats), back)


@pytest.mark.parametrize("case", ["positions", "reused_id", "too_many", "m1_offset",
                                  "full_not_causal", "causal_ids_differ"])
def test_broken_preconditions_poison_only_their_row(case):
    """A row the kernel cannot compute exactly comes back NaN (values; gradients checked for
    one case, the same guard); the other row is untouched."""
    seg, pos = np.asarray(SEG).copy(), np.asarray(POS).copy()
    kind, max_docs, k_seg, k_pos = "causal", 4, None, None
    if case == "positions":
        pos[0, 12] = pos[0, 11]  # not strictly increasing inside document 2
    elif case == "reused_id":
        seg[0, 30:] = 1  # id 1 again after id 2
    elif case == "too_many":
        max_docs = 2
    elif case == "m1_offset":
        max_docs, seg[0], pos[0] = 1, np.r_[[7] * 40, [0] * 8], np.r_[range(40), [0] * 8]
        seg[1], pos[1] = np.r_[[0] * 18, [4] * 30], np.r_[[0] * 18, range(30)]  # not at 0
    elif case == "full_not_causal":
        kind, k_seg, k_pos = "full", seg.copy(), pos.copy()
        k_pos[0, 10:30] += 100  # keys of document 2 after its queries
        k_pos[1] -= 100  # row 1: every key precedes every query of its document
    elif case == "causal_ids_differ":
        k_seg = seg.copy()
        k_seg[0, 5] = 9
    k_seg = seg if k_seg is None else k_seg
    k_pos = pos if k_pos is None else k_pos
    q, k, v, w = _qkv(4)
    args = tuple(jnp.asarray(x, jnp.int32) for x in (seg, k_seg, pos, k_pos))
    kw = dict(kind=kind, scale=SCALE, max_docs=max_docs, backend="xla")
    out, lse = C.block_fwd(q, k, v, *args, **kw)
    grads = C.block_bwd(q, k, v, *args, out, lse, w, **kw) if case == "positions" else ()
    bad = 1 if case == "m1_offset" else 0
    for x in (out, lse) + grads:
        x = np.asarray(x)
        assert np.all(np.isnan(x[bad])) and not np.any(np.isnan(x[1 - bad])), case


def test_bad_arguments_name_the_fix():
    q, k, v, _ = _qkv(5)
    call = lambda **kw: C.block_fwd(q, k, v, SEG, SEG, POS, POS, scale=SCALE,  # noqa: E731
                                    **{"kind": "causal", "backend": "xla", **kw})
    with pytest.raises(ValueError, match="kind="):
        call(kind="diagonal")
    with pytest.raises(ValueError, match="max_docs"):
        call(max_docs=0)
    with pytest.raises(ValueError, match="bfloat16"):
        call(backend="cudnn")
    with pytest.raises(ValueError, match="KV cache"):
        C.block_fwd(q, k[:, :40], v[:, :40], SEG, SEG[:, :40], POS, POS[:, :40], kind="causal",
                    scale=SCALE, backend="xla")
    with pytest.raises(ValueError, match="attn.kernel='cudnn' needs an NVIDIA GPU"):
        C.check_backend("cudnn")
    with pytest.raises(ValueError, match="expected one of"):
        C.check_backend("triton")
    assert list(C.count_documents(SEG)) == [3, 1]
