"""Chunked cross-entropy == naive full-logit cross-entropy (values, grads), masks, memory."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lctx import loss as L
from lctx import model as M

F32_OP = 1e-5


def _data(b=2, t=37, d=16, v=50, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(ks[0], (b, t, d))
    w = jax.random.normal(ks[1], (d, v)) * 0.5
    tgt = jax.random.randint(ks[2], (b, t), 0, v)
    mask = (jax.random.uniform(ks[3], (b, t)) > 0.3).astype(jnp.float32)
    return h, w, tgt, mask


def naive(h, w, tgt, mask):
    """Full [B, T, V] logits, straight from the definition."""
    logits = jnp.einsum("btd,dv->btv", h, w)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tgt[..., None], -1)[..., 0]
    return jnp.sum(nll * mask) / jnp.sum(mask)


@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])
def test_chunked_matches_naive(chunk):
    h, w, tgt, mask = _data()
    fn = jax.jit(functools.partial(L.chunked_cross_entropy, chunk=chunk))
    loss, aux = fn(h, w, tgt, mask)
    np.testing.assert_allclose(loss, naive(h, w, tgt, mask), atol=F32_OP, rtol=0)
    assert float(aux["num_tokens"]) == float(mask.sum())
    logits = jnp.einsum("btd,dv->btv", h, w)
    acc = jnp.sum((logits.argmax(-1) == tgt) * mask) / mask.sum()
    np.testing.assert_allclose(aux["accuracy"], acc, atol=1e-6)
    g = jax.jit(jax.grad(lambda h, w: fn(h, w, tgt, mask)[0], argnums=(0, 1)))(h, w)
    g_ref = jax.grad(naive, argnums=(0, 1))(h, w, tgt, mask)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=F32_OP, rtol=0)


def test_sum_variant_and_masked_tokens_ignored():
    h, w, tgt, mask = _data()
    s = L.chunked_cross_entropy_sum(h, w, tgt, mask, chunk=5)
    np.testing.assert_allclose(s, naive(h, w, tgt, mask) * mask.sum(), rtol=1e-6)
    # Targets under mask 0 do not matter at all.
    tgt2 = jnp.where(mask > 0, tgt, (tgt + 7) % w.shape[1])
    assert float(L.chunked_cross_entropy_sum(h, w, tgt2, mask, chunk=5)) == float(s)


def test_all_masked_is_zero_not_nan():
    h, w, tgt, mask = _data()
    loss, aux = L.chunked_cross_entropy(h, w, tgt, jnp.zeros_like(mask), chunk=8)
    assert float(loss) == 0.0 and float(aux["num_tokens"]) == 0.0
    g = jax.grad(lambda h: L.chunked_cross_entropy(h, w, tgt, 0 * mask, chunk=8)[0])(h)
    assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) == 0.0


def test_loss_fn_on_model_matches_naive():
    cfg = M.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                        head_dim=16, mlp_dim=64, tie_embeddings=True)
    model = M.Llama(cfg, rngs=nnx.Rngs(0))
    b, t = 2, 16
    tok = jax.random.randint(jax.random.key(1), (b, t + 1), 0, 64)
    batch = dict(tokens=tok[:, :-1], targets=tok[:, 1:],
                 positions=jnp.broadcast_to(jnp.arange(t), (b, t)),
                 segment_ids=jnp.ones((b, t), jnp.int32),
                 loss_mask=jnp.ones((b, t)).at[0, :5].set(0))
    (loss, aux), grads = nnx.jit(nnx.value_and_grad(
        lambda m: L.loss_fn(m, batch, chunk=6), has_aux=True))(model)

    def ref_fn(m):
        h = m(batch["tokens"], batch["positions"], batch["segment_ids"])
        return naive(h, m.unembedding(), batch["targets"], batch["loss_mask"])

    ref, ref_grads = nnx.jit(nnx.value_and_grad(ref_fn))(model)
    np.testing.assert_allclose(loss, ref, atol=F32_OP)
    assert float(aux["num_tokens"]) == b * t - 5
    for a, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, r, atol=F32_OP, rtol=1e-5)


def _temp_bytes(fn, h, w, tgt, mask):
    grad = jax.jit(jax.grad(lambda h, w: fn(h, w, tgt, mask), argnums=(0, 1)))
    return grad.lower(h, w).compile().memory_analysis().temp_size_in_bytes


def test_never_materialises_full_logits():
    """Scratch memory of loss+grad stays far below one [T, V] fp32 logits array."""
    h, w, tgt, mask = _data(b=1, t=2048, d=16, v=2048)
    full_logits = 2048 * 2048 * 4
    chunked = _temp_bytes(lambda *a: L.chunked_cross_entropy(*a, chunk=128)[0], h, w, tgt, mask)
    ref = _temp_bytes(naive, h, w, tgt, mask)
    assert chunked < full_logits / 4, (chunked, full_logits)
    assert ref >= full_logits  # the measurement can see a full logits array when there is one


def test_bad_input():
    h, w, tgt, mask = _data()
    with pytest.raises(ValueError, match="does not match hidden dim"):
        L.chunked_cross_entropy(h, w.T, tgt, mask)
    with pytest.raises(ValueError, match="targets"):
        L.chunked_cross_entropy(h, w, tgt[:, :3], mask)
    with pytest.raises(ValueError, match="chunk=0"):
        L.chunked_cross_entropy(h, w, tgt, mask, chunk=0)
    with pytest.raises(ValueError, match="missing key"):
        L.loss_fn(None, {"tokens": tgt})
