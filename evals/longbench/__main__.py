"""LongBench v1 command line: predictions through any runner, then the reference's scores.

  python -m evals.longbench --model=PATH --runner=vllm --tokenizer=PATH --data_dir=DIR \
      --out=DIR --preset=beacon|official|he2025 [--datasets=a,b] [--e] [--max_length=N]

--data_dir holds the official files as THUDM/LongBench's data.zip unpacks them
(<dataset>.jsonl, and <dataset>_e.jsonl for --e); nothing is downloaded. Presets
(`evals.longbench.datasets.PRESETS`):
  official  THUDM pred.py/eval.py: the 21 datasets (--e: LongBench-E's 13, scored per length
            bucket), chat template except for trec/triviaqa/samsum/lsht/lcc/repobench-p (give
            the model's: --chat_template=llama2|llama3|'literal {prompt}'), samsum stops at
            "\\n" and never stops first; README averages per language over categories.
            --max_length is the model's model2maxlen.json value (3500 for 4K models, 7500 8K,
            15500 16K, 31500 32K).
  beacon    the activation-beacon pipeline Li et al. 2025 ran: their 14 English datasets,
            15,500 tokens, no chat template, "\\n" stops the QA datasets and samsum; plain
            mean over the datasets (their Table 1).
  he2025    He et al. 2025 Tables 2/5/10: the 19 non-code datasets with the official prompts
            (--chat_template=llama3 by default), plain mean over them.
Resumable: predictions are appended per sample to out/preds/<dataset>.jsonl; the settings
are kept in out/settings.json and a rerun with other settings is refused. out/scores.json
holds the per-dataset scores and averages; the table is printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from evals import predict
from evals.longbench import datasets as ds
from evals.longbench import metrics, prompts
from evals.runners.registry import add_runner_flags

log = logging.getLogger("evals.longbench")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evals.longbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_flags(p)
    p.add_argument("--data_dir", required=True, help="folder of <dataset>.jsonl files")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="official", choices=sorted(ds.PRESETS))
    p.add_argument("--datasets", default=None, help="comma list (default: the preset's)")
    p.add_argument("--e", action="store_true", help="LongBench-E (<dataset>_e.jsonl)")
    p.add_argument("--max_length", type=int, default=None,
                   help="prompt tokens before the middle cut (beacon: 15500)")
    p.add_argument("--chat_template", default=None,
                   help="none | llama2 | llama3 | a literal with {prompt} (preset's default)")
    p.add_argument("--limit", type=int, default=None, help="first N rows per dataset")
    p.add_argument("--batch_size", type=int, default=8)
    args = p.parse_args(argv)
    preset = ds.PRESETS[args.preset]
    if args.datasets:
        args.datasets = [d for d in args.datasets.split(",") if d]
    else:
        args.datasets = [d for d in preset.datasets if not args.e or d in ds.LONGBENCH_E]
    unknown = [d for d in args.datasets if d not in ds.DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {unknown}; known: {', '.join(ds.DATASETS)}")
    if args.e:
        not_e = [d for d in args.datasets if d not in ds.LONGBENCH_E]
        if not_e:
            p.error(f"--e: {not_e} are not in LongBench-E ({', '.join(ds.LONGBENCH_E)})")
    args.max_length = args.max_length or preset.max_length
    if args.max_length is None:
        p.error(f"--preset={args.preset} needs --max_length: the model's prompt budget (the "
                "reference's model2maxlen.json: 3500 for 4K models, 7500 8K, 15500 16K, "
                "31500 32K)")
    if args.max_length < 2:
        p.error(f"--max_length={args.max_length} must be >= 2")
    args.chat_template = args.chat_template or preset.chat_template
    try:
        prompts.check_template(args.chat_template)
    except ValueError as e:
        p.error(str(e))
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit={args.limit} must be positive")
    return args


def settings(args, preset: ds.Preset) -> dict:
    return {"model": args.model, "tokenizer": args.tokenizer, "preset": preset.name,
            "longbench_e": args.e, "max_length": args.max_length,
            "chat_template": args.chat_template, "limit": args.limit,
            "pipeline": dataclasses.asdict(preset),
            "reference": ds.BEACON_REFERENCE if preset.name == "beacon" else ds.REFERENCE}


def check_settings(out: str, doc: dict) -> None:
    """Refuses to resume predictions made with other settings."""
    path = os.path.join(out, "settings.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        keep = ("model", "tokenizer", "preset", "longbench_e", "max_length", "chat_template")
        diff = [k for k in keep if old.get(k) != doc.get(k)]
        if diff:
            raise ValueError(f"{out} holds predictions made with other settings ({diff}: "
                             f"{[old.get(k) for k in diff]}); use another --out or delete it")
    write_json(path, doc)


def write_json(path: str, doc) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def run_dataset(runner, dataset: str, rows: list[dict], text, args, preset: ds.Preset) -> dict:
    """Predicts (resumably) and scores one dataset; returns its score entry."""
    items = [{"index": i, "row": r} for i, r in enumerate(rows)]
    gen = {}
    if dataset in preset.newline_eos:
        gen["stop_ids"] = [text.newline_id()]
    if dataset in preset.min_one_token:
        gen["min_new_tokens"] = 1

    def prompt(it):
        ids = prompts.build_input(dataset, it["row"], text, args.max_length,
                                  args.chat_template, preset.chat_skip)
        it["digest"], it["n_tokens"] = prompts.ids_digest(ids), len(ids)
        return ids

    def row(it, pred):
        r = it["row"]
        return {"index": it["index"], "pred": pred, "answers": r["answers"],
                "all_classes": r.get("all_classes"), "length": r.get("length"),
                "prompt_tokens": it["n_tokens"], "prompt_sha": it["digest"]}

    name = f"{dataset}_e" if args.e else dataset
    done = predict.predict_resumable(
        runner, items, os.path.join(args.out, "preds", f"{name}.jsonl"), prompt=prompt,
        row=row, max_new_tokens=ds.max_new_tokens(dataset), batch_size=args.batch_size,
        desc=name, generate_kwargs=gen)
    got = [done[it["index"]] for it in items]
    classes = got[0 if preset.all_classes_row == "first" else -1]["all_classes"]
    preds, answers = [g["pred"] for g in got], [g["answers"] for g in got]
    if args.e:
        return metrics.score_dataset_e(dataset, preds, answers, [g["length"] for g in got],
                                       classes)
    return metrics.score_dataset(dataset, preds, answers, classes)


def table(scores: dict, avgs: dict, e: bool) -> str:
    """A markdown table of the per-dataset scores, category means and averages."""
    if e:
        lines = ["| dataset | 0-4k | 4-8k | 8k+ |", "|---|---|---|---|"]
        for d, s in scores.items():
            lines.append(f"| {d} | " + " | ".join("-" if s[k] is None else f"{s[k]:.2f}"
                                                 for k in ("0-4k", "4-8k", "8k+")) + " |")
        return "\n".join(lines)
    lines = ["| dataset | category | score |", "|---|---|---|"]
    lines += [f"| {d} | {ds.DATASETS[d][1]} | {s:.2f} |" for d, s in scores.items()]
    groups = avgs.items() if "avg" not in avgs else [("", avgs)]
    for lang, a in groups:
        tag = f" ({lang})" if lang else ""
        lines += [f"| {c} avg{tag} | | {v:.2f} |" for c, v in a["categories"].items()]
        lines.append(f"| **average{tag}** | | **{a['avg']:.2f}** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    preset = ds.PRESETS[args.preset]
    try:
        loaded = {}
        for d in args.datasets:  # every file is read and checked before any generation
            path = os.path.join(args.data_dir, f"{d}_e.jsonl" if args.e else f"{d}.jsonl")
            if not os.path.isfile(path):
                raise prompts.DataError(f"{path} does not exist: --data_dir must hold the "
                                        "official LongBench files (data.zip unpacked)")
            loaded[d] = prompts.read_rows(path, d)[:args.limit]
        os.makedirs(args.out, exist_ok=True)
        check_settings(args.out, settings(args, preset))
        from lctx.tokenizer import load_tokenizer

        from evals.runners.registry import runner_from_flags
        from evals.tokens import HFText
        text = HFText(load_tokenizer(args.tokenizer))
        if any(d in preset.newline_eos for d in loaded):
            text.newline_id()  # fails early for a tokenizer that cannot encode "\n"
        runner = runner_from_flags(args)
        scores = {d: run_dataset(runner, d, rows, text, args, preset)
                  for d, rows in loaded.items()}
    except (prompts.DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    avgs = {} if args.e else metrics.averages(scores, preset.average)
    doc = {"settings": settings(args, preset), "scores": scores, "averages": avgs,
           "samples": {d: len(r) for d, r in loaded.items()}}
    write_json(os.path.join(args.out, "scores.json"), doc)
    print(table(scores, avgs, args.e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
