"""The one interface every generator backend implements (vLLM, HTTP endpoint, extractive).

A backend has `generate(requests) -> list[Completion]` (order kept) and may also have
`generate_stream(requests)`, an iterator of `(index, Completion)` pairs in completion order.
Streaming is what makes long batches durable: the call cache records each completion as it
arrives, so a kill loses only the calls still in flight. `stream(backend, requests)` gives
the streaming view of any backend (a batch-only backend yields its whole batch at the end).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from typing import Any, Iterator, Protocol, Sequence


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
        """Content hash of (prompt, model, sampling params): the on-disk cache key.

        Memoised per request (weakly, outside the instance): a prompt holding a whole chunk
        is serialised and hashed once, however often its key is asked for.
        """
        memo = _KEYS.get(self)
        if memo is None:
            memo = _KEYS[self] = {}
        key = memo.get(model)
        if key is None:
            # The field dict is written out (dataclasses.asdict deep-copies the messages):
            # the same JSON at a third of the cost.
            payload = json.dumps({"model": model, "messages": [list(m) for m in self.messages],
                                  "max_tokens": self.max_tokens,
                                  "temperature": self.temperature, "top_p": self.top_p,
                                  "seed": self.seed, "json_schema": self.json_schema},
                                 sort_keys=True)
            key = memo[model] = hashlib.sha256(payload.encode()).hexdigest()
        return key


_KEYS: "weakref.WeakKeyDictionary[Request, dict[str, str]]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    error: str | None = None


class Generator(Protocol):
    """Batched text generation. Order is kept; one failed request yields a Completion with
    finish_reason "error" instead of raising, so one bad call never kills a batch.

    Optional: `generate_stream(requests)` yielding `(index, Completion)` as each request
    finishes (every index exactly once); `datagen.backends.base.stream` uses it when present.
    """

    model: str  # recorded in manifests and cache keys

    def generate(self, requests: Sequence[Request]) -> list[Completion]: ...

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the manifest (never secrets such as API keys)."""
        ...


def streams(backend: Any) -> bool:
    """Whether `backend.generate_stream` is its real path: a subclass that overrides
    `generate` below the class that defines `generate_stream` (a wrapper counting or logging
    calls) is driven through its `generate`."""
    if "generate_stream" in getattr(backend, "__dict__", {}):
        return True
    mro = type(backend).__mro__
    gs = next((c for c in mro if "generate_stream" in c.__dict__), None)
    g = next((c for c in mro if "generate" in c.__dict__), None)
    return gs is not None and (g is None or issubclass(gs, g))


def stream(backend: Any, requests: Sequence[Request]) -> Iterator[tuple[int, Completion]]:
    """`(index, Completion)` pairs as the backend finishes them; every index exactly once.

    Uses `backend.generate_stream` when it is the backend's real path (`streams`), else runs
    `generate` on the whole batch and yields its results in order. A backend that raises,
    or returns the wrong number of completions, yields error completions for what it did
    not answer.
    """
    if not requests:
        return
    seen: set[int] = set()
    try:
        if streams(backend):
            for i, c in backend.generate_stream(requests):
                if i not in seen:
                    seen.add(i)
                    yield i, c
        else:
            got = list(backend.generate(requests))
            if len(got) != len(requests):
                got = [Completion("", "error", f"backend returned {len(got)} completions for "
                                               f"{len(requests)} requests")] * len(requests)
            for i, c in enumerate(got):
                seen.add(i)
                yield i, c
    except Exception as e:  # noqa: BLE001 - a crashing backend fails its calls, not the run
        why = Completion("", "error", f"{type(e).__name__}: {e}")
        for i in range(len(requests)):
            if i not in seen:
                seen.add(i)
                yield i, why
        return
    missing = Completion("", "error", "backend stream ended without answering this request")
    for i in range(len(requests)):
        if i not in seen:
            yield i, missing
