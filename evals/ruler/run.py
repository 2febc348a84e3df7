"""Resumable RULER runs: prepare data, generate predictions, score.

Layout under `out`: data/<task>/<length>.jsonl (settings line + samples), preds/<length>/
<task>.jsonl (one line per finished sample, appended and flushed, so a rerun skips them),
results.json (lctx.ruler_results/v1).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

from evals import predict
from evals.ruler import scoring
from evals.ruler import constants, fit, registry
from evals.ruler.base import Options
from evals.ruler.text import PieceCounter

log = logging.getLogger("evals.ruler")

def _model_window(runner, max_model_len: Optional[int]) -> Optional[int]:
    if max_model_len:
        return max_model_len
    for attr in ("max_model_len", "max_len", "context_length"):
        value = getattr(runner, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_or_prepare(task: str, length: int, num_samples: int, tokenizer, tokenizer_name: str,
                    opts: Options, res: registry.Resources, out: str,
                    counter: Optional[PieceCounter] = None) -> list[dict]:
    """Samples from out/data if present with the same settings, else generated and written."""
    path = os.path.join(out, "data", task, f"{length}.jsonl")
    header = registry.settings(task, length, num_samples, opts, res, tokenizer_name)
    if os.path.exists(path):
        old, samples = registry.read_jsonl(path)
        if old == json.loads(json.dumps(header)):
            return samples
        log.warning("%s: settings changed, regenerating", path)
    samples = registry.prepare(task, length, num_samples, tokenizer, opts, res, counter)
    registry.write_jsonl(path, header, samples)
    return samples


def predict_resumable(runner, samples: list[dict], pred_path: str, max_new_tokens: int,
                      stop: list[str], batch_size: int, desc: str) -> dict[int, dict]:
    """Predicts the samples not yet in `pred_path` (`evals.predict`); returns every
    prediction row (index, pred, outputs, length) by sample index."""
    return predict.predict_resumable(
        runner, samples, pred_path, prompt=lambda s: s["input"],
        row=lambda s, p: {"index": s["index"], "pred": p, "outputs": s["outputs"],
                          "length": s["length"]},
        max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size, desc=desc)


def run(runner, *, model: str, tokenizer, tokenizer_name: str, lengths: Sequence[int],
        tasks: Sequence[str], num_samples: int, out: str, opts: Options = Options(),
        res: registry.Resources = registry.Resources(), batch_size: int = 8,
        max_model_len: Optional[int] = None, stop: Sequence[str] = ()) -> dict:
    """Runs RULER and writes out/results.json; returns the results document."""
    window = _model_window(runner, max_model_len)
    if window is not None and max(lengths) > window:
        raise ValueError(f"--lengths asks for {max(lengths)} tokens but the model's window "
                         f"is {window}; drop lengths above {window} or extend the model")
    counter = PieceCounter(tokenizer)
    rows: dict[int, dict[str, list]] = {}
    not_run: dict[str, str] = {}
    for length in lengths:
        for task in tasks:
            try:
                samples = load_or_prepare(task, length, num_samples, tokenizer, tokenizer_name,
                                          opts, res, out, counter)
            except registry.TaskNotRunnable as e:
                not_run[task] = str(e)
                log.warning("%s", e)
                continue
            pred_path = os.path.join(out, "preds", str(length), f"{task}.jsonl")
            ttg = opts.reserve or constants.FAMILIES[constants.TASKS[task].family][
                "tokens_to_generate"]
            done = predict_resumable(runner, samples, pred_path, ttg, list(stop), batch_size,
                                     desc=f"{task}@{length}")
            rows.setdefault(length, {})[task] = [done[s["index"]] for s in samples]
    settings = {"lengths": list(lengths), "tasks": list(tasks), "num_samples": num_samples,
                "tokenizer": tokenizer_name, "options": opts.recorded(),
                "haystack": res.haystack_name(), "reference": "NVIDIA/RULER 2024 (230fddc)"}
    doc = scoring.build_results(model, settings, rows, not_run)
    scoring.write_json(os.path.join(out, "results.json"), doc)
    return doc


__all__ = ["load_or_prepare", "predict_resumable", "run", "fit"]
