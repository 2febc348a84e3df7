"""Parsing and safe repair of generator output.

Safe repairs: code fences and prose around the JSON object, Python-style single quotes
(via `ast.literal_eval`, which evaluates literals only), key case ("Question"), surrounding
whitespace. Never repaired (the call is retried with a new seed): output cut by max_tokens
inside the JSON, missing or empty question/answer, non-string values, no object at all.
"""
from __future__ import annotations

import ast
import itertools
import json
import re

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_SENT_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


class BadOutput(ValueError):
    """Output that cannot be safely repaired; the message says why (recorded as a failure)."""


def _objects(text: str):
    """Candidate `{...}` substrings, outermost first (balanced braces, quote-aware)."""
    for start in [i for i, c in enumerate(text) if c == "{"]:
        depth, quote, esc = 0, None, False
        for j in range(start, len(text)):
            c = text[j]
            if quote:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == quote:
                    quote = None
            elif c in "\"'":
                # An apostrophe inside a word ("Jacob's") is not a quote opener.
                if c == "'" and 0 < j and text[j - 1].isalnum():
                    continue
                quote = c
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    yield text[start:j + 1]
                    break


def _load(obj_text: str):
    try:
        return json.loads(obj_text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(obj_text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_qa(text: str, finish_reason: str = "stop") -> tuple[dict[str, str], bool]:
    """Returns ({"question", "answer"}, repaired?) or raises BadOutput."""
    if finish_reason == "error":
        raise BadOutput("backend error")
    if not text or not text.strip():
        raise BadOutput("empty output")
    stripped = text.strip()
    fenced = _FENCE.search(stripped) if "`" in stripped else None
    # Lazily: the balanced-brace scan only runs when the plain text is not the object.
    candidates = itertools.chain([fenced.group(1).strip()] if fenced else [], [stripped],
                                 _objects(stripped))
    for cand in candidates:
        obj = _load(cand)
        if not isinstance(obj, dict):
            continue
        low = {str(k).strip().lower(): v for k, v in obj.items()}
        q, a = low.get("question"), low.get("answer")
        if not isinstance(q, str) or not isinstance(a, str):
            continue
        q, a = q.strip(), a.strip()
        if not q or not a:
            raise BadOutput("empty question or answer")
        repaired = cand != stripped or set(obj) != {"question", "answer"}
        try:
            json.loads(cand)
        except json.JSONDecodeError:
            repaired = True
        return {"question": q, "answer": a}, repaired
    if finish_reason == "length":
        raise BadOutput("truncated by max_tokens before the JSON object closed")
    raise BadOutput("no JSON object with string 'question' and 'answer'")


def parse_summary(text: str, finish_reason: str, word_limit: int) -> tuple[str, bool]:
    """Returns (summary, repaired?) or raises BadOutput.

    A summary cut by max_tokens keeps its complete sentences; one over the word limit is cut
    to the last sentence that fits (the limit is the prompt's contract).
    """
    if finish_reason == "error":
        raise BadOutput("backend error")
    s = " ".join((text or "").split())
    if s.lower().startswith("summary:"):
        s = s[len("summary:"):].strip()
    if not s:
        raise BadOutput("empty summary")
    repaired = False
    if finish_reason == "length" or len(s.split()) > word_limit:
        ends = [m.end() for m in _SENT_END.finditer(s) if len(s[:m.end()].split()) <= word_limit]
        if not ends:
            raise BadOutput("summary truncated or over the word limit with no complete "
                            "sentence inside the limit")
        s, repaired = s[:ends[-1]], True
    return s, repaired
