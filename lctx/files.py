"""Atomic file output: a reader (or a rerun after kill -9) sees the old file or the new one,
never a part. JAX-free, so `datagen` and `evals` may use it too.

    atomic_write(path, text_or_bytes)          # small files: JSON, text, markers
    with atomic_output(path) as tmp:           # writers that need a path (ArrayRecord, PNG)
        writer(tmp)
    for rec in json_lines(path): ...           # a JSON-lines log, a killed run's cut line skipped
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


def temp_path(path: str) -> str:
    """A hidden temporary name beside `path` (same filesystem, so the rename is atomic);
    creates the directory."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path to write; renames it to `path` when the block succeeds and
    removes it when the block fails."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def json_lines(path: str) -> Iterator[Any]:
    """The JSON values of a JSON-lines log, skipping a line cut short by a killed writer
    (nothing when the file does not exist)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
