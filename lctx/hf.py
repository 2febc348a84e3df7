"""HF Llama checkpoint interop: load a `LlamaForCausalLM` directory into lctx, export back.

    cfg, model = load_hf("/ckpt/Llama-3.1-8B-Instruct", mesh=mesh)      # straight into shardings
    export_hf(model, cfg, "/out/hf")                                    # safetensors + config

Tensor layout (torch `Linear.weight` is [out, in]; lctx keeps [in, ..., out] with a leading
L axis on the stacked layer params):

    model.embed_tokens.weight [V, D]              -> embed [V, D]
    layers.N.self_attn.q_proj.weight [N*H, D]     -> layers.attn.wq [L, D, N, H]
    layers.N.self_attn.{k,v}_proj.weight [K*H, D] -> layers.attn.{wk,wv} [L, D, K, H]
    layers.N.self_attn.o_proj.weight [D, N*H]     -> layers.attn.wo [L, N, H, D]
    layers.N.mlp.{gate,up}_proj.weight [F, D]     -> layers.mlp.{w_gate,w_up} [L, D, F]
    layers.N.mlp.down_proj.weight [D, F]          -> layers.mlp.w_down [L, F, D]
    layers.N.{input,post_attention}_layernorm     -> layers.{attn,mlp}_norm.scale [L, D]
    model.norm.weight [D]                         -> final_norm.scale [D]
    lm_head.weight [V, D] (absent when tied)      -> unembed [D, V]

RoPE needs no permutation: lctx uses HF's half-split `rotate_half` layout.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from lctx import rope as rope_lib
from lctx import sharding as sharding_lib
from lctx.model import Llama, ModelConfig

__all__ = ["CheckpointError", "config_from_hf", "config_to_hf", "load_hf", "export_hf",
           "hf_tensor_shapes"]


class CheckpointError(ValueError):
    """A checkpoint that does not match its config; the message names tensor and file."""


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """ModelConfig from a config.json dict; `overrides` set lctx-only fields (attn_impl, ...).

    Raises:
      CheckpointError: an architecture feature lctx does not implement (named).
    """
    if hf.get("model_type", "llama") not in ("llama", "mistral"):
        raise CheckpointError(f"config.json model_type={hf.get('model_type')!r}: only Llama "
                              "(LlamaForCausalLM) checkpoints are supported")
    unsupported = {"attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
                   "pretraining_tp": 1}
    for key, want in unsupported.items():
        if hf.get(key, want) not in (want, None):
            raise CheckpointError(f"config.json {key}={hf[key]!r}: lctx implements only "
                                  f"{key}={want!r}")
    if hf.get("sliding_window") not in (None, 0):
        raise CheckpointError(f"config.json sliding_window={hf['sliding_window']}: lctx has "
                              "no sliding-window attention")
    n_heads = hf["num_attention_heads"]
    fields = dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        mlp_dim=hf["intermediate_size"], norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        rope=rope_lib.rope_from_hf(hf), init_std=float(hf.get("initializer_range", 0.02)))
    fields.update(overrides)
    return ModelConfig(**fields)


EXPORT_DTYPES = ("bfloat16", "float16", "float32")


def config_to_hf(cfg: ModelConfig, bos_id: int | None = None,
                 eos_ids: list[int] | None = None, dtype: str | None = None) -> dict:
    """A `LlamaForCausalLM` config.json dict that transformers 4.x and 5.x and vLLM read.

    `dtype` is the weights' dtype (default `cfg.param_dtype`). RoPE goes in both spellings
    (`_rope_keys`).
    """
    dtype = dtype or cfg.param_dtype
    out = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": cfg.init_std, "use_cache": True,
        "dtype": dtype, "torch_dtype": dtype,  # 5.x reads `dtype`, 4.x `torch_dtype`
        "bos_token_id": bos_id,
        "eos_token_id": (eos_ids[0] if len(eos_ids) == 1 else eos_ids) if eos_ids else None,
    }
    out.update(_rope_keys(cfg))
    return out


def _rope_keys(cfg: ModelConfig) -> dict:
    """RoPE as `rope_theta` + `rope_scaling` (transformers 4.x, vLLM) and `rope_parameters`
    (5.x), checked to read back (as HF 5 reads it: `lctx.rope.rope_from_hf`) to the same
    frequencies and attention scaling.

    Where HF would derive a different attention scaling from the written fields, the
    scaling lctx trained with is written as `attention_factor`: longrope without `factor`
    (HF 5 takes max_position_embeddings / original, lctx 1.0), and longrope whenever
    max_position_embeddings / original differs from its factor (transformers 4.x always
    derives the factor that way). Longrope also gets the top-level
    `original_max_position_embeddings` 4.x reads its original window from.

    Raises:
      CheckpointError: a RoPE that config.json cannot express exactly.
    """
    h, rope = cfg.head_dim, cfg.rope
    keys = {**rope_lib.rope_to_hf(rope, style="legacy", head_dim=h),
            **rope_lib.rope_to_hf(rope, style="v5", head_dim=h)}
    want = rope.attention_scaling(h)

    def read_back():
        return rope_lib.rope_from_hf({"max_position_embeddings": cfg.max_seq_len,
                                      "head_dim": h, **keys})

    pin = read_back().attention_scaling(h) != want
    if isinstance(rope, rope_lib.LongRope):
        omp = rope.original_max_position_embeddings
        keys["original_max_position_embeddings"] = omp
        pin = pin or rope_lib.make_rope(
            "longrope", short_factor=rope.short_factor, long_factor=rope.long_factor,
            original_max_position_embeddings=omp, factor=cfg.max_seq_len / omp
        ).attention_scaling(h) != want
    if pin and keys.get("rope_scaling"):
        for section in ("rope_scaling", "rope_parameters"):
            keys[section] = {**keys[section], "attention_factor": want}
    back = read_back()
    long = max(cfg.max_seq_len, getattr(rope, "original_max_position_embeddings", 0) or 0) + 1
    for seq_len in (None, long):
        if (not np.array_equal(back.inv_freq(h, seq_len), rope.inv_freq(h, seq_len))
                or back.attention_scaling(h, seq_len) != rope.attention_scaling(h, seq_len)):
            raise CheckpointError(f"export: RoPE {rope} reads back from config.json as {back}, "
                                  f"which differs at seq_len={seq_len}")
    return keys


# ---- the layout map ---------------------------------------------------------------------
# lctx param path -> (HF name template, kind). kind says how an HF tensor becomes the
# per-layer lctx tensor: copy | t (2-D transpose) | heads_in ([X*H, D] -> [D, X, H]) |
# heads_out ([D, N*H] -> [N, H, D]).
_LAYOUT = {
    ("embed",): ("model.embed_tokens.weight", "copy"),
    ("final_norm", "scale"): ("model.norm.weight", "copy"),
    ("unembed",): ("lm_head.weight", "t"),
    ("layers", "attn_norm", "scale"): ("model.layers.{}.input_layernorm.weight", "copy"),
    ("layers", "mlp_norm", "scale"): ("model.layers.{}.post_attention_layernorm.weight", "copy"),
    ("layers", "attn", "wq"): ("model.layers.{}.self_attn.q_proj.weight", "heads_in"),
    ("layers", "attn", "wk"): ("model.layers.{}.self_attn.k_proj.weight", "heads_in"),
    ("layers", "attn", "wv"): ("model.layers.{}.self_attn.v_proj.weight", "heads_in"),
    ("layers", "attn", "wo"): ("model.layers.{}.self_attn.o_proj.weight", "heads_out"),
    ("layers", "mlp", "w_gate"): ("model.layers.{}.mlp.gate_proj.weight", "t"),
    ("layers", "mlp", "w_up"): ("model.layers.{}.mlp.up_proj.weight", "t"),
    ("layers", "mlp", "w_down"): ("model.layers.{}.mlp.down_proj.weight", "t"),
}


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF tensor shape of one (per-layer) lctx tensor of `shape`."""
    if kind == "copy":
        return shape
    if kind == "t":
        return shape[::-1]
    if kind == "heads_in":  # [D, X, H]
        return (shape[1] * shape[2], shape[0])
    return (shape[2], shape[0] * shape[1])  # heads_out: [N, H, D]


