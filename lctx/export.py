r"""Export any checkpoint of a run as an HF directory that transformers and vLLM serve.

    python3 -m lctx.export runs/paper                         # last stage, latest step
    python3 -m lctx.export runs/paper --stage=s2_350k --step=100 --out=/models/s2-step100
    python3 -m lctx.export runs/paper/ckpt/s2_350k/100 --dtype=float32

PATH is a run's workdir, `<workdir>/ckpt/<stage>` or `<workdir>/ckpt/<stage>/<step>`; the
run is read through `lctx.run` (its config.json, the stage's RoPE and model, the
checkpoint, the tokenizer). `--stage`/`--step` override what the path names. The default
output is where the trainer puts a stage's export, `<workdir>/hf/<stage>`, for a stage's
final checkpoint, and `<workdir>/hf/<stage>-step<N>` for any other step. The export is
`lctx.hf.export_hf`: weights in the run's ckpt.export_dtype (bf16 by default; --dtype
overrides it), config.json with the stage's RoPE in the spellings transformers 4.x/5.x and
vLLM read, the tokenizer with the chat template training rendered; it is written beside
the target and renamed into place.

Exit status: 0 exported; 2 a path, stage or step that does not exist (one line says which).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def default_out(run, stage: str, step: int) -> str:
    """`<workdir>/hf/<stage>` for the stage's final checkpoint, else `...-step<N>`."""
    latest = run.latest(stage)
    final = latest is not None and latest.finished and latest.step == step
    out = run.stage(stage).export_dir
    return out if final else f"{out}-step{step}"


def export(path: str, stage: str | None = None, step: int | None = None,
           out: str | None = None, dtype: str | None = None) -> str:
    """Exports one checkpoint of the run at `path` (see the module docstring) in `dtype`
    (default: the run's ckpt.export_dtype); returns the output directory."""
    from lctx import hf
    from lctx import run as run_lib
    run, path_stage, path_step = run_lib.locate(path)
    stage = stage or path_stage
    step = path_step if step is None else step
    if stage is not None:
        run.stage(stage)  # a stage the config does not have: ConfigError naming them
    found = run.latest(stage)
    if found is None:
        raise FileNotFoundError(f"{run.workdir}: no checkpoint of {stage or 'any stage'} "
                                f"under {run.ckpt_root}")
    stage, step = found.stage, found.step if step is None else int(step)
    dtype = dtype or run.export_dtype
    out = os.path.abspath(out or default_out(run, stage, step))
    t0 = time.time()
    logging.info("export: %s stage %s step %d -> %s (%s)", run.workdir, stage, step, out, dtype)
    mcfg, model, _ = run.load_model(stage, step)
    hf.export_hf(model, mcfg, out, tokenizer=run.tokenizer, dtype=dtype)
    logging.info("export: done in %.1f s (rope %s)", time.time() - t0, mcfg.rope)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lctx.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="a run's workdir, or <workdir>/ckpt/<stage>[/<step>]")
    ap.add_argument("--stage", help="stage name (default: the path's, else the last one "
                                    "with a checkpoint)")
    ap.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    ap.add_argument("--out", help="output directory (default: <workdir>/hf/<stage>[-step<N>])")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                    help="weight dtype (default: the run's ckpt.export_dtype, bfloat16)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        out = export(a.path, a.stage, a.step, a.out, a.dtype)
    except (FileNotFoundError, ValueError) as e:  # a user's mistake: one line, no traceback
        print(f"lctx.export: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
