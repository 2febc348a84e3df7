"""Adapter banks on the attention projections, in lctx's einsum style over the 3-D weights.

lctx's projections are einsum tensors (`wq: [D, N, H]`, `wo: [N, H, D]`), not `nnx.Linear`,
so flax's `nnx.LoRA` (2-D linears, no alpha) does not fit and no dependency is taken
(REFERENCE_NOTES_WAVE2 section 5). A bank holds E adapters for every layer (leading L axis, so
it scans with the layer stack); a call picks one by a traced index, so shapes are static and
one compiled program serves every expert.

* LoRA (`kind='lora'`): delta(x) = alpha / r * (x A_e) B_e per target. A is Kaiming-uniform
  (PEFT's default bound 1/sqrt(fan_in)), B is zero: a fresh adapter adds exactly 0.
* Clone (`kind='clone'`): a full copy of each target projection, Zhang et al.'s "MHA" beacon
  parameters. Stored as a zero-initialised difference from the frozen base (W + dW), which is
  the same function and the same gradient as a copy initialised from W (no weight decay is
  used), and lets a checkpoint of the base change underneath without re-copying.

Every adapter weight is an `AdapterParam`: `nnx.split(model, AdapterParam, nnx.Param)` gives the
trainable part first and the frozen base after it.

Axes: L layers, E adapters, D model dim, N query heads, K kv heads, H head dim, R rank,
B batch, T tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

TARGETS = ("q", "k", "v", "o")


class AdapterParam(nnx.Param):
    """A trainable adapter weight (LoRA bank, clone difference, beacon embedding)."""


def adapter_param(value, names) -> AdapterParam:
    """An adapter weight with logical axis names (`lctx.sharding` maps them to the mesh)."""
    return AdapterParam(value, out_sharding=names, eager_sharding=False)


def _heads(cfg, target: str) -> int:
    return cfg.n_kv_heads if target in ("k", "v") else cfg.n_heads


def lora_shapes(cfg, target: str, n: int, rank: int) -> tuple[tuple, tuple]:
    """Shapes of (A, B) for one target: [L, E, in..., R] and [L, E, R, out...]."""
    l, d, h = cfg.n_layers, cfg.d_model, cfg.head_dim
    heads = _heads(cfg, target)
    if target == "o":
        return (l, n, heads, h, rank), (l, n, rank, d)
    return (l, n, d, rank), (l, n, rank, heads, h)


def clone_shape(cfg, target: str) -> tuple:
    """Shape of a clone difference: the base projection's with a leading L."""
    l, d, h = cfg.n_layers, cfg.d_model, cfg.head_dim
    heads = _heads(cfg, target)
    return (l, heads, h, d) if target == "o" else (l, d, heads, h)


def count(cfg, kind: str, n: int, rank: int, targets=TARGETS) -> int:
    """Adapter parameters (embeddings excluded) for a model config, without building them."""
    total = 0
    for t in targets:
        if kind == "clone":
            total += _prod(clone_shape(cfg, t))
        else:
            a, b = lora_shapes(cfg, t, n, rank)
            total += _prod(a) + _prod(b)
    return total


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


class Bank(nnx.Module):
    """E adapters per layer on `targets`; see the module docstring.

    Args:
      cfg: the base `lctx.model.ModelConfig` (shapes).
      kind: 'lora' or 'clone' (clone has one adapter, E = 1).
      n: adapters in the bank (E).
      rank, alpha: LoRA rank and scale numerator.
      targets: subset of ('q', 'k', 'v', 'o').
    """

    def __init__(self, cfg, *, kind: str, n: int, rank: int, alpha: float, targets, rngs):
        if kind not in ("lora", "clone"):
            raise ValueError(f"adapter kind={kind!r}; expected 'lora' or 'clone'.")
        self.kind, self.n, self.rank, self.targets = kind, n, rank, tuple(targets)
        self.scale = float(alpha) / rank
        pd = jnp.float32  # fp32 masters, whatever the frozen base is stored in
        for t in self.targets:
            heads = "kv_heads" if t in ("k", "v") else "q_heads"
            if kind == "clone":
                names = (("layers", heads, "head_dim", "embed") if t == "o" else
                         ("layers", "embed", heads, "head_dim"))
                setattr(self, f"d{t}", adapter_param(jnp.zeros(clone_shape(cfg, t), pd), names))
                continue
            a_shape, b_shape = lora_shapes(cfg, t, n, rank)
            fan_in = cfg.d_model if t != "o" else cfg.n_heads * cfg.head_dim
            bound = fan_in ** -0.5  # PEFT/torch kaiming_uniform(a=sqrt(5)) bound
            a = jax.random.uniform(rngs.params(), a_shape, jnp.float32, -bound, bound)
            a_names, b_names = ((("layers", None, heads, "head_dim", None),
                                 ("layers", None, None, "embed")) if t == "o" else
                                (("layers", None, "embed", None),
                                 ("layers", None, None, heads, "head_dim")))
            setattr(self, f"a{t}", adapter_param(a.astype(pd), a_names))
            setattr(self, f"b{t}", adapter_param(jnp.zeros(b_shape, pd), b_names))

    def layer(self) -> dict:
        """This bank's arrays as a dict of [L, ...] arrays (scanned with the layer stack)."""
        out = {}
        for t in self.targets:
            names = (f"d{t}",) if self.kind == "clone" else (f"a{t}", f"b{t}")
            for nm in names:
                out[nm] = getattr(self, nm)[...]
        return out


def delta_in(w_l: dict, kind: str, scale: float, target: str, x_BTD, e, dtype):
    """The adapter's addition to a q/k/v projection of `x_BTD` ([B, T, heads, H]), or None.

    `w_l` holds one layer's bank arrays (`Bank.layer()` sliced at a layer), `e` the adapter.
    """
    if kind == "clone":
        if f"d{target}" not in w_l:
            return None
        return jnp.einsum("btd,dnh->btnh", x_BTD, w_l[f"d{target}"].astype(dtype))
    if f"a{target}" not in w_l:
        return None
    a_DR = w_l[f"a{target}"][e].astype(dtype)
    b_RNH = w_l[f"b{target}"][e].astype(dtype)
    return scale * jnp.einsum("btr,rnh->btnh", jnp.einsum("btd,dr->btr", x_BTD, a_DR), b_RNH)


def delta_out(w_l: dict, kind: str, scale: float, ctx_BTNH, e, dtype):
    """The adapter's addition to the o projection of `ctx_BTNH` ([B, T, D]), or None."""
    if kind == "clone":
        if "do" not in w_l:
            return None
        return jnp.einsum("btnh,nhd->btd", ctx_BTNH, w_l["do"].astype(dtype))
    if "ao" not in w_l:
        return None
    a_NHR = w_l["ao"][e].astype(dtype)
    b_RD = w_l["bo"][e].astype(dtype)
    return scale * jnp.einsum("btr,rd->btd", jnp.einsum("btnh,nhr->btr", ctx_BTNH, a_NHR), b_RD)
