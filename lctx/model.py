"""Llama-3.x decoder in Flax NNX: GQA, RMSNorm, SwiGLU, scanned layers, remat, KV cache.

Axes: B batch, T query positions, S key (cache) positions, D model dim, N query heads,
K kv heads, G = N / K, H head dim, F mlp dim, V vocab, L layers, P = B * T tokens.

Entry points::

    model = Llama(cfg, rngs=nnx.Rngs(0))
    hidden_BTD = model(tokens_BT, positions_BT, segment_ids_BT)       # final-normed
    logits_BTV = model.logits(hidden_BTD)                              # float32
    cache = model.init_cache(batch, max_len)
    hidden_BTD, cache = model(tokens_BT, positions_BT, segment_ids_BT, cache=cache)

Params carry logical axis names (vocab, embed, q_heads, kv_heads, head_dim, mlp, layers) as
`out_sharding` metadata with `eager_sharding=False`: the model never sees a mesh;
`lctx.sharding` maps the names to mesh axes (`nnx.get_partition_spec(nnx.state(model))`).
The layer stack is one `Block` whose params have a leading L axis; the forward scans it
(`scan_layers=True`) or loops over it, so both modes share the parameter layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lctx import attention as attn_lib
from lctx import blocks as blocks_lib
from lctx import rope as rope_lib
from lctx.sharding import CONTEXT, constrain

_F32 = jnp.float32
# Names of the tensors tagged with `checkpoint_name`, for remat="names:a,b" policies.
CHECKPOINT_NAMES = ("qkv", "attn_context", "attn_out", "mlp_hidden", "mlp_out")
_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
    """Policy for a remat name: none | full | dots | dots_saveable | dots_no_batch | names:a,b.

    'names:qkv,attn_context' saves only those `CHECKPOINT_NAMES` and recomputes the rest.
    Returns None for 'none' (no rematerialisation).
    """
    if name.startswith("names:"):
        names = tuple(n for n in name[len("names:"):].split(",") if n)
        bad = [n for n in names if n not in CHECKPOINT_NAMES]
        if bad or not names:
            raise ValueError(f"remat={name!r}: unknown checkpoint name(s) {bad}; known: "
                             f"{CHECKPOINT_NAMES}.")
        return jax.checkpoint_policies.save_only_these_names(*names)
    if name not in _POLICIES:
        raise ValueError(f"remat={name!r}; expected one of {sorted(_POLICIES)} or "
                         f"'names:<comma-separated subset of {CHECKPOINT_NAMES}>'.")
    return _POLICIES[name]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of the decoder (frozen, hashable; built from `cfg.model`)."""
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    rope: rope_lib.RopeConfig = dataclasses.field(default_factory=rope_lib.DefaultRope)
    attn_impl: str = "dense"  # dense | blockwise | cudnn | ring
    block_q: int = 512  # blockwise / ring block lengths, tokens
    block_k: int = 512
    attn_kernel: str = "xla"  # block kernel of blockwise / ring: xla | cudnn (lctx.blocks)
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; softmax, norms and logits stay float32
    scan_layers: bool = True
    remat: str = "none"
    ring_axis: str = CONTEXT  # mesh axis of the ring
    ring_layout: str = "zigzag"  # token layout the data applied: zigzag | balanced (lctx.layout)
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "mlp_dim", "max_seq_len", "block_q", "block_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{name}={v!r} must be a positive integer.")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads="
                             f"{self.n_kv_heads}; GQA needs n_heads = n_kv_heads * group size.")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs).")
        if not (isinstance(self.norm_eps, float) and self.norm_eps > 0):
            raise ValueError(f"norm_eps={self.norm_eps!r} must be a positive float.")
        if not isinstance(self.rope, rope_lib.RopeConfig):
            raise ValueError(f"rope={self.rope!r} must be an lctx.rope.RopeConfig "
                             "(build one with rope.make_rope(type, **fields)).")
        if self.attn_impl not in attn_lib.IMPLS:
            raise ValueError(f"attn_impl={self.attn_impl!r}; expected one of {attn_lib.IMPLS}.")
        if self.ring_layout not in ("zigzag", "balanced"):
            raise ValueError(f"ring_layout={self.ring_layout!r}; expected 'zigzag' or "
                             "'balanced' (lctx.layout).")
        if self.attn_kernel not in blocks_lib.KERNELS:
            raise ValueError(f"attn_kernel={self.attn_kernel!r}; expected one of "
                             f"{sorted(blocks_lib.KERNELS)}.")
        for name in ("param_dtype", "dtype"):
            v = getattr(self, name)
            try:
                dt = jnp.dtype(v)
            except TypeError as e:
                raise ValueError(f"ModelConfig.{name}={v!r} is not a dtype name.") from e
            if not jnp.issubdtype(dt, jnp.floating):
                raise ValueError(f"ModelConfig.{name}={v!r} must be a floating dtype.")
            object.__setattr__(self, name, dt.name)  # canonical string, keeps the config hashable
        remat_policy(self.remat)  # validates the name

    def n_params(self) -> int:
        """Parameter count (embeddings included)."""
        d, f, l = self.d_model, self.mlp_dim, self.n_layers
        attn = d * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return l * per_layer + emb + d


