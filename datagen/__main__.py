"""CLI: `python -m datagen --corpus=kjv --tokenizer=tok.model --backend=extractive
--lengths=180000,350000 --out=DIR [--shard=i --num-shards=n] [--set key=value ...]`
and `python -m datagen merge --out=DIR` (verify all shards, write manifest.json).

Exit status: 0 = done as asked; 2 = bad flag or input (one line naming it and the fix,
nothing written or lost); 3 = finished but short: fewer conversations than asked at some
length (one line per length says why; outputs are consistent and a rerun resumes). Pass
--allow-short to accept short output with status 0 (it is still reported).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from datagen.backends import BACKENDS, BackendError, make_backend
from datagen.config import Config, ConfigError
from datagen.corpus import CorpusError, iter_corpus
from datagen.tokens import TokenizerError

EXIT_BAD_INPUT, EXIT_SHORT = 2, 3


class UsageError(ValueError):
    """A flag given in a form the CLI cannot read."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datagen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="build", choices=["build", "merge"])
    p.add_argument("--corpus", help="kjv | file (.jsonl/.parquet/.txt) | directory | "
                                    "datasets.save_to_disk directory")
    p.add_argument("--text-field", help="JSONL key / column holding the text (default text)")
    p.add_argument("--tokenizer", help="target model tokenizer (.model or tokenizer.json)")
    p.add_argument("--backend", default="extractive", choices=BACKENDS)
    p.add_argument("--backend-args", default="{}",
                   help='JSON kwargs for the backend, e.g. \'{"model": "/models/qwen"}\'')
    p.add_argument("--lengths", default="180k,350k,650k,1m",
                   help="comma-separated target lengths: tokens (8192) or 180k/350k/650k/1m "
                        "(K = 1024, as configs/paper.py)")
    p.add_argument("--names", default="",
                   help="comma-separated output subdirectory per length ('.' = --out itself); "
                        "default: configs/paper.py stage names (s1_180k...) or len<N>")
    p.add_argument("--recipe", default="", help="named settings from datagen.config.RECIPES "
                                                 "('paper': the paper's documents per sample "
                                                 "and sample counts; Table 7 / Appendix E)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--samples", help="conversations per length over all shards: one number, "
                                      "or one per length (paper: 2000,1280,600,200)")
    p.add_argument("--seed", type=int)
    p.add_argument("--jsonl", action="store_true", help="also write JSONL next to ArrayRecord")
    p.add_argument("--max-docs", type=int, help="use only the first N documents")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any datagen.config.Config field, e.g. --set composition=h-h-s")
    p.add_argument("--allow-short", action="store_true",
                   help="exit 0 even when fewer conversations than asked were written")
    p.add_argument("--no-progress", action="store_true")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    for kv in args.set:
        if "=" not in kv:
            raise UsageError(f"--set {kv}: expected KEY=VALUE, e.g. --set {kv}=5")
        k, v = kv.split("=", 1)
        out[k.strip()] = v
    if args.seed is not None:
        out["seed"] = str(args.seed)
    if args.text_field:
        out["text_field"] = args.text_field
    if args.jsonl:
        out["write_jsonl"] = "true"
    return out


def _per_length(flag: str, value: str, lengths: list[int], cast) -> dict[int, Any] | None:
    if not value:
        return None
    items = [x.strip() for x in value.split(",")]
    if len(items) not in (1, len(lengths)):
        raise UsageError(f"{flag}={value}: {len(items)} entries for {len(lengths)} lengths; "
                         f"give one, or one per length")
    try:
        vals = [cast(x) for x in items]
    except ValueError:
        raise UsageError(f"{flag}={value}: expected comma-separated whole numbers") from None
    return dict(zip(lengths, vals * len(lengths) if len(vals) == 1 else vals))


def _backend_args(text: str) -> dict[str, Any]:
    try:
        kw = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--backend-args is not valid JSON ({e.msg} at column {e.colno}); "
                         f"e.g. --backend-args='{{\"model\": \"/models/qwen\"}}'") from None
    if not isinstance(kw, dict):
        raise UsageError("--backend-args must be a JSON object, e.g. '{\"model\": \"...\"}'")
    return kw


def _build(args: argparse.Namespace) -> int:
    from datagen import pipeline
    if not args.corpus or not args.tokenizer:
        raise UsageError("--corpus and --tokenizer are required to build")
    cfg = Config.from_overrides(_overrides(args), args.recipe)
    try:
        lengths = [pipeline.parse_length(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError as e:
        raise UsageError(f"--lengths={args.lengths}: {e}") from None
    samples = _per_length("--samples", args.samples or "", lengths, int)
    if samples and min(samples.values()) < 0:
        raise UsageError(f"--samples={args.samples}: counts must be >= 0")
    names = _per_length("--names", args.names, lengths, str) if args.names else None
    if names and len(args.names.split(",")) != len(lengths):
        raise UsageError(f"--names has {len(args.names.split(','))} entries for "
                         f"{len(lengths)} lengths")
    if args.max_docs is not None and args.max_docs < 1:
        raise UsageError(f"--max-docs={args.max_docs}: must be >= 1")
    kw = _backend_args(args.backend_args)
    docs = list(iter_corpus(args.corpus, cfg.text_field, cfg.min_chars))
    if args.max_docs:
        docs = docs[:args.max_docs]
    backend = make_backend(args.backend, **kw)
    manifest = pipeline.build_dataset(docs, args.tokenizer, backend, lengths, args.out, cfg,
                                      args.shard, args.num_shards,
                                      progress=not args.no_progress, names=names,
                                      samples=samples)
    print(json.dumps({k: manifest[k] for k in ("documents", "calls", "lengths")}, indent=1))
    return _report_short(pipeline.shortfalls(manifest), args.allow_short)


def _report_short(lines: list[str], allow: bool) -> int:
    for line in lines:
        print(f"{'warning' if allow else 'error'}: short output at {line}"
              f"{'' if allow else '; pass --allow-short to accept'}", file=sys.stderr)
    return EXIT_SHORT if lines and not allow else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request
    from datagen import pipeline
    try:
        if args.command == "merge":
            merged = pipeline.merge(args.out)
            print(json.dumps(merged, indent=1))
            return _report_short(pipeline.shortfalls(merged), args.allow_short)
        return _build(args)
    except (UsageError, ConfigError, CorpusError, TokenizerError, BackendError,
            pipeline.InputError, pipeline.MergeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
