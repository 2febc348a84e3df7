"""The block kernel contract (lctx.blocks): every registered kernel's forward returns the
documented layout and dtypes and equals the fp32 reference; its backward equals autodiff of
the reference; the empty-block test is exact."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lctx import blocks

B, Q, N, K, H = 1, 16, 4, 2, 8
SCALE = H**-0.5


def _block(dtype=jnp.float32, seed=0):
    """One block pair: packed ids, two queries whose segment (9) has no key, padding
    (segment 0, positions 0) at the end."""
    r = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(r.normal(size=s), dtype) for s in
               ((B, Q, N, H), (B, Q, K, H), (B, Q, K, H)))
    seg = jnp.asarray([[1] * 5 + [2] * 7 + [3] * 2 + [0] * 2], jnp.int32)
    pos = jnp.asarray([list(range(5)) + list(range(7)) + list(range(2)) + [0, 0]], jnp.int32)
    return q, k, v, seg.at[:, :2].set(9), seg, pos, pos


def _reference(q, k, v, q_seg, k_seg, q_pos, k_pos):
    """Naive fp32 attention per head: (out_BQNH, lse_BNQ)."""
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    k_, v_ = (jnp.repeat(f32(x), N // K, axis=2) for x in (k, v))
    s = jnp.einsum("bqnh,brnh->bnqr", f32(q), k_) * SCALE
    ok = (q_seg[:, :, None] == k_seg[:, None]) & (q_pos[:, :, None] >= k_pos[:, None])
    ok &= q_seg[:, :, None] != 0  # padding attends nothing
    s = jnp.where(ok[:, None], s, -jnp.inf)
    lse = jax.nn.logsumexp(s, axis=-1)
    p = jnp.where(ok[:, None], jnp.exp(s - jnp.where(jnp.isfinite(lse), lse, 0)[..., None]), 0)
    return jnp.einsum("bnqr,brnh->bqnh", p, v_), lse


@pytest.mark.parametrize("kernel", sorted(blocks.KERNELS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_forward_layout_contract(kernel, dtype, cudnn_twin):
    """(out_BQNH, lse_BNQ): lse float32 in [B, N, Q]; a query with no key gives 0 and -inf.
    The 'cudnn' kernel runs its own code through the CPU twin (same return layout)."""
    args = _block(dtype)
    fwd = functools.partial(blocks.KERNELS[kernel].fwd, causal=True, scale=SCALE)
    out, lse = jax.jit(fwd)(*args)
    ref_out, ref_lse = _reference(*args)
    assert lse.dtype == jnp.float32 and lse.shape == (B, N, Q)
    assert out.shape == (B, Q, N, H) and out.dtype in (jnp.float32, dtype)
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(out.astype(jnp.float32), ref_out, atol=tol, rtol=0)
    np.testing.assert_allclose(lse, ref_lse, atol=tol, rtol=0)
    for rows in (slice(0, 2), slice(-2, None)):  # no key; padding
        assert np.all(np.asarray(lse)[..., rows] == -np.inf)
        assert not np.asarray(out)[:, rows].any()


@pytest.mark.parametrize("kernel", sorted(blocks.KERNELS))
def test_kernel_backward_equals_autodiff(kernel, cudnn_twin):
    """bwd(..., out, lse, do) of the whole row == autodiff of the reference (fp32)."""
    q, k, v, *ids = _block()
    do = jnp.asarray(np.random.default_rng(1).normal(size=(B, Q, N, H)), jnp.float32)
    out, vjp = jax.vjp(lambda q, k, v: _reference(q, k, v, *ids)[0], q, k, v)
    lse = _reference(q, k, v, *ids)[1]
    got = blocks.KERNELS[kernel].bwd(q, k, v, *ids, out, lse, do, causal=True, scale=SCALE)
    for name, a, b in zip("qkv", got, vjp(do)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=f"d{name}")


def test_needed_is_exact_above_the_diagonal_of_packed_rows():
    """Causal, packed documents, positions restarting per document: a block pair is skipped
    exactly when its mask is empty, so blocks above the diagonal are skipped although their
    positions overlap (a range test keeps e.g. queries 24-31 vs keys 32-39)."""
    seg = jnp.asarray([[1] * 13 + [2] * 17 + [3] * 10], jnp.int32)
    pos = jnp.asarray([list(range(100_000, 100_013)) + list(range(17)) + list(range(10))])
    blk = 8
    for i in range(0, 40, blk):
        for j in range(0, 40, blk):
            qs, ks = seg[:, i:i + blk], seg[:, j:j + blk]
            qp, kp = pos[:, i:i + blk], pos[:, j:j + blk]
            need = bool(blocks.needed(qs, ks, qp, kp, True))
            assert need == bool(blocks.make_mask(qs, ks, qp, kp, True).any()), (i, j)
            assert not (j > i and need), (i, j)


def test_unknown_or_unavailable_kernel_names_the_field():
    with pytest.raises(ValueError, match=r"attn.kernel='flash' is not a block kernel; expected"):
        blocks.check_kernel("flash", field="attn.kernel")
    if not blocks.gpu_available():
        with pytest.raises(ValueError, match=r"attn.kernel='cudnn' needs an NVIDIA GPU.*"
                                             r"attn.kernel='xla'"):
            blocks.check_kernel("cudnn", field="attn.kernel")
