"""lctx.sharding: meshes from config, logical rules, sharded init, and the full model with the
sequence sharded (ring attention) equal to the unsharded model; 2-process run on localhost."""
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lctx import model as model_lib
from lctx import ring_attention as ra
from lctx import sharding

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
            mlp_dim=64)


@pytest.fixture(autouse=True)
def _fresh_jax_caches():
    jax.clear_caches()  # see tests/ring_attention_test.py: cross-mesh cache bug in jax 0.10.2


def test_make_mesh_from_config():
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "context": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "context": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.make_mesh([("context", 8)]).shape) == {"context": 8}
    assert dict(sharding.make_mesh({"x": 2}, devices=jax.devices()[:2]).shape) == {"x": 2}


def test_make_mesh_errors_name_the_numbers():
    with pytest.raises(ValueError, match="needs 16 devices, but there are 8"):
        sharding.make_mesh({"fsdp": 4, "context": 4})
    with pytest.raises(ValueError, match=r"only one axis may be -1, got \['fsdp', 'context'\]"):
        sharding.make_mesh({"fsdp": -1, "context": -1})
    with pytest.raises(ValueError, match="multiple of 3 devices, but there are 8"):
        sharding.make_mesh({"fsdp": -1, "context": 3})


def test_logical_to_spec_rules():
    mesh = sharding.make_mesh({"fsdp": 2, "context": 4})
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_spec(("embed", "mlp"), rules) == P(("fsdp", "context"), "tensor")
    # Absent mesh axes drop out; an axis is used once per tensor (seq takes context first).
    assert sharding.logical_to_spec(("embed", "mlp"), rules, mesh) == P(("fsdp", "context"), None)
    assert sharding.logical_to_spec(("batch", "seq", "embed"), rules, mesh) == P(
        "fsdp", "context", None)
    assert sharding.logical_to_spec((None, "layers"), rules) == P(None, None)


def test_constrain_is_noop_without_mesh_and_shards_with_one():
    x = jnp.arange(64.0).reshape(8, 8)
    assert sharding.constrain(x, ("batch", "embed")) is x
    mesh = sharding.make_mesh({"fsdp": 8})
    with sharding.use_mesh(mesh):
        assert sharding.current_mesh() is mesh
        y = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", None)))(x)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp", None)), 2)
    assert sharding.current_mesh() is None
    np.testing.assert_array_equal(y, x * 2)


def test_constrain_replicates_a_dimension_its_axes_cannot_split():
    # A batch of 2 on an fsdp=4 mesh (eager evaluation of a small batch) is replicated over
    # fsdp instead of failing; a dimension that divides keeps its axes, and a multi-axis entry
    # keeps the leading axes that divide.
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    with sharding.use_mesh(mesh):
        y = sharding.constrain(jnp.ones((2, 8)), ("batch", "embed"))
        z = jax.jit(lambda x: sharding.constrain(x, ("batch", None)))(jnp.ones((8, 3)))
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None)), 2)
    assert z.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None)), 2)


def test_init_sharded_matches_unsharded_init():
    cfg = model_lib.ModelConfig(**TINY)
    mesh = sharding.make_mesh({"fsdp": 2, "context": 2, "tensor": 2})
    ctor = lambda: model_lib.Llama(cfg, rngs=nnx.Rngs(0))
    sharded = nnx.state(sharding.init_sharded(ctor, mesh), nnx.Param)
    plain = nnx.state(ctor(), nnx.Param)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(sharded), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    wq = sharded["layers"]["attn"]["wq"][...]
    assert wq.sharding.spec == P(None, ("fsdp", "context"), "tensor", None)
    # Each device holds 1/8 of wq: no device ever had the whole weight.
    assert wq.addressable_shards[0].data.size == wq.size // 8
    state = sharding.shard_train_state(
        {"params": sharded, "opt": optax.adamw(1e-3).init(sharded), "step": jnp.zeros(())}, mesh)
    mu_wq = state["opt"][0].mu["layers"]["attn"]["wq"][...]
    assert mu_wq.sharding == wq.sharding
    assert state["step"].sharding == NamedSharding(mesh, P())


def test_heads_not_divisible_by_tensor_axis():
    cfg = model_lib.ModelConfig(**TINY)
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    with pytest.raises(ValueError, match="'kv_heads' of size 2 is not divisible by mesh axes "
                                         r"\('tensor',\) of total size 4"):
        sharding.init_sharded(lambda: model_lib.Llama(cfg, rngs=nnx.Rngs(0)), mesh)


