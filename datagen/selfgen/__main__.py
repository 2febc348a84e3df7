"""CLI for Li et al.'s self-generated tasks.

    python -m datagen.selfgen nouns                      # count and sha256 of the noun list
    python -m datagen.selfgen passages --out=DIR --backend=offline [--set num_nouns=2000]
    python -m datagen.selfgen build --out=DIR --tokenizer=TOK --preset=paper6k
    python -m datagen.selfgen build --out=DIR --tokenizer=TOK --bucket=1m-2m --per-task=2
    python -m datagen.selfgen merge --out=DIR --name=paper6k

Self-generation (the model being extended writes its own data), in the vLLM venv:
    .venv-vllm/bin/python -m datagen.selfgen build --out=DIR --tokenizer=EXPORT \\
        --preset=paper6k --backend=vllm --backend-args='{"model": "EXPORT"}'
where EXPORT is an lctx HF export (`<workdir>/hf/<stage>`): vLLM renders prompts with the
export's chat template and the samples are counted with its tokenizer.

`build` with one shard makes the passage corpus first if it is missing; with --num-shards
> 1 run `passages` for every shard first. Exit status: 0 done, 2 bad input, 3 fewer
samples than asked (see the manifest; --allow-short accepts that).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from datagen.selfgen import build, config, passages, wordnet

BACKENDS = ("offline", "vllm", "openai", "extractive")


def make_backend(name: str, args_json: str = "{}"):
    """A generator by name: `offline` (WordNet text, not an LLM), or a datagen backend."""
    try:
        kwargs = json.loads(args_json or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"--backend-args is not JSON ({e}); e.g. '{{\"model\": \"DIR\"}}'"
                         ) from None
    if not isinstance(kwargs, dict):
        raise ValueError("--backend-args must be a JSON object")
    if name not in BACKENDS:
        raise ValueError(f"--backend={name!r} is unknown; known: {', '.join(BACKENDS)}")
    try:
        if name == "offline":
            from datagen.selfgen.offline import OfflineGenerator
            return OfflineGenerator(**kwargs)
        from datagen.backends import make_backend as datagen_backend
        return datagen_backend(name, **kwargs)
    except ModuleNotFoundError as e:
        raise ValueError(f"--backend={name} needs {e.name!r}, which this python lacks; run "
                         f"with the vLLM venv (.venv-vllm/bin/python, built by "
                         f"datagen/vllm_env.sh)") from None
    except TypeError as e:
        raise ValueError(f"--backend-args for {name}: {e}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datagen.selfgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["nouns", "passages", "build", "merge"])
    p.add_argument("--out", help="output directory (passages/, <name>/, caches)")
    p.add_argument("--tokenizer", help="target tokenizer: an HF export / tokenizer.json / "
                                       "SentencePiece .model (lengths are counted with it)")
    p.add_argument("--preset", default="", help="paper6k: 1,000 per task, 1K-8K uniform")
    p.add_argument("--bucket", default="", help="a release bucket (" + ", ".join(
        config.BUCKETS) + ") or any lo-hi, e.g. 3000-5000")
    p.add_argument("--per-task", type=int, default=0, help="samples per task")
    p.add_argument("--tasks", default="", help="comma-separated subset of " +
                                               ",".join(config.TASKS))
    p.add_argument("--name", default="", help="merge: the dataset (preset or bucket) name")
    p.add_argument("--backend", default="offline", choices=BACKENDS)
    p.add_argument("--backend-args", default="{}", help="JSON kwargs for the backend")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any datagen.selfgen.config.SelfGenConfig field")
    p.add_argument("--allow-short", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from datagen.tokens import TokenizerError
    try:
        overrides = {}
        for kv in args.set:
            if "=" not in kv:
                raise ValueError(f"--set {kv!r}: expected KEY=VALUE")
            k, v = kv.split("=", 1)
            overrides[k] = v
        cfg = config.SelfGenConfig.from_overrides(overrides)
        if args.command == "nouns":
            nouns = passages.select_nouns(cfg)
            print(json.dumps({"count": len(nouns), "sha256": wordnet.nouns_sha256(nouns),
                              "first": nouns[:5]}, indent=1))
            return 0
        if not args.out:
            raise ValueError(f"{args.command} needs --out=DIR")
        if args.command == "merge":
            if not args.name:
                raise ValueError("merge needs --name (the preset or bucket name)")
            print(json.dumps(build.merge(args.out, args.name), indent=1))
            return 0
        if args.command == "build":  # check everything before the first call
            spec = config.make_spec(args.preset, args.bucket, args.per_task, args.tasks)
            if not args.tokenizer:
                raise ValueError("build needs --tokenizer= the target model's tokenizer "
                                 "(its HF export directory, tokenizer.json or .model)")
            from datagen.tokens import load
            load(args.tokenizer)
        passages.select_nouns(cfg)  # a missing WordNet fails here, naming the package
        backend = make_backend(args.backend, args.backend_args)
        if args.command == "passages":
            man = passages.build_passages(args.out, backend, cfg, args.shard,
                                          args.num_shards, not args.no_progress)
            print(json.dumps({k: man[k] for k in ("passages", "nouns_in_shard", "calls")}))
            return 0
        man = build.build(args.out, args.tokenizer, backend, spec, cfg, args.shard,
                          args.num_shards, not args.no_progress, args.allow_short)
        print(json.dumps({k: man[k] for k in ("samples", "skipped", "calls")}, indent=1))
        return 0
    except build.ShortError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
