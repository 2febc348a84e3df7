"""Each stage evaluated as it finishes: RULER and InfiniteBench on the stage's HF export.

Optional config sections (configs/common.py), off by default:

    eval.ruler:         enabled, runner, lengths ('' = 4K, 8K, ... up to the stage length),
                        args (more `python3 -m evals.ruler` flags)
    eval.infinitebench: enabled, runner, args (default --preset=he2025)

Each runs as its own process, `python3 -m evals.<bench> --model=<export> --tokenizer=<export>
--out=<workdir>/eval/<stage>/<bench> ...`, so `lctx` never imports `evals`. The CLIs are
resumable; a stage whose results file exists is not evaluated again, and a rerun of a
finished run evaluates the stages still missing theirs. A failed evaluation stops the run
with the command and its output's end.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys

from lctx.run import ConfigError, Run, Stage

BENCHES = {"ruler": "results.json", "infinitebench": "scores.json"}


def enabled(run: Run) -> list[str]:
    """The benches the config turns on."""
    return [b for b in BENCHES if run.cfg.eval.get(b) and run.cfg.eval[b].enabled]


def check(run: Run) -> None:
    """Every stage is exported when an evaluation reads the exports."""
    benches = enabled(run)
    for name in run.stages if benches else ():
        if not run.stage(name).export_hf:
            raise ConfigError(f"eval.{benches[0]}.enabled=True evaluates each stage's HF "
                              f"export, but stages.{name}.export_hf=False; export it or turn "
                              "the evaluation off")


def ruler_lengths(seq_len: int) -> str:
    """RULER's lengths from 4K doubling up to the stage length, and the stage length."""
    out, n = [], 4096
    while n < seq_len:
        out.append(n)
        n *= 2
    return ",".join(map(str, out + [seq_len]))


def command(run: Run, stage: Stage, bench: str) -> list[str]:
    """The evaluation's command line."""
    e = run.cfg.eval[bench]
    cmd = [sys.executable, "-m", f"evals.{bench}", f"--model={stage.export_dir}",
           f"--runner={e.runner}", f"--tokenizer={stage.export_dir}",
           f"--out={out_dir(run, stage, bench)}"]
    if bench == "ruler":
        cmd.append(f"--lengths={e.lengths or ruler_lengths(stage.seq_len)}")
    return cmd + shlex.split(e.args)


def out_dir(run: Run, stage: Stage, bench: str) -> str:
    return os.path.join(run.workdir, "eval", stage.name, bench)


def evaluate(run: Run, stage: Stage) -> None:
    """Runs the enabled evaluations of a finished, exported stage that lack results."""
    for bench in enabled(run):
        if os.path.isfile(os.path.join(out_dir(run, stage, bench), BENCHES[bench])):
            continue
        cmd = command(run, stage, bench)
        logging.info("stage %s: %s: %s", stage.name, bench, shlex.join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True)
        os.makedirs(out_dir(run, stage, bench), exist_ok=True)
        with open(os.path.join(out_dir(run, stage, bench), "log.txt"), "w") as f:
            f.write(p.stdout + p.stderr)
        if p.returncode != 0:
            raise RuntimeError(f"stage {stage.name}: {bench} failed (exit {p.returncode}): "
                               f"{shlex.join(cmd)}\n{(p.stdout + p.stderr)[-3000:]}")
        logging.info("stage %s: %s results in %s", stage.name, bench,
                     out_dir(run, stage, bench))