@pytest.mark.parametrize("mesh_axes", [{"context": 8}, {"fsdp": 2, "context": 4}])
def test_model_ring_equals_unsharded_model(mesh_axes):
    """Forward and parameter gradients of the model with T sharded (ring, zigzag data) equal
    the single-device dense model."""
    b, t = 2, 64
    r = np.random.default_rng(0)
    tokens = r.integers(1, 64, size=(b, t))
    seg = np.repeat(np.array([[1] * 23 + [2] * 30 + [0] * 11, [1] * 64]), 1, axis=0)
    pos = np.stack([np.concatenate([np.arange(23), np.arange(30), np.arange(11)]),
                    np.arange(64)])
    w = r.normal(size=(b, t, TINY["vocab_size"])).astype(np.float32)

    def loss(model, tokens, pos, seg, w):
        return (model.logits(model(tokens, pos, seg)) * w).sum()

    dense = model_lib.Llama(model_lib.ModelConfig(**TINY), rngs=nnx.Rngs(0))
    l_dense, g_dense = jax.jit(nnx.value_and_grad(loss))(dense, tokens, pos, seg, w)

    mesh = sharding.make_mesh(mesh_axes)
    perm = ra.zigzag_indices(t, mesh.shape["context"])
    cfg = model_lib.ModelConfig(**TINY, attn_impl="ring")
    with sharding.use_mesh(mesh):
        ring = sharding.init_sharded(lambda: model_lib.Llama(cfg, rngs=nnx.Rngs(0)), mesh)
        rows = tuple(a for a in ("data", "fsdp") if a in mesh.shape) or None
        put = lambda x: jax.device_put(x[:, perm], NamedSharding(mesh, P(rows, "context")))
        l_ring, g_ring = jax.jit(nnx.value_and_grad(loss))(
            ring, put(tokens), put(pos), put(seg), put(w))
    np.testing.assert_allclose(l_ring, l_dense, rtol=1e-5)
    for (path, a), b_ in zip(jax.tree_util.tree_leaves_with_path(nnx.state(g_ring)),
                             jax.tree.leaves(nnx.state(g_dense))):
        np.testing.assert_allclose(a, b_, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


_WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    import jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from lctx import ring_attention as ra, sharding
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = sharding.make_mesh({"fsdp": 2, "context": -1})
    b, t, n, k, h = 2, 32, 4, 2, 8
    r = np.random.default_rng(0)  # same data in both processes
    q, kk, v = (r.normal(size=s).astype(np.float32) for s in ((b, t, n, h), (b, t, k, h),
                                                                (b, t, k, h)))
    pos = np.broadcast_to(np.arange(t), (b, t)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    perm = ra.zigzag_indices(t, 4)
    def glob(x, spec):
        x = x[:, perm]
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])
    sx, ss = P("fsdp", "context"), P("fsdp", "context")
    out = jax.jit(lambda *a: ra.ring_attention(*a, causal=True, scale=h ** -0.5, mesh=mesh))(
        glob(q, sx), glob(kk, sx), glob(v, sx), glob(seg, ss), glob(seg, ss), glob(pos, ss),
        glob(pos, ss))
    # Dense reference on the host, in the zigzag order (masking is by position, not index).
    qz, kz, vz, pz = (x[:, perm] for x in (q, kk, v, pos))
    kz, vz = np.repeat(kz, n // k, 2), np.repeat(vz, n // k, 2)
    s = np.einsum("btnh,bsnh->bnts", qz, kz) * h ** -0.5
    s = np.where(pz[:, None, :, None] >= pz[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bnts,bsnh->btnh", p, vz)
    for shard in out.addressable_shards:
        np.testing.assert_allclose(np.asarray(shard.data), ref[shard.index], atol=1e-5)
    print("OK", jax.process_index(), flush=True)
""")


@pytest.mark.multiprocess
def test_two_processes_on_localhost(tmp_path):
    """2 processes x 4 CPU devices form one 8-device mesh; ring attention matches dense."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(script), f"localhost:{port}", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"OK {i}" in out, out[-3000:]


def test_mesh_axis_names_are_spelled_only_in_lctx_sharding():
    """Product code names mesh axes through lctx.sharding's constants: a quoted axis name on
    a line that builds a mesh, a PartitionSpec or reads mesh.shape is a second owner."""
    import io
    import re
    import tokenize
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = {repr(a) for a in sharding.MESH_AXES} | {f'"{a}"' for a in sharding.MESH_AXES}
    meshy = re.compile(r"make_mesh|PartitionSpec|\bP\(|mesh\.shape|axis_name|_axes\b")
    bad = []
    for pkg in ("lctx", "evals", "demo", "bench", "launch", "datagen", "configs"):
        for dirpath, _, files in os.walk(os.path.join(root, pkg)):
            for f in files:
                path = os.path.join(dirpath, f)
                if not f.endswith(".py") or path.endswith(os.path.join("lctx", "sharding.py")):
                    continue
                src = open(path, encoding="utf-8").read()
                lines = src.splitlines()
                for tok in tokenize.generate_tokens(io.StringIO(src).readline):
                    if tok.type == tokenize.STRING and tok.string in names and meshy.search(
                            lines[tok.start[0] - 1]):
                        bad.append(f"{os.path.relpath(path, root)}:{tok.start[0]}")
    assert bad == [], f"literal mesh axis names (use lctx.sharding.DATA/FSDP/...): {bad}"
