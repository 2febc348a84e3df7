"""Offline extractive backend: deterministic text extraction, NOT a language model.

It reads the real prompts back (`datagen.prompts.parse_prompt`), so the pipeline drives it
exactly as it drives vLLM or an HTTP endpoint. Summaries are the leading sentence plus the
most salient sentences (by content-word frequency) that fit the prompt's word limit, in
document order. Questions are answerable by a span of the given context: cloze questions
("In the text, what comes right after '...'?"), "Who ..." questions about a named person's
sentence, and "which of these names appears" multiple-choice for the specific-detail prompt.
Output is the JSON the prompts ask for. Same request, same output (the seed picks sentences).
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
import random
import re
from typing import Any, Iterator, Sequence

from datagen import prompts
from datagen.backends.base import Completion, Request
from datagen.chunking import sentences

MODEL_NAME = "extractive-offline (not an LLM)"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_CAP = re.compile(r"\b[A-Z][a-z]{2,}\b")
_STOP = frozenset("""a an and the of to in that he she it they them his her their was were is
are be been for with as on at by from this which who whom not unto shall will all but or
so there then thou thee thy ye i me my we us our you your him had have has did do said
upon also when what into out up no one""".split())


def _words(s: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(s)]


def proper_names(sents: list[str]) -> list[str]:
    """Capitalised words seen mid-sentence and never in lower case: likely names."""
    lower = {w for s in sents for w in _WORD.findall(s) if w[0].islower()}
    names = {w for s in sents for w in _CAP.findall(s.split(" ", 1)[-1])}
    return sorted(n for n in names if n.lower() not in lower and n.lower() not in _STOP)


def summarize(text: str, word_limit: int) -> str:
    """Leading sentence + salient sentences within `word_limit` words, in text order."""
    sents = sentences(text)
    if not sents:
        return ""
    freq = collections.Counter(w for s in sents for w in _words(s) if w not in _STOP)
    def score(i: int) -> float:
        ws = [w for w in _words(sents[i]) if w not in _STOP]
        return sum(freq[w] for w in ws) / (len(ws) + 5.0)  # +5: don't favour fragments
    order = [0] + sorted(range(1, len(sents)), key=lambda i: (-score(i), i))
    chosen, used = [], 0
    for i in order:
        n = len(sents[i].split())
        if used + n <= word_limit:
            chosen.append(i)
            used += n
    if not chosen:  # even the first sentence is over the limit: cut it at the limit
        return " ".join(sents[0].split()[:word_limit])
    return " ".join(sents[i] for i in sorted(chosen))


@functools.lru_cache(maxsize=64)
def _context(context: str) -> tuple[list[str], list[str]]:
    """(usable sentences, proper names) of a chunk: dozens of questions ask about the same
    chunk, so it is split and scanned once."""
    sents = [s for s in sentences(context) if len(s.split()) >= 8] or sentences(context)
    return sents, proper_names(sents)


def _qa(context: str, kind: str, rng: random.Random) -> dict[str, str]:
    sents, names = _context(context)
    if not sents:
        return {"question": "What does the context say?", "answer": context.strip()[:200]}
    s = rng.choice(sents)
    words = s.split()
    in_s = sorted(set(_CAP.findall(s)) & set(names))
    if kind == "specific" and len(names) >= 4 and in_s:
        right = rng.choice(in_s)
        others = [n for n in names if n not in s]
        wrong = rng.sample(others, k=min(3, len(others)))
        if len(wrong) == 3:
            opts = wrong + [right]
            rng.shuffle(opts)
            letters = "ABCD"
            shown = " ".join(f"{letters[i]}) {o}" for i, o in enumerate(opts))
            cue = " ".join(w for w in words if w.strip(",.;:") != right)[:160]
            q = f"Which of the following is named in the passage that says: '{cue}'? {shown}"
            return {"question": q, "answer": f"{letters[opts.index(right)]}) {right}"}
    if kind in ("character", "perspective", "specific") and in_s:
        name = rng.choice(in_s)
        span = s[s.index(name):]
        if len(span.split()) >= 4:
            return {"question": f"According to the text, what is said of {name}?",
                    "answer": span}
    if len(words) < 5:  # too short to cut in two: ask for the whole sentence
        return {"question": f"Quote the sentence of the text that begins with \"{words[0]}\".",
                "answer": s}
    cut = max(3, min(len(words) - 2, len(words) // 2 + rng.randint(-2, 2)))
    lead, tail = " ".join(words[:cut]), " ".join(words[cut:cut + 30])
    return {"question": f"In the text, what comes right after \"{lead}\"?", "answer": tail}


class ExtractiveGenerator:
    """Deterministic extractive 'generator' implementing the `Generator` protocol."""

    model = MODEL_NAME

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return [self._one(r) for r in requests]

    def generate_stream(self, requests: Sequence[Request]
                        ) -> Iterator[tuple[int, Completion]]:
        """One request at a time, each yielded (and so cached) as soon as it is done."""
        for i, r in enumerate(requests):
            yield i, self._one(r)

    def _one(self, req: Request) -> Completion:
        try:
            return self._answer(req)
        except Exception as e:  # noqa: BLE001 - one bad request fails alone
            return Completion("", "error", f"extractive backend: {type(e).__name__}: {e}")

    def _answer(self, req: Request) -> Completion:
        prompt = "\n".join(c for role, c in req.messages if role == "user")
        parsed = prompts.parse_prompt(prompt)
        if parsed is None:
            return Completion("", "error", "extractive backend: prompt matches no template in "
                                           "datagen.prompts")
        name, fields = parsed
        digest = hashlib.sha256(f"{req.seed}\x00{prompt}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        if name == "summary":
            return Completion(summarize(fields["chunk"], int(fields["word_limit"])), "stop")
        context = fields.get("context") or fields.get("chunks", "")
        kind = name.split("/")[-1]
        return Completion(json.dumps(_qa(context, kind, rng), ensure_ascii=False), "stop")

    def describe(self) -> dict[str, Any]:
        return {"model": MODEL_NAME, "kind": "extractive", "note": "deterministic sentence "
                "extraction; no sampling (temperature/top_p ignored)"}
