"""Crash-safe on-disk cache of generator calls, keyed by `Request.cache_key(model)`.

Each worker appends to its own `calls-<worker>.jsonl` and fsyncs after every batch, so a
kill -9 loses at most the batch in flight; a torn last line is ignored on load. All workers'
files are read at start, so a rerun (any shard layout) re-issues no completed call. Error
completions are not cached: they are not completed work and are retried on the next run.
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Sequence

from datagen.backends.base import Completion, Request


class CachedGenerator:
    """Wraps a Generator; answers from the cache and sends only the misses to the backend."""

    def __init__(self, backend: Any, cache_dir: str, worker: str = "0"):
        self.backend = backend
        self.model = backend.model
        self.cache_dir = cache_dir
        os.makedirs(cache_dir, exist_ok=True)
        self._mem: dict[str, Completion] = {}
        for path in sorted(glob.glob(os.path.join(cache_dir, "calls-*.jsonl"))):
            self._load(path)
        self.path = os.path.join(cache_dir, f"calls-{worker}.jsonl")
        self._f = open(self.path, "ab")
        self.hits = self.misses = 0
        self.backend_seconds = 0.0

    def _load(self, path: str) -> None:
        with open(path, "rb") as f:
            for line in f:
                try:
                    e = json.loads(line)
                    self._mem[e["key"]] = Completion(e["text"], e["finish_reason"])
                except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
                    continue  # a line torn by a crash mid-write

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def __contains__(self, req: Request) -> bool:
        return req.cache_key(self.model) in self._mem

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        keys = [r.cache_key(self.model) for r in requests]
        out: list[Completion | None] = [self._mem.get(k) for k in keys]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if out[i] is None}
                      .values())
        self.hits += len(requests) - len(todo)
        if todo:
            self.misses += len(todo)
            t0 = time.perf_counter()
            try:
                got = list(self.backend.generate([requests[i] for i in todo]))
            except Exception as e:  # noqa: BLE001 - a crashing backend fails the batch, not us
                got = [Completion("", "error", f"{type(e).__name__}: {e}")] * len(todo)
            self.backend_seconds += time.perf_counter() - t0
            if len(got) != len(todo):
                got = [Completion("", "error", f"backend returned {len(got)} completions for "
                                               f"{len(todo)} requests")] * len(todo)
            lines = []
            for i, c in zip(todo, got):
                self._mem[keys[i]] = c
                if c.finish_reason != "error":
                    lines.append(json.dumps({"key": keys[i], "text": c.text,
                                             "finish_reason": c.finish_reason}) + "\n")
            if lines:
                self._f.write("".join(lines).encode())
                self._f.flush()
                os.fsync(self._f.fileno())
            for i, k in enumerate(keys):
                if out[i] is None:
                    out[i] = self._mem[k]
            for i, c in zip(todo, got):  # errors stay out of the cache across runs
                if c.finish_reason == "error":
                    self._mem.pop(keys[i], None)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self._f.close()
