"""HF checkpoint interop: a tiny random LlamaForCausalLM loads into lctx with equal logits,
lctx exports load back into transformers with equal logits, sharded loading, bad input."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from lctx import hf, sharding
from lctx.model import Llama, ModelConfig
from lctx.rope import make_rope

from deps import require

torch = require("torch")
transformers = require("transformers")
pytestmark = pytest.mark.hf

TOL = 1e-4  # fp32, whole model (per-block tolerance; never relaxed)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}


def tiny_hf_model(tie: bool, seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        max_position_embeddings=256, tie_word_embeddings=tie, initializer_range=0.2,
        rope_parameters=dict(LLAMA3_ROPE), attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms start at 1: randomise them so a swapped norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def hf_logits(model, tokens_BT):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens_BT))).logits.numpy()


def lctx_logits(model, tokens_BT):
    b, t = tokens_BT.shape
    pos_BT = np.broadcast_to(np.arange(t), (b, t))
    return np.asarray(model.logits(model(tokens_BT, pos_BT, np.ones((b, t), np.int32))))


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf_dir(request, tmp_path_factory):
    model = tiny_hf_model(tie=request.param)
    out = tmp_path_factory.mktemp("hf")
    model.save_pretrained(out, max_shard_size="40KB")  # forces many shards + an index
    return str(out), model


@pytest.fixture(scope="module")
def tokens_BT():
    return np.random.default_rng(0).integers(0, 96, (2, 24)).astype(np.int32)


def test_load_matches_hf_logits(hf_dir, tokens_BT):
    path, ref = hf_dir
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    cfg, model = hf.load_hf(path)
    assert cfg.tie_embeddings == ref.config.tie_word_embeddings
    assert cfg.rope == make_rope("llama3", theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=32)
    np.testing.assert_allclose(lctx_logits(model, tokens_BT), hf_logits(ref, tokens_BT),
                               atol=TOL, rtol=0)


def test_load_into_8_device_shardings(hf_dir, tokens_BT):
    path, ref = hf_dir
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    cfg, model = hf.load_hf(path, mesh=mesh)
    params = nnx.state(model, nnx.Param)
    want = sharding.param_shardings(params, mesh)
    for (p, arr), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(want)):
        assert isinstance(arr.sharding, NamedSharding) and arr.sharding.spec == s.spec, p
    # Each device holds a slice only: the q projection is split over embed (4) and heads (2).
    wq = model.layers.attn.wq[...]
    assert wq.addressable_shards[0].data.shape == (2, 64 // 4, 4 // 2, 16)
    with sharding.use_mesh(mesh):
        np.testing.assert_allclose(lctx_logits(model, tokens_BT), hf_logits(ref, tokens_BT),
                                   atol=TOL, rtol=0)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_export_loads_in_transformers(tmp_path, tokens_BT, tie, sp_model_path):
    cfg = ModelConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=16, mlp_dim=112, max_seq_len=256, tie_embeddings=tie,
                      rope=make_rope("yarn", theta=10000.0, factor=4.0,
                                     original_max_position_embeddings=64), init_std=0.2)
    model = Llama(cfg, rngs=nnx.Rngs(1))
    # Non-trivial norm scales so the norm mapping is tested too.
    for norm in (model.layers.attn_norm, model.layers.mlp_norm, model.final_norm):
        norm.scale[...] = jax.random.uniform(jax.random.key(2), norm.scale.shape,
                                             minval=0.5, maxval=1.5)
    out = hf.export_hf(model, cfg, str(tmp_path / "export"), tokenizer_path=sp_model_path,
                       max_shard_bytes=200_000, dtype="float32")
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and "tokenizer.model" in files
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    with open(os.path.join(out, "config.json")) as f:
        conf = json.load(f)
    assert conf["architectures"] == ["LlamaForCausalLM"]
    assert conf["rope_parameters"]["rope_type"] == "yarn"
    ref = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    toks = tokens_BT * 10
    np.testing.assert_allclose(hf_logits(ref, toks), lctx_logits(model, toks), atol=TOL, rtol=0)
    # And back: lctx reads its own export to the same params.
    cfg2, model2, tok = hf.load_hf(out, tokenizer=True)
    assert cfg2.rope == cfg.rope and tok.vocab_size == 1024
    np.testing.assert_array_equal(np.asarray(model2.layers.attn.wo[...]),
                                  np.asarray(model.layers.attn.wo[...]))


def test_export_replaces_existing_dir_single_file(tmp_path):
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                      head_dim=8, mlp_dim=32)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    hf.export_hf(model, str(out))  # cfg defaults to model.cfg
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                       "model.safetensors"]


def _rewrite(path, out, edit):
    """Copies the checkpoint at `path` to `out` as one file after `edit(tensors)`."""
    from safetensors.numpy import load_file, save_file
    tensors = {}
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(path, f)))
    edit(tensors)
    os.makedirs(out)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json")) as f, \
            open(os.path.join(out, "config.json"), "w") as g:
        g.write(f.read())
    return str(out)


@pytest.mark.parametrize("hf_dir", [False], ids=["untied"], indirect=True)
def test_misshaped_tensor_error(hf_dir, tmp_path):
    name = "model.layers.1.self_attn.k_proj.weight"
    bad = _rewrite(hf_dir[0], tmp_path / "bad",
                   lambda t: t.__setitem__(name, np.zeros((16, 64), np.float32)))
    with pytest.raises(hf.CheckpointError, match=rf"{name} in .*model\.safetensors: expected "
                                                 r"shape \(32, 64\).*found \(16, 64\)"):
        hf.load_hf(bad)


@pytest.mark.parametrize("hf_dir", [False], ids=["untied"], indirect=True)
def test_missing_tensor_error(hf_dir, tmp_path):
    name = "model.layers.0.mlp.down_proj.weight"
    bad = _rewrite(hf_dir[0], tmp_path / "bad", lambda t: t.pop(name))
    with pytest.raises(hf.CheckpointError, match=rf"tensor {name} is missing"):
        hf.load_hf(bad)


@pytest.mark.parametrize("hf_dir", [False], ids=["untied"], indirect=True)
def test_missing_files_errors(hf_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no HF config at .*config.json"):
        hf.load_hf(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in directory .*tokenizer\.json"):
        hf.load_hf(hf_dir[0], tokenizer=True)
    (tmp_path / "config.json").write_text((open(os.path.join(hf_dir[0], "config.json")).read()))
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
        hf.load_hf(str(tmp_path))
    model = Llama(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                              head_dim=8, mlp_dim=32), rngs=nnx.Rngs(0))
    with pytest.raises(FileNotFoundError, match="no tokenizer at .*nope.model"):
        hf.export_hf(model, str(tmp_path / "x"), tokenizer_path=str(tmp_path / "nope.model"))
    assert not (tmp_path / "x").exists()


def test_unsupported_config_error():
    base = {"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 8}
    with pytest.raises(hf.CheckpointError, match="attention_bias=True"):
        hf.config_from_hf({**base, "attention_bias": True})
    assert hf.config_from_hf(base, attn_impl="blockwise").attn_impl == "blockwise"


# ---- exports a user can serve: every RoPE type, bf16, the chat template ---------------------

def _longrope(**kw):
    short = [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8]  # head_dim 16: 8 frequencies
    return make_rope("longrope", theta=10000.0, short_factor=short,
                     long_factor=[2 * s for s in short], original_max_position_embeddings=16,
                     **kw)


# Lengths are past every original window (16) so the scaled branches run at T=24.
EXPORT_ROPES = {
    "default": make_rope("default", theta=10000.0),
    "linear": make_rope("linear", theta=10000.0, factor=2.0),
    "ntk": make_rope("ntk", theta=10000.0, factor=4.0),
    "dynamic": make_rope("dynamic", theta=10000.0, factor=2.0, max_position_embeddings=16),
    "yarn": make_rope("yarn", theta=10000.0, factor=4.0, original_max_position_embeddings=16),
    "llama3": make_rope("llama3", theta=500000.0, factor=8.0, low_freq_factor=1.0,
                        high_freq_factor=4.0, original_max_position_embeddings=16),
    "longrope": _longrope(factor=4.0),
    "longrope-no-factor": _longrope(),
}


def _random_lctx(rope, vocab=96, tie=False):
    cfg = ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=16, mlp_dim=112, max_seq_len=256, tie_embeddings=tie,
                      rope=rope, init_std=0.2)
    model = Llama(cfg, rngs=nnx.Rngs(1))
    for norm in (model.layers.attn_norm, model.layers.mlp_norm, model.final_norm):
        norm.scale[...] = jax.random.uniform(jax.random.key(2), norm.scale.shape,
                                             minval=0.5, maxval=1.5)
    return cfg, model


@pytest.mark.parametrize("name", list(EXPORT_ROPES))
def test_export_round_trips_every_rope_type(name, tmp_path, tokens_BT):
    """lctx -> config.json -> transformers gives lctx's logits, and lctx reads back the same
    RoPE. (longrope without `factor`: HF derives factor = max_position_embeddings /
    original and scales attention by 1.41 where lctx used 1.0, unless the export pins it;
    transformers 4.57 always derives it so: checked by hand, max error 1.1e-5 for all 8.)"""
    rope = EXPORT_ROPES[name]
    cfg, model = _random_lctx(rope)
    out = hf.export_hf(model, cfg, str(tmp_path / "export"), dtype="float32")
    with open(os.path.join(out, "config.json")) as f:
        conf = json.load(f)
    # Both spellings: rope_scaling (transformers 4.x, vLLM) and rope_parameters (5.x).
    assert "rope_parameters" in conf and "rope_scaling" in conf and "rope_theta" in conf
    ref = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_logits(ref, tokens_BT), lctx_logits(model, tokens_BT),
                               atol=TOL, rtol=0)
    cfg2 = hf.config_from_hf(conf)
    for seq_len in (None, 8, 24):
        np.testing.assert_array_equal(cfg2.rope.inv_freq(16, seq_len), rope.inv_freq(16, seq_len))
        assert cfg2.rope.attention_scaling(16, seq_len) == rope.attention_scaling(16, seq_len)
    if not name.startswith("longrope"):  # longrope's scaling is pinned (attention_factor)
        assert cfg2.rope == rope


def _safetensors_dtypes(directory):
    out = set()
    for f in os.listdir(directory):
        if f.endswith(".safetensors"):
            with open(os.path.join(directory, f), "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            out |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return out


def test_export_is_bf16_by_default(tmp_path, tokens_BT):
    cfg, model = _random_lctx(EXPORT_ROPES["llama3"])
    out = hf.export_hf(model, cfg, str(tmp_path / "bf16"))
    assert _safetensors_dtypes(out) == {"BF16"}
    with open(os.path.join(out, "config.json")) as f:
        conf = json.load(f)
    assert conf["dtype"] == conf["torch_dtype"] == "bfloat16"
    # transformers upcasts the bf16 weights; lctx with the same rounded weights agrees.
    ref = transformers.LlamaForCausalLM.from_pretrained(
        out, attn_implementation="eager", dtype=torch.float32).eval()
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16).astype(x.dtype),
                                   params))
    np.testing.assert_allclose(hf_logits(ref, tokens_BT), lctx_logits(model, tokens_BT),
                               atol=TOL, rtol=0)
    fp32 = hf.export_hf(model, cfg, str(tmp_path / "fp32"), dtype="float32")
    assert _safetensors_dtypes(fp32) == {"F32"}
    with pytest.raises(ValueError, match="dtype='int8'.*bfloat16, float16 or float32"):
        hf.export_hf(model, cfg, str(tmp_path / "bad"), dtype="int8")


@pytest.fixture(scope="module")
def tok31_dir(tmp_path_factory, kjv_text):
    """A Llama-3-style tokenizer.json with Llama-3.1-8B-Instruct's chat template."""
    from tokenizer_test import build_llama3_style_tokenizer_json, llama31_template
    out = tmp_path_factory.mktemp("tok31")
    build_llama3_style_tokenizer_json(kjv_text[:300_000], str(out), vocab_size=512)
    with open(out / "tokenizer_config.json") as f:
        conf = json.load(f)
    conf.update(chat_template=llama31_template(), tokenizer_class="PreTrainedTokenizerFast")
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump(conf, f)
    return str(out)


