"""lctx.rope against HF transformers' RoPE (init functions and LlamaRotaryEmbedding), 1M+ phases.

HF's own fp32 path is exact only at small positions (its `pos * inv_freq` in float32 is off by
~8e-3 rad at 100,000), so parity at large positions runs HF's unchanged code with torch's
float32 mapped to float64 (`_hf_float64`), and the fp32 parity uses positions < 64.
"""
import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lctx import rope as R

from deps import require

torch = require("torch")
transformers = require("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

H = 128  # head dim of Llama-3-8B-class models
THETA = 500000.0
_LONG = [1.0 + 0.5 * i for i in range(H // 2)]
_SHORT = [1.0 + 0.01 * i for i in range(H // 2)]

# name -> (HF rope_parameters without rope_theta, max_position_embeddings). Small original
# lengths (64) put ordinary test positions past them, so length-dependent paths are exercised.
CASES = {
    "default": ({"rope_type": "default"}, 4096),
    "linear": ({"rope_type": "linear", "factor": 4.0}, 4096),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, 64),
    "yarn": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64}, 512),
    "yarn_mscale": ({"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096,
                     "mscale": 1.0, "mscale_all_dim": 0.8, "beta_fast": 16, "beta_slow": 2}, 65536),
    "yarn_untruncated": ({"rope_type": "yarn", "factor": 8.0, "truncate": False,
                          "original_max_position_embeddings": 8192, "attention_factor": 1.25}, 65536),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 131072),
    "longrope": ({"rope_type": "longrope", "short_factor": _SHORT, "long_factor": _LONG,
                  "original_max_position_embeddings": 64}, 1024),
}
ALL = list(CASES) + ["ntk"]


def hf_config(name):
    params, max_pos = CASES[name]
    return LlamaConfig(hidden_size=2 * H, num_attention_heads=2, head_dim=H, num_key_value_heads=2,
                       max_position_embeddings=max_pos,
                       rope_parameters={**params, "rope_theta": THETA})


def ours(name):
    if name == "ntk":
        return R.make_rope("ntk", theta=THETA, factor=8.0)
    return R.rope_from_hf(hf_config(name).to_dict())


@contextlib.contextmanager
def _hf_float64():
    """Runs HF's unchanged RoPE code in float64: its `torch.float`/`.float()` become float64."""
    saved = torch.float, torch.float32, torch.Tensor.float, torch.get_default_dtype()
    torch.float = torch.float32 = torch.float64
    torch.Tensor.float = lambda self, *a, **k: self.double()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.float, torch.float32, torch.Tensor.float = saved[:3]
        torch.set_default_dtype(saved[3])


def hf_init(name, seq_len=None):
    cfg = hf_config(name)
    fn = (ROPE_INIT_FUNCTIONS.get(cfg.rope_parameters["rope_type"])
          or modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters)
    inv, scale = fn(cfg, seq_len=seq_len) if seq_len else fn(cfg)
    return inv.numpy(), float(scale)


def hf_cos_sin(name, pos_BT):
    emb = modeling_llama.LlamaRotaryEmbedding(hf_config(name))
    cos, sin = emb(torch.zeros((), dtype=torch.float), torch.as_tensor(pos_BT))
    return cos.numpy()[..., : H // 2], sin.numpy()[..., : H // 2]


def seq_len_of(pos_BT):
    return int(np.max(pos_BT)) + 1  # what HF's dynamic_rope_update uses


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seq_len", [None, 100, 200_000])
def test_inv_freq_and_scaling_match_hf(name, seq_len):
    rope = ours(name)
    inv, scale = hf_init(name, seq_len)
    np.testing.assert_allclose(rope.inv_freq(H, seq_len), inv, rtol=1e-6, atol=0)
    assert rope.attention_scaling(H, seq_len) == pytest.approx(scale, rel=1e-6)
    with _hf_float64():  # the same HF code in float64 pins our formulas far tighter
        inv64, _ = hf_init(name, seq_len)
    assert inv64.dtype == np.float64
    np.testing.assert_allclose(rope.inv_freq(H, seq_len), inv64, rtol=1e-12, atol=0)


def test_ntk_is_hf_default_with_changed_theta():
    rope = ours("ntk")
    theta2 = THETA * 8.0 ** (H / (H - 2))
    cfg = LlamaConfig(hidden_size=2 * H, num_attention_heads=2, head_dim=H,
                      rope_parameters={"rope_type": "default", "rope_theta": theta2})
    inv, _ = modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    np.testing.assert_allclose(rope.inv_freq(H), inv.numpy(), rtol=1e-6)
    assert R.rope_from_hf(cfg.to_dict()).theta == pytest.approx(rope.effective_theta(H), rel=1e-15)


@pytest.mark.parametrize("name", list(CASES))
def test_cos_sin_match_hf_fp32(name):
    # Row 0 ordered, row 1 arbitrary: all < 64, where HF's own fp32 phases are good to ~5e-6.
    pos_BT = np.stack([np.arange(64), np.random.default_rng(0).permutation(64)])
    cos_hf, sin_hf = hf_cos_sin(name, pos_BT)
    cos, sin = R.cos_sin(ours(name), jnp.asarray(pos_BT), H, seq_len=seq_len_of(pos_BT))
    np.testing.assert_allclose(np.asarray(cos), cos_hf, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(sin), sin_hf, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("start", [0, 100_000])
def test_cos_sin_match_hf_float64(name, start):
    pos_BT = np.arange(start, start + 256)[None]
    with _hf_float64():
        cos_hf, sin_hf = hf_cos_sin(name, pos_BT)
    fn = jax.jit(lambda p, n: R.cos_sin(ours(name), p, H, seq_len=n))  # traced seq_len
    cos, sin = fn(jnp.asarray(pos_BT), jnp.int32(seq_len_of(pos_BT)))
    np.testing.assert_allclose(np.asarray(cos), cos_hf, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(sin), sin_hf, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seq_len", [None, 4_000_001])
def test_phases_exact_at_millions(name, seq_len):
    rope = ours(name)
    pos_BT = np.array([[1_000_003, 4_000_000], [0, 2**31 - 1]])
    cos, sin = jax.jit(lambda p: R.cos_sin(rope, p, H, seq_len=seq_len))(jnp.asarray(pos_BT))
    phase = pos_BT[..., None].astype(np.float64) * rope.inv_freq(H, seq_len)
    scale = rope.attention_scaling(H, seq_len)
    np.testing.assert_allclose(np.asarray(cos), np.cos(phase) * scale, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(sin), np.sin(phase) * scale, atol=1e-5, rtol=0)
    # The naive float32 product misses by far more: the scheme is what makes the test pass.
    naive = np.float32(pos_BT[0, 0]) * rope.inv_freq(H, seq_len).astype(np.float32)
    assert np.abs(np.cos(naive.astype(np.float64)) - np.cos(phase[0, 0])).max() > 1e-3


def test_jitted_program_has_no_position_table():
    pos_BT = jnp.arange(8192, dtype=jnp.int32).reshape(2, 4096) + 1_000_000
    for name in ("yarn", "llama3", "longrope"):
        text = jax.jit(lambda p: R.cos_sin(ours(name), p, H, seq_len=8193)).lower(pos_BT).as_text()
        sizes = [int(np.prod([int(d) for d in m.split("x")[:-1]] or [1]))
                 for m in re.findall(r"constant[^\n]*?tensor<([0-9x]*[a-z]+[0-9]+)>", text)]
        assert sizes and max(sizes) <= H // 2, (name, max(sizes))
        assert len(text) < 20_000


def test_dynamic_traced_seq_len_follows_length():
    rope = ours("dynamic")
    pos_BT = jnp.arange(16)[None] + 1000
    fn = jax.jit(lambda p, n: R.cos_sin(rope, p, H, seq_len=n))
    for n in (10, 64, 65, 5000, 1_000_000):
        cos, _ = fn(pos_BT, jnp.int32(n))
        ref = np.cos(np.asarray(pos_BT)[..., None] * rope.inv_freq(H, n))
        np.testing.assert_allclose(np.asarray(cos), ref, atol=1e-5, rtol=0)
    assert not np.allclose(rope.inv_freq(H, 64), rope.inv_freq(H, 65))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_apply_rope_matches_hf(dtype):
    rng = np.random.default_rng(1)
    x_BTNH = rng.standard_normal((2, 64, 3, H)).astype(np.float32)
    pos_BT = np.stack([np.arange(64), np.arange(64)[::-1]]) + 100_000
    # The same cos/sin into both, so this checks the rotation alone (cos_sin is tested above).
    cos, sin = R.cos_sin(ours("yarn"), jnp.asarray(pos_BT), H, seq_len=100_064)
    cos_hf, sin_hf = (torch.as_tensor(np.concatenate([a, a], -1)) for a in (cos, sin))
    x_t = torch.as_tensor(x_BTNH).transpose(1, 2)  # HF layout B N T H
    q_hf, _ = modeling_llama.apply_rotary_pos_emb(x_t, x_t, cos_hf, sin_hf)
    out = R.apply_rope(jnp.asarray(x_BTNH, dtype), cos, sin)
    assert out.dtype == dtype
    ref = q_hf.transpose(1, 2).numpy()
    if dtype == jnp.float32:
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)
    else:  # rounding the bf16 input and output only
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.08, rtol=0.02)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("style", ["v5", "legacy"])
def test_round_trip(name, style):
    rope = ours(name)
    keys = R.rope_to_hf(rope, style=style, head_dim=H)
    assert R.rope_from_hf({"max_position_embeddings": 131072, **keys}) == rope
    # The written keys build an HF model config whose RoPE equals ours.
    cfg = LlamaConfig(hidden_size=2 * H, num_attention_heads=2, head_dim=H,
                      **{"max_position_embeddings": 131072, **keys})
    rp = cfg.rope_parameters
    fn = (ROPE_INIT_FUNCTIONS.get(rp["rope_type"])
          or modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters)
    inv, scale = fn(cfg)
    np.testing.assert_allclose(rope.inv_freq(H), inv.numpy(), rtol=1e-6)
    assert rope.attention_scaling(H) == pytest.approx(scale, rel=1e-6)


def test_reads_legacy_and_v5_forms_alike():
    legacy = {"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}}
    v5 = {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}}
    assert R.rope_from_hf(legacy) == R.rope_from_hf(v5) == R.make_rope("linear", theta=1e6, factor=2)
    assert R.rope_from_hf({}) == R.make_rope("default")  # HF default theta 10000
    assert R.rope_from_hf({"rope_theta": 5e5, "rope_scaling": None}).theta == 5e5
    # Phi3-style top-level original length wins, as in HF; yarn factor defaults to the ratio.
    y = R.rope_from_hf({"max_position_embeddings": 32768, "original_max_position_embeddings": 4096,
                        "rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 1}})
    assert (y.original_max_position_embeddings, y.factor) == (4096, 8.0)


@pytest.mark.parametrize("build, match", [
    (lambda: R.make_rope("nope"), r"unknown rope type 'nope'.*'default'.*'yarn'"),
    (lambda: R.rope_from_hf({"rope_parameters": {"rope_type": "su"}}), "known types"),
    (lambda: R.make_rope("linear", factor=0.0), "'factor'=0.0"),
    (lambda: R.make_rope("linear", factor=-2), "'factor'=-2"),
    (lambda: R.make_rope("linear"), r"missing required field\(s\) \['factor'\]"),
    (lambda: R.make_rope("default", theta=float("nan")), "'theta'"),
    (lambda: R.make_rope("default", factor=2.0), r"no field\(s\) \['factor'\]"),
    (lambda: R.make_rope("yarn", factor=2.0, original_max_position_embeddings=4.5),
     "'original_max_position_embeddings'=4.5"),
    (lambda: R.make_rope("yarn", factor=2.0, original_max_position_embeddings=8, truncate=1),
     "'truncate'"),
    (lambda: R.make_rope("llama3", factor=8.0, original_max_position_embeddings=8192,
                         low_freq_factor=4.0, high_freq_factor=1.0), "'high_freq_factor'"),
    (lambda: R.make_rope("longrope", short_factor=[1.0, -1.0], long_factor=[1.0, 1.0],
                         original_max_position_embeddings=8), "'short_factor'"),
    (lambda: R.make_rope("longrope", short_factor=[1.0] * 3, long_factor=[1.0] * 3,
                         original_max_position_embeddings=8).inv_freq(H), "head_dim // 2 = 64"),
    (lambda: R.make_rope("default").inv_freq(127), "'head_dim'=127"),
    (lambda: R.rope_from_hf({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
     "'max_position_embeddings'"),
    (lambda: R.rope_from_hf({"partial_rotary_factor": 0.5, "rope_theta": 1e4}),
     "'partial_rotary_factor'=0.5"),
    (lambda: R.rope_to_hf(R.make_rope("ntk", factor=2.0)), "needs head_dim"),
    (lambda: R.rope_from_hf({"head_dim": 64, **R.rope_to_hf(R.make_rope("ntk", factor=2.0),
                                                            head_dim=128)}), "stale"),
    (lambda: R.rope_to_hf(R.make_rope("default"), style="v4"), "style='v4'"),
])
def test_bad_input_is_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()
