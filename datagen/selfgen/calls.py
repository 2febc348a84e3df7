"""Generator calls for many samples at once: per-sample coroutines, batched rounds, retries.

Each sample's generation is a Python generator ("coroutine") that yields a list of `Call`s
and receives their `Outcome`s, as many rounds as it needs (a code program needs a round per
policy step). `Runner.run` advances a whole batch of such coroutines in lockstep: every round
sends the calls of all waiting samples in ONE `generate` call, so a vLLM engine gets full
batches, and every call goes through the crash-safe cache (`datagen.cache.CachedGenerator`):
a rerun after a crash re-sends nothing that completed.

A call whose output does not parse is retried with a seed derived from its own seed and the
attempt number, so reruns draw the same retries; a backend error the cache recorded is
replayed as that attempt's outcome (as `datagen.qa.Caller` does), so a rerun after transient
failures walks the same retry path and writes the same bytes; only a call whose every
attempt is a recorded error is sent afresh. What each attempt got wrong is kept in the
outcome (e.g. the SyntaxError of generated code) for the sample's metadata.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Any, Callable, Generator, Sequence

from datagen import jsonfix
from datagen.backends.base import Request
from datagen.jsonfix import BadOutput

# (text, finish_reason) -> parsed value; raises BadOutput (or any error) to retry.
Parse = Callable[[str, str], Any]
Coroutine = Generator[list["Call"], list["Outcome"], Any]


@dataclasses.dataclass(frozen=True)
class Call:
    kind: str                # for statistics, e.g. "passage", "code_func"
    prompt: str              # the user message
    seed: int
    max_tokens: int
    parse: Parse
    json_schema: str | None = None


@dataclasses.dataclass
class Outcome:
    value: Any               # the parsed value; None when every attempt failed
    attempts: int
    errors: list[str]        # why each failed attempt was rejected, in order

    @property
    def ok(self) -> bool:
        return self.value is not None


class Runner:
    """Runs calls through a (cached) generator with parsing and bounded retries."""

    def __init__(self, gen: Any, temperature: float, top_p: float, max_attempts: int,
                 on_calls: Callable[[int], None] | None = None):
        self.gen, self.temperature, self.top_p = gen, temperature, top_p
        self.max_attempts, self.on_calls = max_attempts, on_calls
        self.stats: collections.Counter[str] = collections.Counter()
        self.failure_reasons: collections.Counter[str] = collections.Counter()

    def request(self, call: Call, attempt: int) -> Request:
        return Request(messages=(("user", call.prompt),), max_tokens=call.max_tokens,
                       temperature=self.temperature, top_p=self.top_p,
                       seed=(call.seed + 7919 * attempt) & 0x7FFFFFFF,
                       json_schema=call.json_schema)

    def _fresh(self, calls: Sequence[Call]) -> set[int]:
        """Calls whose every attempt is a recorded error: sent again, not replayed."""
        if not getattr(self.gen, "recorded_errors", 0):
            return set()
        return {i for i, c in enumerate(calls)
                if all(self.gen.recorded_error(self.request(c, k))
                       for k in range(self.max_attempts))}

    def _answers(self, reqs: list, replay: list[bool]) -> list:
        if not hasattr(self.gen, "stream"):
            return self.gen.generate(reqs)
        out = [None] * len(reqs)
        for j, c in self.gen.stream(reqs, replay_errors=replay):
            out[j] = c
            if self.on_calls:
                self.on_calls(1)  # progress moves with every finished call
        return out

    def calls(self, calls: Sequence[Call]) -> list[Outcome]:
        """Every call, retried until it parses or runs out of attempts; order kept."""
        out = [Outcome(None, 0, []) for _ in calls]
        pending, fresh = list(range(len(calls))), self._fresh(calls)
        for attempt in range(self.max_attempts):
            if not pending:
                break
            comps = self._answers([self.request(calls[i], attempt) for i in pending],
                                  [i not in fresh for i in pending])
            self.stats["calls"] += len(pending)
            retry = []
            for i, c in zip(pending, comps):
                out[i].attempts += 1
                try:
                    if c.finish_reason == "error":
                        raise BadOutput(f"backend error: {c.error}")
                    out[i].value = calls[i].parse(c.text, c.finish_reason)
                    if out[i].value is None:
                        raise BadOutput("parser returned nothing")
                    self.stats["retried_ok"] += attempt > 0
                except Exception as e:  # noqa: BLE001 - bad output fails this call only
                    out[i].errors.append(str(e) if isinstance(e, BadOutput) else
                                         f"unparseable ({type(e).__name__}: {e})")
                    retry.append(i)
            pending = retry
        for i in pending:
            self.stats[f"failed/{calls[i].kind}"] += 1
            self.failure_reasons[out[i].errors[-1][:120]] += 1
        return out

    def run(self, coros: Sequence[Coroutine]) -> list[Any]:
        """Drives the coroutines to completion in lockstep rounds; returns their values."""
        results: list[Any] = [None] * len(coros)
        waiting: dict[int, list[Call]] = {}

        def step(i: int, sent: list[Outcome] | None) -> None:
            try:
                calls = coros[i].send(sent) if sent is not None else next(coros[i])
            except StopIteration as stop:
                results[i] = stop.value
                return
            waiting[i] = list(calls)

        for i in range(len(coros)):
            step(i, None)
        while waiting:
            order = sorted(waiting)
            flat = [c for i in order for c in waiting[i]]
            outs = self.calls(flat)
            at, batch = 0, {}
            for i in order:
                n = len(waiting[i])
                batch[i], at = outs[at:at + n], at + n
            waiting.clear()
            for i in order:
                step(i, batch[i])
        return results


# ---- parsers ---------------------------------------------------------------------------

def prose(max_words: int, min_words: int = 1) -> Parse:
    """Plain text (whitespace collapsed), cut to complete sentences within `max_words`
    (datagen.jsonfix's summary rule). Text with no sentence end at all (a weak generator's)
    is kept as its first `max_words` words rather than retried forever."""
    def parse(text: str, reason: str) -> str:
        try:
            s, _ = jsonfix.parse_summary(text, reason, max_words)
        except BadOutput as e:
            words = (text or "").split()
            if "no complete sentence" not in str(e) or not words:
                raise
            s = " ".join(words[:max_words])
        s = s.strip().strip('"').strip()
        if len(s.split()) < min_words:
            raise BadOutput(f"only {len(s.split())} words (need >= {min_words})")
        return s
    return parse


def qa(text: str, reason: str) -> dict[str, str]:
    """{"question", "answer"}: strict JSON (control characters allowed inside strings, as
    structured decoding may emit them), else datagen.jsonfix's parser and safe repairs."""
    try:
        return json_fields(("question", "answer"))(text, reason)
    except BadOutput:
        return jsonfix.parse_qa(text, reason)[0]


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def json_fields(fields: Sequence[str] = (), array: str = "", items: int = 0) -> Parse:
    """A JSON object with the given non-empty string fields (and a string array)."""
    def parse(text: str, reason: str) -> dict[str, Any]:
        s = (text or "").strip()
        fenced = _FENCE.search(s)
        cands = ([fenced.group(1)] if fenced else []) + [s]
        if "{" in s and "}" in s:
            cands.append(s[s.index("{"):s.rindex("}") + 1])
        for cand in cands:
            try:
                obj = json.loads(cand, strict=False)  # raw control chars inside strings
            except json.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            out = {}
            for f in fields:
                v = obj.get(f)
                if not isinstance(v, str) or not v.strip():
                    raise BadOutput(f"field {f!r} missing or empty")
                out[f] = " ".join(v.split())
            if array:
                v = obj.get(array)
                if (not isinstance(v, list) or len(v) < items
                        or not all(isinstance(x, str) and x.strip() for x in v)):
                    raise BadOutput(f"field {array!r} must hold {items} non-empty strings")
                out[array] = [" ".join(x.split()) for x in v[:items]]
            return out
        if reason == "length":
            raise BadOutput("truncated by max_tokens before the JSON object closed")
        raise BadOutput("no JSON object in the output")
    return parse
