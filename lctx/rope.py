"""RoPE variants as a registry of small typed configs, HF round-trip, phases accurate at 1M+.

Axes: B batch, T positions, N heads, H head dim, K = H // 2 rotary frequencies.

API (model, ring attention and HF import/export code against exactly this)::

    rope = make_rope("yarn", theta=5e5, factor=8.0, original_max_position_embeddings=8192)
    rope = rope_from_hf(config_json_dict)          # old rope_theta+rope_scaling or v5 rope_parameters
    keys = rope_to_hf(rope, style="v5")            # {"rope_parameters": {...}}; "legacy" gives
                                                   # {"rope_theta": .., "rope_scaling": ..};
                                                   # ntk needs head_dim=; dynamic adds
                                                   # max_position_embeddings (HF's L0)
    rope.inv_freq(head_dim, seq_len=None)          # np.float64 [K], HF's formula in float64
    rope.attention_scaling(head_dim, seq_len=None) # float; HF multiplies cos and sin by it
    cos_BTK, sin_BTK = cos_sin(rope, positions_BT, head_dim, seq_len=None)  # float32, scaled
    y_BTNH = apply_rope(x_BTNH, cos_BTK, sin_BTK)  # HF half-split rotate_half layout

Types: default, linear (PI), ntk (static NTK-aware base change theta*s^(d/(d-2)); not an HF
type: written to HF as `default` with the changed theta plus an `lctx_ntk` record so it
round-trips), dynamic (dynamic NTK), yarn, llama3, longrope. Formulas follow transformers 5.24
`modeling_rope_utils.py`, evaluated in float64.

Sequence-length dependence (`seq_len`): `dynamic` and `longrope` change with the current length
the way HF does, where HF uses `seq_len = max(position_ids) + 1` over the whole batch of the
current forward call. The model must pass exactly that, `jnp.max(positions_BT) + 1` (a traced
scalar or a Python int; under shard_map the global max via `lax.pmax`). `seq_len=None` gives
HF's init-time values (dynamic: the plain base; longrope: short factors). HF's dynamic module is stateful (it keeps the longest inv_freq
seen until the length drops below max_position_embeddings); this one is a pure function of
`seq_len`, identical to HF for a fresh module or for lengths that only grow (KV-cache decode).
With a KV cache the model passes the current total length; cached keys keep their old
rotation, as in HF.

Accuracy at 1M+: float32 `pos * inv_freq` is off by ~0.06 rad at 1M. Instead each frequency is
stored in turns as two 32-bit fixed-point words, F = a*2^-32 + b*2^-64 (host float64). In-graph,
frac(p*F) = ((p*a) mod 2^32)*2^-32 + p*b*2^-64: the first product is exact in wrapping uint32
arithmetic, the second is < 0.5 turn so float32 rounding costs ~1e-7 turn. Phase error is
~1e-6 rad for every int32 position; the only constants are [K] words. For `dynamic` with a
traced `seq_len` the words come from a host `jax.pure_callback` (K values per call).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

_REGISTRY: dict[str, type["RopeConfig"]] = {}
_NTK_KEY = "lctx_ntk"  # extra config.json key recording a static-NTK rope (HF ignores it)


def _register(cls):
    _REGISTRY[cls.type] = cls
    return cls


def _bad(name, value, why):
    return ValueError(f"rope field {name!r}={value!r}: {why}")


_INTEGER_FIELDS = ("original_max_position_embeddings", "max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Base: plain RoPE, inv_freq_i = theta^(-2i/d). Subclasses add fields and override.

    Numeric fields must be finite and > 0 (integers where HF wants lengths); `required` fields
    have no default, the others default to None meaning HF's default.
    """
    type: ClassVar[str] = ""
    required: ClassVar[tuple[str, ...]] = ()
    theta: float = 10000.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("short_factor", "long_factor"):
                if not isinstance(v, (list, tuple)) or not v or not all(
                    _is_num(x) and math.isfinite(x) and x > 0 for x in v):
                    raise _bad(f.name, v, "must be a non-empty list of positive numbers, one per frequency")
                object.__setattr__(self, f.name, tuple(float(x) for x in v))
            elif f.name == "truncate":
                if v is not None and not isinstance(v, bool):
                    raise _bad(f.name, v, "must be a bool or None")
            elif v is not None or f.name in self.required:
                integer = f.name in _INTEGER_FIELDS
                if not _is_num(v) or not math.isfinite(v) or v <= 0 or (integer and v != int(v)):
                    kind = "a positive integer" if integer else "a finite number > 0"
                    raise _bad(f.name, v, f"must be {kind} (rope type {self.type!r})")

    def _dim(self, head_dim):
        if not isinstance(head_dim, (int, np.integer)) or head_dim < 2 or head_dim % 2:
            raise _bad("head_dim", head_dim, "must be an even integer >= 2")
        return int(head_dim)

    def _base_inv_freq(self, head_dim, theta=None):
        d = self._dim(head_dim)
        return 1.0 / (float(theta or self.theta) ** (np.arange(0, d, 2, dtype=np.float64) / d))

    def inv_freq(self, head_dim: int, seq_len: int | None = None) -> np.ndarray:
        """Inverse frequencies, float64 [head_dim // 2]; seq_len matters only for dynamic/longrope."""
        del seq_len
        return self._base_inv_freq(head_dim)

    def attention_scaling(self, head_dim: int, seq_len: int | None = None) -> float:
        """Factor HF multiplies cos and sin by (1.0 except yarn/longrope)."""
        del head_dim, seq_len
        return 1.0

    def hf_fields(self) -> dict[str, Any]:
        """Type-specific HF `rope_parameters` entries (not rope_type / rope_theta); None omitted."""
        return {f.name: list(v) if isinstance(v, tuple) else v for f in dataclasses.fields(self)
                if f.name not in ("theta", "max_position_embeddings")
                and (v := getattr(self, f.name)) is not None}


