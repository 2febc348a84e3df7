"""InfiniteBench command line: official JSONL files (--data_dir holding <task>.jsonl), or the
synthetic retrieval tasks when a task's file is absent and --synthetic is given.

  python -m evals.infinitebench --model=PATH --runner=vllm --tokenizer=PATH \
      --tasks=passkey,kv_retrieval,longbook_qa_eng --data_dir=DIR --max_len=131072 --out=DIR

Prompts are truncated in the middle to --max_len tokens (the reference: L = 128K for open
models). Predictions are appended per example to out/preds_<task>.jsonl (resumable);
out/scores.json holds the scores (x100).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from tqdm import tqdm

from evals.infinitebench import prompts, scoring, synthetic


def run_task(runner, task: str, rows: list[dict], tokenizer, max_len: int, out: str,
             style: str = "open", data_dir: str | None = None, batch_size: int = 4) -> float:
    """Generates (skipping examples already in out/preds_<task>.jsonl) and scores one task."""
    path = os.path.join(out, f"preds_{task}.jsonl")
    done = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                    done[r["id"]] = r
                except (json.JSONDecodeError, KeyError):
                    continue
    todo = [(i, eg) for i, eg in enumerate(rows) if eg.get("id", i) not in done]
    with open(path, "a", encoding="utf-8") as f:
        for j in tqdm(range(0, len(todo), batch_size), desc=task):
            batch = todo[j:j + batch_size]
            texts = [prompts.build_prompt(eg, task, tokenizer, max_len, style, data_dir)
                     for _, eg in batch]
            preds = runner.generate(texts, prompts.MAX_NEW_TOKENS[task], [])
            for (i, eg), pred in zip(batch, preds):
                row = {"id": eg.get("id", i), "prediction": pred,
                       "ground_truth": prompts.labels(eg, task)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[row["id"]] = row
            f.flush()
    got = [done[eg.get("id", i)] for i, eg in enumerate(rows)]
    return scoring.score_task(task, [r["prediction"] for r in got],
                              [r["ground_truth"] for r in got])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.infinitebench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--runner_arg", action="append", default=[],
                   help="key=value passed to the runner (JSON values), repeatable")
    p.add_argument("--runner", default="vllm")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--tasks", default=",".join(prompts.TASKS))
    p.add_argument("--data_dir", default=None)
    p.add_argument("--synthetic", type=int, default=0,
                   help="examples to generate for passkey/number_string/kv_retrieval when "
                        "their file is absent")
    p.add_argument("--max_len", type=int, default=128_000)
    p.add_argument("--style", default="open", choices=["open", "chat"])
    p.add_argument("--limit", type=int, default=None, help="first N examples per task")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in prompts.TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; known: {', '.join(prompts.TASKS)}")
    from evals.ruler.run import make_runner, parse_runner_args
    from evals.ruler.text import load_tokenizer
    tok = load_tokenizer(args.tokenizer)
    kwargs = parse_runner_args(args.runner_arg)
    if args.runner in ("vllm", "openai"):
        kwargs.setdefault("tokenizer", args.tokenizer)
    runner = make_runner(args.runner, args.model, **kwargs)
    os.makedirs(args.out, exist_ok=True)
    scores, not_run = {}, {}
    for task in tasks:
        path = os.path.join(args.data_dir or "", f"{task}.jsonl")
        if args.data_dir and os.path.exists(path):
            rows = prompts.read_jsonl(path)
        elif args.synthetic and task in ("passkey", "number_string", "kv_retrieval"):
            rows = synthetic.generate(task, args.max_len, args.synthetic, tok, style=args.style)
        else:
            not_run[task] = f"no {path}" + (" (and no --synthetic)" if task in (
                "passkey", "number_string", "kv_retrieval") else "")
            print(f"not run: {task}: {not_run[task]}", file=sys.stderr)
            continue
        rows = rows[:args.limit] if args.limit else rows
        scores[task] = run_task(runner, task, rows, tok, args.max_len, args.out, args.style,
                                args.data_dir)
        print(f"{task}: {scores[task]:.2f}")
    tmp = os.path.join(args.out, f"scores.json.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "max_len": args.max_len, "style": args.style,
                   "scores": scores, "not_run": not_run}, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "scores.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
