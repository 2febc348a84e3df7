"""GPU benchmark: lctx's attention kernels and 8B-shaped training layers against the matmul
ceiling, with correctness against an fp32 reference, in one run (issue 17).

Run on one NVIDIA GPU, from the repository root (about 5 minutes on an H200, compiles
included; it stops starting new work at --budget_s):

    python3 bench/gpu_bench.py --out "$OUT"

On a machine without a GPU the same code runs at smoke size (the cuDNN kernel through its XLA
twin, a tiny model), ~1 minute on 2 cores:

    python3 bench/gpu_bench.py --smoke --out /tmp/gpu_bench

Sections, each isolated (a failure is recorded and the run goes on), results rewritten to
OUT/gpu_bench.json after each:
  ceiling   bf16 8192^3 matmul, min time of 20 (the TFLOP/s every % divides by)
  check     relative error vs an fp32 dense reference, values and gradients, of: lctx XLA
            blockwise; lctx cuDNN (lctx.cudnn_attention) with one document per row and with
            8 packed documents; its logsumexp (cuDNN's stats layout, plain and packed); a
            2-chunk ring built from its blocks with the backward from the GLOBAL logsumexp;
            lctx ring_attention on a 1-device ring with kernel xla vs cudnn (issue 11)
  kernels   fwd and fwd+bwd TFLOP/s at T = 8K, 32K, 128K (N=32, K=8, H=128, bf16, causal):
            XLA blockwise, lctx cuDNN (1 document; 8 packed documents), plain cuDNN causal
            (jax.nn.dot_product_attention, the upper bound), the 1-device ring at 8K
  train     a training step (AdamW, remat full, bf16, T=32K) of Llama-3.1-8B-shaped layers;
            per-layer time = (step(4 layers) - step(2 layers)) / 2, MFU against the ceiling
  flags     the 4-layer step in a subprocess per candidate XLA flag (flags are read at start)

FLOPs: causal attention forward = 2 * N * H * sum(document_length^2) (half the square per
document); fwd+bwd = 3.5 x fwd (FlashAttention's count, 5 backward matmuls vs 2 forward).
Model FLOPs of a layer = 6 * matmul params * T + 3 * attention forward (PaLM's convention,
as lctx.trainer.flops_per_token counts).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Grow GPU memory on demand: the flag sweep's child processes share the device with this one.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from lctx import attention as attn_lib  # noqa: E402
from lctx import blocks  # noqa: E402
from lctx import cudnn_attention as cda  # noqa: E402
from lctx import loss as loss_lib  # noqa: E402
from lctx import model as model_lib  # noqa: E402
from lctx import sharding  # noqa: E402

GPU = any(d.platform == "gpu" for d in jax.devices())
if not GPU:  # smoke: the 'cudnn' kernel runs its own code through its XLA twin
    blocks.KERNELS["cudnn"] = blocks._cudnn_kernel("xla")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Candidate flags on one GPU, in priority order; collective flags need several GPUs.
FLAGS = [("baseline", ""), ("h100_env.sh", None),
         ("no_triton_gemm", "--xla_gpu_enable_triton_gemm=false"),
         ("latency_hiding", "--xla_gpu_enable_latency_hiding_scheduler=true"),
         ("no_command_buffer", "--xla_gpu_enable_command_buffer="),
         ("while_double_buffer", "--xla_gpu_enable_while_loop_double_buffering=true")]


def launcher_flags() -> str:
    """XLA_FLAGS exactly as launch/h100_env.sh sets them (from an empty XLA_FLAGS)."""
    cmd = f"unset XLA_FLAGS; source {ROOT}/launch/h100_env.sh >/dev/null; printf %s \"$XLA_FLAGS\""
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                          check=True).stdout.strip()


class Sizes:
    """GPU sizes, or the smoke sizes that exercise the same code on CPU."""

    def __init__(self, smoke: bool, quick: bool = False):
        self.smoke, self.quick = smoke, quick and smoke  # quick: the CI subset of the smoke
        self.backend = "xla" if smoke else "cudnn"  # lctx.cudnn_attention backend
        self.dtype = jnp.bfloat16
        self.n, self.k, self.h = (4, 2, 32) if smoke else (32, 8, 128)
        self.mm = 256 if smoke else 8192
        self.check_t = 256 if smoke else 4096
        self.kernel_ts = (256,) if smoke else (8192, 32768, 131072)
        self.xla_max_t = 256 if smoke else 32768  # 128K blockwise: 16x the 32K time, projected
        self.ring_t = 256 if smoke else 8192
        self.block = 64 if smoke else 1024
        self.train_t = 256 if smoke else 32768
        self.layers = (1, 2) if smoke else (2, 4)
        self.train_kernels = (("cudnn", 1), ("blockwise", 1), ("cudnn", 8))[:1 if self.quick else 3]
        self.model = dict(vocab_size=512, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32,
                          mlp_dim=256) if smoke else dict(
            vocab_size=128256, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
            mlp_dim=14336)


class Run:
    """Results, deadline, progress log and the atomically rewritten JSON."""

    def __init__(self, out: str, budget_s: float):
        self.t0, self.budget, self.out, self.res = time.time(), budget_s, out, {}
        os.makedirs(out, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def log(self, *a):
        print(f"[{time.time() - self.t0:6.1f}s]", *a, flush=True)

    def put(self, section, name, value):
        self.res.setdefault(section, {})[name] = value
        self.log(section, name, json.dumps(value, default=str)[:300])
        tmp = os.path.join(self.out, "gpu_bench.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.res, f, indent=1, default=str)
        os.replace(tmp, os.path.join(self.out, "gpu_bench.json"))

    def guarded(self, section, name, fn, need_s=0.0):
        """Run fn() -> dict; record it, or its error, or a skip when time is short."""
        if self.left() < need_s:
            return self.put(section, name, {"skipped": f"under {need_s:.0f} s left"})
        try:
            self.put(section, name, fn())
        except Exception as e:  # noqa: BLE001 - one failure must not lose the rest
            traceback.print_exc()
            self.put(section, name, {"error": repr(e)[:800]})


def timeit(fn, *args, reps=5):
    """(median s, min s, first-call s incl. compile): host clock around block_until_ready,
    several calls per sample when one call is short (launch overhead)."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    inner = int(min(20, max(1, 0.02 // max(time.perf_counter() - t, 1e-6))))
    ts = []
    for _ in range(reps if first < 5 else 2):
        t = time.perf_counter()
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        ts.append((time.perf_counter() - t) / inner)
    return statistics.median(ts), min(ts), first