def _is_num(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@_register
@dataclasses.dataclass(frozen=True)
class DefaultRope(RopeConfig):
    type: ClassVar[str] = "default"


@_register
@dataclasses.dataclass(frozen=True)
class LinearRope(RopeConfig):
    """Position interpolation: inv_freq / factor."""
    type: ClassVar[str] = "linear"
    required: ClassVar[tuple[str, ...]] = ("factor",)
    factor: float = None

    def inv_freq(self, head_dim, seq_len=None):
        return self._base_inv_freq(head_dim) / self.factor


@_register
@dataclasses.dataclass(frozen=True)
class NtkRope(RopeConfig):
    """Static NTK-aware base change theta' = theta * factor^(d/(d-2)) (not an HF type)."""
    type: ClassVar[str] = "ntk"
    required: ClassVar[tuple[str, ...]] = ("factor",)
    factor: float = None

    def effective_theta(self, head_dim):
        d = self._dim(head_dim)
        return self.theta * self.factor ** (d / (d - 2))

    def inv_freq(self, head_dim, seq_len=None):
        return self._base_inv_freq(head_dim, self.effective_theta(head_dim))


@_register
@dataclasses.dataclass(frozen=True)
class DynamicRope(RopeConfig):
    """Dynamic NTK: base grows with the current length L past max_position_embeddings (HF's L0)."""
    type: ClassVar[str] = "dynamic"
    required: ClassVar[tuple[str, ...]] = ("factor", "max_position_embeddings")
    factor: float = None
    max_position_embeddings: int = None

    def inv_freq(self, head_dim, seq_len=None):
        d, l0 = self._dim(head_dim), self.max_position_embeddings
        if seq_len is None or int(seq_len) <= l0:  # HF recomputes only when the length grows past L0
            return self._base_inv_freq(d)
        s = self.factor * int(seq_len) / l0 - (self.factor - 1)
        return self._base_inv_freq(d, self.theta * s ** (d / (d - 2)))


@_register
@dataclasses.dataclass(frozen=True)
class YarnRope(RopeConfig):
    """YaRN: ramp between interpolated and extrapolated frequencies, plus an attention factor."""
    type: ClassVar[str] = "yarn"
    required: ClassVar[tuple[str, ...]] = ("factor", "original_max_position_embeddings")
    factor: float = None
    original_max_position_embeddings: int = None
    attention_factor: float | None = None
    beta_fast: float | None = None  # HF: `or 32`
    beta_slow: float | None = None  # HF: `or 1`
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool | None = None  # HF default True: floor/ceil the correction range

    def inv_freq(self, head_dim, seq_len=None):
        d, base = self._dim(head_dim), float(self.theta)
        omp = self.original_max_position_embeddings
        beta_fast, beta_slow = self.beta_fast or 32, self.beta_slow or 1

        def corr_dim(rot):  # dimension index at which the wavelength makes `rot` turns over omp
            return d * math.log(omp / (rot * 2 * math.pi)) / (2 * math.log(base))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if self.truncate is None or self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001  # HF's guard against a zero-width ramp
        ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrap = self._base_inv_freq(d)
        keep = 1 - ramp  # 1 = extrapolate (high frequencies), 0 = interpolate
        return extrap / self.factor * (1 - keep) + extrap * keep

    def attention_scaling(self, head_dim, seq_len=None):
        if self.attention_factor is not None:
            return float(self.attention_factor)

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if self.mscale and self.mscale_all_dim:
            return float(get_mscale(self.factor, self.mscale) / get_mscale(self.factor, self.mscale_all_dim))
        return get_mscale(self.factor)


@_register
@dataclasses.dataclass(frozen=True)
class Llama3Rope(RopeConfig):
    """Llama 3.1: low frequencies / factor, high kept, smooth blend between."""
    type: ClassVar[str] = "llama3"
    required: ClassVar[tuple[str, ...]] = (
        "factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor")
    factor: float = None
    original_max_position_embeddings: int = None
    low_freq_factor: float = None
    high_freq_factor: float = None

    def __post_init__(self):
        super().__post_init__()
        if self.high_freq_factor <= self.low_freq_factor:
            raise _bad("high_freq_factor", self.high_freq_factor,
                       f"must exceed low_freq_factor={self.low_freq_factor}")

    def inv_freq(self, head_dim, seq_len=None):
        inv = self._base_inv_freq(head_dim)
        omp, lo_f, hi_f = self.original_max_position_embeddings, self.low_freq_factor, self.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > omp / lo_f, inv / self.factor, inv)
        smooth = (omp / wavelen - lo_f) / (hi_f - lo_f)
        blended = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = ~(wavelen < omp / hi_f) & ~(wavelen > omp / lo_f)
        return np.where(medium, blended, scaled)


