"""LctxRunner: same tokens as `lctx.generate` run one prompt at a time, unpadded."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from evals.runners.base import PromptTooLongError
from lctx import generate as gen_lib
from lctx import hf
from lctx import rope as rope_lib
from lctx.model import Llama, ModelConfig

M = 10  # new tokens per prompt
# Runner and reference share one ModelConfig (blockwise, 16-token blocks), so jitted programs
# of equal shapes are compiled once; lengths 5..40 share the 64 bucket, 70 takes 128.
RUN = dict(min_bucket=64, block_q=16, block_k=16, progress=False)


def load(model_dir, **kw):
    return hf.load_hf(model_dir, attn_impl="blockwise", block_q=16, block_k=16, **kw)[1]


def tiny_cfg(**kw):
    # init_std 0.2: attention that depends on position and logits far from ties.
    return ModelConfig(**dict(dict(vocab_size=1024, d_model=64, n_layers=2, n_heads=4,
                                   n_kv_heads=2, head_dim=16, mlp_dim=128, max_seq_len=256,
                                   init_std=0.2, attn_impl="blockwise", block_q=16,
                                   block_k=16), **kw))


@pytest.fixture(scope="module")
def export(tmp_path_factory, sp_model_path):
    """An lctx export whose `<|eot_id|>` logit copies a common token's (so rows do stop)."""
    model = Llama(tiny_cfg(), rngs=nnx.Rngs(3))
    out = str(tmp_path_factory.mktemp("lctx_hf") / "hf")
    hf.export_hf(model, out, tokenizer=sp_model_path)
    from lctx.tokenizer import load_tokenizer
    tok = load_tokenizer(out)
    return out, tok


@pytest.fixture(scope="module")
def prompts(export, kjv_text):
    _, tok = export
    # Lengths 5..70: several share a bucket, one batch is short (filled with copies).
    ids = [tok.encode(kjv_text[i * 1500:i * 1500 + 400]) for i in range(5)]
    return [x[:n] for x, n in zip(ids, (33, 5, 70, 17, 40))]


def reference(model, tok, ids, n_new=M):
    """lctx.generate greedy, one prompt, no padding, no eos stop; cut at the first eos."""
    toks, _ = gen_lib.generate(model, np.array([ids], np.int32), max_new_tokens=n_new)
    row = np.asarray(toks)[0].tolist()
    return row[:next((i for i, t in enumerate(row) if t in tok.eos_ids), len(row))]


def with_eot_stops(model_dir, tok, prompts, out_dir):
    """A copy of the model where eot outscores the token greedy emits most, so rows stop."""
    model = load(model_dir)
    outs = [reference(model, tok, p) for p in prompts]
    common = max(set(sum(outs, [])), key=sum(outs, []).count)
    w = np.array(model.unembed[...])
    w[:, tok.eot_id] = w[:, common] * 1.5
    model.unembed[...] = w
    hf.export_hf(model, out_dir, tokenizer=model_dir)
    return out_dir


def test_batched_equals_lctx_generate_one_by_one(export, prompts, tmp_path):
    from evals.runners.lctx_runner import LctxRunner
    model_dir, tok = export
    model_dir = with_eot_stops(model_dir, tok, prompts, str(tmp_path / "stops"))
    model = load(model_dir)
    want = [reference(model, tok, p) for p in prompts]
    assert any(len(w) < M for w in want), "no row stops at eos: the test would not mean it"
    assert any(len(w) == M for w in want), "every row stops: the budget is never reached"
    for bs in (1, 3):
        r = LctxRunner(model_dir, batch_size=bs, **RUN)
        assert r.generate_ids(prompts, M) == want, f"batch_size={bs}"
    texts = r.generate(prompts, M)
    assert texts == [tok.decode(w) for w in want]
    assert r.generate([tok.decode(p) for p in prompts[:2]], M) == texts[:2]  # text == ids
    with r:
        pass
    assert r.model is None  # closed


