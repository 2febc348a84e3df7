r"""Grid sweeps of config overrides: run locally one after another, or submit sbatch jobs,
then collect each run's final metrics into one table.

    python3 -m launch.sweep --config=configs/demo.py:quick --root=runs/sweep \
        --grid=opt.lr=1e-3,3e-4 --grid=data.batch_size=4,8 [--slurm --nodes=2] [--dry_run]
    python3 -m launch.sweep --root=runs/sweep --collect

Each grid point gets its own workdir `<root>/<key>=<value>,...`; rerunning the sweep resumes
unfinished points (lctx.train resumes from the workdir) and finished points return at once.
Results go to `<root>/results.jsonl` (one line per run: overrides + last logged metrics).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['opt.lr=1e-3,3e-4', ...] -> [('opt.lr', ['1e-3', '3e-4']), ...]."""
    out = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: expected section.field=v1,v2,...")
        out.append((key, values.split(",")))
    return out


def points(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in grid])]


def run_name(point: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()) or "base"


def commands(config: str, root: str, grid, *, slurm: bool, nodes: int,
             extra: list[str]) -> list[tuple[dict, str, list[str]]]:
    """(point, workdir, argv) for every grid point."""
    out = []
    for p in points(grid):
        workdir = os.path.join(root, run_name(p))
        overrides = [f"--config.{k}={v}" for k, v in p.items()] + list(extra)
        if slurm:
            argv = ["sbatch", f"--nodes={nodes}", f"--job-name=lctx-{run_name(p)}"[:120],
                    "launch/slurm_train.sh", config, workdir, *overrides]
        else:
            argv = [sys.executable, "-m", "lctx.train", f"--config={config}",
                    f"--workdir={workdir}", *overrides]
        out.append((p, workdir, argv))
    return out


def last_metrics(workdir: str) -> dict:
    """The last line of a run's metrics.jsonl ({} if it has none yet)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    last = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                last = json.loads(line)
    return last


def collect(root: str) -> list[dict]:
    """Writes <root>/results.jsonl atomically from every run directory under root."""
    rows = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        wd = os.path.join(root, name)
        if os.path.isdir(wd):
            rows.append({"run": name, **last_metrics(wd)})
    tmp = os.path.join(root, f".results.jsonl.tmp-{os.getpid()}")
    os.makedirs(root, exist_ok=True)
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, os.path.join(root, "results.jsonl"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="config file[:arg], as for lctx.train")
    ap.add_argument("--root", required=True, help="directory holding one workdir per point")
    ap.add_argument("--grid", action="append", default=[], help="section.field=v1,v2,...")
    ap.add_argument("--set", action="append", default=[], help="fixed override k=v")
    ap.add_argument("--slurm", action="store_true", help="submit sbatch jobs instead")
    ap.add_argument("--nodes", type=int, default=1, help="nodes per sbatch job")
    ap.add_argument("--dry_run", action="store_true", help="print the commands only")
    ap.add_argument("--collect", action="store_true", help="only collect results")
    a = ap.parse_args(argv)
    if a.collect:
        for r in collect(a.root):
            print(json.dumps(r))
        return 0
    if not a.config:
        ap.error("--config is required unless --collect")
    extra = [f"--config.{s}" for s in a.set]
    cmds = commands(a.config, a.root, parse_grid(a.grid), slurm=a.slurm, nodes=a.nodes,
                    extra=extra)
    failed = 0
    for i, (_, workdir, argv_) in enumerate(cmds):
        line = " ".join(shlex.quote(x) for x in argv_)
        print(f"[sweep {i + 1}/{len(cmds)}] {line}", flush=True)
        if a.dry_run:
            continue
        rc = subprocess.run(argv_).returncode
        if rc:
            failed += 1
            print(f"[sweep] {workdir}: exit {rc}", flush=True)
    if not a.dry_run and not a.slurm:
        for r in collect(a.root):
            print(json.dumps(r))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
