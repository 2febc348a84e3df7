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


def prepare_one(task: str, length: int, num_samples: int, tokenizer, tokenizer_name: str,
                opts: Options, res: registry.Resources, out: str,
                counter: Optional[PieceCounter] = None) -> Optional[tuple[str, str]]:
    """Makes (or finds) the data file of one task and length; when it cannot, returns
    (key, why): key is the task (missing inputs) or "task@length" (length too small)."""
    try:
        load_or_prepare(task, length, num_samples, tokenizer, tokenizer_name, opts, res, out,
                        counter)
        return None
    except registry.TaskNotRunnable as e:
        return task, str(e)
    except fit.LengthTooSmallError:
        least = registry.minimum_length(task, opts, res, tokenizer, counter)
        return f"{task}@{length}", (
            f"task {task} needs --lengths >= {least} with this tokenizer and template (its "
            f"smallest prompt plus the generated tokens); {length} is too small")


_WORKER: dict = {}  # per worker process: the tokenizer and its counter


def _prepare_job(job) -> tuple[str, int, Optional[tuple[str, str]], float]:
    import time
    from evals.ruler.text import load_tokenizer
    task, length, num_samples, tokenizer_path, tokenizer_name, opts, res, out = job
    if _WORKER.get("path") != tokenizer_path:
        tok = load_tokenizer(tokenizer_path)
        _WORKER.update(path=tokenizer_path, tok=tok, counter=PieceCounter(tok))
    t0 = time.perf_counter()
    why = prepare_one(task, length, num_samples, _WORKER["tok"], tokenizer_name, opts, res, out,
                      _WORKER["counter"])
    return task, length, why, time.perf_counter() - t0


def prepare_all(tasks: Sequence[str], lengths: Sequence[int], num_samples: int, tokenizer,
                tokenizer_name: str, opts: Options, res: registry.Resources, out: str, *,
                workers: int = 1, tokenizer_path: Optional[str] = None,
                counter: Optional[PieceCounter] = None
                ) -> dict[tuple[str, int], tuple[str, str]]:
    """Makes every data file (longest lengths first), in `workers` processes when a
    `tokenizer_path` lets them load the tokenizer; returns {(task, length): (key, why)}
    (see `prepare_one`)."""
    import time
    jobs = [(t, L) for L in sorted(set(lengths), reverse=True) for t in tasks]
    failed: dict[tuple[str, int], str] = {}
    t0 = time.perf_counter()
    if workers > 1 and tokenizer_path and len(jobs) > 1:
        import concurrent.futures
        import multiprocessing
        args = [(t, L, num_samples, tokenizer_path, tokenizer_name, opts, res, out)
                for t, L in jobs]
        with concurrent.futures.ProcessPoolExecutor(
                min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as ex:
            for task, length, why, secs in ex.map(_prepare_job, args):
                log.info("data %s@%d: %.1f s%s", task, length, secs,
                         f" ({why[1]})" if why else "")
                if why:
                    failed[(task, length)] = why
    else:
        counter = counter or PieceCounter(tokenizer)
        for task, length in jobs:
            why = prepare_one(task, length, num_samples, tokenizer, tokenizer_name, opts, res,
                              out, counter)
            if why:
                failed[(task, length)] = why
    log.info("RULER data for %d tasks x %d lengths ready in %.1f s (%d worker(s))", len(tasks),
             len(set(lengths)), time.perf_counter() - t0, max(1, workers))
    return failed


def run(runner, *, model: str, tokenizer, tokenizer_name: str, lengths: Sequence[int],
        tasks: Sequence[str], num_samples: int, out: str, opts: Options = Options(),
        res: registry.Resources = registry.Resources(), batch_size: int = 8,
        max_model_len: Optional[int] = None, stop: Sequence[str] = (), workers: int = 1,
        tokenizer_path: Optional[str] = None) -> dict:
    """Runs RULER and writes out/results.json; returns the results document.

    A task that cannot run (QA without its file) is listed under `not_run[task]`; a length
    too small for a task under `not_run["task@length"]`, with the smallest that works; the
    other tasks and lengths run. Data are made first (`prepare_all`, `workers` processes).
    """
    window = _model_window(runner, max_model_len)
    if window is not None and max(lengths) > window:
        raise ValueError(f"--lengths asks for {max(lengths)} tokens but the model's window "
                         f"is {window}; drop lengths above {window} or extend the model")
    counter = PieceCounter(tokenizer)
    failed = prepare_all(tasks, lengths, num_samples, tokenizer, tokenizer_name, opts, res,
                         out, workers=workers, tokenizer_path=tokenizer_path, counter=counter)
    rows: dict[int, dict[str, list]] = {}
    not_run: dict[str, str] = {}
    for key, why in failed.values():
        not_run[key] = why
        log.warning("not run: %s: %s", key, why)
    for length in lengths:
        for task in tasks:
            if (task, length) in failed:
                continue
            samples = load_or_prepare(task, length, num_samples, tokenizer, tokenizer_name,
                                      opts, res, out, counter)
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


__all__ = ["load_or_prepare", "predict_resumable", "prepare_all", "run", "fit"]