def test_stop_strings_and_special_tokens(export, prompts):
    from evals.runners.lctx_runner import LctxRunner
    model_dir, tok = export
    r = LctxRunner(model_dir, batch_size=2, **RUN)
    full = r.generate(prompts[:2], 16)
    stop = full[0][len(full[0]) // 2:len(full[0]) // 2 + 2]
    assert stop.strip(), full
    cut = r.generate(prompts[:2], 16, [stop, ""])
    assert cut == [full[0][:full[0].index(stop)], full[1].split(stop)[0]]
    # "<|start_header_id|>" in text is one special id (as vLLM/HF read it) and never printed.
    sid = tok.special_id("<|start_header_id|>")
    assert r.encode(["<|start_header_id|>In"]) == [[sid] + tok.encode("In")]
    assert sid in r._special_ids and tok.decode([sid]) == "<|start_header_id|>"


def test_bad_inputs_are_clear(export, prompts, tmp_path):
    from evals.runners.lctx_runner import LctxRunner
    model_dir, _ = export
    r = LctxRunner(model_dir, max_model_len=64, **RUN)
    assert r.max_len == 64
    with pytest.raises(PromptTooLongError, match=r"prompt 1 has 70 tokens.*max_len=64"):
        r.generate([prompts[1], prompts[2]], 8)
    with pytest.raises(PromptTooLongError, match="prompt 0 has 60 tokens"):
        r.generate([list(range(1, 61))], 5)  # 60 + 5 > 64
    with pytest.raises(ValueError, match="token id 5000"):
        r.generate([[1, 5000]], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        r.generate([[1, 2]], 0)
    with pytest.raises(ValueError, match="attn_impl='ring'"):
        LctxRunner(model_dir, attn_impl="ring")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        LctxRunner(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="neither an HF directory"):
        LctxRunner(str(tmp_path))


@pytest.mark.slow
def test_rope_override_and_length_dependent_rope(export, prompts):
    from evals.runners.lctx_runner import LctxRunner
    model_dir, tok = export
    hf_rope = {"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0}
    r = LctxRunner(model_dir, rope_parameters=hf_rope, **RUN)
    assert r.cfg.rope == rope_lib.make_rope("linear", factor=8.0)
    base = load(model_dir)
    scaled = load(model_dir, rope=rope_lib.make_rope("linear", factor=8.0))
    want = [reference(scaled, tok, p) for p in prompts[:2]]
    assert want != [reference(base, tok, p) for p in prompts[:2]], "override must matter"
    assert r.generate_ids(prompts[:2], M) == want
    # dynamic NTK depends on the current length: one prompt at a time, unpadded.
    dyn = {"type": "dynamic", "theta": 10000.0, "factor": 4.0, "max_position_embeddings": 32}
    r = LctxRunner(model_dir, rope=dyn, max_model_len=512, **RUN)
    assert r.max_len == 512
    model = load(model_dir, rope=rope_lib.make_rope(**dyn), max_seq_len=512)
    assert r.generate_ids(prompts[:2], M) == [reference(model, tok, p) for p in prompts[:2]]


@pytest.mark.slow
def test_training_checkpoint_and_sharded_params(export, prompts, tmp_path, sp_model_path):
    """A trainer-layout workdir (config.json + ckpt/<stage>/<step>/{state,meta}) loads the
    same weights as the HF export; parameters sharded over 2 devices give the same tokens."""
    import optax

    from configs import common
    from evals.runners.lctx_runner import LctxRunner
    from lctx import checkpoint as ckpt_lib
    model_dir, tok = export
    _, model = hf.load_hf(model_dir)
    params = nnx.state(model, nnx.Param)
    state = {"params": params, "opt": optax.adamw(1e-3).init(params),
             "step": jax.numpy.zeros((), jax.numpy.int32),
             "rng": jax.random.key_data(jax.random.key(0))}
    cfg = common.base_config()
    cfg.model.max_seq_len = 256
    cfg.data.tokenizer = sp_model_path
    cfg.stages.s1 = common.stage(seq_len=256, steps=7, rope_cfg=common.rope(theta=10000.0))
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(cfg.to_json_best_effort())
    mgr = ckpt_lib.StageCheckpoints(os.path.join(workdir, "ckpt"), "s1", async_save=False)
    mgr.save(7, state, None, {"stage": "s1", "step": 7, "finished": True,
                              "rope": {"type": "default", "theta": 10000.0}})
    mgr.close()
    want = LctxRunner(model_dir, **RUN).generate_ids(prompts, M)
    r = LctxRunner(workdir, **RUN)
    assert r.meta["step"] == 7 and r.tokenizer.vocab_size == tok.vocab_size
    assert r.generate_ids(prompts, M) == want
    r2 = LctxRunner(os.path.join(workdir, "ckpt", "s1"), devices=2, **RUN)
    emb = r2.model.embed[...]
    assert len(emb.sharding.device_set) == 2
    assert r2.generate_ids(prompts, M) == want
    with pytest.raises(FileNotFoundError, match="step=3 not saved"):
        LctxRunner(workdir, step=3)
    json.dumps(r.meta)  # plain data