def _to_lctx(kind: str, hf_block: np.ndarray, lctx_idx: tuple[slice, ...],
             shape: tuple[int, ...]) -> np.ndarray:
    """The lctx slice `lctx_idx` of one layer from the HF rows/cols already read."""
    if kind == "copy":
        return hf_block
    if kind == "t":
        return hf_block.T
    if kind == "heads_in":  # hf_block: rows n0*H:n1*H, cols d-slice
        d_s, x_s, h_s = lctx_idx
        blk = hf_block.reshape(-1, shape[2], hf_block.shape[1])[:, h_s, :]
        return blk.transpose(2, 0, 1)
    d_s, n_s, h_s = (lctx_idx[2], lctx_idx[0], lctx_idx[1])  # heads_out: hf [D, N*H]
    blk = hf_block.reshape(hf_block.shape[0], -1, shape[1])[:, :, h_s]
    return blk.transpose(1, 2, 0)


def _hf_index(kind: str, idx: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The HF slice to read for lctx slice `idx` (whole heads along the head dim)."""
    if kind == "copy":
        return idx
    if kind == "t":
        return idx[::-1]
    if kind == "heads_in":
        d_s, x_s, _ = idx
        return (slice(x_s.start * shape[2], x_s.stop * shape[2]), d_s)
    n_s, _, d_s = idx
    return (d_s, slice(n_s.start * shape[1], n_s.stop * shape[1]))


def _key(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path
                 if getattr(k, "name", None) != "value")


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a checkpoint of `cfg` holds, with its expected shape."""
    abstract = nnx.state(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        template, kind = _LAYOUT[_key(path)]
        if template.count("{}"):
            for layer in range(cfg.n_layers):
                out[template.format(layer)] = _hf_shape(kind, tuple(leaf.shape[1:]))
        else:
            out[template] = _hf_shape(kind, tuple(leaf.shape))
    return out


# ---- load ---------------------------------------------------------------------------------

def load_hf(path: str, mesh: jax.sharding.Mesh | None = None, shardings: Any = None,
            dtype: str | None = None, rules=sharding_lib.DEFAULT_RULES,
            tokenizer: bool = False, **overrides):
    """Loads an HF Llama directory (config.json + safetensors, sharded or single file).

    Each parameter is built with `jax.make_array_from_callback`: every device shard reads
    only its own slice of the safetensors tensors, so no device ever holds a full model.

    Args:
      path: the HF model directory.
      mesh: place params by `lctx.sharding` rules on this mesh (ignored if `shardings`).
      shardings: a pytree of Shardings matching `nnx.state(model, nnx.Param)`.
      dtype: parameter dtype (default: the config's `param_dtype`, float32).
      rules: logical-axis rules used with `mesh`.
      tokenizer: also load the directory's tokenizer and return it third.
      **overrides: ModelConfig fields to set (attn_impl, scan_layers, remat, dtype, ...).

    Returns:
      (ModelConfig, Llama), or (ModelConfig, Llama, Tokenizer) when `tokenizer=True`.

    Raises:
      FileNotFoundError: no config.json / safetensors / tokenizer (path and names given).
      CheckpointError: a missing or mis-shaped tensor (name, expected, found, file).
    """
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no HF config at {cfg_path}: load_hf needs a model directory "
                                "with config.json and model*.safetensors")
    with open(cfg_path) as f:
        hf_cfg = json.load(f)
    if dtype is not None:
        overrides["param_dtype"] = dtype
    cfg = config_from_hf(hf_cfg, **overrides)
    tok = None
    if tokenizer:
        from lctx.tokenizer import load_tokenizer
        tok = load_tokenizer(path)
    abstract_model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract_model)
    if shardings is None:
        shardings = (sharding_lib.param_shardings(abs_state, mesh, rules) if mesh is not None
                     else jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(
                         jax.devices()[0]), abs_state))
    with SafetensorsCheckpoint(path) as ckpt:
        expected = hf_tensor_shapes(cfg)
        ckpt.check(expected)

        def build(path_keys, leaf, sharding):
            template, kind = _LAYOUT[_key(path_keys)]
            stacked = "{}" in template
            shape = tuple(leaf.shape[1:] if stacked else leaf.shape)
            np_dtype = np.dtype(leaf.dtype)

            def read(index):
                idx = tuple(slice(*s.indices(n)) for s, n in zip(index, leaf.shape))
                if not stacked:
                    return _read_one(ckpt, template, kind, idx, shape).astype(np_dtype)
                layers = range(*idx[0].indices(leaf.shape[0]))
                return np.stack([_read_one(ckpt, template.format(l), kind, idx[1:], shape)
                                 for l in layers]).astype(np_dtype)

            return jax.make_array_from_callback(leaf.shape, sharding, read)

        state = jax.tree_util.tree_map_with_path(build, abs_state, shardings)
    return (cfg, nnx.merge(graphdef, state)) + ((tok,) if tokenizer else ())


