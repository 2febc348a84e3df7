"""LctxRunner beyond plain generation: log-likelihoods (lm-eval's loglikelihood), extra stop
ids and the first-token bar (HF's eos list and min_length), against an unpadded forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lctx import generate as gen_lib
from lctx import hf
from lctx.model import Llama, ModelConfig


@pytest.fixture(scope="module")
def runner(tmp_path_factory, sp_model_path):
    from evals.runners.lctx_runner import LctxRunner
    cfg = ModelConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=16, mlp_dim=128, max_seq_len=256, init_std=0.2,
                      attn_impl="blockwise", block_q=16, block_k=16)
    out = str(tmp_path_factory.mktemp("lctx_ll") / "hf")
    hf.export_hf(Llama(cfg, rngs=nnx.Rngs(5)), out, tokenizer=sp_model_path)
    return LctxRunner(out, batch_size=4, min_bucket=64, block_q=16, block_k=16,
                      progress=False)


@jax.jit
def _logprobs(state, x_BT):
    model = nnx.merge(_GRAPH[0], state)
    pos_BT = jnp.broadcast_to(jnp.arange(x_BT.shape[1]), x_BT.shape)
    return jax.nn.log_softmax(model.logits(model(x_BT, pos_BT, jnp.ones_like(x_BT))), axis=-1)


_GRAPH = []


def logprobs_one(model, ids):
    """log_softmax of every position's logits, one unpadded row."""
    graphdef, state = nnx.split(model)
    _GRAPH[:] = [graphdef]
    return np.asarray(_logprobs(state, jnp.array([ids], jnp.int32))[0])


def test_loglikelihood_equals_unpadded_forward(runner, kjv_text):
    tok = runner.tokenizer
    text = tok.encode(kjv_text[:3000])
    # Lengths 6, 43, 20, 31 (padded to 64 in one batch); scored positions 1..19.
    pairs = [(text[:5], text[5:6]), (text[10:50], text[50:53]), (text[:1], text[1:20])]
    greedy_ctx = text[200:230]
    lp = logprobs_one(runner.model, greedy_ctx)
    pairs.append((greedy_ctx, [int(lp[-1].argmax())]))  # the greedy next token
    got = runner.loglikelihood(pairs)
    for (ctx, cont), (score, greedy) in zip(pairs, got):
        lp = logprobs_one(runner.model, ctx + cont)
        want = sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont))
        want_greedy = all(lp[len(ctx) - 1 + j].argmax() == t for j, t in enumerate(cont))
        assert score == pytest.approx(float(want), abs=1e-4)
        assert greedy == want_greedy
    assert got[-1][1] is True and got[0][0] < 0
    with pytest.raises(ValueError, match="must fit the window"):
        runner.loglikelihood([(text[:200], text[200:260])])


def test_stop_ids_and_first_token_bar(runner, kjv_text):
    tok = runner.tokenizer
    prompts = [tok.encode(kjv_text[i * 900:i * 900 + 300])[:n] for i, n in
               enumerate((20, 35, 9))]
    plain = runner.generate_ids(prompts, 12)
    assert all(len(r) == 12 for r in plain), "rows stopped at eos: pick other prompts"
    stop = plain[1][4]
    cut = runner.generate_ids(prompts, 12, stop_ids=[stop])
    for p, c in zip(plain, cut):  # cut after (and including) the first stop id
        k = p.index(stop) + 1 if stop in p else len(p)
        assert c == p[:k]
    # min_new_tokens=1: the first token is the best one that is not barred, then greedy on.
    barred = [plain[0][0]]
    got = runner.generate_ids(prompts[:1], 6, stop_ids=barred, min_new_tokens=1)[0]
    lp = np.array(logprobs_one(runner.model, prompts[0])[-1])
    lp[list(tok.eos_ids) + barred] = -np.inf
    first = int(lp.argmax())
    rest, _ = gen_lib.generate(runner.model, np.array([prompts[0] + [first]], np.int32),
                               max_new_tokens=5)
    rest = np.asarray(rest)[0].tolist()
    k = rest.index(barred[0]) + 1 if barred[0] in rest else len(rest)
    assert got == [first] + rest[:k] and first != plain[0][0]
    text = runner.generate([prompts[0]], 6, stop_ids=barred, min_new_tokens=1)
    assert text == [tok.decode(got)]
    with pytest.raises(ValueError, match="supports up to 1"):
        runner.generate([prompts[0]], 6, min_new_tokens=2)
