"""Model: config errors, logical axes, scan/remat/blockwise equivalence, causality, packing,
KV cache, dtype policy, and logits parity with HF LlamaForCausalLM for every RoPE type."""
import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lctx import model as M
from lctx import rope as R

from deps import require

TINY = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
            mlp_dim=128)
F32_BLOCK = 1e-4  # fp32 tolerance per block (house rule)


def _model(**kw):
    return M.Llama(M.ModelConfig(**{**TINY, **kw}), rngs=nnx.Rngs(0))


def _batch(b=2, t=24, seed=0):
    tok = jax.random.randint(jax.random.key(seed), (b, t), 0, 128)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    return tok, pos, jnp.ones((b, t), jnp.int32)


def _hidden(model, *args):
    return nnx.jit(lambda m, *a: m(*a))(model, *args)


def _grads(model, tok, pos, seg):
    def loss(m):
        return jnp.sum(m(tok, pos, seg) ** 2)
    return jax.tree.leaves(nnx.jit(nnx.grad(loss))(model))


@pytest.mark.parametrize("kw,match", [
    (dict(n_heads=12, n_kv_heads=5), "n_heads=12 is not divisible by n_kv_heads=5"),
    (dict(head_dim=15), "head_dim=15 must be even"),
    (dict(d_model=0), "d_model=0 must be a positive integer"),
    (dict(attn_impl="flash"), "attn_impl='flash'"),
    (dict(dtype="int8"), "dtype='int8' must be a floating dtype"),
    (dict(param_dtype="float33"), "param_dtype='float33' is not a dtype name"),
    (dict(remat="sometimes"), "remat='sometimes'"),
    (dict(remat="names:qkv,nope"), "unknown checkpoint name"),
    (dict(rope={"type": "default"}), "must be an lctx.rope.RopeConfig"),
])
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        M.ModelConfig(**{**TINY, **kw})


def test_params_carry_logical_axes():
    model = _model()
    allowed = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "layers"}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var.value.ndim and set(names) <= allowed, (path, names)
        assert (path[0] == "layers") == (names[0] == "layers"), (path, names)
    assert model.layers.attn.wq.value.shape == (2, 64, 4, 16)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == model.cfg.n_params()


