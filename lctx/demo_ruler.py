"""RULER at the demo's short lengths (384-3072 tokens): the `evals.ruler` task generators with
a smaller generation reserve and finer haystack steps.

RULER targets 4K+ contexts: it reserves 128 generated tokens for NIAH and grows essay
haystacks 500 words at a time, so no NIAH prompt fits in 384 tokens. Here the same families
draw the same kinds of prompts (templates, needles, depths, haystacks; seeded) with
`RESERVE` tokens reserved for the answer and haystacks grown by `STEP_WORDS` words (essay) or
one sentence (noise, needles). Samples, predictions and the results document follow
`evals.ruler.run` (resumable per sample; `lctx.ruler_results/v1`). Variable tracking is
left out: its one-shot example alone needs ~1000 tokens. JAX-free.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence


from evals.ruler import scoring
from evals.ruler import fit, registry
from evals.ruler.base import Options
from evals.ruler.run import predict_resumable

RESERVE = 32  # tokens reserved for the answer (RULER: 128 for NIAH)
STEP_WORDS = 25  # essay haystack growth per search step (RULER: 500)
SUPPORTED = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
             "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery")


def options(chat_template: str, seed: int) -> Options:
    return Options(chat_template=chat_template, seed=seed)


def prepare(task: str, length: int, num_samples: int, tokenizer, counter, chat_template: str,
            seed: int) -> list[dict]:
    """`num_samples` samples of `task` at `length` tokens (prompt + RESERVE), seeded."""
    if task not in SUPPORTED:
        raise ValueError(f"demo RULER task {task!r} unsupported at short lengths; use some of "
                         f"{', '.join(SUPPORTED)}")
    fam = registry.build_task(task, length, options(chat_template, seed), registry.Resources())
    s = fam.search
    fam.search = dataclasses.replace(s, reserve=RESERVE,
                                     incremental=STEP_WORDS if fam.hay == "essay" else 1)
    return fam.samples(counter, num_samples)


def settings(task: str, length: int, n: int, chat_template: str, seed: int, tok_name: str
             ) -> dict:
    return {"task": task, "max_seq_length": length, "num_samples": n, "seed": seed,
            "reserve": RESERVE, "step_words": STEP_WORDS, "chat_template": chat_template,
            "tokenizer": tok_name, "haystack": "kjv", "variant": "lctx demo (short lengths)"}


def run(runner, *, model: str, tokenizer, tokenizer_name: str, lengths: Sequence[int],
        tasks: Sequence[str], num_samples: int, out: str, chat_template: str, seed: int = 42,
        batch_size: int = 8) -> dict:
    """Prepares (cached), generates (resumable) and scores; writes out/results.json."""
    from evals.ruler.text import PieceCounter
    counter = PieceCounter(tokenizer)
    rows: dict[int, dict[str, list]] = {}
    for length in lengths:
        for task in tasks:
            path = os.path.join(out, "data", task, f"{length}.jsonl")
            header = settings(task, length, num_samples, chat_template, seed, tokenizer_name)
            samples = None
            if os.path.exists(path):
                old, samples = registry.read_jsonl(path)
                samples = samples if old == header else None
            if samples is None:
                samples = prepare(task, length, num_samples, tokenizer, counter,
                                  chat_template, seed)
                registry.write_jsonl(path, header, samples)
            pred_path = os.path.join(out, "preds", str(length), f"{task}.jsonl")
            done = predict_resumable(runner, samples, pred_path, RESERVE, [], batch_size,
                                     desc=f"{model} {task}@{length}")
            rows.setdefault(length, {})[task] = [done[s["index"]] for s in samples]
    doc = scoring.build_results(model, {
        "lengths": list(lengths), "tasks": list(tasks), "num_samples": num_samples,
        "tokenizer": tokenizer_name, "seed": seed, "reserve": RESERVE,
        "step_words": STEP_WORDS, "haystack": "kjv",
        "reference": "NVIDIA/RULER 2024 generators via evals.ruler, short-length variant"},
        rows, {})
    scoring.write_json(os.path.join(out, "results.json"), doc)
    return doc


def check(tokenizer, counter, tasks: Sequence[str], lengths: Sequence[int],
          chat_template: str) -> None:
    """Fails early (naming task and length) when a length cannot hold a task's prompt."""
    for task in tasks:
        try:
            prepare(task, min(lengths), 1, tokenizer, counter, chat_template, 0)
        except fit.LengthTooSmallError as e:
            raise ValueError(f"demo.eval_lengths / stage lengths: {e}") from e
