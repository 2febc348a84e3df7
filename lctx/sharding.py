"""Mesh, logical-axis rules and sharded initialisation (the only module naming mesh axes).

The mesh comes from config data, e.g. `{'data': 1, 'fsdp': -1, 'context': 4, 'tensor': 1}`
(one axis may be -1: "all remaining devices"). Model code names tensor axes logically
(`batch`, `seq`, `embed`, `q_heads`, ...); rules map those names to mesh axes. Context
devices are also FSDP shards for the weights (`embed -> (fsdp, context)`), as in LWM/MaxText.
All meshes use `AxisType.Auto` axes and arrays are placed with explicit `NamedSharding`s.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Mesh axis names: every other module refers to them through these constants.
DATA, FSDP, CONTEXT, TENSOR = "data", "fsdp", "context", "tensor"
MESH_AXES = (DATA, FSDP, CONTEXT, TENSOR)  # slowest-varying first; context/tensor innermost

# Logical axis -> mesh axes (a name, a tuple of names, or None = replicated). Config data:
# pass your own to `use_mesh`/`init_sharded` to change the layout.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", (DATA, FSDP)),
    ("seq", CONTEXT),
    ("embed", (FSDP, CONTEXT)),
    ("q_heads", TENSOR),
    ("kv_heads", TENSOR),
    ("mlp", TENSOR),
    ("vocab", TENSOR),
    ("head_dim", None),
    ("layers", None),
)

_STATE = threading.local()


def make_mesh(axes: Mapping[str, int] | Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh from `{axis: size}` (or `[(axis, size), ...]`); one size may be -1.

    Args:
      axes: ordered axis sizes, e.g. a `cfg.mesh` ConfigDict; slowest-varying axis first.
      devices: devices to use (default: all devices of all processes).

    Raises:
      ValueError: more than one -1, a size < 1, or a product that does not equal the
        device count (the numbers are in the message).
    """
    items = list(axes.items()) if hasattr(axes, "items") else [tuple(a) for a in axes]
    devices = list(jax.devices() if devices is None else devices)
    names = [str(n) for n, _ in items]
    sizes = [int(s) for _, s in items]
    free = [n for n, s in zip(names, sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh {dict(items)}: only one axis may be -1, got {free}.")
    bad = [n for n, s in zip(names, sizes) if s < 1 and s != -1]
    if bad:
        raise ValueError(f"mesh {dict(items)}: axis sizes must be >= 1 or -1, got {bad}.")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"mesh {dict(items)}: the fixed axes need a multiple of {fixed} "
                             f"devices, but there are {len(devices)}.")
        sizes[names.index(free[0])] = len(devices) // fixed
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                         f"but there are {len(devices)}; make the product match or set one "
                         "axis to -1.")
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                         devices=devices)


def logical_to_spec(names: Sequence[str | None], rules=DEFAULT_RULES,
                    mesh: Mesh | None = None) -> P:
    """PartitionSpec for a tensor whose dimensions carry logical `names`.

    Mesh axes absent from `mesh` (when given) are dropped, and a mesh axis already used by an
    earlier dimension is not reused (e.g. `[seq, embed]` puts `context` on seq only).
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in names:
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used and (mesh is None or a in mesh.shape))
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def check_divisible(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh,
                    rules=DEFAULT_RULES, what: str = "array") -> None:
    """Raise a ValueError naming the dimension when a size does not split over its axes."""
    for size, name, entry in zip(shape, names, logical_to_spec(names, rules, mesh)):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        n = math.prod(mesh.shape[a] for a in axes)
        if size % n:
            raise ValueError(f"{what}: dimension {name!r} of size {size} is not divisible by "
                             f"mesh axes {axes} of total size {n}; change the model shape or "
                             "the mesh.")


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=DEFAULT_RULES):
    """Make `mesh` and `rules` active for `constrain`, `current_mesh` and ring attention."""
    prev = getattr(_STATE, "active", None)
    _STATE.active = (mesh, tuple(rules))
    try:
        yield mesh
    finally:
        _STATE.active = prev


def current_mesh() -> Mesh | None:
    """The mesh activated by `use_mesh`, or None."""
    active = getattr(_STATE, "active", None)
    return None if active is None else active[0]


def current_rules():
    """The rules activated by `use_mesh` (DEFAULT_RULES when none is active)."""
    active = getattr(_STATE, "active", None)
    return DEFAULT_RULES if active is None else active[1]


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; identity when no mesh is active."""
    active = getattr(_STATE, "active", None)
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, _fitting_spec(x.shape, logical_to_spec(names, rules, mesh), mesh)))


