"""Attention kernels: blockwise == dense (values, gradients), id masking, memory, bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lctx import attention as A

F32_OP = 1e-5  # fp32 tolerance per op (house rule)


def _inputs(b=2, t=40, s=None, n=4, kh=2, h=8, seed=0, segs="packed", pos="restart",
            dtype=jnp.float32):
    """q, k, v plus segment/position ids; packed documents, padding tail, odd positions."""
    s = t if s is None else s
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, t, n, h), dtype)
    k = jax.random.normal(ks[1], (b, s, kh, h), dtype)
    v = jax.random.normal(ks[2], (b, s, kh, h), dtype)
    assert t == s, "id helpers below build shared ids"
    if segs == "packed":  # row 0: three documents; row 1: two documents then padding (0)
        seg = np.array([[1] * 13 + [2] * 17 + [3] * (t - 30), [1] * 9 + [2] * 21 + [0] * (t - 30)])
    else:
        seg = np.ones((b, t), np.int32)
    if pos == "restart":  # positions restart per document, the first one offset by 100,000
        p = np.zeros((b, t), np.int64)
        for r in range(b):
            for d in np.unique(seg[r]):
                idx = np.nonzero(seg[r] == d)[0]
                p[r, idx] = np.arange(len(idx)) + (100_000 if d == 1 else 0)
    elif pos == "shuffled":  # not monotonic in the index at all
        p = np.stack([np.random.default_rng(seed + r).permutation(t) for r in range(b)])
    else:
        p = np.broadcast_to(np.arange(t), (b, t))
    seg, p = jnp.asarray(seg[:b], jnp.int32), jnp.asarray(p[:b], jnp.int32)
    return q, k, v, seg, seg, p, p


def _run(fn, args, causal, scale=0.37):
    return jax.jit(functools.partial(fn, causal=causal, scale=scale))(*args)


def _grads(fn, args, causal, cot):
    def loss(q, k, v, *ids):
        return jnp.sum(fn(q, k, v, *ids, causal=causal, scale=0.37) * cot)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,kh,pos", [(4, 2, "restart"), (4, 4, "shuffled"), (6, 1, "restart")])
def test_blockwise_matches_dense(causal, n, kh, pos):
    args = _inputs(n=n, kh=kh, pos=pos)
    bw = functools.partial(A.blockwise_attention, block_q=8, block_k=16)  # 40 % 16 != 0: tails
    ref, out = _run(A.dense_attention, args, causal), _run(bw, args, causal)
    np.testing.assert_allclose(out, ref, atol=F32_OP, rtol=0)
    cot = jax.random.normal(jax.random.key(9), ref.shape)
    grads = zip(_grads(A.dense_attention, args, causal, cot), _grads(bw, args, causal, cot))
    for g_ref, g in grads:
        np.testing.assert_allclose(g, g_ref, atol=F32_OP, rtol=0)


@pytest.mark.slow
def test_blockwise_queries_against_longer_keys():
    """T != S (a chunk of queries against a cache): same result as dense."""
    q, k, v, seg, _, pos, _ = _inputs(t=32)
    q_part, qs, qp = q[:, 20:], seg[:, 20:], pos[:, 20:]
    args = (q_part, k, v, qs, seg, qp, pos)
    bw = functools.partial(A.blockwise_attention, block_q=4, block_k=8)
    np.testing.assert_allclose(_run(bw, args, True), _run(A.dense_attention, args, True),
                               atol=F32_OP, rtol=0)


def test_dense_matches_naive_softmax():
    """Dense attention against a per-head loop written from the definition (float64)."""
    q, k, v, seg, _, pos, _ = [np.asarray(x, np.float64) for x in _inputs(b=1, t=34, n=4, kh=2)]
    out = np.asarray(_run(A.dense_attention, _inputs(b=1, t=34, n=4, kh=2), True))
    for head in range(4):
        kv = head // 2  # query head n uses kv head n // G
        s = q[0, :, head] @ k[0, :, kv].T * 0.37
        ok = (seg[0][:, None] == seg[0][None, :]) & (pos[0][:, None] >= pos[0][None, :])
        s = np.where(ok, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        ref = (p / p.sum(-1, keepdims=True)) @ v[0, :, kv]
        np.testing.assert_allclose(out[0, :, head], ref, atol=F32_OP, rtol=0)


def test_masking_follows_ids_not_index():
    """Permuting tokens together with their ids permutes the output and nothing else."""
    args = _inputs(pos="restart")
    perm = np.random.default_rng(0).permutation(args[0].shape[1])
    permuted = [x[:, perm] for x in args]
    for fn in (A.dense_attention, functools.partial(A.blockwise_attention, block_q=8, block_k=8)):
        np.testing.assert_allclose(_run(fn, permuted, True), _run(fn, args, True)[:, perm],
                                   atol=F32_OP, rtol=0)


@pytest.mark.slow
def test_query_without_keys_gives_zero_and_finite_grads():
    q, k, v, seg, _, pos, _ = _inputs(t=16, segs="one", pos="plain")
    q_seg = seg.at[:, :4].set(7)  # segment 7 has no keys
    args = (q, k, v, q_seg, seg, pos, pos)
    bw = functools.partial(A.blockwise_attention, block_q=4, block_k=4)
    for fn in (A.dense_attention, bw):
        out = _run(fn, args, True)
        assert float(jnp.abs(out[:, :4]).max()) == 0.0
        grads = _grads(fn, args, True, jnp.ones_like(out))
        assert all(bool(jnp.isfinite(g).all()) for g in grads)


@pytest.mark.slow
def test_bf16_runs_with_fp32_statistics():
    args = _inputs(dtype=jnp.bfloat16)
    bw = functools.partial(A.blockwise_attention, block_q=8, block_k=8)
    out = _run(bw, args, True)
    assert out.dtype == jnp.bfloat16
    ref = _run(A.dense_attention, [x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x
                                   for x in args], True)
    assert float(jnp.abs(out.astype(jnp.float32) - ref).max()) < 3e-2  # bf16 rounding of p, out


def _temp_bytes(fn, t):
    args = _inputs(b=1, t=t, segs="one", pos="plain", n=2, kh=1, h=16)
    loss = lambda q, k, v: jnp.sum(_run(fn, (q, k, v, *args[3:]), True))  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args[:3]).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_memory_grows_linearly():
    """Forward+backward scratch memory: blockwise ~linear in T, dense quadratic."""
    bw = functools.partial(A.blockwise_attention, block_q=64, block_k=64)
    small, large = _temp_bytes(bw, 1024), _temp_bytes(bw, 4096)
    dense_large = _temp_bytes(A.dense_attention, 4096)
    assert large < 6 * small, (small, large)  # 4x tokens -> < 6x memory (quadratic: 16x)
    assert large * 10 < dense_large, (large, dense_large)


def _layer_scan_temp_bytes(t):
    """Scratch memory of grad through a 2-layer `lax.scan` whose ids are loop-invariant."""
    seg_BT, pos_BT = jnp.ones((1, t), jnp.int32), jnp.arange(t)[None]

    def layer(x_BTNH, w):
        q_BTNH = x_BTNH * w
        kv_BTKH = q_BTNH[:, :, :1]
        out_BTNH = A.blockwise_attention(q_BTNH, kv_BTKH, kv_BTKH, seg_BT, seg_BT, pos_BT, pos_BT,
                                         causal=True, scale=0.25, block_q=64, block_k=64)
        return out_BTNH, None

    loss = lambda x, ws: jax.lax.scan(layer, x, ws)[0].sum()  # noqa: E731
    compiled = jax.jit(jax.grad(loss)).lower(jnp.ones((1, t, 2, 16)), jnp.ones((2,))).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_memory_linear_under_layer_scan():
    """Regression: scan linearize used to hoist the per-block masks out of the layer loop,
    stacked over all block pairs (O(T^2); 2x tokens gave ~3.6x memory)."""
    small, large = _layer_scan_temp_bytes(1024), _layer_scan_temp_bytes(2048)
    assert large < 2.5 * small, (small, large)


def test_dispatch_and_bad_input():
    assert A.get_attention("dense") is A.dense_attention
    with pytest.raises(ValueError, match="attn_impl='flash'"):
        A.get_attention("flash")
    if not A.cudnn_available():
        with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
            A.get_attention("cudnn")
    q, k, v, *ids = _inputs(n=4, kh=2)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        A.dense_attention(q[:, :, :3], k, v, *ids, causal=True, scale=1.0)
    with pytest.raises(ValueError, match="q_seg has shape"):
        A.dense_attention(q, k, v, ids[0][:, :5], *ids[1:], causal=True, scale=1.0)
    with pytest.raises(ValueError, match="block_q=0"):
        A.blockwise_attention(q, k, v, *ids, causal=True, scale=1.0, block_q=0)
    with pytest.raises(ValueError, match="kernel='flash' is not a block kernel"):
        A.get_attention("blockwise", kernel="flash")


def test_config_blocks_and_kernel_reach_the_ring():
    """attn.block_q/block_k/kernel are bound into the ring (it used to drop them)."""
    ring = A.get_attention("ring", block_q=64, block_k=32, kernel="xla", ring_axis="ctx",
                           ring_layout="balanced")
    keys = ("block_q", "block_k", "kernel", "axis_name", "layout")
    assert {k: ring.keywords[k] for k in keys} == {
        "block_q": 64, "block_k": 32, "kernel": "xla", "axis_name": "ctx", "layout": "balanced"}


def test_validate_names_the_field():
    A.validate("ring", "xla", 256, 256, seq_len=4096, context=8)
    with pytest.raises(ValueError, match=r"attn.impl='flash'"):
        A.validate("flash")
    with pytest.raises(ValueError, match=r"attn.block_k=0 must be a positive"):
        A.validate("blockwise", "xla", 64, 0)
    with pytest.raises(ValueError, match=r"attn.kernel='pallas' is not a block kernel"):
        A.validate("ring", "pallas")
    with pytest.raises(ValueError, match=r"stages.s1.seq_len=4100 is not divisible by 16 "
                                         r"\(2 x mesh.context=8"):
        A.validate("ring", seq_len=4100, context=8, seq_field="stages.s1.seq_len")
    A.validate("ring", "xla", 400, 257, seq_len=257 * 16, context=8)  # blocks clip to 257
    with pytest.raises(ValueError, match=r"attn.block_q=200: the ring's chunk of 257 tokens "
                                         r"\(stages.s2.seq_len=4112 / 16\) has no divisor"):
        A.validate("ring", "xla", 200, 257, seq_len=257 * 16, context=8,
                   seq_field="stages.s2.seq_len")
    # The data applies attn.ring_layout whenever context > 1: balanced moves whole blocks.
    A.validate("ring", "xla", 256, 256, seq_len=4096, context=8, layout="balanced")
    with pytest.raises(ValueError, match=r"attn.ring_layout='spiral'"):
        A.validate("ring", layout="spiral")
    with pytest.raises(ValueError, match=r"^attn.ring_layout='balanced': the balanced layout "
                                         r"moves whole ring blocks.*attn.block_q=2 and "
                                         r"attn.block_k=3 give blocks of 2 and 3 tokens for "
                                         r"stages.s2.seq_len=96 over mesh.context=8"):
        A.validate("ring", "xla", 2, 3, seq_len=96, context=8, layout="balanced",
                   seq_field="stages.s2.seq_len")
    with pytest.raises(ValueError, match=r"stages.s1.seq_len=100 is not divisible by 16"):
        A.validate("dense", seq_len=100, context=8, seq_field="stages.s1.seq_len")
    A.validate("dense", seq_len=100, context=1)
