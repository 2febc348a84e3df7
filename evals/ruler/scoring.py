"""RULER scoring: the reference's prediction cleaning and metrics, aggregation, effective
context length, and the results JSON.

Facts from NVIDIA/RULER `scripts/eval/evaluate.py` and `eval/synthetic/constants.py`:
predictions are stripped, every control character U+0000-U+001F becomes a newline, stripped
again; references match as case-insensitive substrings (so '12' is found in '123', a known
false positive of the metric); string_match_all averages the fraction of references found,
string_match_part scores 1 when any reference is found; x100, rounded to 2 decimals.
Effective length (He et al., RULER paper): the longest length L such that every tested length
<= L scores strictly above 85.6 (Llama-2-7B-chat at 4K).
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Mapping, Optional, Sequence

from evals.ruler import constants

EFFECTIVE_THRESHOLD = 85.6
_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(pred: str) -> str:
    """The reference's cleaning: strip, control characters -> newline, strip."""
    return _CONTROL.sub("\n", pred.strip()).strip()


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean fraction of references contained (case-insensitive) in each prediction, x100."""
    if not preds:
        raise ValueError("string_match_all: no predictions")
    total = sum(sum(r.lower() in p.lower() for r in ref) / len(ref)
                for p, ref in zip(preds, refs))
    return round(total / len(preds) * 100, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions containing any reference (case-insensitive), x100."""
    if not preds:
        raise ValueError("string_match_part: no predictions")
    total = sum(max(float(r.lower() in p.lower()) for r in ref) for p, ref in zip(preds, refs))
    return round(total / len(preds) * 100, 2)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def score_task(task: str, rows: Iterable[Mapping]) -> dict:
    """Score rows holding `pred` and `outputs` for one RULER task (its reference metric)."""
    rows = list(rows)
    metric = constants.METRIC[constants.TASKS[task].family]
    preds = [postprocess_pred(r["pred"]) for r in rows]
    refs = [list(r["outputs"]) for r in rows]
    return {"score": METRICS[metric](preds, refs), "metric": metric, "n": len(rows),
            "nulls": f"{sum(len(p) == 0 for p in preds)}/{len(preds)}"}


def length_means(scores: Mapping[int, Mapping[str, float]],
                 weights: Optional[Mapping[str, float]] = None) -> dict[int, float]:
    """Per length, the (weighted) mean over the tasks scored at that length.

    Args:
      scores: {length: {task: score}}.
      weights: optional {task: weight}; tasks without a weight count 0. None = plain mean,
        the reference's per-length score.
    """
    out = {}
    for length, per_task in sorted(scores.items()):
        if not per_task:
            continue
        w = {t: (1.0 if weights is None else float(weights.get(t, 0.0))) for t in per_task}
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"length {length}: weights sum to zero over {sorted(per_task)}")
        out[int(length)] = round(sum(per_task[t] * w[t] for t in per_task) / total, 2)
    return out


def weighted_average(means: Mapping[int, float], mode: str = "inc") -> float:
    """RULER's weighted average over lengths: 'inc' weights grow linearly with length rank
    (wAvg inc), 'dec' shrink linearly (wAvg dec), 'avg' is the plain mean."""
    lengths = sorted(means)
    if not lengths:
        raise ValueError("weighted_average: no lengths")
    n = len(lengths)
    if mode == "inc":
        w = [i + 1 for i in range(n)]
    elif mode == "dec":
        w = [n - i for i in range(n)]
    elif mode == "avg":
        w = [1] * n
    else:
        raise ValueError(f"mode {mode!r}: use inc, dec or avg")
    return round(sum(means[L] * wi for L, wi in zip(lengths, w)) / sum(w), 2)


def effective_length(means: Mapping[int, float],
                     threshold: float = EFFECTIVE_THRESHOLD) -> int:
    """Longest tested length L with every length <= L scoring strictly above `threshold`;
    0 when the shortest length already fails."""
    best = 0
    for length in sorted(means):
        if means[length] > threshold:
            best = length
        else:
            break
    return best


def summarize(task_scores: Mapping[int, Mapping[str, float]],
              threshold: float = EFFECTIVE_THRESHOLD) -> dict:
    """Per-length means, weighted averages and the effective length."""
    means = length_means(task_scores)
    return {"length_means": {str(k): v for k, v in means.items()},
            "avg": weighted_average(means, "avg") if means else None,
            "wavg_inc": weighted_average(means, "inc") if means else None,
            "wavg_dec": weighted_average(means, "dec") if means else None,
            "effective_length": effective_length(means, threshold) if means else 0,
            "threshold": threshold}


def build_results(model: str, settings: Mapping, per_length_rows: Mapping[int, Mapping[str, list]],
                  not_run: Mapping[str, str] | None = None) -> dict:
    """The results document: model, settings, scores and every prediction.

    Args:
      per_length_rows: {length: {task: rows with index, pred, outputs}}.
      not_run: {task: reason} for tasks that could not run (QA without its file).
    """
    task_scores, tasks = {}, {}
    for length, per_task in sorted(per_length_rows.items()):
        for task, rows in per_task.items():
            s = score_task(task, rows)
            task_scores.setdefault(int(length), {})[task] = s["score"]
            tasks.setdefault(str(length), {})[task] = {
                **s, "predictions": [{"index": r["index"], "pred": r["pred"],
                                      "outputs": r["outputs"]} for r in rows]}
    return {"schema": "lctx.ruler_results/v1", "model": model, "settings": dict(settings),
            "scores": {str(k): v for k, v in task_scores.items()},
            "summary": summarize(task_scores), "not_run": dict(not_run or {}),
            "tasks": tasks}


def write_json(path: str, doc: Mapping) -> None:
    """Atomic JSON write."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def load_results(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if doc.get("schema") != "lctx.ruler_results/v1":
        raise ValueError(f"{path}: not an lctx RULER results file (schema "
                         f"{doc.get('schema')!r})")
    return doc