# --------------------------------------------------------------------------- inputs
def doc_lengths(t, docs, seed=0, pad=0):
    """`docs` unequal document lengths (multiples of t / 512) filling t - pad tokens."""
    if docs == 1:
        return [t - pad]
    g = max(1, t // 512)
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, (t - pad) // g), docs - 1,
                                                      replace=False)) * g
    return list(np.diff(np.r_[0, cuts, t - pad]))


def ids(t, lengths):
    """[1, t] segment ids 1..D (padding 0 after them) and positions restarting per document."""
    seg, pos, s = np.zeros(t, np.int32), np.zeros(t, np.int32), 0
    for d, n in enumerate(lengths):
        seg[s:s + n], pos[s:s + n], s = d + 1, np.arange(n), s + n
    return jnp.asarray(seg)[None], jnp.asarray(pos)[None]


def qkv(sz, t, seed):
    ks = jax.random.split(jax.random.key(seed), 4)
    shapes = ((1, t, sz.n, sz.h), (1, t, sz.k, sz.h), (1, t, sz.k, sz.h), (1, t, sz.n, sz.h))
    return tuple(jax.random.normal(key, s, sz.dtype) for key, s in zip(ks, shapes))


def attn_flops(sz, lengths):
    return 2.0 * sz.n * sz.h * float(np.sum(np.square(np.asarray(lengths, np.float64))))


