"""Corpus readers: JSONL, plain text files or directories, Parquet, local HF `datasets`
directories, and the KJV books. Bad documents (and unreadable files) are skipped with a
recorded reason, never fatal.

Every reader yields `Document`s in a deterministic order (sorted paths, file order), which is
what makes `--shard i --num-shards n` sharding reproducible. Document ids are paths relative
to the corpus root (`a/ch1.txt`, `part-2.jsonl:17`) or a record's own `id`; an id seen twice
gets `#1`, `#2`... so every document (and the seeds drawn from its id) is distinct.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterator


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    source: str


@dataclasses.dataclass(frozen=True)
class Skip:
    doc_id: str
    reason: str


class CorpusError(ValueError):
    """A corpus that cannot be read at all (missing path, unknown format)."""


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for raw file bytes."""
    if b"\x00" in raw[:65536]:
        return None, "binary (NUL bytes)"
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e.reason} at byte {e.start})"


def check_text(doc_id: str, text: object, min_chars: int) -> str | None:
    """Reason to skip a document's text, or None if it is usable."""
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty"
    if "\x00" in text:
        return "binary (NUL characters)"
    if len(text.strip()) < min_chars:
        return f"too short ({len(text.strip())} < min_chars={min_chars})"
    return None


def _records_jsonl(path: str, field: str, rel: str) -> Iterator[tuple[str, object]]:
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            did = f"{rel}:{i + 1}"
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield did, ValueError(f"line is not UTF-8 JSON ({e})")
                continue
            if not isinstance(obj, dict) or field not in obj:
                yield did, ValueError(f"no {field!r} field (set --text-field)")
                continue
            yield str(obj.get("id", did)), obj[field]


def _records_parquet(path: str, field: str, rel: str) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        yield rel, ValueError(f"unreadable Parquet file ({type(e).__name__}: {e})"[:300])
        return
    if field not in table.column_names:
        raise CorpusError(f"{path}: no column {field!r} (columns: {table.column_names}); "
                          f"set --text-field")
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    for i, text in enumerate(table.column(field).to_pylist()):
        yield (str(ids[i]) if ids else f"{rel}:{i}"), text


def _records_hf(path: str, field: str) -> Iterator[tuple[str, object]]:
    """Rows of a `datasets.save_to_disk` directory: through `datasets` when installed,
    else straight from its Arrow IPC stream files (the format save_to_disk writes)."""
    try:
        import datasets  # optional dependency, imported only for this format
    except ImportError:
        datasets = None
    if datasets is not None:
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[sorted(ds.keys())[0]]
        if field not in ds.column_names:
            raise CorpusError(f"{path}: no column {field!r} (columns: {ds.column_names}); "
                              f"set --text-field")
        for i, text in enumerate(ds[field]):
            yield f"{os.path.basename(path)}:{i}", text
        return
    import pyarrow as pa
    arrows = sorted(glob.glob(os.path.join(path, "**", "*.arrow"), recursive=True))
    if not arrows:
        raise CorpusError(f"{path}: a datasets directory without .arrow files")
    n = 0
    for a in arrows:
        with pa.memory_map(a) as src:
            table = pa.ipc.open_stream(src).read_all()
        if field not in table.column_names:
            raise CorpusError(f"{a}: no column {field!r} (columns: {table.column_names}); "
                              f"set --text-field")
        for text in table.column(field).to_pylist():
            yield f"{os.path.basename(path)}:{n}", text
            n += 1


def _file_records(path: str, field: str, rel: str) -> Iterator[tuple[str, object]]:
    """(id, text or the Exception saying why not) for each record of one file; `rel` is the
    file's path relative to the corpus root."""
    if path.endswith((".jsonl", ".json")):
        yield from _records_jsonl(path, field, rel)
    elif path.endswith(".parquet"):
        yield from _records_parquet(path, field, rel)
    else:
        try:
            with open(path, "rb") as f:
                text, why = _decode(f.read())
        except OSError as e:
            text, why = None, f"unreadable ({e.strerror})"
        yield rel, (text if why is None else ValueError(why))


def iter_corpus(spec: str, text_field: str = "text", min_chars: int = 200
                ) -> Iterator[Document | Skip]:
    """Yields Documents and Skips for a corpus spec.

    Args:
      spec: "kjv" (the 66 KJV books), a file (.jsonl/.json/.parquet/anything else = plain
        text), a directory of such files, or a directory written by `datasets.save_to_disk`.
      text_field: the JSONL key / column holding the text.
      min_chars: documents shorter than this (after stripping) are skipped.
    """
    seen: dict[str, int] = {}

    def unique(did: str) -> str:
        n = seen.get(did, 0)
        seen[did] = n + 1
        return did if n == 0 else f"{did}#{n}"

    if spec == "kjv":
        from lctx.corpora import kjv_books
        for book, text in kjv_books():
            why = check_text(book, text, min_chars)
            yield Skip(book, why) if why else Document(book, text, "kjv")
        return
    if not os.path.exists(spec):
        raise CorpusError(f"corpus path {spec!r} does not exist; pass --corpus=kjv, a file "
                          f"(.jsonl/.parquet/.txt) or a directory")
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "dataset_info.json")) or \
            os.path.isdir(spec) and os.path.exists(os.path.join(spec, "dataset_dict.json")):
        items = ((spec, r) for r in _records_hf(spec, text_field))
    elif os.path.isdir(spec):
        files = sorted(p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True)
                       if os.path.isfile(p) and not os.path.basename(p).startswith("."))
        if not files:
            raise CorpusError(f"corpus directory {spec!r} holds no files")
        items = ((p, r) for p in files
                 for r in _file_records(p, text_field, os.path.relpath(p, spec)))
    else:
        items = ((spec, r) for r in _file_records(spec, text_field, os.path.basename(spec)))
    for src, (did, text) in items:
        did = unique(did)
        if isinstance(text, Exception):
            yield Skip(did, str(text))
            continue
        why = check_text(did, text, min_chars)
        yield Skip(did, why) if why else Document(did, text, src)


def load_corpus(spec: str, text_field: str = "text", min_chars: int = 200
                ) -> tuple[list[Document], list[Skip]]:
    """All documents and skips of a corpus (see iter_corpus; ids are unique)."""
    docs, skips = [], []
    for item in iter_corpus(spec, text_field, min_chars):
        (skips if isinstance(item, Skip) else docs).append(item)
    return docs, skips