def _read_one(ckpt, name, kind, idx, shape):
    return _to_lctx(kind, ckpt.read(name, _hf_index(kind, idx, shape)), idx, shape)


# ---- export -------------------------------------------------------------------------------

def _host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _from_lctx(kind: str, w: np.ndarray) -> np.ndarray:
    """One layer's lctx tensor as the HF tensor."""
    if kind == "copy":
        return w
    if kind == "t":
        return np.ascontiguousarray(w.T)
    if kind == "heads_in":  # [D, X, H] -> [X*H, D]
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
    return np.ascontiguousarray(w.reshape(-1, w.shape[2]).T)  # [N, H, D] -> [D, N*H]


def export_hf(model: Llama, cfg: ModelConfig | str | os.PathLike | None = None,
              out_dir: str | os.PathLike | None = None, tokenizer_path: str | None = None, *,
              tokenizer: str | None = None, dtype: str = "bfloat16",
              max_shard_bytes: int = 4 << 30) -> str:
    """Writes `model` as an HF `LlamaForCausalLM` directory, atomically.

    Writes model.safetensors (or model-0000i-of-0000n.safetensors + index when larger than
    `max_shard_bytes`) in `dtype`, config.json (RoPE in the spellings of transformers 4.x,
    5.x and vLLM), generation_config.json and the tokenizer files with the chat template
    training used (`copy_tokenizer`). The directory is built beside `out_dir` and renamed
    into place.

    Args:
      model: the lctx model (params may be sharded, even across processes).
      cfg: its ModelConfig (default `model.cfg`); `export_hf(model, out_dir)` also works.
      out_dir: the directory to create (replaced if it exists).
      tokenizer_path / tokenizer: a tokenizer file or directory to copy (optional); its
        bos/eos ids go into the configs.
      dtype: weight dtype on disk: bfloat16 (default; what serving loads, half the bytes of
        the float32 master weights), float16 or float32 (exact copy of the weights).

    Returns:
      `out_dir`.
    """
    if out_dir is None and isinstance(cfg, (str, os.PathLike)):
        cfg, out_dir = None, cfg
    if out_dir is None:
        raise ValueError("export_hf needs out_dir")
    cfg = cfg or model.cfg
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export_hf dtype={dtype!r}: use bfloat16, float16 or float32")
    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    config_to_hf(cfg, dtype=dtype)  # a RoPE config.json cannot express fails before writing
    out_dir = os.path.abspath(os.fspath(out_dir))
    tokenizer_path = tokenizer_path or tokenizer
    tok = None
    if tokenizer_path:
        from lctx.tokenizer import load_tokenizer
        tok = load_tokenizer(tokenizer_path)  # fails early, naming the path
    params = nnx.state(model, nnx.Param)
    tensors = []  # (hf name, shape, dtype, producer) in file order
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        template, kind = _LAYOUT[_key(path)]
        layers = range(cfg.n_layers) if "{}" in template else [None]
        cache: dict = {}

        def get(layer, leaf=leaf, kind=kind, cache=cache):
            if "w" not in cache:  # one stacked param gathered to host at a time
                cache.clear()
                cache["w"] = _host(leaf)
            w = cache["w"] if layer is None else cache["w"][layer]
            return _from_lctx(kind, w).astype(np_dtype)  # cast one layer at a time

        inner = tuple(leaf.shape[1:] if "{}" in template else leaf.shape)
        for layer in layers:
            name = template.format(layer) if layer is not None else template
            tensors.append((name, _hf_shape(kind, inner), np_dtype,
                            lambda layer=layer, get=get: get(layer)))
    main = jax.process_index() == 0
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    write_safetensors_dir(tmp if main else None, tensors, max_shard_bytes)
    if not main:
        return out_dir
    bos = tok.bos_id if tok else None
    eos = sorted(tok.eos_ids) if tok else None
    files = {"config.json": config_to_hf(cfg, bos, eos, dtype=dtype),
             "generation_config.json": {"bos_token_id": bos, "eos_token_id": eos,
                                        "pad_token_id": tok.pad_id if tok else None}}
    for name, obj in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
    if tok is not None:
        copy_tokenizer(tokenizer_path, tmp, tok)
    _replace_dir(tmp, out_dir)
    return out_dir


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Moves `tmp` to `out_dir`; an existing `out_dir` is swapped out first, then deleted."""
    old = None
    if os.path.exists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)



# ---- safetensors I/O ----------------------------------------------------------------------
# numpy dtype name <-> safetensors dtype tag (bfloat16 via ml_dtypes, which jax ships).
_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_NP_READABLE = ("F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL")


class SafetensorsCheckpoint:
    """The tensors of an HF directory: `model.safetensors.index.json` + shards, or one
    `model.safetensors`. Reads slices lazily (`get_slice`); use as a context manager."""

    def __init__(self, directory: str):
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
            for n in names:
                if not os.path.isfile(os.path.join(directory, n)):
                    raise FileNotFoundError(f"{index} lists shard {n}, which is missing from "
                                            f"{directory}")
        elif os.path.isfile(os.path.join(directory, "model.safetensors")):
            names = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"no weights in {directory}: looked for model.safetensors.index.json and "
                "model.safetensors (only safetensors checkpoints are read; convert .bin files "
                "with transformers' save_pretrained)")
        from safetensors import safe_open
        self._open = safe_open
        self.files = [os.path.join(directory, n) for n in names]
        self._handles: dict[tuple[str, str], Any] = {}
        self.where: dict[str, str] = {}
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for file in self.files:
            h = self._handle(file, "np")
            for name in h.keys():
                sl = h.get_slice(name)
                self.where[name] = file
                self.meta[name] = (tuple(sl.get_shape()), sl.get_dtype())

    def _handle(self, file: str, framework: str):
        key = (file, framework)
        if key not in self._handles:
            self._handles[key] = self._open(file, framework=framework).__enter__()
        return self._handles[key]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles.values():
            h.__exit__(None, None, None)
        self._handles.clear()

    def check(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Raises CheckpointError for the first missing or mis-shaped tensor."""
        missing = [n for n in expected if n not in self.meta]
        if missing:
            raise CheckpointError(
                f"tensor {missing[0]} is missing ({len(missing)} missing in all, e.g. "
                f"{missing[:3]}); searched {[os.path.basename(f) for f in self.files]} in "
                f"{os.path.dirname(self.files[0])}")
        for name, shape in expected.items():
            found = self.meta[name][0]
            if found != tuple(shape):
                raise CheckpointError(
                    f"tensor {name} in {self.where[name]}: expected shape {tuple(shape)} (from "
                    f"config.json), found {found}")

    def read(self, name: str, idx: tuple[slice, ...]) -> np.ndarray:
        file, (_, st_dtype) = self.where[name], self.meta[name]
        if st_dtype in _NP_READABLE:
            return np.asarray(self._handle(file, "np").get_slice(name)[idx])
        # numpy has no bfloat16/fp8: read through JAX on the host CPU, then view as numpy.
        with jax.default_device(jax.devices("cpu")[0]):
            return np.asarray(self._handle(file, "flax").get_slice(name)[idx])


