"""The one interface every generator backend implements (vLLM, HTTP endpoint, extractive)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Request:
    """One chat call. `json_schema` asks for structured JSON output where the backend can."""
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...)
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    json_schema: str | None = None  # JSON Schema, serialised with sorted keys

    def cache_key(self, model: str) -> str:
        """Content hash of (prompt, model, sampling params): the on-disk cache key."""
        payload = json.dumps({"model": model, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    error: str | None = None


class Generator(Protocol):
    """Batched text generation. Order is kept; one failed request yields a Completion with
    finish_reason "error" instead of raising, so one bad call never kills a batch."""

    model: str  # recorded in manifests and cache keys

    def generate(self, requests: Sequence[Request]) -> list[Completion]: ...

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the manifest (never secrets such as API keys)."""
        ...