def test_export_keeps_the_chat_template(tmp_path, tok31_dir, sp_model_path):
    """The export renders prompts exactly as training did, in transformers and in lctx."""
    from tokenizer_test import CONVERSATIONS, llama31_template

    from lctx.tokenizer import LLAMA3_CHAT_TEMPLATE, ChatFormat, load_tokenizer
    cfg, model = _random_lctx(EXPORT_ROPES["llama3"], vocab=512)
    out = hf.export_hf(model, cfg, str(tmp_path / "hf31"), tokenizer=tok31_dir)
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        assert json.load(f)["chat_template"] == llama31_template()
    with open(os.path.join(out, "chat_template.jinja")) as f:
        assert f.read() == llama31_template()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    train = ChatFormat(load_tokenizer(tok31_dir))
    for msgs in CONVERSATIONS:
        ids = train.render(msgs)[0]
        assert list(hf_tok.apply_chat_template(msgs, tokenize=True, return_dict=False)) == ids
        assert ChatFormat(load_tokenizer(out)).render(msgs)[0] == ids
    # A tokenizer without a template trained with the Llama-3 default: the export says so.
    cfg, model = _random_lctx(EXPORT_ROPES["llama3"], vocab=1024)
    out = hf.export_hf(model, cfg, str(tmp_path / "sp"), tokenizer=sp_model_path)
    with open(os.path.join(out, "chat_template.jinja")) as f:
        assert f.read() == LLAMA3_CHAT_TEMPLATE
    assert load_tokenizer(out).chat_template == LLAMA3_CHAT_TEMPLATE