@_register
@dataclasses.dataclass(frozen=True)
class LongRope(RopeConfig):
    """LongRoPE: per-frequency divisors, long set once seq_len > original_max_position_embeddings."""
    type: ClassVar[str] = "longrope"
    required: ClassVar[tuple[str, ...]] = (
        "short_factor", "long_factor", "original_max_position_embeddings")
    short_factor: tuple[float, ...] = None
    long_factor: tuple[float, ...] = None
    original_max_position_embeddings: int = None
    factor: float | None = None  # HF: None -> max_position_embeddings / original (rope_from_hf does it)
    attention_factor: float | None = None

    def uses_long(self, seq_len):
        return seq_len is not None and int(seq_len) > self.original_max_position_embeddings

    def inv_freq(self, head_dim, seq_len=None):
        d = self._dim(head_dim)
        name = "long_factor" if self.uses_long(seq_len) else "short_factor"
        ext = np.asarray(getattr(self, name), np.float64)
        if ext.shape != (d // 2,):
            raise _bad(name, f"<{ext.size} values>", f"needs head_dim // 2 = {d // 2} values")
        return 1.0 / (ext * float(self.theta) ** (np.arange(0, d, 2, dtype=np.float64) / d))

    def attention_scaling(self, head_dim, seq_len=None):
        if self.attention_factor is not None:
            return float(self.attention_factor)
        f = self.factor or 1.0
        if f <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(f) / math.log(self.original_max_position_embeddings))


