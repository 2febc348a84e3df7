"""Crash-safe on-disk cache of generator calls, keyed by `Request.cache_key(model)`.

Each worker appends to its own `calls-<worker>.jsonl`, one line per call, written the moment
the backend finishes that call (`datagen.backends.base.stream`): a kill -9 loses only the
calls in flight, never a finished one. Lines reach the OS at once (a killed process loses
nothing written); they are fsynced at most `fsync_every_s` apart and at the end of every
batch, so a machine crash loses at most that much. On open, a last line torn by a kill
(no final newline) is cut off, so the next entry starts on a line of its own. All workers'
files are read at start, so a rerun (any shard layout) re-issues no completed call.

Error completions are recorded too, as attempts: `qa.Caller` replays a recorded error as
that attempt's outcome (so a rerun takes the same retry path and writes the same bytes),
while `generate` and `stream` without `replay_errors` treat them as misses and send again.
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Iterator, Sequence

from datagen.backends.base import Completion, Request, stream


def repair_torn_tail(path: str) -> int:
    """Cuts a last line that lacks its newline (a write torn by a kill); returns bytes cut."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Scan back for the last newline, 64 KiB at a time (lines are a few KiB).
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


class CachedGenerator:
    """Wraps a Generator; answers from the cache and sends only the misses to the backend.

    Args:
      backend: any `Generator` (streaming or not).
      cache_dir: shared by all workers of a dataset.
      worker: this worker's name (its own `calls-<worker>.jsonl`).
      fsync_every_s: longest time between fsyncs while a batch streams in.
    """

    def __init__(self, backend: Any, cache_dir: str, worker: str = "0",
                 fsync_every_s: float = 1.0):
        self.backend = backend
        self.model = backend.model
        self.cache_dir = cache_dir
        os.makedirs(cache_dir, exist_ok=True)
        self.path = os.path.join(cache_dir, f"calls-{worker}.jsonl")
        self.repaired_bytes = repair_torn_tail(self.path)
        self._mem: dict[str, Completion] = {}
        self._err: dict[str, Completion] = {}
        for path in sorted(glob.glob(os.path.join(cache_dir, "calls-*.jsonl"))):
            self._load(path)
        self._f = open(self.path, "ab", buffering=0)
        self.fsync_every_s = fsync_every_s
        self._synced = time.monotonic()
        self.hits = self.misses = self.replayed_errors = 0
        self.backend_seconds = 0.0

    def _load(self, path: str) -> None:
        with open(path, "rb") as f:
            for line in f:
                try:
                    e = json.loads(line)
                    c = Completion(e["text"], e["finish_reason"], e.get("error"))
                    key = e["key"]
                except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                    continue  # another worker's line still being written
                if c.finish_reason == "error":
                    if key not in self._mem:
                        self._err[key] = c
                else:
                    self._mem[key] = c
                    self._err.pop(key, None)

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def __contains__(self, req: Request) -> bool:
        return req.cache_key(self.model) in self._mem

    @property
    def recorded_errors(self) -> int:
        """How many calls have a recorded error and no success."""
        return len(self._err)

    def recorded_error(self, req: Request) -> Completion | None:
        """The recorded error of a call that never succeeded, else None."""
        return self._err.get(req.cache_key(self.model)) if self._err else None

    def _record(self, key: str, c: Completion) -> None:
        entry = {"key": key, "text": c.text, "finish_reason": c.finish_reason}
        if c.finish_reason == "error":
            entry["error"] = c.error
            self._err[key] = c
        else:
            self._mem[key] = c
            self._err.pop(key, None)
        self._f.write((json.dumps(entry) + "\n").encode())
        now = time.monotonic()
        if now - self._synced >= self.fsync_every_s:
            os.fsync(self._f.fileno())
            self._synced = now

    def stream(self, requests: Sequence[Request], replay_errors: bool | Sequence[bool] = False
               ) -> Iterator[tuple[int, Completion]]:
        """`(index, Completion)` for every request: cache hits first, then the backend's
        answers as they finish, each recorded before it is yielded.

        Args:
          requests: the calls; duplicates go to the backend once.
          replay_errors: per request (or for all), whether a recorded error counts as a hit.
        """
        keys = [r.cache_key(self.model) for r in requests]
        replay = ([bool(replay_errors)] * len(requests) if isinstance(replay_errors, bool)
                  else list(replay_errors))
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            c = self._mem.get(k)
            if c is None and replay[i]:
                c = self._err.get(k)
                self.replayed_errors += c is not None
            if c is not None:
                self.hits += 1
                yield i, c
            else:
                todo.setdefault(k, []).append(i)
        if not todo:
            return
        sent = list(todo)
        self.misses += len(sent)
        answers = stream(self.backend, [requests[todo[k][0]] for k in sent])
        try:
            while True:
                t0 = time.perf_counter()  # only the backend's time, not the consumer's
                got = next(answers, None)
                self.backend_seconds += time.perf_counter() - t0
                if got is None:
                    break
                j, c = got
                self._record(sent[j], c)
                for i in todo[sent[j]]:
                    yield i, c
        finally:
            answers.close()
            os.fsync(self._f.fileno())
            self._synced = time.monotonic()

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """All completions in request order (recorded errors are sent again)."""
        out: list[Completion | None] = [None] * len(requests)
        for i, c in self.stream(requests):
            out[i] = c
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if not self._f.closed:
            os.fsync(self._f.fileno())
            self._f.close()
