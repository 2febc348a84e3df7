r"""HF export size and time: the same model exported in bfloat16 (the default) and float32,
side by side in one run.

    python3 bench/export_bench.py [--d_model=512] [--n_layers=4] [--vocab=32000] [--out=DIR]

Prints, for one random Llama: the bytes on disk of `lctx.hf.export_hf(dtype=...)` for
bfloat16 and float32 (measured: file sizes of the written directories), their ratio, and
each export's wall time; then the same two sizes for Llama-3.1-8B computed from its tensor
shapes (analytic, labelled so). The exports are deleted afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GiB = 1 << 30


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d_model", type=int, default=512)
    ap.add_argument("--n_layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--out", default="", help="where to write the exports (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the exported directories")
    a = ap.parse_args(argv)
    import jax
    from flax import nnx

    from lctx import hf
    from lctx.model import Llama, ModelConfig
    d = a.d_model
    cfg = ModelConfig(vocab_size=a.vocab, d_model=d, n_layers=a.n_layers, n_heads=d // 64,
                      n_kv_heads=max(1, d // 128), head_dim=64, mlp_dim=d * 11 // 4)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    root = a.out or tempfile.mkdtemp(prefix="export_bench-")
    results = {}
    print(f"model: {n_params / 1e6:.1f}M params (d_model={d}, layers={a.n_layers}, "
          f"vocab={a.vocab}), exports in {root}")
    for dtype in ("bfloat16", "float32"):
        t0 = time.perf_counter()
        out = hf.export_hf(model, cfg, os.path.join(root, dtype), dtype=dtype)
        secs = time.perf_counter() - t0
        results[dtype] = dir_bytes(out)
        print(f"  {dtype:<9} {results[dtype] / 2**20:10.1f} MiB on disk   "
              f"{secs:6.2f} s   (measured)")
    ratio = results["bfloat16"] / results["float32"]
    print(f"  bfloat16 / float32 size: {ratio:.3f}")
    shapes = hf.hf_tensor_shapes(ModelConfig(vocab_size=128256, d_model=4096, n_layers=32,
                                             n_heads=32, n_kv_heads=8, head_dim=128,
                                             mlp_dim=14336))
    n8b = sum(math.prod(s) for s in shapes.values())
    print(f"Llama-3.1-8B ({n8b / 1e9:.2f}B params), ANALYTIC from its tensor shapes: "
          f"bfloat16 {n8b * 2 / GiB:.1f} GiB, float32 {n8b * 4 / GiB:.1f} GiB")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"ratio": ratio, **results}


if __name__ == "__main__":
    main()