def _write_safetensors(path: str, items: list[tuple[str, tuple, np.dtype, Callable]]) -> None:
    """Streams tensors into one safetensors file (header first, then each tensor produced)."""
    header, offset = {}, 0
    for name, shape, dtype, _ in items:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[dtype.name], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}  # transformers refuses files without it
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the spec aligns the data start to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape, dtype, produce in items:
            w = np.ascontiguousarray(produce(), dtype=dtype)
            if w.shape != tuple(shape):
                raise CheckpointError(f"export: {name} produced {w.shape}, planned {shape}")
            f.write(w.tobytes())


def write_safetensors_dir(directory: str | None, tensors: list, max_shard_bytes: int) -> None:
    """Writes `tensors` as model.safetensors or sharded files + index into `directory`.

    Every process calls this (producers may gather across processes); only the one with a
    `directory` writes.
    """
    shards, cur, size = [], [], 0
    for t in tensors:
        nbytes = math.prod(t[1]) * t[2].itemsize
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += nbytes
    shards.append(cur)
    n = len(shards)
    names = (["model.safetensors"] if n == 1 else
             [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    if directory is None:
        for shard in shards:
            for t in shard:
                t[3]()
        return
    for fname, shard in zip(names, shards):
        _write_safetensors(os.path.join(directory, fname), shard)
    if n > 1:
        index = {"metadata": {"total_size": sum(math.prod(t[1]) * t[2].itemsize
                                                for t in tensors)},
                 "weight_map": {t[0]: f for f, s in zip(names, shards) for t in s}}
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja")


def copy_tokenizer(src: str, dst_dir: str, tok) -> None:
    """Copies tokenizer files into `dst_dir` with the chat template training rendered.

    The template (the tokenizer's own, else lctx's Llama-3 default: what `ChatFormat`
    used) is written both as tokenizer_config.json's `chat_template` (transformers 4.x,
    vLLM) and as chat_template.jinja (transformers 5), so `apply_chat_template` and
    vLLM's `llm.chat` build the prompts training saw. A tokenizer_config.json with bos/eos
    tokens is written if none came along.
    """
    from lctx import tokenizer as tok_lib
    src = os.fspath(src)
    if os.path.isdir(src):
        for name in _TOKENIZER_FILES:
            if os.path.isfile(os.path.join(src, name)):
                shutil.copyfile(os.path.join(src, name), os.path.join(dst_dir, name))
    elif isinstance(tok, tok_lib.HFTokenizer):
        shutil.copyfile(src, os.path.join(dst_dir, "tokenizer.json"))
        for name in _TOKENIZER_FILES[2:]:
            sib = os.path.join(os.path.dirname(src), name)
            if os.path.isfile(sib):
                shutil.copyfile(sib, os.path.join(dst_dir, name))
    else:
        shutil.copyfile(src, os.path.join(dst_dir, "tokenizer.model"))
    cfg_path = os.path.join(dst_dir, "tokenizer_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
    else:
        piece = lambda i: None if i is None else tok.decode([i])  # noqa: E731
        cfg = {"bos_token": piece(tok.bos_id), "eos_token": piece(tok.eot_id)}
        if isinstance(tok, tok_lib.HFTokenizer):
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if all(tok.has_piece(p) for p in tok_lib.LLAMA3_SPECIALS):
        template = tok.chat_template or tok_lib.LLAMA3_CHAT_TEMPLATE
        if not isinstance(cfg.get("chat_template"), list):  # keep named template sets
            cfg["chat_template"] = template
        with open(os.path.join(dst_dir, "chat_template.jinja"), "w") as f:
            f.write(template)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