class KVCache(NamedTuple):
    """Static-shape KV cache: keys/values of every layer plus the ids the mask reads.

    Slots never written keep segment id 0, so real (segment >= 1) queries never see them.
    """
    k_LBSKH: jax.Array
    v_LBSKH: jax.Array
    seg_BS: jax.Array  # int32 segment ids of the cached tokens
    pos_BS: jax.Array  # int32 position ids of the cached tokens
    length: jax.Array  # int32 scalar: slots [0, length) are written


def _tokens(eq, x_BT_, w):
    """einsum over the token axes flattened, [B, T, ...] -> [B * T, ...] -> back (bitcasts).

    The weight gradient then contracts one token axis instead of two (B and T): XLA:CPU
    lowers a two-axis contraction by transposing the [B, T, F] cotangent to [F, B * T]
    first, a copy fused with the elementwise backward that writes it column by column: the
    "SwiGLU backward" and Q/K/V-gradient copies of issue 17's profile, ~20-25% of
    bench/model_bench.py's CPU step.
    """
    b, t = x_BT_.shape[:2]
    y = jnp.einsum(eq, x_BT_.reshape((b * t,) + x_BT_.shape[2:]), w)
    return y.reshape((b, t) + y.shape[1:])


def _param(rngs, shape, names, cfg, init="normal"):
    if init == "ones":
        value = jnp.ones(shape, cfg.param_dtype)
    else:
        value = cfg.init_std * jax.random.truncated_normal(
            rngs.params(), -2.0, 2.0, shape, _F32).astype(cfg.param_dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 (HF LlamaRMSNorm order of casts)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, (cfg.d_model,), ("embed",), cfg, init="ones")
        self.eps, self.dtype = cfg.norm_eps, cfg.dtype

    def __call__(self, x_BTD):
        x = x_BTD.astype(_F32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * x.astype(self.dtype)


class Attention(nnx.Module):
    """GQA self-attention with RoPE; K/V go through the cache when one is given."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = _param(rngs, (d, n, h), ("embed", "q_heads", "head_dim"), cfg)
        self.wk = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg)
        self.wv = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg)
        self.wo = _param(rngs, (n, h, d), ("q_heads", "head_dim", "embed"), cfg)
        self.dtype, self.scale = cfg.dtype, h ** -0.5

    def __call__(self, x_BTD, cos_BTK, sin_BTK, seg_BT, pos_BT, attend, kv=None):
        dt = self.dtype
        q_BTNH = _tokens("pd,dnh->pnh", x_BTD, self.wq[...].astype(dt))
        k_BTKH = _tokens("pd,dkh->pkh", x_BTD, self.wk[...].astype(dt))
        v_BTKH = _tokens("pd,dkh->pkh", x_BTD, self.wv[...].astype(dt))
        q_BTNH = rope_lib.apply_rope(q_BTNH, cos_BTK, sin_BTK)
        k_BTKH = rope_lib.apply_rope(k_BTKH, cos_BTK, sin_BTK)
        q_BTNH, k_BTKH, v_BTKH = checkpoint_name((q_BTNH, k_BTKH, v_BTKH), "qkv")
        if kv is None:
            k_BSKH, v_BSKH, k_seg, k_pos, new_kv = k_BTKH, v_BTKH, seg_BT, pos_BT, None
        else:  # write this step's K/V at the cache cursor, attend over the whole cache
            k_cache, v_cache, k_seg, k_pos, length = kv
            k_BSKH = jax.lax.dynamic_update_slice_in_dim(k_cache, k_BTKH.astype(k_cache.dtype),
                                                         length, axis=1)
            v_BSKH = jax.lax.dynamic_update_slice_in_dim(v_cache, v_BTKH.astype(v_cache.dtype),
                                                         length, axis=1)
            new_kv = (k_BSKH, v_BSKH)
        ctx_BTNH = attend(q_BTNH, k_BSKH, v_BSKH, seg_BT, k_seg, pos_BT, k_pos,
                          causal=True, scale=self.scale)
        ctx_BTNH = checkpoint_name(ctx_BTNH, "attn_context")
        out_BTD = _tokens("pnh,nhd->pd", ctx_BTNH, self.wo[...].astype(dt))
        return checkpoint_name(out_BTD, "attn_out"), new_kv


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.mlp_dim
        self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.w_up = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.w_down = _param(rngs, (f, d), ("mlp", "embed"), cfg)
        self.dtype = cfg.dtype

    def __call__(self, x_BTD):
        dt = self.dtype
        # Without these constraints XLA may shard D (fsdp x context) and keep full-T [B, T, F]
        # activations on every device; T stays split over the context axis (identity off-mesh).
        gate_BTF = constrain(_tokens("pd,df->pf", x_BTD, self.w_gate[...].astype(dt)),
                             ("batch", "seq", "mlp"))
        up_BTF = constrain(_tokens("pd,df->pf", x_BTD, self.w_up[...].astype(dt)),
                           ("batch", "seq", "mlp"))
        h_BTF = checkpoint_name(jax.nn.silu(gate_BTF) * up_BTF, "mlp_hidden")
        out_BTD = _tokens("pf,fd->pd", h_BTF, self.w_down[...].astype(dt))
        return checkpoint_name(out_BTD, "mlp_out")


class Block(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BTD, cos_BTK, sin_BTK, seg_BT, pos_BT, attend, kv=None):
        a_BTD, new_kv = self.attn(self.attn_norm(x_BTD), cos_BTK, sin_BTK, seg_BT, pos_BT,
                                  attend, kv)
        x_BTD = constrain(x_BTD + a_BTD, ("batch", "seq", None))
        return constrain(x_BTD + self.mlp(self.mlp_norm(x_BTD)), ("batch", "seq", None)), new_kv


class Llama(nnx.Module):
    """The decoder. See the module docstring for the entry points."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked(rngs):
            return Block(cfg, rngs=rngs)

        self.layers = stacked(rngs)
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.unembed = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)

    def unembedding(self) -> jax.Array:
        """The [D, V] output projection in compute dtype (the embedding transposed if tied)."""
        w = self.embed[...].T if self.cfg.tie_embeddings else self.unembed[...]
        return w.astype(self.cfg.dtype)

    def logits(self, hidden_BTD) -> jax.Array:
        """float32 logits [B, T, V]; the loss uses `lctx.loss`, which never builds these."""
        return jnp.einsum("btd,dv->btv", hidden_BTD, self.unembedding(),
                          preferred_element_type=_F32)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache of `max_len` slots per row (static shape), in compute dtype."""
        c = self.cfg
        shape = (c.n_layers, batch, max_len, c.n_kv_heads, c.head_dim)
        zeros_BS = jnp.zeros((batch, max_len), jnp.int32)
        return KVCache(jnp.zeros(shape, c.dtype), jnp.zeros(shape, c.dtype), zeros_BS, zeros_BS,
                       jnp.zeros((), jnp.int32))

    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, cache: KVCache | None = None):
        """Final-normed hidden states [B, T, D] (and the updated cache when one is given).

        Args:
          tokens_BT: int token ids.
          positions_BT: int position ids (any values, e.g. restarting per packed document).
          segment_ids_BT: int document ids; tokens attend only within their segment; 0 = padding.
          cache: a `KVCache`; the T new tokens are written at `cache.length`, in order.
        """
        c = self.cfg
        if tokens_BT.ndim != 2 or positions_BT.shape != tokens_BT.shape or (
            segment_ids_BT.shape != tokens_BT.shape):
            raise ValueError(f"tokens {tokens_BT.shape}, positions {positions_BT.shape} and "
                             f"segment_ids {segment_ids_BT.shape} must all be the same [B, T].")
        positions_BT = positions_BT.astype(jnp.int32)
        segment_ids_BT = segment_ids_BT.astype(jnp.int32)
        x_BTD = constrain(self.embed[...].astype(c.dtype)[tokens_BT], ("batch", "seq", None))
        # HF's length for dynamic/longrope RoPE: max position id of this call + 1.
        cos_BTK, sin_BTK = rope_lib.cos_sin(c.rope, positions_BT, c.head_dim,
                                            seq_len=jnp.max(positions_BT) + 1)
        impl = c.attn_impl
        if cache is not None:
            impl = "blockwise" if impl == "ring" else impl  # a cache lives on one shard
            length = cache.length
            k_seg = jax.lax.dynamic_update_slice_in_dim(cache.seg_BS, segment_ids_BT, length, 1)
            k_pos = jax.lax.dynamic_update_slice_in_dim(cache.pos_BS, positions_BT, length, 1)
            layer_kv = (cache.k_LBSKH, cache.v_LBSKH)
        else:
            layer_kv = None
        attend = attn_lib.get_attention(impl, block_q=c.block_q, block_k=c.block_k,
                                        kernel=c.attn_kernel, ring_axis=c.ring_axis,
                                        ring_layout=c.ring_layout)
        graphdef, state = nnx.split(self.layers)

        def body(x_BTD, xs):
            layer_state, kv_l = xs
            block = nnx.merge(graphdef, layer_state)
            kv = None if kv_l is None else (kv_l[0], kv_l[1], k_seg, k_pos, length)
            return block(x_BTD, cos_BTK, sin_BTK, segment_ids_BT, positions_BT, attend, kv)

        policy = remat_policy(c.remat)
        if c.remat != "none":
            body = jax.checkpoint(body, policy=policy, prevent_cse=not c.scan_layers)
        if c.scan_layers:
            x_BTD, new_kv = jax.lax.scan(body, x_BTD, (state, layer_kv))
        else:
            outs = []
            for i in range(c.n_layers):
                xs_i = jax.tree.map(lambda a, i=i: a[i], (state, layer_kv))
                x_BTD, kv_i = body(x_BTD, xs_i)
                outs.append(kv_i)
            new_kv = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)
        hidden_BTD = self.final_norm(x_BTD)
        if cache is None:
            return hidden_BTD
        new_cache = KVCache(new_kv[0], new_kv[1], k_seg, k_pos, length + tokens_BT.shape[1])
        return hidden_BTD, new_cache
