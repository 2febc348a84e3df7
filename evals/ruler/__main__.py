"""RULER command line.

  python -m evals.ruler --model=PATH --runner=vllm --tokenizer=PATH --lengths=4096,8192 \
      --tasks=all --samples=500 --out=DIR [--chat_template=meta-llama3] [--essay_json=...] \
      [--squad=dev-v2.0.json --hotpotqa=hotpot_dev_distractor_v1.json] [--workers=2]

  python -m evals.ruler --preset=he2025 --model=PATH --tokenizer=PATH --out=DIR ...

--preset=he2025 is He et al. 2025's evaluation (Section 4.1, Appendix D): the 13 tasks, 10
samples per task and length, lengths 4,096 ... 524,288 and 1,000,000 (their tables' rows),
the Llama-3 chat template; haystacks repeat past the corpus (the 2025 rewrite's rule: the
2024 code cannot fill 1M tokens for the essay tasks). Flags given explicitly override it.
Data for all tasks and lengths are made first, in --workers processes (default: the CPU
count). Resumable: rerunning the same command skips finished samples. A length too small for
a task is listed as not run with the smallest length that works, and the rest runs; the exit
status is then 1. With --tasks=all, the QA tasks run only when their files are given
(--squad, --hotpotqa); otherwise they are listed as not run (exit status 0). A QA task named
in --tasks without its file, or a QA file that cannot be read, is an error before any work.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from evals.ruler import constants
from evals.ruler.base import Options
from evals.ruler.registry import Resources, TaskNotRunnable, check_resources
from evals.runners.registry import add_runner_flags

DEFAULTS = {"lengths": "4096,8192,16384,32768,65536,131072", "tasks": "all", "samples": 500,
            "chat_template": "base", "repeat_haystack": False}
PRESETS = {
    "he2025": {"lengths": "4096,8192,16384,32768,65536,131072,262144,524288,1000000",
               "tasks": "all", "samples": 10, "chat_template": "meta-llama3",
               "repeat_haystack": True},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evals.ruler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_flags(p)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS))
    p.add_argument("--lengths", default=None, help=f"default {DEFAULTS['lengths']}")
    p.add_argument("--tasks", default=None, help="'all' or comma list: " +
                   ",".join(constants.TASKS))
    p.add_argument("--samples", type=int, default=None, help="per task and length (500)")
    p.add_argument("--out", required=True)
    p.add_argument("--chat_template", default=None,
                   help="base | meta-chat (llama2) | meta-llama3 (llama3) | literal template")
    p.add_argument("--search", default="linear", choices=["linear", "binary"])
    p.add_argument("--repeat_haystack", action="store_true", default=None)
    p.add_argument("--fix_typos", action="store_true")
    p.add_argument("--reserve_generation", action="store_true")
    p.add_argument("--remove_newline_tab", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--essay_json", default=None, help="PaulGrahamEssays.json ({'text': ...})")
    p.add_argument("--corpus", default=None, help="any text file as the essay haystack")
    p.add_argument("--squad", default=None, help="SQuAD v2 dev JSON (qa_1)")
    p.add_argument("--hotpotqa", default=None, help="HotpotQA dev distractor JSON (qa_2)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_model_len", type=int, default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes making the data (default: the CPU count)")
    args = p.parse_args(argv)
    preset = PRESETS.get(args.preset, {})
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, value))
    explicit_tasks = args.tasks.strip() not in ("all", "")
    try:
        args.lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        p.error(f"--lengths={args.lengths!r}: give integers, e.g. 4096,8192")
    if not args.lengths or min(args.lengths) <= 0:
        p.error("--lengths must be positive integers")
    if args.samples <= 0:
        p.error("--samples must be positive")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    for flag in ("essay_json", "corpus"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            p.error(f"--{flag}={path}: no such file")
    try:
        args.tasks = constants.resolve_tasks(args.tasks)
        constants.model_template(args.chat_template)
    except ValueError as e:
        p.error(str(e))
    args.res = Resources(args.essay_json, args.corpus, args.squad, args.hotpotqa)
    try:  # a QA file given but unusable is an error now, not after hours of other tasks
        check_resources(args.res, args.tasks)
    except TaskNotRunnable as e:
        p.error(str(e))
    if explicit_tasks:  # a QA task asked for by name needs its file
        for task in args.tasks:
            spec = constants.TASKS[task]
            if spec.family == "qa":
                flag = "squad" if spec.kwargs()["dataset"] == "squad" else "hotpotqa"
                if not getattr(args, flag):
                    p.error(f"--tasks names {task}, which needs --{flag}=PATH")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from evals.ruler.run import run
    from evals.ruler.text import load_tokenizer
    from evals.runners.registry import runner_from_flags
    opts = Options(chat_template=args.chat_template, search=args.search,
                   repeat_haystack=args.repeat_haystack, fix_typos=args.fix_typos,
                   reserve_generation=args.reserve_generation,
                   remove_newline_tab=args.remove_newline_tab, seed=args.seed)
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: --tokenizer={args.tokenizer}: {e}", file=sys.stderr)
        return 2
    runner = runner_from_flags(args)
    try:
        doc = run(runner, model=args.model, tokenizer=tokenizer, tokenizer_name=args.tokenizer,
                  lengths=args.lengths, tasks=args.tasks, num_samples=args.samples,
                  out=args.out, opts=opts, res=args.res, batch_size=args.batch_size,
                  max_model_len=args.max_model_len, workers=args.workers,
                  tokenizer_path=args.tokenizer)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = doc["summary"]
    print(f"per-length means: {s['length_means']}  effective length: {s['effective_length']}")
    for task, why in doc["not_run"].items():
        print(f"not run: {task}: {why}", file=sys.stderr)
    too_small = any("@" in key for key in doc["not_run"])
    return 1 if too_small or not doc["scores"] else 0


if __name__ == "__main__":
    sys.exit(main())
