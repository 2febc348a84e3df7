"""InfiniteBench command line: the official JSONL files (--data_dir holding <task>.jsonl), or the
synthetic retrieval tasks when a task's file is absent and --synthetic is given.

  python -m evals.infinitebench --model=PATH --runner=vllm --tokenizer=PATH \
      --data_dir=DIR --out=DIR [--preset=he2025] [--tasks=passkey,kv_retrieval,...]

Model inputs follow the reference's open-model script (OpenBMB/InfiniteBench 88b3daa,
`src/eval_yarn_mistral.py`): prompt with BOS, cut in the middle to --max_len tokens (default
131,072 = 128 * 1024 for --style=open; 127,000 for --style=chat, its GPT-4 setting; its Yi-200K
script used 200,000), decoded and tokenised again. When the model's window cannot hold
--max_len plus a task's generation budget, the cut is shortened to fit (logged).
--preset=he2025: He et al. 2025's evaluation, the first 150 examples of each task, no code
tasks (their Table 1: passkey, number_string, kv_retrieval, longbook_sum_eng, longbook_qa_eng,
longbook_choice_eng, longdialogue_qa_eng, math_find). Predictions are appended per example to
out/preds_<task>.jsonl (resumable); out/scores.json holds the scores (x100) and their average.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from evals import predict
from evals.infinitebench import prompts, scoring, synthetic
from evals.runners.registry import add_runner_flags

log = logging.getLogger("evals.infinitebench")

PRESETS = {
    "he2025": {"tasks": ["passkey", "number_string", "kv_retrieval", "longbook_sum_eng",
                         "longbook_qa_eng", "longbook_choice_eng", "longdialogue_qa_eng",
                         "math_find"], "limit": 150, "style": "open"},
}
SYNTHETIC = ("passkey", "number_string", "kv_retrieval")


def run_task(runner, task: str, rows: list[dict], text, max_len: int, out: str,
             style: str = "open", data_dir: str | None = None, batch_size: int = 4,
             hard_max: int | None = None) -> float:
    """Generates (skipping examples already in out/preds_<task>.jsonl) and scores one task
    (x100, unrounded).

    `text` is an `evals.tokens.HFText` over the model's tokenizer; prompts go to the runner
    as token ids.
    """
    items = [{"id": eg.get("id", i), "eg": eg} for i, eg in enumerate(rows)]
    for it in items:  # a bad row fails before any generation, naming the row
        prompts.labels(it["eg"], task)
    done = predict.predict_resumable(
        runner, items, os.path.join(out, f"preds_{task}.jsonl"), key="id",
        prompt=lambda it: prompts.build_input(it["eg"], task, text, max_len, style, data_dir,
                                             hard_max),
        row=lambda it, p: {"id": it["id"], "prediction": p,
                           "ground_truth": prompts.labels(it["eg"], task)},
        max_new_tokens=prompts.MAX_NEW_TOKENS[task], batch_size=batch_size, desc=task)
    got = [done[it["id"]] for it in items]
    return scoring.score_task(task, [r["prediction"] for r in got],
                              [r["ground_truth"] for r in got], style, ndigits=None)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evals.infinitebench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_flags(p)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="he2025: 150 examples per task, no code tasks (flags given override)")
    p.add_argument("--tasks", default=None, help="comma list; default: every task (" +
                   ",".join(prompts.TASKS) + ") or the preset's")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--synthetic", type=int, default=0,
                   help="examples to generate for passkey/number_string/kv_retrieval when "
                        "their file is absent")
    p.add_argument("--max_len", type=int, default=None,
                   help="prompt tokens after truncation (default: 131072 open, 127000 chat)")
    p.add_argument("--style", default=None, choices=["open", "chat"])
    p.add_argument("--limit", type=int, default=None, help="first N examples per task")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    preset = PRESETS.get(args.preset, {})
    args.tasks = ([t for t in args.tasks.split(",") if t] if args.tasks else
                  list(preset.get("tasks", prompts.TASKS)))
    args.style = args.style or preset.get("style", "open")
    args.limit = args.limit if args.limit is not None else preset.get("limit")
    args.max_len = args.max_len or prompts.MAX_LEN[args.style]
    unknown = [t for t in args.tasks if t not in prompts.TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; known: {', '.join(prompts.TASKS)}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit={args.limit}: give a positive number of examples")
    if args.max_len < 16:
        p.error(f"--max_len={args.max_len} is too small")
    return args


def _window(runner) -> int | None:
    for attr in ("max_model_len", "max_len"):
        value = getattr(runner, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from lctx.tokenizer import load_tokenizer

    from evals.runners.registry import runner_from_flags
    from evals.tokens import HFText
    text = HFText(load_tokenizer(args.tokenizer))
    runner = runner_from_flags(args)
    window = _window(runner)
    os.makedirs(args.out, exist_ok=True)
    scores, not_run = {}, {}
    for task in args.tasks:
        path = os.path.join(args.data_dir or "", f"{task}.jsonl")
        try:
            if args.data_dir and os.path.isfile(path):
                rows = prompts.read_jsonl(path)
            elif args.synthetic and task in SYNTHETIC:
                rows = synthetic.generate(task, args.max_len, args.synthetic, text.encoder,
                                          style=args.style, prefix_tokens=len(text.prefix))
            else:
                not_run[task] = f"no {path}" + (" (and no --synthetic)" if task in SYNTHETIC
                                                else "")
                print(f"not run: {task}: {not_run[task]}", file=sys.stderr)
                continue
            rows = rows[:args.limit] if args.limit else rows
            max_len, hard_max = args.max_len, None
            if window is not None:
                hard_max = window - prompts.MAX_NEW_TOKENS[task]
            if hard_max is not None and max_len > hard_max:
                max_len = hard_max
                log.info("%s: the window (%d) holds %d prompt tokens with the %d generated; "
                         "cutting prompts to %d instead of %d", task, window, max_len,
                         prompts.MAX_NEW_TOKENS[task], max_len, args.max_len)
            scores[task] = run_task(runner, task, rows, text, max_len, args.out, args.style,
                                    args.data_dir, args.batch_size, hard_max)
        except (prompts.PromptError, ValueError, KeyError) as e:
            print(f"error: {task}: {type(e).__name__ if isinstance(e, KeyError) else ''}"
                  f"{e}", file=sys.stderr)
            return 2
        print(f"{task}: {scores[task]:.2f}")
    doc = {"model": args.model, "max_len": args.max_len, "style": args.style,
           "limit": args.limit, "preset": args.preset,
           "scores": {t: round(v, 2) for t, v in scores.items()},
           "average": scoring.average(scores) if scores else None, "not_run": not_run,
           "reference": "OpenBMB/InfiniteBench 88b3daa"}
    tmp = os.path.join(args.out, f"scores.json.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "scores.json"))
    if scores:
        print(f"average ({len(scores)} tasks): {doc['average']:.2f}")
    return 0 if scores else 1


if __name__ == "__main__":
    sys.exit(main())
