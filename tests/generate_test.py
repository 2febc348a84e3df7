"""Generation: greedy KV-cache decoding equals HF `generate`; eos, padding, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lctx import generate as G
from lctx import model as M

TINY = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
            mlp_dim=128, max_seq_len=64)


@pytest.fixture(scope="module")
def model():
    return M.Llama(M.ModelConfig(**TINY), rngs=nnx.Rngs(0))


def _prompts(b=2, t=8, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, 128)


@pytest.mark.hf
@pytest.mark.parametrize("rope_name", ["default", "dynamic"])
def test_greedy_matches_hf_generate(rope_name):
    """32 greedy steps with the KV cache give HF's tokens (dynamic: decode crosses its L0)."""
    import torch
    from model_test import from_hf, hf_float64, hf_model
    hf, cfg = hf_model(rope_name, max_pos=40)  # dynamic: 20 + 32 positions pass 40 mid-way
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    model = from_hf(hf, cfg)
    prompt = np.random.default_rng(1).integers(0, 128, (2, 20))
    with hf_float64(), torch.no_grad():
        ref = hf.generate(torch.as_tensor(prompt), max_new_tokens=32, do_sample=False,
                          attention_mask=torch.ones(2, 20, dtype=torch.long)).numpy()[:, 20:]
    got, n = G.generate(model, jnp.asarray(prompt), max_new_tokens=32)
    np.testing.assert_array_equal(np.asarray(got), ref)
    assert np.asarray(n).tolist() == [32, 32]


def test_greedy_equals_argmax_of_full_forward(model):
    """Each greedy token is the argmax of a full (cache-free) forward over prompt + prefix."""
    prompt = _prompts(b=1, t=6)
    got, _ = G.generate(model, prompt, max_new_tokens=5)
    # One static shape (11 slots; unfilled ones are padding, segment 0) so it compiles once.
    fwd = nnx.jit(lambda m, s, seg: m.logits(m(s, jnp.arange(11)[None], seg)))
    seq = jnp.zeros((1, 11), jnp.int32).at[:, :6].set(prompt)
    for i in range(5):
        t = 6 + i
        logits = fwd(model, seq, (jnp.arange(11) < t).astype(jnp.int32)[None])
        nxt = int(jnp.argmax(logits[0, t - 1]))
        assert nxt == int(got[0, i]), i
        seq = seq.at[0, t].set(nxt)


def test_eos_stops_a_row_and_pads(model):
    prompt = _prompts()
    free, _ = G.generate(model, prompt, max_new_tokens=8)
    eos = int(free[0, 2])
    got, n = G.generate(model, prompt, max_new_tokens=8, eos_id=eos, pad_id=127)
    first = int(np.argmax(np.asarray(free[0]) == eos))
    assert int(n[0]) == first + 1
    np.testing.assert_array_equal(got[0, :first + 1], free[0, :first + 1])
    assert bool((got[0, first + 1:] == 127).all())


def test_right_padded_rows_match_unpadded_runs(model):
    prompt = _prompts(t=8)
    got, _ = G.generate(model, prompt, jnp.array([8, 5]), max_new_tokens=6)
    alone, _ = G.generate(model, prompt[1:, :5], max_new_tokens=6)
    full, _ = G.generate(model, prompt[:1], max_new_tokens=6)
    np.testing.assert_array_equal(got[1], alone[0])
    np.testing.assert_array_equal(got[0], full[0])


def test_sampling(model):
    prompt = _prompts()
    greedy, _ = G.generate(model, prompt, max_new_tokens=6)
    top1, _ = G.generate(model, prompt, max_new_tokens=6, temperature=0.7, top_k=1,
                         rng=jax.random.key(3))
    np.testing.assert_array_equal(top1, greedy)  # top-1 sampling is greedy
    a, _ = G.generate(model, prompt, max_new_tokens=6, temperature=1.5, rng=jax.random.key(3))
    b, _ = G.generate(model, prompt, max_new_tokens=6, temperature=1.5, rng=jax.random.key(3))
    np.testing.assert_array_equal(a, b)  # reproducible from the key
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    draws = jax.vmap(lambda k: G.sample_logits(logits, k, temperature=1.0, top_k=2))(
        jax.random.split(jax.random.key(0), 400))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4)
    assert counts[:2].sum() == 0 and 0.45 < counts[3] / 400 < 0.68  # 0.4 / 0.7 = 0.57


def test_bad_input(model):
    prompt = _prompts()
    with pytest.raises(ValueError, match="prompt lengths must be in"):
        G.generate(model, prompt, jnp.array([0, 3]), max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        G.generate(model, prompt, max_new_tokens=60)
    with pytest.raises(ValueError, match="temperature=-1"):
        G.sample_logits(jnp.zeros((1, 4)), jax.random.key(0), temperature=-1)
