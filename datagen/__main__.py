"""CLI: `python -m datagen --corpus=kjv --tokenizer=tok.model --backend=extractive
--lengths=180000,350000 --out=DIR [--shard=i --num-shards=n] [--set key=value ...]`
and `python -m datagen merge --out=DIR` (verify all shards, write manifest.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from datagen.backends import BACKENDS, make_backend
from datagen.config import Config
from datagen.corpus import CorpusError, iter_corpus
from datagen.tokens import TokenizerError


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
                                                 "(Table 7 / Appendix E variants)")
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
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from datagen import pipeline
    if args.command == "merge":
        print(json.dumps(pipeline.merge(args.out), indent=1))
        return 0
    if not args.corpus or not args.tokenizer:
        print("error: --corpus and --tokenizer are required to build", file=sys.stderr)
        return 2
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    if args.text_field:
        overrides["text_field"] = args.text_field
    if args.jsonl:
        overrides["write_jsonl"] = "true"
    try:
        cfg = Config.from_overrides(overrides, args.recipe)
        lengths = [pipeline.parse_length(x) for x in args.lengths.split(",") if x.strip()]
        names = samples = None
        if args.samples:
            counts = [int(x) for x in args.samples.split(",")]
            if len(counts) not in (1, len(lengths)):
                raise ValueError(f"--samples has {len(counts)} entries for {len(lengths)} "
                                 f"lengths")
            samples = dict(zip(lengths, counts * len(lengths) if len(counts) == 1 else counts))
        if args.names:
            names = dict(zip(lengths, args.names.split(",")))
            if len(names) != len(lengths):
                raise ValueError(f"--names has {len(args.names.split(','))} entries for "
                                 f"{len(lengths)} lengths")
        docs = list(iter_corpus(args.corpus, cfg.text_field, cfg.min_chars))
        if args.max_docs:
            docs = docs[:args.max_docs]
        backend = make_backend(args.backend, **json.loads(args.backend_args))
        manifest = pipeline.build_dataset(docs, args.tokenizer, backend, lengths, args.out,
                                          cfg, args.shard, args.num_shards,
                                          progress=not args.no_progress, names=names,
                                          samples=samples)
    except (CorpusError, TokenizerError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("documents", "calls", "lengths")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