def test_scan_equals_unrolled():
    scanned, unrolled = _model(scan_layers=True), _model(scan_layers=False)
    args = _batch()
    np.testing.assert_allclose(_hidden(unrolled, *args), _hidden(scanned, *args), atol=1e-6,
                               rtol=0)
    for a, b in zip(_grads(unrolled, *args), _grads(scanned, *args)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@functools.lru_cache(maxsize=None)
def _reference_grads():
    return _grads(_model(), *_batch())


@pytest.mark.parametrize("policy", ["full", pytest.param("dots", marks=pytest.mark.slow),
                                    pytest.param("names:qkv,attn_context",
                                                 marks=pytest.mark.slow)])
def test_remat_equals_no_remat(policy):
    for a, b in zip(_grads(_model(remat=policy), *_batch()), _reference_grads()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_blockwise_model_matches_dense():
    tok, pos, _ = _batch(t=40)
    seg = jnp.array([[1] * 25 + [2] * 15, [1] * 33 + [0] * 7])
    args = (tok, pos, seg)
    dense, bw = _model(), _model(attn_impl="blockwise", block_q=8, block_k=16)
    np.testing.assert_allclose(_hidden(bw, *args), _hidden(dense, *args), atol=F32_BLOCK, rtol=0)
    for a, b in zip(_grads(bw, *args), _grads(dense, *args)):
        np.testing.assert_allclose(a, b, atol=F32_BLOCK, rtol=1e-4)


def test_causality_by_gradient():
    """d hidden_t / d embedding(token_s) is zero exactly when s > t."""
    model, t = _model(), 12
    tok = jnp.arange(t)[None] * 3  # distinct tokens: embedding row <-> position
    pos, seg = jnp.arange(t)[None], jnp.ones((1, t), jnp.int32)

    @nnx.jit
    def embed_grad_rows(m, q):
        g = nnx.grad(lambda m: jnp.sum(jnp.take(m(tok, pos, seg)[0], q, axis=0)))(m)
        return jnp.abs(g["embed"].value[tok[0]]).sum(-1)

    for q in (0, 5, 11):
        row_norm = embed_grad_rows(model, jnp.int32(q))
        assert bool((row_norm[q + 1:] == 0).all()), (q, row_norm)
        assert bool((row_norm[:q + 1] > 0).all()), (q, row_norm)


def test_packed_documents_are_isolated():
    model = _model()
    tok, _, _ = _batch(b=1, t=30)
    seg = jnp.array([[1] * 12 + [2] * 18])
    pos = jnp.concatenate([jnp.arange(12), jnp.arange(18)])[None]
    base = _hidden(model, tok, pos, seg)
    bumped = _hidden(model, tok.at[0, 3].set((tok[0, 3] + 1) % 128), pos, seg)
    np.testing.assert_array_equal(bumped[:, 12:], base[:, 12:])  # document B untouched
    assert float(jnp.abs(bumped[:, 3:12] - base[:, 3:12]).min()) > 0  # document A changed
    alone = _hidden(model, tok[:, 12:], jnp.arange(18)[None], jnp.ones((1, 18), jnp.int32))
    np.testing.assert_allclose(base[:, 12:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rope", [R.make_rope("default"), R.make_rope("linear", factor=2.0)])
def test_kv_cache_matches_full_forward(rope):
    """Prefill 10 tokens, then decode one at a time: the same hidden states as one pass.

    (Dynamic RoPE differs by design, as in HF: cached keys keep their step's rotation; the HF
    generation parity test covers it.)
    """
    model = _model(rope=rope)
    tok, pos, seg = _batch(t=16)
    full = _hidden(model, tok, pos, seg)
    step = nnx.jit(lambda m, c, *a: m(*a, cache=c))
    cache = model.init_cache(2, 20)
    h, cache = step(model, cache, tok[:, :10], pos[:, :10], seg[:, :10])
    outs = [h]
    for i in range(10, 16):
        h, cache = step(model, cache, tok[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1])
        outs.append(h)
    got = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
    assert int(cache.length) == 16
    assert bool((cache.seg_BS[:, 16:] == 0).all())  # unwritten slots stay padding


def test_bf16_policy():
    model = _model(param_dtype="bfloat16", dtype="bfloat16")
    assert model.embed.value.dtype == jnp.bfloat16
    args = _batch()
    h = _hidden(model, *args)
    assert h.dtype == jnp.bfloat16 and model.logits(h).dtype == jnp.float32
    ref = _model(dtype="float32")  # same bf16-rounded init values, computed in float32
    nnx.update(ref, jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(model, nnx.Param)))
    err = jnp.abs(h.astype(jnp.float32) - _hidden(ref, *args)).max()
    assert float(err) < 0.1, err  # bf16 activations, O(1) normed hidden


# ---------------------------------------------------------------------------- HF parity
HF_ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 64},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0,
                 "short_factor": [1.0 + 0.1 * i for i in range(8)],
                 "long_factor": [1.0 + 0.7 * i for i in range(8)],
                 "original_max_position_embeddings": 64},
}


@contextlib.contextmanager
def hf_float64():
    """HF's unchanged code in float64 (its `.float()`/`torch.float32` become float64).

    HF's own fp32 RoPE phases are off by ~1e-2 rad at position 1e5 (`pos * inv_freq` in
    float32), so the float64 run is the accurate reference at large positions.
    """
    import torch
    saved = torch.float, torch.float32, torch.Tensor.float, torch.get_default_dtype()
    torch.float = torch.float32 = torch.float64
    torch.Tensor.float = lambda self, *a, **k: self.double()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.float, torch.float32, torch.Tensor.float = saved[:3]
        torch.set_default_dtype(saved[3])


def hf_model(rope_name, max_pos=64, tie=False, seed=0):
    """A tiny random float64 HF Llama whose weights are exactly float32 numbers."""
    import torch
    import transformers
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        max_position_embeddings=max_pos, rope_parameters=dict(HF_ROPES[rope_name]),
        tie_word_embeddings=tie, attn_implementation="eager")
    torch.manual_seed(seed)
    with hf_float64():
        hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2 if p.ndim > 1 else 0.05).add_(1.0 if p.ndim == 1 else 0.0)
            p.copy_(p.to(torch.float32).to(torch.float64))
    return hf, cfg


