"""BeaconModel: ratio 0 is the plain model, split attention is the golden mask, zero-init
adapters are the base projections, memory is un-rotated and k per window, BPTT through it."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lctx import beacon as rules
from lctx import beacon_generate as bgen
from lctx import beacon_train
from lctx import generate as gen_lib
from lctx import lora
from lctx import rope as rope_lib
from lctx.beacon_model import BeaconModel
from lctx.model import Llama, ModelConfig

W = 8
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  mlp_dim=64, max_seq_len=256, attn_impl="dense")


def make(adapter="experts", ratios=(2, 4, 8), attn_impl="dense", seed=0):
    base = Llama(CFG if attn_impl == "dense" else ModelConfig(
        **{**CFG.__dict__, "attn_impl": attn_impl, "block_q": 4, "block_k": 4}),
        rngs=nnx.Rngs(seed))
    bcfg = rules.BeaconConfig(window=W, native_len=48, ratios=ratios, headroom=W,
                              adapter=adapter, rank=4, alpha=8.0)
    return BeaconModel(base, bcfg, eos_id=3, rngs=nnx.Rngs(seed + 1))


def tokens(b, t, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


@functools.partial(jax.jit, static_argnames=("graphdef", "ratio", "capacity", "dense"))
def _stream(graphdef, state, toks, expert, *, ratio, capacity, dense):
    model = nnx.merge(graphdef, state)
    mem, hs = model.init_memory(toks.shape[0], capacity), []
    for i in range(toks.shape[1] // W):
        h, mem = model.step(toks[:, i * W:(i + 1) * W], mem, ratio=ratio, expert=expert,
                            dense=dense)
        hs.append(h)
    return jnp.concatenate(hs, 1), mem


def stream(model, toks, ratio, expert=0, capacity=64, dense=False):
    """Hidden states of every raw token and the memory after all windows (jitted)."""
    graphdef, state = nnx.split(model)
    return _stream(graphdef, state, toks, jnp.int32(expert), ratio=ratio, capacity=capacity,
                   dense=dense)


@pytest.fixture(scope="module")
def model():
    return make()


def test_ratio0_equals_plain_model(model):
    toks = tokens(2, 5 * W)
    pos = jnp.broadcast_to(jnp.arange(5 * W), toks.shape)
    plain = model.base.logits(model.base(toks, pos, jnp.ones_like(toks)))
    hidden, mem = stream(model, toks, ratio=0)
    assert int(mem.length) == 5 * W  # raw keys/values kept, uncompressed
    diff = float(jnp.abs(model.base.logits(hidden) - plain).max())
    assert diff < 1e-5, diff  # fp32, 1e-5 per op (measured ~1e-7: reduction order only)


def test_ratio0_generation_equals_plain_generation(model):
    prompt = [int(t) for t in tokens(1, 3 * W + 5, seed=1)[0]]
    ids, info = bgen.generate(model, prompt, max_new_tokens=6, ratio=0)
    want, _ = gen_lib.generate(model.base, jnp.asarray([prompt]), max_new_tokens=6)
    assert ids == [int(t) for t in want[0]]
    assert info == {"ratio": 0, "windows": 3, "memory": 3 * W, "tail": 5}


def test_split_attention_equals_golden_mask(model):
    toks = tokens(2, 3 * W, seed=2)
    h_split, m_split = stream(model, toks, 4, expert=1)
    h_dense, m_dense = stream(model, toks, 4, expert=1, dense=True)
    np.testing.assert_allclose(h_split, h_dense, atol=1e-5)
    np.testing.assert_allclose(m_split.k_LBMKH, m_dense.k_LBMKH, atol=1e-5)
    assert int(m_split.length) == 3 * W // 4


def test_blockwise_raw_rows_equal_dense(model):
    toks = tokens(2, 3 * W, seed=2)
    h_d, _ = stream(model, toks, 4, expert=1)
    h_b, _ = stream(make(attn_impl="blockwise"), toks, 4, expert=1)
    np.testing.assert_allclose(h_b, h_d, atol=1e-5)


@pytest.mark.parametrize("adapter", ["experts", "clone"])
def test_fresh_adapter_is_the_base_projection_and_memory_is_unrotated(adapter):
    model = make(adapter)
    toks = tokens(2, 3 * W, seed=4)
    _, mem = stream(model, toks, ratio=4, expert=0)
    # Layer 0's beacon input is the beacon embedding (= the eos embedding at init): its memory
    # keys/values must be the *base* projections, not rotated.
    blk = nnx.merge(*nnx.split(model.base.layers))
    x_D = model.base.embed[...][3]
    h_D = (x_D * jax.lax.rsqrt(jnp.mean(x_D * x_D) + CFG.norm_eps)) * \
        blk.attn_norm.scale[...][0]
    k_KH = jnp.einsum("d,dkh->kh", h_D, blk.attn.wk[...][0])
    v_KH = jnp.einsum("d,dkh->kh", h_D, blk.attn.wv[...][0])
    for i in (0, 1, 2, 5):  # beacons of windows 1 and 3, both rows
        np.testing.assert_allclose(mem.k_LBMKH[0, i % 2, i], k_KH, atol=1e-5)
        np.testing.assert_allclose(mem.v_LBMKH[0, i % 2, i], v_KH, atol=1e-5)
    assert int(mem.length) == 6 and not np.asarray(mem.k_LBMKH[:, :, 6:]).any()
    # A trained (non-zero) adapter changes exactly those keys.
    name = "bk" if adapter == "experts" else "dk"
    w = getattr(model.bank, name)
    w[...] = w[...] + 0.1
    _, mem2 = stream(model, toks, ratio=4, expert=0)
    assert float(jnp.abs(mem2.k_LBMKH[0, 0, :2] - k_KH).max()) > 1e-3


def test_rotation_at_step_positions(model):
    # The keys a later window attends to are the stored un-rotated keys rotated at slot j.
    toks = tokens(2, 3 * W, seed=5)
    _, mem = stream(model, toks, ratio=4, expert=1)
    cache = bgen.memory_to_cache(model, mem, 2)
    cos, sin = rope_lib.cos_sin(CFG.rope, jnp.arange(64)[None], CFG.head_dim)
    np.testing.assert_allclose(cache.k_LBSKH[:, :, :64], rope_lib.apply_rope(
        mem.k_LBMKH, cos, sin), atol=1e-6)
    np.testing.assert_array_equal(cache.seg_BS[0], [1] * 6 + [0] * 60)


def test_gradient_flows_through_memory_only_to_the_chosen_expert(model):
    toks = tokens(2, 3 * W, seed=6)
    batch = {"inputs": toks, "targets": jnp.roll(toks, -1, 1)}
    graphdef, params, frozen = beacon_train.split_model(model)

    @jax.jit
    def grads(weights):
        b = dict(batch, weights=weights)
        return jax.grad(lambda p: beacon_train.micro_loss(
            p, graphdef, b, 1024, frozen, ratio=4, expert=1))(params)

    first = jnp.zeros(toks.shape).at[:, :W].set(1.0)
    later = jnp.zeros(toks.shape).at[:, W:].set(1.0)
    g_first, g_later = grads(first), grads(later)
    # Loss on window 1 only: raw tokens never see their own window's beacons -> no gradient.
    assert not any(np.asarray(x).any() for x in jax.tree.leaves(g_first))
    # Loss on later windows reaches expert 1 through the memory of earlier windows (BPTT).
    assert float(jnp.abs(g_later["beacon_embed"][...][1]).max()) > 0
    assert float(jnp.abs(g_later["bank"]["bk"][...][:, 1]).max()) > 0
    # ... and no other expert.
    assert not np.asarray(g_later["bank"]["bk"][...])[:, [0, 2]].any()
    assert not np.asarray(g_later["beacon_embed"][...])[[0, 2]].any()


def test_remat_equals_no_remat(model):
    toks = tokens(1, 3 * W, seed=7)
    b = {"inputs": toks, "targets": jnp.roll(toks, -1, 1), "weights": jnp.ones(toks.shape)}
    graphdef, params, frozen = beacon_train.split_model(model)
    f = lambda p, r: beacon_train.micro_loss(p, graphdef, b, 1024, frozen, ratio=2,  # noqa
                                             expert=0, remat=r)
    g1, g2 = (jax.jit(jax.grad(f), static_argnums=1)(params, r) for r in (True, False))
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, c, atol=1e-6)


def test_compressed_generation_reports_memory(model):
    prompt = [int(t) for t in tokens(1, 9 * W + 3, seed=8)[0]]
    ids, info = bgen.generate(model, prompt, max_new_tokens=3)
    # 75 tokens + headroom 8 > 48: ratio 2 covers (48 - 8) * 2 + 8 = 88.
    assert info == {"ratio": 2, "windows": 9, "memory": 9 * W // 2, "tail": 3}
    assert len(ids) == 3 and all(0 <= t < CFG.vocab_size for t in ids)
    with pytest.raises(rules.BeaconError, match="no expert for it"):
        bgen.generate(model, prompt, max_new_tokens=3, ratio=16)
    with pytest.raises(rules.BeaconError, match="longer than the largest ratio"):
        bgen.generate(model, list(prompt) * 8, max_new_tokens=3)


def test_adapter_param_counts_match_banks():
    for adapter, n in (("experts", 3), ("shared", 1), ("clone", 1)):
        m = make(adapter)
        kind = "clone" if adapter == "clone" else "lora"
        emb = (n if adapter == "experts" else 1) * CFG.d_model
        assert m.n_adapter_params() == lora.count(CFG, kind, n, 4) + emb


def test_prefill_memory_does_not_grow_with_windows(model):
    # Static memory capacity: the compiled prefill needs the same temporary memory for 4, 16
    # and 64 windows (the input buffer aside), so per-step memory is flat in the input length
    # (time per window: bench/beacon_bench.py's second table).
    graphdef, state = nnx.split(model)

    def temp(n):
        toks = jnp.zeros((1, n * W), jnp.int32)
        f = jax.jit(lambda s, x, k: bgen.prefill(nnx.merge(graphdef, s), x, k, ratio=4,
                                                 expert=1, capacity=40)[0])
        return f.lower(state, toks, jnp.int32(n)).compile().memory_analysis().temp_size_in_bytes

    assert temp(4) == temp(16) == temp(64) > 0


def test_streaming_generation_reads_as_training_does(model):
    # Inference (memory -> base KV cache, tail prefilled by the base) gives the last raw
    # token the same logits as the training path (every window through `step`, the last
    # one padded): what the adapters learn is what generation uses.
    toks = tokens(1, 3 * W + 5, seed=9)
    padded = jnp.pad(toks, ((0, 0), (0, W - 5)))
    h_train, _ = stream(model, padded, 4, expert=1)

    @jax.jit
    def infer(state, toks):
        m = nnx.merge(*state)
        mem, _ = bgen.prefill(m, jnp.pad(toks, ((0, 0), (0, W))), 3, ratio=4, expert=1,
                              capacity=40)
        cache = bgen.memory_to_cache(m, mem, W)
        idx = jnp.arange(W)[None]
        tail = jnp.pad(toks[:, 3 * W:], ((0, 0), (0, W - 5)))
        hid, _ = m.base(tail, mem.length + idx, (idx < 5).astype(jnp.int32), cache=cache)
        return m.base.logits(hid[:, :5])

    got = infer(nnx.split(model), toks)
    want = model.base.logits(h_train[:, 3 * W:3 * W + 5])
    np.testing.assert_allclose(got, want, atol=1e-5)
