"""RULER command line.

  python -m evals.ruler --model=PATH --runner=vllm --tokenizer=PATH --lengths=4096,8192 \
      --tasks=all --samples=500 --out=DIR [--chat_template=meta-llama3] [--essay_json=...] \
      [--squad=dev-v2.0.json --hotpotqa=hotpot_dev_distractor_v1.json]

Resumable: rerunning the same command skips finished samples.
"""
from __future__ import annotations

import argparse
import logging
import sys

from evals.ruler import constants, fit
from evals.ruler.base import Options
from evals.ruler.registry import Resources
from evals.runners.registry import add_runner_flags


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evals.ruler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_flags(p)
    p.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    p.add_argument("--tasks", default="all", help="'all' or comma list: " +
                   ",".join(constants.TASKS))
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--out", required=True)
    p.add_argument("--chat_template", default="base",
                   help="base | meta-chat (llama2) | meta-llama3 (llama3) | literal template")
    p.add_argument("--search", default="linear", choices=["linear", "binary"])
    p.add_argument("--repeat_haystack", action="store_true")
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
    args = p.parse_args(argv)
    try:
        args.lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        p.error(f"--lengths={args.lengths!r}: give integers, e.g. 4096,8192")
    if not args.lengths or min(args.lengths) <= 0:
        p.error("--lengths must be positive integers")
    if args.samples <= 0:
        p.error("--samples must be positive")
    try:
        args.tasks = constants.resolve_tasks(args.tasks)
        constants.model_template(args.chat_template)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from evals.runners.registry import runner_from_flags
    from evals.ruler.run import run
    from evals.ruler.text import load_tokenizer
    opts = Options(chat_template=args.chat_template, search=args.search,
                   repeat_haystack=args.repeat_haystack, fix_typos=args.fix_typos,
                   reserve_generation=args.reserve_generation,
                   remove_newline_tab=args.remove_newline_tab, seed=args.seed)
    res = Resources(args.essay_json, args.corpus, args.squad, args.hotpotqa)
    tokenizer = load_tokenizer(args.tokenizer)
    runner = runner_from_flags(args)
    try:
        doc = run(runner, model=args.model, tokenizer=tokenizer, tokenizer_name=args.tokenizer,
                  lengths=args.lengths, tasks=args.tasks, num_samples=args.samples,
                  out=args.out, opts=opts, res=res, batch_size=args.batch_size,
                  max_model_len=args.max_model_len)
    except (fit.LengthTooSmallError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = doc["summary"]
    print(f"per-length means: {s['length_means']}  effective length: {s['effective_length']}")
    for task, why in doc["not_run"].items():
        print(f"not run: {task}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
