r"""Input pipeline throughput vs the train step's consumption, and packing efficiency.

    python3 bench/data_bench.py [--config=configs/demo.py] [--workdir=runs/data_bench] \
        [--batches=40] [--steps=5]

The data is a run's own, found through `lctx.run`: for the demo config (the default) its
data phases are built (or reused) in --workdir first, ~1 min on 2 cores; any other config
reads its stage's data paths and tokenizer. Measured side by side in one run on the first
stage:
  * data: records/s and tokens/s the grain pipeline delivers (packed and unpacked);
  * step: tokens/s the compiled train step consumes (compilation excluded);
  * ratio data/step: > 1 means the input pipeline keeps up with training on this machine;
  * packing efficiency: share of non-pad tokens per row, packed vs one document a row.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import tqdm  # noqa: E402

from lctx import data as data_lib  # noqa: E402
from lctx import run as run_lib  # noqa: E402
from lctx import sharding, step, trainer  # noqa: E402


def load_config(spec: str):
    """`path.py[:arg]` -> its get_config(arg)."""
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def run_of(cfg, workdir: str) -> run_lib.Run:
    """The run whose data is measured: the demo's data built in `workdir`, or the config's."""
    if "demo" in cfg:
        from demo import pipeline
        cfg = pipeline.prepare(cfg, workdir)
    return run_lib.Run(cfg, workdir)


def pipeline_rate(run: run_lib.Run, stage, pack: bool, batches: int) -> dict:
    d, stats = run.cfg.data, data_lib.Stats()
    it = iter(data_lib.make_dataset(stage.data_paths, run.render, seq_len=stage.seq_len,
                                    batch_size=d.batch_size, seed=d.seed, pack=pack,
                                    packing_bins=d.packing_bins, overlong=d.overlong,
                                    stats=stats, read_threads=d.read_threads,
                                    read_buffer=d.read_buffer))
    next(it)  # warm-up: opens the shards
    docs0, nonpad, total = stats.documents, 0, 0
    t0 = time.perf_counter()
    for _ in tqdm.trange(batches, desc=f"data pack={pack}", leave=False):
        b = next(it)
        nonpad += int((b["segment_ids"] > 0).sum())
        total += b["segment_ids"].size
    dt = time.perf_counter() - t0
    return {"records_per_s": (stats.documents - docs0) / dt, "tokens_per_s": total / dt,
            "non_pad_per_s": nonpad / dt, "packing_efficiency": nonpad / total}


def step_rate(run: run_lib.Run, stage, steps: int) -> float:
    """Tokens/s of the stage's compiled train step on one fixed batch (from scratch)."""
    mesh = trainer.make_mesh(run)
    with sharding.use_mesh(mesh, run.rules):
        built = step.build_stage(run, stage, mesh)
        state, _ = trainer.restore(run, built, None, found=None)
        compiled = built.step_fn.lower(
            built.abstract, step.abstract_batch(built, run.cfg.data.batch_size)).compile()
        local = next(iter(trainer.stage_dataset(run, stage, mesh)))
        batch = {k: jax.make_array_from_process_local_data(built.batch_sharding, v)
                 for k, v in local.items()}
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in tqdm.trange(steps, desc="train step", leave=False):
            state, m = compiled(state, batch)
        jax.block_until_ready(m)
        dt = time.perf_counter() - t0
    return steps * batch["inputs"].size / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.py", help="path.py[:arg]")
    ap.add_argument("--workdir", default="runs/data_bench")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    run = run_of(load_config(a.config), a.workdir)
    stage = run.stage(run.stages[0])
    packed = pipeline_rate(run, stage, True, a.batches)
    plain = pipeline_rate(run, stage, False, a.batches)
    consume = step_rate(run, stage, a.steps)
    print(f"config {a.config} stage {stage.name}: T={stage.seq_len}, batch "
          f"{run.cfg.data.batch_size}, {jax.device_count()} device(s)")
    print(f"{'':24s}{'records/s':>12s}{'tokens/s':>12s}{'non-pad':>10s}")
    for label, r in (("pipeline packed", packed), ("pipeline one-per-row", plain)):
        print(f"{label:24s}{r['records_per_s']:12.1f}{r['tokens_per_s']:12.0f}"
              f"{r['packing_efficiency']:10.1%}")
    print(f"{'train step consumes':24s}{'':12s}{consume:12.0f}")
    print(f"ratio pipeline/step (packed): {packed['tokens_per_s'] / consume:.1f}x; packing "
          f"gain in useful tokens per row: "
          f"{packed['packing_efficiency'] / plain['packing_efficiency']:.2f}x")


if __name__ == "__main__":
    main()
