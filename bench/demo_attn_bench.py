"""Demo benchmark: training-step time of the demo's model, dense vs blockwise attention.

Run (CPU, ~2 min on 2 cores):

    python3 bench/demo_attn_bench.py [--lengths 384,768,1536] [--blocks 128,256] [--steps 4]

The model is the one `configs/demo.py` trains (same sizes, batch and stage lengths); the
step is `bench.model_bench`'s jitted AdamW step. For each length it prints the median step
time of dense attention (the baseline) and of blockwise attention with each block size,
measured side by side in this run, and the speed-up over dense. This measurement is why the
demo trains and evaluates with blockwise attention: on the 2-core CPU dense attention
materialises the [B, heads, T, T] scores and is memory-bound from ~768 tokens on.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.model_bench import make_batch, time_lctx  # noqa: E402
from configs import demo  # noqa: E402
from lctx import run as run_lib  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="384,768,1536", help="sequence lengths (tokens)")
    p.add_argument("--blocks", default="128,256", help="blockwise block sizes to time")
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting (median)")
    a = p.parse_args()
    cfg = demo.get_config()
    run = run_lib.Run(cfg, "runs/demo")
    stage = run.stage(run.stages[0])  # the model all stages share (RoPE aside)
    batch_size = int(cfg.data.batch_size)
    print(f"demo model: d_model={cfg.model.d_model} layers={cfg.model.n_layers} "
          f"batch={batch_size}; median step time over {a.steps} steps")
    print(f"{'T':>6} {'attention':<16} {'s/step':>8} {'tokens/s':>9} {'vs dense':>9}")
    for T in (int(x) for x in a.lengths.split(",")):
        base = dataclasses.replace(stage.model, max_seq_len=T)
        batch = make_batch(batch_size, T, base.vocab_size)
        dense_s, _ = time_lctx(dataclasses.replace(base, attn_impl="dense"), batch, a.steps)
        print(f"{T:>6} {'dense':<16} {dense_s:>8.3f} {batch_size * T / dense_s:>9.0f} "
              f"{1.0:>8.2f}x", flush=True)
        for b in (int(x) for x in a.blocks.split(",")):
            s, _ = time_lctx(dataclasses.replace(base, attn_impl="blockwise", block_q=b,
                                                 block_k=b), batch, a.steps)
            print(f"{T:>6} {f'blockwise {b}':<16} {s:>8.3f} {batch_size * T / s:>9.0f} "
                  f"{dense_s / s:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
