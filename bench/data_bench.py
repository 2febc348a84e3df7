r"""Input pipeline throughput vs the train step's consumption, and packing efficiency.

    python3 bench/data_bench.py [--config=configs/demo.py] [--workdir=runs/demo] [--batches=40]

Measured side by side in one run on the demo config's first stage:
  * data: records/s and tokens/s the grain pipeline delivers (packed and unpacked);
  * step: tokens/s the jitted train step consumes (after compilation);
  * ratio data/step: > 1 means the input pipeline keeps up with training on this machine;
  * packing efficiency: share of non-pad tokens per row, packed vs one document a row.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from lctx import data as data_lib  # noqa: E402
from lctx import sharding, trainer  # noqa: E402


def pipeline_rate(cfg, paths, render, seq_len, pack: bool, batches: int) -> dict:
    stats = data_lib.Stats()
    ds = data_lib.make_dataset(paths, render, seq_len=seq_len, batch_size=cfg.data.batch_size,
                               seed=cfg.data.seed, pack=pack, packing_bins=cfg.data.packing_bins,
                               overlong=cfg.data.overlong, stats=stats)
    it = iter(ds)
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


def step_rate(cfg, workdir, name, steps: int) -> float:
    mesh = sharding.make_mesh([(a, cfg.mesh[a]) for a in ("data", "fsdp", "context", "tensor")])
    with sharding.use_mesh(mesh):
        r = trainer.StageRunner(cfg, name, workdir, mesh,
                                trainer.MetricWriter(workdir, 1, 1.0, False))
        batch = r.next_batch()
        state, m = r.step_fn(r.state, batch)  # compile
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in tqdm.trange(steps, desc="train step", leave=False):
            state, m = r.step_fn(state, batch)
        jax.block_until_ready(m)
        dt = time.perf_counter() - t0
    return steps * batch["inputs"].size / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.py")
    ap.add_argument("--workdir", default="runs/data_bench")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfgmod", a.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    name = sorted(cfg.stages.keys())[0]
    seq_len = cfg.stages[name].seq_len
    paths, tok = data_lib.build_source(cfg.data, a.workdir)
    render = data_lib.render_fn_from_tokenizer(tok)
    packed = pipeline_rate(cfg, paths, render, seq_len, True, a.batches)
    plain = pipeline_rate(cfg, paths, render, seq_len, False, a.batches)
    consume = step_rate(cfg, a.workdir, name, a.steps)
    print(f"config {a.config} stage {name}: T={seq_len}, batch {cfg.data.batch_size}, "
          f"{jax.device_count()} device(s)")
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
