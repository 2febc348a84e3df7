r"""Grid sweeps over what researchers vary: a config file's `:arg` keys and any `--config.x`
field. Run the points locally one after another, or submit sbatch jobs, then collect each
run's final metrics into one table.

    # He et al. Table 7: the seven data recipes, each a `:variant` of the ablation config
    python3 -m launch.sweep --config=configs/ablation_180k.py --root=runs/table7 --slurm \
        --grid=variant=hs-hs-hs-randomized,hs-hs-hs-fixed,h-h-s-randomized,h-h-s-fixed-no-sum,h-h-s-fixed,h-h-randomized,h-h-h-randomized \
        --set=ckpt.init_from=/models/Llama-3.1-8B-Instruct
    # config fields and :arg keys together, run here
    python3 -m launch.sweep --config=configs/demo.py:quick --root=runs/sweep \
        --grid=opt.lr=1e-3,3e-4 --grid=data.batch_size=4,8 [--dry_run]
    python3 -m launch.sweep --root=runs/sweep --collect

A grid key with a dot (`opt.lr`) or naming a top-level config field (`seed`) is a
`--config.<key>=` override; any other key (`variant`, `docs`) is an `:arg` key of the config
file, merged into the `--config=FILE:k=v,...` argument; `:key` forces the latter.

Before anything runs or is submitted, every generated command's config is loaded exactly as
`lctx.train` will load it (`lctx.config_cli`: the file's `get_config(arg)`, then the locked
overrides); if any fails, all failures are printed and nothing runs (exit 2).

Each grid point gets its own workdir `<root>/<key>=<value>,...`; rerunning the sweep resumes
unfinished points (lctx.train resumes from the workdir) and finished points return at once.
Results go to `<root>/results.jsonl` (one line per run: its name + last logged metrics).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys

from lctx import config_cli


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['opt.lr=1e-3,3e-4', ...] -> [('opt.lr', ['1e-3', '3e-4']), ...]."""
    out = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: expected section.field=v1,v2,... or "
                             f"argkey=v1,v2,...")
        out.append((key, values.split(",")))
    return out


def points(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in grid])]


def run_name(point: dict[str, str]) -> str:
    return ",".join(f"{k.lstrip(':')}={v}" for k, v in point.items()) or "base"


def arg_keys(config: str, grid: list[tuple[str, list[str]]]) -> set[str]:
    """The grid keys that are the config file's `:arg` keys (see the module docstring)."""
    fields = None
    out = set()
    for key, _ in grid:
        if key.startswith(":"):
            out.add(key)
        elif "." not in key:
            if fields is None:  # top-level fields of the base config (e.g. seed)
                fields = set(config_cli.load([f"--config={config}"]).keys())
            if key not in fields:
                out.add(key)
    return out


def with_arg(config: str, extra: dict[str, str]) -> str:
    """`configs/x.py:a=1` + {'b': '2'} -> `configs/x.py:a=1,b=2` (grid keys win)."""
    if not extra:
        return config
    path, _, arg = config.partition(":")
    parts = {}
    for p in filter(None, arg.split(",")):
        k, sep, v = p.partition("=")
        parts.update({k: v} if sep else {"variant": k})  # a bare ':name' is variant=name
    parts.update(extra)
    return f"{path}:" + ",".join(f"{k}={v}" for k, v in parts.items())


def commands(config: str, root: str, grid, *, slurm: bool, nodes: int,
             extra: list[str]) -> list[tuple[dict, str, list[str]]]:
    """(point, workdir, argv) for every grid point."""
    as_arg = arg_keys(config, grid)
    out = []
    for p in points(grid):
        workdir = os.path.join(root, run_name(p))
        cfg_arg = with_arg(config, {k.lstrip(":"): v for k, v in p.items() if k in as_arg})
        overrides = [f"--config.{k}={v}" for k, v in p.items() if k not in as_arg] + list(extra)
        if slurm:
            argv = ["sbatch", f"--nodes={nodes}", f"--job-name=lctx-{run_name(p)}"[:120],
                    "launch/slurm_train.sh", cfg_arg, workdir, *overrides]
        else:
            argv = [sys.executable, "-m", "lctx.train", f"--config={cfg_arg}",
                    f"--workdir={workdir}", *overrides]
        out.append((p, workdir, argv))
    return out


def train_args(argv: list[str]) -> list[str]:
    """The `--config` arguments `lctx.train` receives from a generated command."""
    if argv[0] == "sbatch":
        i = argv.index("launch/slurm_train.sh")
        return [f"--config={argv[i + 1]}", *argv[i + 3:]]
    return [a for a in argv if config_cli.is_config_arg(a)]


def check(cmds) -> list[str]:
    """Loads every command's config as lctx.train will; returns one message per failure."""
    failures = []
    for _, workdir, argv in cmds:
        try:
            config_cli.load(train_args(argv))
        except config_cli.ConfigError as e:
            failures.append(f"{workdir}: {e}")
    return failures


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
    ap.add_argument("--grid", action="append", default=[],
                    help="section.field=v1,v2,... or argkey=v1,v2,... (repeatable)")
    ap.add_argument("--set", action="append", default=[], help="fixed override section.field=v")
    ap.add_argument("--slurm", action="store_true", help="submit sbatch jobs instead")
    ap.add_argument("--nodes", type=int, default=1, help="nodes per sbatch job")
    ap.add_argument("--dry_run", action="store_true", help="check and print the commands only")
    ap.add_argument("--collect", action="store_true", help="only collect results")
    a = ap.parse_args(argv)
    if a.collect:
        for r in collect(a.root):
            print(json.dumps(r))
        return 0
    if not a.config:
        ap.error("--config is required unless --collect")
    try:
        cmds = commands(a.config, a.root, parse_grid(a.grid), slurm=a.slurm, nodes=a.nodes,
                        extra=[f"--config.{s}" for s in a.set])
    except (ValueError, config_cli.ConfigError) as e:
        print(f"[sweep] {e}", file=sys.stderr)
        return 2
    failures = check(cmds)
    if failures:
        print(f"[sweep] {len(failures)} of {len(cmds)} commands do not load their config; "
              "nothing was run:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 2
    print(f"[sweep] {len(cmds)} commands; every config loads", flush=True)
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