def kernels(sz, mesh=None):
    """name -> attend(q, k, v, seg, pos): every kernel the bench compares."""
    scale = sz.h ** -0.5
    c = dict(causal=True, scale=scale)
    out = {
        "xla_blockwise": lambda q, k, v, s, p: attn_lib.blockwise_attention(
            q, k, v, s, s, p, p, block_q=sz.block, block_k=sz.block, **c),
        "cudnn_lctx_m1": lambda q, k, v, s, p: cda.cudnn_attention(
            q, k, v, s, s, p, p, max_docs=1, backend=sz.backend, **c),
        "cudnn_lctx": lambda q, k, v, s, p: attn_lib.blockwise_attention(
            q, k, v, s, s, p, p, kernel="cudnn", **c),  # attn.kernel='cudnn': one fused call
        "cudnn_plain_causal": lambda q, k, v, s, p: jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=True, implementation="cudnn" if GPU else "xla"),
    }
    if mesh is not None:
        from lctx import ring_attention as ra
        for kern in ("xla", "cudnn"):  # blocks of half the row: 2 causal + 1 full pair
            out[f"ring1_{kern}"] = functools.partial(
                lambda q, k, v, s, p, kern: ra.ring_attention(
                    q, k, v, s, s, p, p, mesh=mesh, kernel=kern, block_q=q.shape[1] // 2,
                    block_k=q.shape[1] // 2, **c), kern=kern)
    return out


def reference(q, k, v, seg, pos, scale):
    """fp32 dense attention, padding rows 0 (lctx.cudnn_attention's padding contract)."""
    f = lambda x: x.astype(jnp.float32)  # noqa: E731
    return attn_lib.block_attend(f(q), f(k), f(v), jnp.where(seg > 0, seg, -1),
                                 jnp.where(seg > 0, seg, -2), pos, pos, causal=True,
                                 scale=scale)


def rel(a, b, rows=None):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if rows is not None:
        a, b = a * rows, b * rows
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# --------------------------------------------------------------------------- sections
def ceiling(run, sz):
    a, b = (jax.random.normal(jax.random.key(i), (2, sz.mm, sz.mm), sz.dtype) for i in (0, 1))
    mm = jax.jit(lambda x, y: x @ y)
    ts = []
    jax.block_until_ready(mm(a[0], b[0]))
    for i in range(20):  # alternate two input sets (each 128 MiB > L2)
        t = time.perf_counter()
        jax.block_until_ready(mm(a[i % 2], b[i % 2]))
        ts.append(time.perf_counter() - t)
    flop = 2.0 * sz.mm ** 3
    return {"tflops": flop / min(ts) / 1e12, "tflops_median": flop / statistics.median(ts) / 1e12}


def check_kernels(run, sz, mesh):
    """Values and q/k/v gradients of every kernel vs the fp32 reference at T = check_t."""
    t, scale = sz.check_t, sz.h ** -0.5
    layouts = {"1doc+pad": doc_lengths(t, 1, pad=t // 16),
               "8docs+pad": doc_lengths(t, 8, seed=1, pad=t // 16)}
    for lname, lengths in layouts.items():
        if sz.quick and lname == "1doc+pad":
            continue
        seg, pos = ids(t, lengths)
        q, k, v, w = qkv(sz, t, seed=len(lname))
        rows = (seg > 0)[..., None, None].astype(jnp.float32)
        w = w * rows.astype(w.dtype)  # the loss never weights padding rows
        ref_fn = lambda q, k, v: reference(q, k, v, seg, pos, scale)[0]  # noqa: E731
        ref_out, ref_vjp = jax.vjp(ref_fn, q, k, v)
        ref_g = ref_vjp(w.astype(jnp.float32))
        for name, fn in kernels(sz, mesh).items():
            if (name == "cudnn_plain_causal" or (name == "cudnn_lctx_m1" and lname != "1doc+pad")
                    or (name.startswith("ring1") and lname != "8docs+pad")):
                continue  # plain causal has no ids (own check below); m1 needs 1 document

            def one(fn=fn):
                def fwd_bwd(q, k, v, w):
                    out, vjp = jax.vjp(lambda *a: fn(*a, seg, pos), q, k, v)
                    return out, vjp(w)
                out, g = jax.jit(fwd_bwd)(q, k, v, w)
                return errors(out, g, ref_out, ref_g, rows)
            run.guarded("check", f"{name}@{lname}", one, need_s=20)
        run.guarded("check", f"cudnn_lse@{lname}", functools.partial(
            check_lse, sz, q, k, v, seg, pos, 1 if lname.startswith("1doc") else 16))
        run.guarded("check", f"cudnn_ring_of_blocks@{lname}", functools.partial(
            check_ring_of_blocks, sz, q, k, v, w, seg, pos, ref_out, ref_g))

    def plain():
        q, k, v, w = qkv(sz, t, seed=7)
        ones, ar = jnp.ones((1, t), jnp.int32), jnp.arange(t, dtype=jnp.int32)[None]
        out = jax.jit(kernels(sz)["cudnn_plain_causal"])(q, k, v, ones, ar)
        err = rel(out, reference(q, k, v, ones, ar, scale)[0])
        return {"out": err, "ok": err < 2e-2}
    run.guarded("check", "cudnn_plain_causal@1doc", plain)


def errors(out, grads, ref_out, ref_grads, rows):
    """Relative errors of the output (non-padding rows) and of dq, dk, dv; ok if all < 2e-2
    (bf16 operands land at 1e-3..1e-2; NaN never passes)."""
    errs = {"out": rel(out, ref_out, rows)}
    errs.update({f"d{n}": rel(a, b) for n, a, b in zip("qkv", grads, ref_grads)})
    errs["ok"] = bool(all(e < 2e-2 for e in errs.values()))
    return errs


def check_lse(sz, q, k, v, seg, pos, max_docs):
    """The kernel's logsumexp (cuDNN stats, plain or packed layout) vs the reference's."""
    out, lse = jax.jit(lambda q, k, v: cda.block_fwd(
        q, k, v, seg, seg, pos, pos, kind="causal", scale=sz.h ** -0.5, max_docs=max_docs,
        backend=sz.backend))(q, k, v)
    ref_lse = reference(q, k, v, seg, pos, sz.h ** -0.5)[1]
    fin = jnp.isfinite(ref_lse)
    return {"max_docs": max_docs, "lse_rel": rel(jnp.where(fin, lse, 0), jnp.where(fin, ref_lse, 0)),
            "inf_pattern_equal": bool(jnp.all(jnp.isinf(lse) == ~fin)),
            "lse_dtype": str(lse.dtype), "lse_shape": list(lse.shape),
            "ok": bool(rel(jnp.where(fin, lse, 0), jnp.where(fin, ref_lse, 0)) < 1e-2
                       and jnp.all(jnp.isinf(lse) == ~fin) and lse.dtype == jnp.float32)}


def check_ring_of_blocks(sz, q, k, v, w, seg, pos, ref_out, ref_g):
    """Two chunks as a causal ring: causal diagonal blocks, a 'full' off-diagonal block,
    logsumexp merge; backward of each block from the GLOBAL out / logsumexp (cuDNN's backward
    primitive fed statistics it did not compute)."""
    half, kw = sz.check_t // 2, dict(scale=sz.h ** -0.5, backend=sz.backend)
    cut = lambda x, c: x[:, c * half:(c + 1) * half]  # noqa: E731
    blocks = ((0, 0, "causal"), (1, 1, "causal"), (1, 0, "full"))

    def fwd_bwd(q, k, v, w):
        parts = {a: [] for a in (0, 1)}
        for a, c, kind in blocks:
            parts[a].append(cda.block_fwd(cut(q, a), cut(k, c), cut(v, c), cut(seg, a),
                                          cut(seg, c), cut(pos, a), cut(pos, c), kind=kind, **kw))
        outs, lses = {}, {}
        for a, ps in parts.items():
            lse = ps[0][1] if len(ps) == 1 else jnp.logaddexp(ps[0][1], ps[1][1])
            safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
            outs[a] = sum(o.astype(jnp.float32) * jnp.exp(l - safe).transpose(0, 2, 1)[..., None]
                          for o, l in ps)
            lses[a] = lse
        grads = [jnp.zeros(x.shape, jnp.float32) for x in (q, k, v)]
        for a, c, kind in blocks:
            g = cda.block_bwd(cut(q, a), cut(k, c), cut(v, c), cut(seg, a), cut(seg, c),
                              cut(pos, a), cut(pos, c), outs[a], lses[a], cut(w, a), kind=kind,
                              **kw)
            for i, (idx, gi) in enumerate(zip((a, c, c), g)):
                grads[i] = grads[i].at[:, idx * half:(idx + 1) * half].add(gi.astype(jnp.float32))
        return jnp.concatenate([outs[0], outs[1]], 1), grads

    out, g = jax.jit(fwd_bwd)(q, k, v, w)
    return errors(out, g, ref_out, ref_g, (seg > 0)[..., None, None].astype(jnp.float32))


def kernel_items(sz):
    """(kernel, documents, T) in priority order: the budget skips from the end."""
    ts = sz.kernel_ts
    mid = ts[len(ts) // 2]
    core = ("cudnn_lctx_m1", 1), ("cudnn_lctx", 8), ("cudnn_plain_causal", 1), ("xla_blockwise", 1)
    items = [(n, d, t) for t in [mid] + [x for x in ts if x != mid] for n, d in core
             if n != "xla_blockwise" or t <= sz.xla_max_t]
    items += [("cudnn_lctx", 1, mid), ("ring1_xla", 1, sz.ring_t), ("ring1_cudnn", 1, sz.ring_t)]
    if sz.quick:
        items = [i for i in items if i[0] in ("cudnn_lctx", "cudnn_plain_causal")]
    return items


def kernel_speed(run, sz, mesh):
    """fwd and fwd+bwd TFLOP/s of each kernel at each T."""
    fns = kernels(sz, mesh)
    for name, docs, t in kernel_items(sz):
        if name not in fns:
            continue
        lengths = doc_lengths(t, docs, seed=2)
        seg, pos = ids(t, lengths)

        def one(fn=fns[name], t=t, lengths=lengths, seg=seg, pos=pos):
            q, k, v, do = qkv(sz, t, seed=t % 97)
            f = jax.jit(lambda q, k, v: fn(q, k, v, seg, pos))
            fb = jax.jit(lambda q, k, v, do: jax.vjp(lambda *a: fn(*a, seg, pos), q, k, v)[1](do))
            flop = attn_flops(sz, lengths)
            m1, _, c1 = timeit(f, q, k, v)
            m2, _, c2 = timeit(fb, q, k, v, do)
            return {"docs": len(lengths), "fwd_ms": m1 * 1e3, "fwd_tflops": flop / m1 / 1e12,
                    "fwdbwd_ms": m2 * 1e3, "fwdbwd_tflops": 3.5 * flop / m2 / 1e12,
                    "compile_s": [c1, c2]}
        label = name + (f"_{docs}docs" if docs > 1 else "")
        run.guarded("kernels", f"{label}@T={t}", one, need_s=12 if t < 100_000 else 25)


def layer_flops(cfg, t, lengths):
    p = cfg.d_model * cfg.head_dim * 2 * (cfg.n_heads + cfg.n_kv_heads) + 3 * cfg.d_model * cfg.mlp_dim
    return 6.0 * p * t + 3 * 2.0 * cfg.n_heads * cfg.head_dim * float(np.sum(np.square(lengths)))


def train_step_time(sz, impl, layers, docs=1, reps=3):
    """Median seconds of one jitted AdamW step of `layers` 8B-shaped layers at T=train_t;
    impl 'cudnn' is attn.impl='blockwise' with attn.kernel='cudnn' (lctx.cudnn_attention,
    one fused call), 'blockwise' the XLA block kernel."""
    cfg = model_lib.ModelConfig(**sz.model, n_layers=layers, max_seq_len=sz.train_t,
                                attn_impl="blockwise", block_q=sz.block, block_k=sz.block,
                                attn_kernel="cudnn" if impl == "cudnn" else "xla",
                                dtype="bfloat16", param_dtype="float32", remat="full")
    model = model_lib.Llama(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-5)

    def loss(params, batch):
        m = nnx.merge(graphdef, params)
        hid = m(batch["tokens"], batch["positions"], batch["segment_ids"])
        return loss_lib.chunked_cross_entropy(hid, m.unembedding(), batch["targets"],
                                              batch["mask"], chunk=1024)[0]

    @jax.jit
    def step(params, opt, batch):
        lval, g = jax.value_and_grad(loss)(params, batch)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, lval

    t = sz.train_t
    lengths = doc_lengths(t, docs, seed=3)
    seg, pos = ids(t, lengths)
    toks = jax.random.randint(jax.random.key(1), (1, t + 1), 0, cfg.vocab_size)
    batch = {"tokens": toks[:, :-1], "targets": toks[:, 1:], "positions": pos,
             "segment_ids": seg, "mask": jnp.ones((1, t), jnp.float32)}
    opt = tx.init(params)
    med, mn, first = timeit(lambda: step(params, opt, batch), reps=reps)
    return {"step_s": med, "step_min_s": mn, "compile_s": first, "lengths": lengths,
            "layer_model_tflop": layer_flops(cfg, t, lengths) / 1e12}


def train(run, sz, ceil):
    for impl, docs in sz.train_kernels:
        name = f"{impl}{'' if docs == 1 else f'_{docs}docs'}"

        def one(impl=impl, docs=docs):
            small, big = (train_step_time(sz, impl, n, docs) for n in sz.layers)
            per_layer = (big["step_s"] - small["step_s"]) / (sz.layers[1] - sz.layers[0])
            flop = small["layer_model_tflop"] * 1e12
            return {"per_layer_s": per_layer, "per_layer_mfu": flop / per_layer / (ceil * 1e12)
                    if ceil else None, f"step_s_L{sz.layers[0]}": small["step_s"],
                    f"step_s_L{sz.layers[1]}": big["step_s"],
                    "compile_s": [small["compile_s"], big["compile_s"]],
                    "layer_model_tflop": small["layer_model_tflop"]}
        run.guarded("train", name, one, need_s=35 if impl == "cudnn" else 50)


def flags(run, sz):
    """The 4-layer cuDNN step in one subprocess per flag set (XLA reads flags at start)."""
    env0 = os.environ.get("XLA_FLAGS", "")
    for name, flag in FLAGS if GPU else FLAGS[1 if sz.quick else 0:2]:
        def one(flag=flag):
            flag = launcher_flags() if flag is None else flag
            # On CPU only the baseline runs the child: GPU flags would abort a CPU XLA.
            if not GPU and flag:
                return {"flag": flag, "skipped": "GPU flags; parsed from the launcher only"}
            env = dict(os.environ, XLA_FLAGS=f"{env0} {flag}".strip())
            cmd = [sys.executable, os.path.abspath(__file__), "--child_train",
                   "--layers", str(sz.layers[1])] + (["--smoke"] if sz.smoke else [])
            t0 = time.time()
            p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                               timeout=max(20, min(120, run.left() + 30)))
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("CHILD ")]
            if p.returncode or not line:
                return {"flag": flag, "error": (p.stderr or p.stdout)[-600:], "rc": p.returncode}
            r = json.loads(line[-1][6:])
            r.update(flag=flag, wall_s=time.time() - t0)
            base = run.res.get("flags", {}).get("baseline", {}).get("step_s")
            if base:
                r["vs_baseline"] = r["step_s"] / base
            return r
        run.guarded("flags", name, one, need_s=35 if GPU else 0)


def table(run, ceil):
    """The short table printed last (the device reply carries only the output's end)."""
    res, lines, ceil = run.res, [], ceil or float("nan")
    pick = lambda sec: {n: r for n, r in res.get(sec, {}).items() if not n.startswith("_")}  # noqa: E731
    lines.append(f"== gpu_bench: {res.get('env', {}).get('device')}, ceiling "
                 f"{ceil:.0f} TFLOP/s, wall {time.time() - run.t0:.0f} s ==")
    lines.append(f"{'kernel@T':34}{'fwd TF/s':>10}{'%':>6}{'f+b TF/s':>10}{'%':>6}")
    for name, r in pick("kernels").items():
        lines.append(f"{name:34}" + (
            f"{r['fwd_tflops']:10.1f}{100 * r['fwd_tflops'] / ceil:6.1f}"
            f"{r['fwdbwd_tflops']:10.1f}{100 * r['fwdbwd_tflops'] / ceil:6.1f}"
            if "fwd_tflops" in r else str(r)[:70]))
    lines.append(f"{'train: 8B layers, remat full':34}{'layer s':>10}{'MFU':>8}{'step s':>10}")
    for name, r in pick("train").items():
        lines.append(f"{name:34}" + (
            f"{r['per_layer_s']:10.3f}{100 * (r['per_layer_mfu'] or 0):7.1f}%"
            f"{max(v for k, v in r.items() if k.startswith('step_s')):10.3f}"
            if "per_layer_s" in r else str(r)[:70]))
    for name, r in pick("flags").items():
        lines.append(f"flag {name:29}" + (f"{r['step_s']:10.3f} s  x{r.get('vs_baseline', 1):.3f}"
                                           if "step_s" in r else str(r)[:70]))
    for name, r in pick("check").items():
        lines.append(f"check {name:34}" + " ".join(
            f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            if k not in ("lse_dtype", "lse_shape"))[:100])
    bad = [n for n, r in pick("check").items() if not r.get("ok")]
    errs = [f"{s}/{n}" for s in res for n, r in res[s].items() if "error" in r]
    lines.append(f"checks failing: {bad or 'none'}; errors: {errs or 'none'}")
    print("\n".join(lines), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_bench"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (default without a GPU)")
    ap.add_argument("--quick", action="store_true", help="with --smoke: the CI subset")
    ap.add_argument("--budget_s", type=float, default=290.0,
                    help="seconds after which no new item starts (items skip when short)")
    ap.add_argument("--sections", default="ceiling,check,kernels,train,flags")
    ap.add_argument("--child_train", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sz = Sizes(args.smoke or not GPU, args.quick)
    if args.child_train:  # one step timing for the flag sweep
        print("CHILD " + json.dumps(train_step_time(sz, "cudnn", args.layers)), flush=True)
        return
    run = Run(args.out, args.budget_s)
    dev = jax.devices()[0]
    run.put("env", "device", getattr(dev, "device_kind", dev.platform))
    cudnn = None
    if GPU:
        from jax._src.cudnn import fused_attention_stablehlo as fa
        cudnn = fa.check_cudnn_version()
    run.put("env", "versions", {"jax": jax.__version__, "cudnn": cudnn, "smoke": sz.smoke,
                                "xla_flags": os.environ.get("XLA_FLAGS", "")})
    mesh = sharding.make_mesh({sharding.CONTEXT: 1}, devices=jax.devices()[:1])
    sections = args.sections.split(",")
    if "ceiling" in sections:
        run.guarded("ceiling", "matmul", lambda: ceiling(run, sz))
    ceil = run.res.get("ceiling", {}).get("matmul", {}).get("tflops")
    for name, fn in (("check", lambda: check_kernels(run, sz, mesh)),
                     ("kernels", lambda: kernel_speed(run, sz, mesh)),
                     ("train", lambda: train(run, sz, ceil)), ("flags", lambda: flags(run, sz))):
        if name in sections:
            run.log(f"--- {name} ({run.left():.0f} s of budget left)")
            run.guarded(name, "_section", lambda fn=fn: fn() or {"done": True})
    table(run, ceil)


if __name__ == "__main__":
    main()
