"""Conversation records: the versioned on-disk schema shared by `datagen` and training.

A record is one UTF-8 JSON object (never pickle), stored one per ArrayRecord entry:

    {"schema": "lctx.conversation/v1",
     "id": "<unique id>",
     "messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
     "meta": {...free-form, JSON-serialisable...}}

Training computes loss on assistant turns only (He et al. 2025: "loss solely on answers").
This module imports no JAX, so the JAX-free `datagen` package can share it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator

from lctx import files

SCHEMA = "lctx.conversation/v1"
ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the field."""


def make_record(rid: str, messages: list[dict[str, str]], meta: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Builds and validates a record."""
    rec = {"schema": SCHEMA, "id": str(rid), "messages": list(messages), "meta": dict(meta or {})}
    validate(rec)
    return rec


def validate(rec: Any, where: str = "record") -> dict[str, Any]:
    """Checks `rec` against the schema and returns it; raises RecordError naming the field."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected a JSON object, found {type(rec).__name__}")
    if rec.get("schema") != SCHEMA:
        raise RecordError(f"{where}: field 'schema' is {rec.get('schema')!r}; this reader "
                          f"understands {SCHEMA!r} (regenerate the data or upgrade lctx)")
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        raise RecordError(f"{where}: field 'id' must be a non-empty string")
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(f"{where} {rec['id']!r}: field 'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise RecordError(f"{where} {rec['id']!r}: messages[{i}] must be an object with "
                              f"exactly the keys 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RecordError(f"{where} {rec['id']!r}: messages[{i}].role is {m['role']!r}; "
                              f"expected one of {ROLES}")
        if not isinstance(m["content"], str):
            raise RecordError(f"{where} {rec['id']!r}: messages[{i}].content must be a string")
    if not isinstance(rec.get("meta", {}), dict):
        raise RecordError(f"{where} {rec['id']!r}: field 'meta' must be an object")
    return rec


def has_assistant_turn(rec: dict[str, Any]) -> bool:
    return any(m["role"] == "assistant" and m["content"] for m in rec["messages"])


def _canonical(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{where}: not a UTF-8 JSON record ({e})") from e


def encode(rec: dict[str, Any]) -> bytes:
    """Canonical bytes of a record (sorted keys, no whitespace): equal records, equal bytes."""
    return _canonical(validate(rec))


def decode(data: bytes, where: str = "record") -> dict[str, Any]:
    return validate(_json(data, where), where)


# ---- the plain input/output form ------------------------------------------------------
# {"schema": "lctx.input_output/v1", "id": ..., "input": "<context + prompt>",
#  "output": "<answer>", "meta": {...}}: what activation-beacon style training reads (loss on
# the output only; the trainer joins the two). Written by datagen.selfgen beside each
# conversation record with the same id and meta.
IO_SCHEMA = "lctx.input_output/v1"


def make_io_record(rid: str, input_text: str, output_text: str,
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Builds and validates an input/output record."""
    return validate_io({"schema": IO_SCHEMA, "id": str(rid), "input": input_text,
                        "output": output_text, "meta": dict(meta or {})})


def validate_io(rec: Any, where: str = "record") -> dict[str, Any]:
    """Checks an input/output record; raises RecordError naming the field."""
    if not isinstance(rec, dict) or rec.get("schema") != IO_SCHEMA:
        raise RecordError(f"{where}: not an {IO_SCHEMA!r} record (field 'schema' is "
                          f"{rec.get('schema') if isinstance(rec, dict) else None!r})")
    for k in ("id", "input", "output"):
        if not isinstance(rec.get(k), str) or not rec[k]:
            raise RecordError(f"{where}: field {k!r} must be a non-empty string")
    if not isinstance(rec.get("meta", {}), dict):
        raise RecordError(f"{where} {rec['id']!r}: field 'meta' must be an object")
    return rec


def encode_io(rec: dict[str, Any]) -> bytes:
    """Canonical bytes of an input/output record."""
    return _canonical(validate_io(rec))


def decode_io(data: bytes, where: str = "record") -> dict[str, Any]:
    return validate_io(_json(data, where), where)


def write_array_record(path: str, records: Iterable[dict[str, Any]]) -> int:
    """Writes records to one ArrayRecord shard atomically (temp file + rename); returns count."""
    from array_record.python.array_record_module import ArrayRecordWriter
    n = 0
    with files.atomic_output(path) as tmp:
        writer = ArrayRecordWriter(tmp, "group_size:1")
        try:
            for rec in records:
                writer.write(encode(rec))
                n += 1
        finally:
            writer.close()
    return n


def read_array_record(path: str) -> Iterator[dict[str, Any]]:
    """Yields the records of one ArrayRecord shard, validated."""
    from array_record.python.array_record_module import ArrayRecordReader
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ArrayRecord shard at {path}")
    reader = ArrayRecordReader(path)
    try:
        for i in range(reader.num_records()):
            yield decode(reader.read([i])[0], where=f"{path}[{i}]")
    finally:
        reader.close()


def write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> int:
    """Writes records as JSON lines atomically; returns count."""
    n = 0
    with files.atomic_output(path) as tmp, open(tmp, "wb") as f:
        for rec in records:
            f.write(encode(rec) + b"\n")
            n += 1
    return n


def read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if line.strip():
                yield decode(line, where=f"{path}:{i + 1}")
