"""Resumable, batched prediction shared by the evaluation runs.

Predictions are appended to a JSONL file, one row per finished item, flushed per batch: a
killed run redoes at most one batch, and a rerun predicts only what is missing. A line cut by
an interruption is ignored (that item is redone).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

from tqdm import tqdm


def read_done(path: str, key: str = "index") -> dict[Any, dict]:
    """The finished rows of a prediction file, by `key` (later lines win)."""
    done: dict[Any, dict] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupted run: redo that item
                if isinstance(row, dict) and key in row:
                    done[row[key]] = row
    return done


def predict_resumable(runner, items: Sequence[dict], path: str, *, prompt: Callable[[dict], Any],
                      row: Callable[[dict, str], dict], max_new_tokens: int,
                      stop: Sequence[str] = (), batch_size: int = 8, key: str = "index",
                      desc: str = "predict", generate_kwargs: dict | None = None
                      ) -> dict[Any, dict]:
    """Predicts the items not yet in `path`; returns every row by `key`.

    Args:
      runner: an `evals.runners.base.Runner`.
      items: the items; `item[key]` identifies each.
      path: the JSONL prediction file (appended).
      prompt: item -> the runner's prompt (text or token ids); called per batch only.
      row: (item, prediction) -> the row to write (must hold `key`).
      max_new_tokens, stop: generation settings.
      generate_kwargs: further keyword arguments of `runner.generate`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    done = read_done(path, key)
    todo = [it for it in items if it[key] not in done]
    with open(path, "a", encoding="utf-8") as f, \
            tqdm(total=len(items), initial=len(items) - len(todo), desc=desc,
                 dynamic_ncols=True) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            preds = runner.generate([prompt(it) for it in batch], max_new_tokens, list(stop),
                                    **(generate_kwargs or {}))
            for it, pred in zip(batch, preds):
                r = row(it, pred)
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                done[r[key]] = r
            f.flush()
            bar.update(len(batch))
    return done