def test_export_bench_smoke(capsys):
    """bench/export_bench.py with its defaults, shrunk: bf16 is half of fp32 on disk. (Run
    in this process: the script's main(argv) is its command line, minus a JAX start-up.)"""
    import re
    import runpy
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bench = runpy.run_path(os.path.join(root, "bench/export_bench.py"), run_name="bench")
    result = bench["main"](["--d_model=128", "--n_layers=1", "--vocab=512"])
    out = capsys.readouterr().out
    ratio = float(re.search(r"bfloat16 / float32 size: ([0-9.]+)", out).group(1))
    assert ratio == pytest.approx(result["ratio"], abs=1e-3)
    assert 0.5 <= ratio < 0.55  # the tensors halve; headers and json files do not
    assert "ANALYTIC" in out and "(measured)" in out


VLLM_CHAT = '''
import json, sys
import vllm
export, want_path, out_path = sys.argv[1:]
want = json.load(open(want_path))
llm = vllm.LLM(model=export, enforce_eager=True, max_model_len=1024,
               gpu_memory_utilization=0.05, seed=0)
outs = llm.chat(want["messages"], vllm.SamplingParams(max_tokens=4, temperature=0.0),
                use_tqdm=False)
cfg = llm.llm_engine.model_config.hf_config
json.dump({"prompt_ids": list(outs[0].prompt_token_ids),
           "dtype": str(llm.llm_engine.model_config.dtype),
           "rope": dict(getattr(cfg, "rope_parameters", None) or cfg.rope_scaling)},
          open(out_path, "w"))
'''


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_chat_serves_the_export_with_the_training_prompt(tmp_path, kjv_text):
    """vLLM's `llm.chat` on an lctx export (bf16, llama3 RoPE, Llama-3.1's template) builds
    exactly the prompt ids training's ChatFormat renders, system block included."""
    from tokenizer_test import llama31_template
    from vllm_helpers import build_tiny_llama, run_in_vllm_venv

    from lctx.tokenizer import ChatFormat, load_tokenizer
    src = build_tiny_llama(str(tmp_path / "src"), kjv_text[:300_000], num_layers=1,
                           unigram_bias=False, rope_parameters=dict(
                               LLAMA3_ROPE, original_max_position_embeddings=256))
    with open(os.path.join(src, "tokenizer_config.json")) as f:
        conf = json.load(f)
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump(dict(conf, chat_template=llama31_template()), f)
    cfg, model = hf.load_hf(src)
    out = hf.export_hf(model, cfg, str(tmp_path / "export"), tokenizer=src)
    msgs = [{"role": "system", "content": "Answer from the text."},
            {"role": "user", "content": "Who begat Enos?"}]
    want = ChatFormat(load_tokenizer(src)).render_prompt(msgs)
    with open(tmp_path / "want.json", "w") as f:
        json.dump({"messages": msgs}, f)
    (tmp_path / "chat.py").write_text(VLLM_CHAT)
    run_in_vllm_venv(str(tmp_path / "chat.py"), [out, str(tmp_path / "want.json"),
                                                 str(tmp_path / "got.json")])
    with open(tmp_path / "got.json") as f:
        got = json.load(f)
    assert got["prompt_ids"] == want
    assert got["dtype"] == "torch.bfloat16" and got["rope"]["rope_type"] == "llama3"