def from_hf(hf, cfg, **kw) -> M.Llama:
    """Test-local converter: HF Llama weights -> lctx Llama (stacked layers, [D, N, H])."""
    c = cfg
    mcfg = M.ModelConfig(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
        mlp_dim=c.intermediate_size, norm_eps=c.rms_norm_eps, tie_embeddings=c.tie_word_embeddings,
        max_seq_len=4096, rope=R.rope_from_hf(c.to_dict()), **kw)
    model = M.Llama(mcfg, rngs=nnx.Rngs(0))
    d, n, k, h = mcfg.d_model, mcfg.n_heads, mcfg.n_kv_heads, mcfg.head_dim
    get = lambda t: np.asarray(t.detach().numpy(), np.float32)  # noqa: E731
    lay = hf.model.layers
    stack = lambda f: jnp.asarray(np.stack([f(l) for l in lay]))  # noqa: E731
    model.embed.value = jnp.asarray(get(hf.model.embed_tokens.weight))
    model.layers.attn_norm.scale.value = stack(lambda l: get(l.input_layernorm.weight))
    model.layers.mlp_norm.scale.value = stack(lambda l: get(l.post_attention_layernorm.weight))
    a = lambda l: l.self_attn  # noqa: E731
    model.layers.attn.wq.value = stack(lambda l: get(a(l).q_proj.weight).T.reshape(d, n, h))
    model.layers.attn.wk.value = stack(lambda l: get(a(l).k_proj.weight).T.reshape(d, k, h))
    model.layers.attn.wv.value = stack(lambda l: get(a(l).v_proj.weight).T.reshape(d, k, h))
    model.layers.attn.wo.value = stack(lambda l: get(a(l).o_proj.weight).T.reshape(n, h, d))
    model.layers.mlp.w_gate.value = stack(lambda l: get(l.mlp.gate_proj.weight).T)
    model.layers.mlp.w_up.value = stack(lambda l: get(l.mlp.up_proj.weight).T)
    model.layers.mlp.w_down.value = stack(lambda l: get(l.mlp.down_proj.weight).T)
    model.final_norm.scale.value = jnp.asarray(get(hf.model.norm.weight))
    if not c.tie_word_embeddings:
        model.unembed.value = jnp.asarray(get(hf.lm_head.weight).T)
    return model


@pytest.mark.hf
@pytest.mark.parametrize("rope_name", sorted(HF_ROPES))
def test_logits_match_hf(rope_name):
    """fp32 logits within 1e-4 of HF (float64) on 256 tokens, from 0 and from 100,000."""
    import torch
    # max_position_embeddings 256 > L0 = 64: longrope gets factor 4 (attention scaling != 1).
    hf, cfg = hf_model(rope_name, max_pos=256, tie=rope_name == "linear")
    model = from_hf(hf, cfg)
    logits_fn = nnx.jit(lambda m, *a: m.logits(m(*a)))
    tok = np.random.default_rng(0).integers(0, 128, (2, 256))
    for start in (0, 100_000):  # increasing, as HF's stateful dynamic RoPE requires
        pos = np.tile(np.arange(256) + start, (2, 1))
        with hf_float64(), torch.no_grad():
            ref = hf(torch.as_tensor(tok), position_ids=torch.as_tensor(pos)).logits.numpy()
        got = logits_fn(model, jnp.asarray(tok), jnp.asarray(pos), jnp.ones((2, 256), jnp.int32))
        err = float(np.abs(np.asarray(got, np.float64) - ref).max())
        assert err < F32_BLOCK, (rope_name, start, err)
        assert float(np.abs(ref).max()) > 1.0  # logits are not trivially small


def test_hf_parity_test_can_fail():
    """The converter is load-bearing: a q/k head permutation (HF interleave) breaks parity."""
    require("transformers")
    import torch
    hf, cfg = hf_model("default")
    model = from_hf(hf, cfg)
    wq = model.layers.attn.wq.value  # interleaved (Meta) layout instead of HF's half-split
    model.layers.attn.wq.value = wq.reshape(2, 64, 4, 8, 2).swapaxes(-1, -2).reshape(wq.shape)
    tok = np.random.default_rng(0).integers(0, 128, (1, 64))
    with hf_float64(), torch.no_grad():
        ref = hf(torch.as_tensor(tok)).logits.numpy()
    got = model.logits(model(jnp.asarray(tok), jnp.arange(64)[None], jnp.ones((1, 64), int)))
    assert float(np.abs(np.asarray(got) - ref).max()) > 1e-2


def test_config_is_hashable_and_replaceable():
    cfg = M.ModelConfig(**TINY)
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    assert dataclasses.replace(cfg, dtype=jnp.bfloat16).dtype == "bfloat16"