def make_rope(type: str, **fields) -> RopeConfig:  # noqa: A002 - `type` is the spec'd name
    """Builds a RoPE config by registered type name; unknown names and fields raise ValueError."""
    if type not in _REGISTRY:
        raise ValueError(f"unknown rope type {type!r}; known types: {sorted(_REGISTRY)}")
    cls = _REGISTRY[type]
    known = {f.name for f in dataclasses.fields(cls)}
    extra = set(fields) - known
    if extra:
        raise ValueError(f"rope type {type!r} has no field(s) {sorted(extra)}; fields: {sorted(known)}")
    missing = [name for name in cls.required if name not in fields]
    if missing:
        raise ValueError(f"rope type {type!r} is missing required field(s) {missing}")
    return cls(**fields)


def rope_from_hf(cfg: dict) -> RopeConfig:
    """Builds a RoPE config from a whole HF config.json dict (legacy or v5 form), as HF reads it."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    params = dict(params)
    if any(isinstance(v, dict) for v in params.values()):
        raise ValueError("per-layer-type (nested) rope_parameters are not supported")
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    theta = params.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0
    prf = params.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if prf not in (None, 1, 1.0):
        raise _bad("partial_rotary_factor", prf, "only full rotation (1.0) is supported")
    if rope_type == "default" and _NTK_KEY in cfg:
        ntk = make_rope("ntk", theta=cfg[_NTK_KEY]["theta"], factor=cfg[_NTK_KEY]["factor"])
        head_dim = cfg.get("head_dim") or cfg.get("hidden_size", 0) // cfg.get("num_attention_heads", 1)
        if head_dim and not math.isclose(ntk.effective_theta(head_dim), theta, rel_tol=1e-9):
            raise _bad(_NTK_KEY, cfg[_NTK_KEY], f"stale: implies theta {ntk.effective_theta(head_dim)}, "
                       f"config has rope_theta {theta}; drop the key or fix it")
        return ntk
    if rope_type in ("llama3", "yarn", "longrope"):
        # HF priority: top-level original_max_position_embeddings (Phi3), then params, then max_pos.
        omp = cfg.get("original_max_position_embeddings") or params.get(
            "original_max_position_embeddings") or cfg.get("max_position_embeddings")
        params["original_max_position_embeddings"] = omp
        if rope_type != "llama3" and params.get("factor") is None and omp and cfg.get(
            "max_position_embeddings"):
            params["factor"] = cfg["max_position_embeddings"] / omp  # HF's default factor
    if rope_type == "dynamic":
        if "max_position_embeddings" not in cfg:
            raise _bad("max_position_embeddings", None, "dynamic rope needs it in the HF config")
        params["max_position_embeddings"] = cfg["max_position_embeddings"]
    return make_rope(rope_type, theta=float(theta), **params)


def rope_to_hf(rope: RopeConfig, style: str = "v5", head_dim: int | None = None) -> dict:
    """Keys to merge into config.json: v5 `rope_parameters` or legacy `rope_theta`+`rope_scaling`.

    `ntk` needs `head_dim` (it is written as `default` with the changed theta). `dynamic` also
    returns `max_position_embeddings`, which HF uses as its original length.
    """
    if style not in ("v5", "legacy"):
        raise ValueError(f"style={style!r}: use 'v5' or 'legacy'")
    extra = {}
    if isinstance(rope, NtkRope):
        if head_dim is None:
            raise ValueError("rope_to_hf for type 'ntk' needs head_dim= (theta' depends on it)")
        theta, rope_type, fields = rope.effective_theta(head_dim), "default", {}
        extra[_NTK_KEY] = {"theta": rope.theta, "factor": rope.factor}
    else:
        theta, rope_type, fields = float(rope.theta), rope.type, rope.hf_fields()
    if isinstance(rope, DynamicRope):
        extra["max_position_embeddings"] = rope.max_position_embeddings
    if style == "v5":
        return {"rope_parameters": {"rope_type": rope_type, "rope_theta": theta, **fields}, **extra}
    scaling = None if rope_type == "default" else {"rope_type": rope_type, **fields}
    return {"rope_theta": theta, "rope_scaling": scaling, **extra}


def _phase_words(inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies in turns as fixed-point words (a, b): w/(2pi) mod 1 = a*2^-32 + b*2^-64."""
    turns = np.mod(np.asarray(inv_freq, np.float64) / (2 * np.pi), 1.0)
    hi = np.floor(turns * 2.0**32)
    lo = np.minimum(np.round((turns * 2.0**32 - hi) * 2.0**32), 2.0**32 - 1)
    return hi.astype(np.uint32), lo.astype(np.uint32)


