"""ArrayRecord files of JSON objects: streamed writers that appear atomically, and readers
with random access (what the passage corpus and the input/output records need).

Conversation and input/output records are encoded by `lctx.records` (the schemas training
reads); passages are canonical JSON too (sorted keys, no whitespace): equal objects, equal
bytes, so reruns are byte-identical. A writer streams to a hidden temp file next to its target and
renames it into place on `commit`, so a killed run never leaves a half-written file under
the real name; `remove_stale_tmp` clears what a killed run of the same shard left.
"""
from __future__ import annotations

import bisect
import json
import os
from typing import Any, Callable, Iterator, Sequence

def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def tmp_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")


def remove_stale_tmp(directory: str, tag: str) -> None:
    """Deletes hidden temp files whose name holds `tag` (one shard's), never others'."""
    if not os.path.isdir(directory):
        return
    for root, _, files in os.walk(directory):
        for f in files:
            if f.startswith(".") and ".tmp-" in f and tag in f:
                os.remove(os.path.join(root, f))


class Writer:
    """Streams encoded objects into one ArrayRecord file; `commit` renames it into place."""

    def __init__(self, path: str, encode: Callable[[Any], bytes] = canonical):
        from array_record.python.array_record_module import ArrayRecordWriter
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.tmp, self.encode = path, tmp_path(path), encode
        self._w = ArrayRecordWriter(self.tmp, "group_size:1")
        self.count = 0

    def write(self, obj: Any) -> None:
        self._w.write(self.encode(obj))
        self.count += 1

    def commit(self) -> int:
        self._w.close()
        os.replace(self.tmp, self.path)
        return self.count

    def abort(self) -> None:
        self._w.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class Reader:
    """Random access to the JSON objects of one or more ArrayRecord files, as one list."""

    def __init__(self, paths: Sequence[str]):
        from array_record.python.array_record_module import ArrayRecordReader
        self.paths = list(paths)
        self._readers, self._starts, n = [], [], 0
        for p in self.paths:
            if not os.path.exists(p):
                raise FileNotFoundError(f"no ArrayRecord file at {p}")
            r = ArrayRecordReader(p)
            self._readers.append(r)
            self._starts.append(n)
            n += r.num_records()
        self._n = n

    def __len__(self) -> int:
        return self._n

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self._n:
            raise IndexError(f"record {i} of {self._n}")
        f = bisect.bisect_right(self._starts, i) - 1
        return f, i - self._starts[f]

    def get(self, indices: Sequence[int]) -> list[Any]:
        """The objects at `indices` (any order, repeats allowed)."""
        by_file: dict[int, list[tuple[int, int]]] = {}
        for pos, i in enumerate(indices):
            f, j = self._locate(int(i))
            by_file.setdefault(f, []).append((pos, j))
        out: list[Any] = [None] * len(indices)
        for f, items in by_file.items():
            blobs = self._readers[f].read([j for _, j in items])
            for (pos, _), b in zip(items, blobs):
                out[pos] = json.loads(b)
        return out

    def __iter__(self) -> Iterator[Any]:
        for r in self._readers:
            for start in range(0, r.num_records(), 256):
                for b in r.read(list(range(start, min(start + 256, r.num_records())))):
                    yield json.loads(b)

    def close(self) -> None:
        for r in self._readers:
            r.close()