def _fitting_spec(shape: Sequence[int], spec: P, mesh: Mesh) -> P:
    """`spec` with each dimension keeping only the leading mesh axes its size divides by.

    Activation hints must not fail on shapes the parameters never see, e.g. a batch of 2
    evaluated on an fsdp=4 mesh: such a dimension is replicated over the axes it cannot split
    over (parameters are checked strictly by `check_divisible` instead).
    """
    out = []
    for size, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        keep = []
        for a in axes:
            if size % (math.prod(mesh.shape[b] for b in keep) * mesh.shape[a]):
                break
            keep.append(a)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return P(*out)


def _logical_names(spec) -> tuple:
    return tuple(spec) if isinstance(spec, (P, tuple, list)) else ()


def param_shardings(abstract_state, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for an NNX state from each Variable's logical-name metadata."""
    logical = nnx.get_partition_spec(abstract_state)

    def to_sharding(path, var, spec):
        names = _logical_names(spec)
        shape = var.shape
        names = names + (None,) * (len(shape) - len(names))
        check_divisible(shape, names, mesh, rules, what="/".join(map(str, path)))
        return NamedSharding(mesh, logical_to_spec(names, rules, mesh))

    leaves = lambda t: jax.tree_util.tree_leaves_with_path(t)
    abs_leaves, logical_leaves = leaves(abstract_state), [s for _, s in leaves(logical)]
    flat = [to_sharding(p, v, s) for (p, v), s in zip(abs_leaves, logical_leaves)]
    return jax.tree.unflatten(jax.tree.structure(abstract_state), flat)


def init_sharded(ctor: Callable[[], nnx.Module], mesh: Mesh, rules=DEFAULT_RULES):
    """Build an NNX module with every parameter created directly in its sharding.

    Args:
      ctor: no-argument constructor, e.g. `lambda: Llama(cfg, rngs=nnx.Rngs(0))`.
      mesh: target mesh; rules: logical-axis rules.

    Returns:
      The module; no full copy of a parameter ever exists on one device.
    """
    abstract = nnx.eval_shape(ctor)
    graphdef, abs_state = nnx.split(abstract)
    shardings = param_shardings(abs_state, mesh, rules)
    state = jax.jit(lambda: nnx.split(ctor())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def train_state_shardings(state: Any, mesh: Mesh, param_shardings_tree: Any) -> Any:
    """Shardings for a train-state pytree `{params, opt, ...}` (arrays or abstract).

    `state["params"]` takes `param_shardings_tree`; a leaf elsewhere whose path ends with a
    parameter's path (an AdamW moment) takes that parameter's sharding; anything else (step
    counters, the PRNG key) is replicated.
    """
    by_path = {tuple(map(str, p)): s for p, s in
               jax.tree_util.tree_leaves_with_path(param_shardings_tree)}
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = tuple(map(str, path))
        if keys[:1] == ("['params']",):
            return by_path[keys[1:]]
        for i in range(len(keys)):  # longest suffix matching a parameter path
            s = by_path.get(keys[i:])
            if s is not None and len(s.spec) <= np.ndim(leaf):
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(pick, state)


def shard_train_state(state: Any, mesh: Mesh, rules=DEFAULT_RULES):
    """Places a train-state pytree whose `params` are an NNX Param state: parameters by
    their logical names, the rest by `train_state_shardings`."""
    shardings = train_state_shardings(state, mesh, param_shardings(state["params"], mesh, rules))
    return jax.device_put(state, shardings)
