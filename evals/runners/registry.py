"""The runner choice shared by every evaluation CLI (RULER, InfiniteBench, LongBench).

`--runner` names an entry of `RUNNERS` or a `package.module:Class`; `--runner_arg key=value`
(JSON values) become constructor keyword arguments. A new runner joins with one line here
(or `register` at import time); classes are imported only when chosen, so choosing `openai`
never imports JAX or vLLM.
"""
from __future__ import annotations

import argparse
import importlib
import json

RUNNERS = {  # name -> "module:Class"
    "vllm": "evals.runners.vllm_runner:VLLMRunner",
    "openai": "evals.runners.openai_runner:OpenAIRunner",
    "lctx": "evals.runners.lctx_runner:LctxRunner",
    "beacon": "evals.runners.beacon_runner:BeaconRunner",  # lctx base + beacon adapters
}
# Runners whose constructor needs the tokenizer path given separately from the model.
TAKES_TOKENIZER = {"vllm", "openai"}


def register(name: str, target: str, *, takes_tokenizer: bool = False) -> None:
    """Adds a runner under `name` ("module:Class", imported when first chosen)."""
    if ":" not in target:
        raise ValueError(f"runner target {target!r}: use 'package.module:Class'")
    RUNNERS[name] = target
    if takes_tokenizer:
        TAKES_TOKENIZER.add(name)


def parse_runner_args(items) -> dict:
    """`key=value` strings -> kwargs; values parsed as JSON when they parse, else strings."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--runner_arg {item!r}: use key=value (e.g. max_model_len=131072)")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def make_runner(kind: str, model: str, *, tokenizer: str | None = None, **kwargs):
    """Builds a runner: a name in `RUNNERS` or `package.module:Class`, constructed as
    `Class(model, **kwargs)` (plus `tokenizer=` for the runners that take it)."""
    target = RUNNERS.get(kind, kind)
    if ":" not in target:
        raise ValueError(f"--runner={kind!r}: use one of {sorted(RUNNERS)} or module:Class")
    module, cls = target.split(":", 1)
    if tokenizer is not None and kind in TAKES_TOKENIZER:
        kwargs.setdefault("tokenizer", tokenizer)
    return getattr(importlib.import_module(module), cls)(model, **kwargs)


def add_runner_flags(p: argparse.ArgumentParser, default: str = "vllm") -> None:
    """--model, --runner, --runner_arg, --tokenizer, as every evaluation CLI spells them."""
    p.add_argument("--model", required=True, help="model path or name for the runner")
    p.add_argument("--runner", default=default,
                   help=f"{' | '.join(sorted(RUNNERS))} | package.module:Class")
    p.add_argument("--runner_arg", action="append", default=[],
                   help="key=value passed to the runner (JSON values), repeatable")
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer (.model/.json/dir)")


def runner_from_flags(args: argparse.Namespace):
    """The runner the flags of `add_runner_flags` ask for."""
    return make_runner(args.runner, args.model, tokenizer=args.tokenizer,
                       **parse_runner_args(args.runner_arg))