def _words(rope, head_dim, seq_len):
    """(a, b) words [K] for this call: host constants, or host callback for a traced dynamic L."""
    if seq_len is None or isinstance(seq_len, (int, np.integer)):
        return _phase_words(rope.inv_freq(head_dim, seq_len))
    seq_len = jnp.asarray(seq_len)
    if isinstance(rope, LongRope):
        short = _phase_words(rope.inv_freq(head_dim, None))
        long = _phase_words(rope.inv_freq(head_dim, rope.original_max_position_embeddings + 1))
        use_long = seq_len > rope.original_max_position_embeddings
        return tuple(jnp.where(use_long, l, s) for l, s in zip(long, short))
    if isinstance(rope, DynamicRope):
        k = head_dim // 2
        out = (jax.ShapeDtypeStruct((k,), jnp.uint32),) * 2
        fn = lambda length: _phase_words(rope.inv_freq(head_dim, int(length)))  # noqa: E731
        return jax.pure_callback(fn, out, seq_len.astype(jnp.int32), vmap_method="sequential")
    return _phase_words(rope.inv_freq(head_dim, None))  # other types ignore seq_len


def cos_sin(rope: RopeConfig, positions_BT, head_dim: int, seq_len=None):
    """cos and sin of positions * inv_freq, times attention_scaling; float32 [..., head_dim // 2].

    Args:
      rope: the RoPE config.
      positions_BT: integer positions (any leading shape), |p| < 2^31.
      head_dim: H; K = H // 2 frequencies.
      seq_len: current length for dynamic/longrope (HF: max(position_ids) + 1); int or traced.
    """
    a_K, b_K = _words(rope, head_dim, seq_len)
    pos = jnp.asarray(positions_BT).astype(jnp.int32)[..., None]
    # Exact: uint32 products wrap mod 2^32, which is the whole-turn part we want to drop.
    t1 = (jax.lax.bitcast_convert_type(pos, jnp.uint32) * jnp.asarray(a_K, jnp.uint32))
    t1 = t1.astype(jnp.float32) * jnp.float32(2.0**-32)
    t2 = pos.astype(jnp.float32) * (jnp.asarray(b_K).astype(jnp.float32) * jnp.float32(2.0**-64))
    turns = t1 + t2
    angle = (turns - jnp.round(turns)) * jnp.float32(2 * np.pi)  # in [-pi, pi]
    scale = jnp.float32(rope.attention_scaling(head_dim))  # no HF type varies it with length
    return jnp.cos(angle) * scale, jnp.sin(angle) * scale


def apply_rope(x_BTNH, cos_BTK, sin_BTK):
    """Rotates x in HF's half-split layout (rotate_half); float32 math, returns x's dtype."""
    x = x_BTNH.astype(jnp.float32)
    k = x.shape[-1] // 2
    x1, x2 = x[..., :k], x[..., k:]
    c, s = cos_BTK[..., None, :], sin_BTK[..., None, :]
    out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return out.astype(x_BTNH.dtype)
