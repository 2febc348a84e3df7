"""MMLU as He et al. 2025 report it (Tables 3 and 6): lm-evaluation-harness's `mmlu` group,
0-shot and 5-shot, printed as their rows (mmlu, humanities, other, social sciences, stem;
accuracy and stderr in percent).

  python -m evals.harness.mmlu --model=RUN_OR_EXPORT [--runner_arg rope='{...}'] \
      [--shots=0,5] [--out=DIR] [--task=mmlu --include_path=DIR] [--limit=N]

The numbers are lm-eval's (0.4.13): `acc` micro-averaged over the questions of a group
(`weight_by_size`), its stderr pooled over the subtasks (`pooled_sample_stderr`), which is
the "68.21 ± 0.37" format of He et al. The data is lm-eval's `cais/mmlu` (from the Hugging
Face cache: set HF_DATASETS_OFFLINE=1 on machines without the hub); --task/--include_path run
another group with the same layout (<task>_humanities, _other, _social_sciences, _stem).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys

ROWS = (("", "mmlu"), ("_humanities", "humanities"), ("_other", "other"),
        ("_social_sciences", "social sciences"), ("_stem", "stem"))


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None, include_defaults: bool = True):
    """lm-eval's task index (scanning its ~10k built-in task files takes seconds: kept)."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def evaluate(lm, task: str, shots: int, include_path: str | None = None,
             limit: int | None = None, log_samples: bool = False,
             include_defaults: bool = True) -> dict:
    """lm-eval's `simple_evaluate` of `task` with `shots` examples; returns its results."""
    import lm_eval
    return lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, limit=limit,
                                   task_manager=task_manager(include_path, include_defaults),
                                   log_samples=log_samples, random_seed=0,
                                   numpy_random_seed=0, torch_random_seed=0,
                                   fewshot_random_seed=0)


def rows(results: dict, task: str) -> dict[str, tuple[float, float, int]]:
    """{row name: (acc %, stderr %, questions)} for the group and its four categories."""
    out = {}
    res = results["results"]
    for suffix, name in ROWS:
        r = res.get(task + suffix)
        if r is None:
            raise KeyError(f"lm-eval returned no '{task + suffix}' group; the task must "
                           "have mmlu's layout (<task>_humanities/_other/_social_sciences/"
                           "_stem)")
        n = results.get("n-samples", {}).get(task + suffix, {}).get("effective")
        out[name] = (100 * r["acc,none"], 100 * r["acc_stderr,none"], n)
    return out


def table(by_shots: dict[int, dict]) -> str:
    """The paper's rows, one column per shot count: 'acc ± stderr'."""
    shots = sorted(by_shots)
    lines = ["| category | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for _, name in ROWS:
        cells = [f"{by_shots[k][name][0]:.2f} ± {by_shots[k][name][1]:.2f}" for k in shots]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.harness.mmlu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an lctx run or HF export")
    p.add_argument("--runner_arg", action="append", default=[],
                   help="key=value for LctxRunner (JSON values): rope, max_model_len, ...")
    p.add_argument("--shots", default="0,5")
    p.add_argument("--task", default="mmlu")
    p.add_argument("--include_path", default=None, help="folder of extra lm-eval tasks")
    p.add_argument("--only_include_path", action="store_true",
                   help="index only --include_path, not lm-eval's built-in tasks (faster)")
    p.add_argument("--limit", type=int, default=None, help="questions per subtask (testing)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--out", default=None, help="write mmlu.json here")
    args = p.parse_args(argv)
    try:
        shots = [int(x) for x in args.shots.split(",") if x.strip()]
    except ValueError:
        p.error(f"--shots={args.shots!r}: give integers, e.g. 0,5")
    if not shots or min(shots) < 0:
        p.error("--shots must be non-negative integers")
    if args.include_path and not os.path.isdir(args.include_path):
        p.error(f"--include_path={args.include_path} is not a folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from evals.harness.lm import LctxLM
    from evals.runners.registry import parse_runner_args
    try:
        lm = LctxLM(args.model, batch_size=args.batch_size,
                    **parse_runner_args(args.runner_arg))
        by_shots = {k: rows(evaluate(lm, args.task, k, args.include_path, args.limit,
                                     include_defaults=not args.only_include_path), args.task)
                    for k in shots}
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(by_shots))
    if args.out:
        import lm_eval
        os.makedirs(args.out, exist_ok=True)
        doc = {"model": args.model, "task": args.task, "lm_eval": lm_eval.__version__,
               "runner_args": parse_runner_args(args.runner_arg),
               "rows": {str(k): {n: {"acc": a, "stderr": s, "n": c} for n, (a, s, c) in v.items()}
                        for k, v in by_shots.items()}}
        tmp = os.path.join(args.out, f"mmlu.json.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, os.path.join(args.out, "mmlu.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
