"""Ring attention equals dense single-device attention (outputs and gradients), on 8 CPU
devices, for 1-D and 2-D meshes, causal and full, GQA, packed documents whose segments cross
shard boundaries, zigzag and contiguous layouts; plus layout, balance and bad-input checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from lctx import ring_attention as ra

B, T, N, K, H = 2, 64, 4, 2, 8


@pytest.fixture(autouse=True)
def _fresh_jax_caches():
    """jax 0.10.2 reuses a cached input sharding from an earlier mesh over the same devices
    when differentiating a jitted shard_map (IndivisibleError naming the old mesh); a real run
    has one mesh per process, tests here build several, so each test starts clean."""
    jax.clear_caches()


def _mesh(shape):
    return jax.make_mesh(tuple(shape.values()), tuple(shape), devices=jax.devices()[:int(
        np.prod(list(shape.values())))], axis_types=(AxisType.Auto,) * len(shape))


def _dense(q_BTNH, k_BSKH, v_BSKH, seg_BT, pos_BT, causal):
    """Naive reference: repeat K/V to every query head, full score matrix, fp32 softmax."""
    g = q_BTNH.shape[2] // k_BSKH.shape[2]
    k_BSNH, v_BSNH = (jnp.repeat(x, g, axis=2) for x in (k_BSKH, v_BSKH))
    s_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH) * H**-0.5
    ok_BTS = seg_BT[:, :, None] == seg_BT[:, None, :]
    if causal:
        ok_BTS &= pos_BT[:, :, None] >= pos_BT[:, None, :]
    p_BNTS = jax.nn.softmax(jnp.where(ok_BTS[:, None], s_BNTS, -jnp.inf), axis=-1)
    return jnp.einsum("bnts,bsnh->btnh", p_BNTS, v_BSNH)


def _inputs(seed=0):
    """Rank-coded inputs: every token's q/k/v carry its absolute index, so a token landing on
    the wrong device or slot changes the result. Packed documents cross shard boundaries
    (8 tokens per shard) and restart their positions; the tail is padding (segment 0)."""
    r = np.random.default_rng(seed)
    idx_T = np.arange(T, dtype=np.float32) / T
    q, k, v = (r.normal(size=s).astype(np.float32) for s in
               ((B, T, N, H), (B, T, K, H), (B, T, K, H)))
    q[..., 0] += idx_T[None, :, None]
    k[..., 1] -= idx_T[None, :, None]
    v[..., 0] = idx_T[None, :, None] * 10
    lens = [[13, 30, 9, 12], [5, 40, 19, 0]]  # row 1 has no padding
    seg, pos = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for b, ls in enumerate(lens):
        start = 0
        for i, n in enumerate(ls[:3] + [T - sum(ls[:3])]):
            seg[b, start:start + n] = (i + 1) if i < 3 or ls[3] == 0 else 0
            pos[b, start:start + n] = np.arange(n)
            start += n
    # Arbitrary position ids: row 1 repeats position 33 (tokens 33 and 34, across a block
    # boundary), so a block skip that is off by one at equal positions shows.
    pos[1] = np.arange(T) - (np.arange(T) >= 34)
    return tuple(map(jnp.asarray, (q, k, v, seg, pos)))


MESHES = {"ctx8": {"context": 8}, "fsdp2_ctx4": {"fsdp": 2, "context": 4},
          "ctx4_tensor2": {"context": 4, "tensor": 2}}


# The fast set covers every mesh, both layouts and both maskings; the rest of the cross
# product runs under the slow marker.
FAST = {("ctx8", True, "zigzag"), ("ctx8", False, "contiguous"), ("ctx8", True, "contiguous"),
        ("fsdp2_ctx4", True, "zigzag"), ("ctx4_tensor2", False, "zigzag")}
CASES = [pytest.param(m, c, l, marks=() if (m, c, l) in FAST else pytest.mark.slow)
         for m in sorted(MESHES) for c in (True, False) for l in ("zigzag", "contiguous")]


@pytest.mark.parametrize("mesh_name,causal,layout", CASES)
def test_ring_equals_dense(mesh_name, causal, layout):
    mesh = _mesh(MESHES[mesh_name])
    c = mesh.shape["context"]
    q, k, v, seg, pos = _inputs()
    perm = ra.layout_indices(layout, T, c)
    inv = ra.inverse_indices(perm)
    w_BTNH = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, N, H)), jnp.float32)

    @jax.jit
    def ring(q, k, v):
        # Layout applied to tokens, positions and segment ids together; undone on the output.
        s, p = seg[:, perm], pos[:, perm]
        out = ra.ring_attention(q[:, perm], k[:, perm], v[:, perm], s, s, p, p, causal=causal,
                                scale=H**-0.5, mesh=mesh, block=2, layout=layout)
        return out[:, inv]

    dense = jax.jit(lambda q, k, v: _dense(q, k, v, seg, pos, causal))
    np.testing.assert_allclose(ring(q, k, v), dense(q, k, v), atol=1e-5, rtol=0)
    loss = lambda f: lambda *a: (f(*a) * w_BTNH).sum()
    g_ring = jax.grad(loss(ring), (0, 1, 2))(q, k, v)
    g_dense = jax.grad(loss(dense), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g_ring, g_dense):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=f"d{name}")


def test_no_gqa_and_default_block():
    mesh = _mesh({"context": 8})
    q, k, v, seg, pos = _inputs(seed=3)
    k, v = (jnp.concatenate([x, x[..., ::-1, :]], axis=2) for x in (k, v))  # K = N
    perm, inv = ra.zigzag_indices(T, 8), ra.inverse_indices(ra.zigzag_indices(T, 8))
    out = ra.ring_attention(q[:, perm], k[:, perm], v[:, perm], seg[:, perm], seg[:, perm],
                            pos[:, perm], pos[:, perm], causal=True, scale=H**-0.5, mesh=mesh)
    np.testing.assert_allclose(out[:, inv], _dense(q, k, v, seg, pos, True), atol=1e-5)


def test_zigzag_indices_layout():
    perm = ra.zigzag_indices(32, 4)
    assert sorted(perm) == list(range(32))
    chunks = perm.reshape(4, 2, 4)[:, :, 0] // 4  # first token of each half of each shard
    assert chunks.tolist() == [[0, 7], [1, 6], [2, 5], [3, 4]]
    x = np.arange(32) * 3
    np.testing.assert_array_equal(x[perm][ra.inverse_indices(perm)], x)
    np.testing.assert_array_equal(ra.contiguous_indices(32, 4), np.arange(32))
    with pytest.raises(ValueError, match="seq_len=30, n_shards=4"):
        ra.zigzag_indices(30, 4)


def test_zigzag_balances_causal_work():
    """Computed block pairs per device: zigzag within 10%, contiguous far apart."""
    t = 256
    mesh = _mesh({"context": 8})
    z = jnp.zeros((1, t, 1, 4), jnp.float32)
    seg, pos = jnp.ones((1, t), jnp.int32), jnp.arange(t, dtype=jnp.int32)[None]
    counts = {}
    for layout in ("zigzag", "contiguous"):
        p = pos[:, ra.layout_indices(layout, t, 8)]
        counts[layout] = ra.ring_block_counts(z, z, z, seg, seg, p, p, causal=True, scale=1.0,
                                              mesh=mesh, block=4, layout=layout)[0]
    zig, cont = counts["zigzag"], counts["contiguous"]
    print("computed blocks per device  zigzag:", zig, " contiguous:", cont)
    assert zig.max() <= 1.1 * zig.min()
    assert cont.max() >= 5 * cont.min()
    # Causal skipping really skips: about half of the 8 x 8 x 8 x 8 block pairs.
    assert zig.sum() < 0.6 * 8 ** 4 and zig.sum() == cont.sum()


def test_bad_inputs_name_the_numbers():
    mesh = _mesh({"context": 8})
    q, k, v, seg, pos = _inputs()
    kw = dict(causal=True, scale=1.0, mesh=mesh)
    with pytest.raises(ValueError, match=r"sequence length 64 is not divisible by 128 = 2 x "
                                         r"context size 8 x block 8"):
        ra.ring_attention(q, k, v, seg, seg, pos, pos, block=8, **kw)
    with pytest.raises(ValueError, match="kv heads K=2 are not divisible by .* size 4"):
        m = _mesh({"context": 2, "tensor": 4})
        ra.ring_attention(q, k, v, seg, seg, pos, pos, causal=True, scale=1.0, mesh=m)
    with pytest.raises(ValueError, match="query heads N=4 must be a multiple of kv heads K=3"):
        k3 = jnp.zeros((B, T, 3, H))
        ra.ring_attention(q, k3, k3, seg, seg, pos, pos, **kw)
    with pytest.raises(ValueError, match="context axis 'seq'"):
        ra.ring_attention(q, k, v, seg, seg, pos, pos, axis_name="seq", **kw)
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="kernel='cudnn' needs an NVIDIA GPU"):
            ra.ring_attention(q, k, v, seg, seg, pos, pos, kernel="cudnn", **kw)


def _layer_scan_temp_bytes(t):
    """Per-device scratch of grad through a 2-layer `lax.scan` with loop-invariant ids."""
    mesh = _mesh({"context": 8})
    seg_BT, pos_BT = jnp.ones((1, t), jnp.int32), jnp.arange(t)[None]

    def layer(x_BTNH, w):
        q_BTNH = x_BTNH * w
        kv_BTKH = q_BTNH[:, :, :1]
        return ra.ring_attention(q_BTNH, kv_BTKH, kv_BTKH, seg_BT, seg_BT, pos_BT, pos_BT,
                                 causal=True, scale=0.25, mesh=mesh, block=64,
                                 layout="contiguous"), None

    loss = lambda x, ws: jax.lax.scan(layer, x, ws)[0].sum()
    compiled = jax.jit(jax.grad(loss)).lower(jnp.ones((1, t, 2, 16)), jnp.ones((2,))).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_ring_memory_linear_under_layer_scan():
    """Regression: scan linearize used to hoist the per-block masks out of the layer loop,
    stacked over all block pairs (O(T^2); 2x tokens gave ~3.9x memory)."""
    small, large = _layer_scan_temp_bytes(1024), _layer_scan_temp_bytes(2048)
    assert large < 2.5 * small, (small, large)


@pytest.fixture
def cudnn_twin(monkeypatch):
    """Runs the 'cudnn' block kernel's own code on CPU: `jax.nn.dot_product_attention` is
    forced to implementation='xla', which returns exactly what the cuDNN path returns with
    `return_residual=True` (logsumexp [B, Q, N] in the input dtype)."""
    real = jax.nn.dot_product_attention

    def twin(*a, implementation=None, **kw):
        assert implementation == "cudnn"
        return real(*a, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", twin)
    monkeypatch.setattr(ra, "_check_cudnn", lambda: None)


@pytest.mark.parametrize("kernel", sorted(ra.BLOCK_KERNELS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_block_kernel_layout_contract(kernel, dtype, cudnn_twin):
    """Every block kernel returns (out_BQKGH, lse_BKGQ), both float32, equal to the fp32
    reference; a query with no allowed key gives out 0 and lse -inf."""
    q, k, v, seg, pos = _inputs(seed=5)
    q, k, v = (x[:1, :16].astype(dtype) for x in (q, k, v))
    seg, pos = seg[:1, :16], pos[:1, :16]
    q_seg = seg.at[:, :2].set(9)  # two queries whose segment has no key
    allowed_BQR = (q_seg[:, :, None] == seg[:, None]) & (pos[:, :, None] >= pos[:, None])
    q_BQKGH = q.reshape(1, 16, K, N // K, H)
    out, lse = jax.jit(ra.BLOCK_KERNELS[kernel], static_argnums=4)(q_BQKGH, k, v, allowed_BQR,
                                                                   H**-0.5)
    from lctx.attention import block_attend
    f32 = lambda x: x.astype(jnp.float32)
    ref_out, ref_lse = block_attend(f32(q), f32(k), f32(v), q_seg, seg, pos, pos, causal=True,
                                    scale=H**-0.5)
    assert out.dtype == lse.dtype == jnp.float32
    assert out.shape == q_BQKGH.shape and lse.shape == (1, K, N // K, 16)
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(out.reshape(ref_out.shape), ref_out, atol=tol, rtol=0)
    np.testing.assert_allclose(lse.reshape(ref_lse.shape), ref_lse, atol=tol, rtol=0)
    assert np.all(np.asarray(lse)[..., :2] == -np.inf) and not np.asarray(out)[:, :2].any()


@pytest.mark.parametrize("contexts", [1, 8])
def test_ring_cudnn_kernel_equals_dense(contexts, cudnn_twin):
    """The ring with the 'cudnn' kernel (run through its CPU twin) equals dense attention in
    values and gradients, on a one-device ring and on eight."""
    mesh = _mesh({"context": contexts})
    q, k, v, seg, pos = _inputs(seed=6)
    perm = ra.zigzag_indices(T, contexts)
    inv = ra.inverse_indices(perm)

    def ring(q, k, v):
        s, p = seg[:, perm], pos[:, perm]
        return ra.ring_attention(q[:, perm], k[:, perm], v[:, perm], s, s, p, p, causal=True,
                                 scale=H**-0.5, mesh=mesh, block=4, kernel="cudnn")[:, inv]

    dense = lambda q, k, v: _dense(q, k, v, seg, pos, True)
    np.testing.assert_allclose(jax.jit(ring)(q, k, v), dense(q, k, v), atol=1e-5, rtol=0)
    w_BTNH = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, N, H)), jnp.float32)
    loss = lambda f: lambda *a: (f(*a) * w_BTNH).sum()
    for a, b in zip(jax.jit(jax.grad(loss(ring), (0, 1, 2)))(q, k, v),
                    jax.grad(loss(dense), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
