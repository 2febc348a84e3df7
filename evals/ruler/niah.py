"""RULER needle-in-a-haystack family (niah_single_*, niah_multikey_*, multivalue, multiquery).

Mirrors the reference's `niah.py` (2024): needle sentence, haystacks (repeated noise sentence,
essay words with needles at sentence boundaries at depths drawn from 40 evenly spaced
percentages, or distractor needles), the singular rewrite of the template, and the search text
(prompt followed directly by the joined answers).
"""
from __future__ import annotations

import bisect
import random
import functools
import uuid

import numpy as np

from evals.ruler import constants, fit
from evals.ruler.base import Family, Options, Rng, cap_or_none
from evals.ruler.text import SentenceIndex, wonderwords_lists

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_INDEX: list = []  # [corpus word list, repeats, its SentenceIndex]
DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]


class AdjNounWords:
    """`sorted(set(f"{adj}-{noun}"))` over wonderwords adjectives x nouns, without building the
    6.2M strings (12 s, 0.8 GB): blocks of one adjective are contiguous in that order unless
    their ranges overlap, and only overlapping groups are materialised."""

    def __init__(self, adjs: list[str], nouns: list[str]):
        self.nouns = sorted(set(nouns))
        first, last = self.nouns[0], self.nouns[-1]
        blocks = sorted(set(adjs), key=lambda a: f"{a}-{first}")
        segments, group, group_max = [], [], ""
        for a in blocks:
            if group and f"{a}-{first}" <= group_max:
                group.append(a)
            else:
                if group:
                    segments.append(group)
                group = [a]
            group_max = max(group_max, f"{a}-{last}") if len(group) > 1 else f"{a}-{last}"
        segments.append(group)
        self.parts: list[object] = []  # an adjective (a whole block) or a merged list
        sizes = []
        for g in segments:
            if len(g) == 1:
                self.parts.append(g[0])
                sizes.append(len(self.nouns))
            else:
                merged = sorted({f"{a}-{n}" for a in g for n in self.nouns})
                self.parts.append(merged)
                sizes.append(len(merged))
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = bisect.bisect_right(self.offsets, i) - 1
        part, r = self.parts[j], i - self.offsets[j]
        return part[r] if isinstance(part, list) else f"{part}-{self.nouns[r]}"


@functools.lru_cache(maxsize=1)
def needle_words() -> AdjNounWords:
    nouns, adjs, _ = wonderwords_lists()
    return AdjNounWords(adjs, nouns)


def random_value(kind: str, rng: Rng) -> str:
    """A needle key or value: 7-digit number, adjective-noun word, or uuid4 (reference)."""
    if kind == "numbers":
        return str(rng.py.randint(10**6, 10**7 - 1))
    if kind == "words":
        return rng.py.choice(needle_words())
    if kind == "uuids":
        return str(uuid.UUID(int=rng.py.getrandbits(128), version=4))
    raise ValueError(f"needle type {kind!r}: use numbers, words or uuids")


class Niah(Family):
    """One NIAH task at one length. `haystack_words` feeds essay haystacks."""

    tokens_to_generate = constants.FAMILIES["niah"]["tokens_to_generate"]

    def __init__(self, name: str, max_len: int, opts: Options, *, type_haystack: str,
                 type_needle_k: str, type_needle_v: str, num_needle_k: int, num_needle_v: int,
                 num_needle_q: int, haystack_words: list[str] | None = None):
        super().__init__(name, max_len, opts)
        if type_haystack not in ("repeat", "essay", "needle"):
            raise ValueError(f"type_haystack {type_haystack!r}: use repeat, essay or needle")
        self.hay, self.k_type, self.v_type = type_haystack, type_needle_k, type_needle_v
        self.nk, self.nv, self.nq = max(num_needle_k, num_needle_q), num_needle_v, num_needle_q
        self.template = constants.full_template("niah", opts.chat_template, opts.fix_typos)
        if self.hay == "essay":
            if not haystack_words:
                raise ValueError(f"task {name} needs essay haystack words")
            self.words = haystack_words
        inc = 500 if self.hay == "essay" else 25
        if self.hay != "essay" and max_len < 4096:
            inc = 5
        cap = cap_or_none(opts, len(self.words)) if self.hay == "essay" else None
        self.search = fit.SizeSearch(inc, max_len, self.tokens_to_generate, cap,
                                     "after_check" if cap is not None else None)

    def _essay_sentences(self, n: int) -> list[str]:
        """split_sentences(" ".join(words[:n]).strip()), the corpus repeated past its end (the
        2025 rewrite's haystack), from a cached sentence index of the corpus."""
        reps = max(1, -(-n // len(self.words)))
        words, cached_reps, index = _INDEX or (None, 0, None)
        if words is not self.words or cached_reps != reps:
            # One corpus at a time: an index of a 1M-token corpus is large.
            index = SentenceIndex(self.words * reps)
            _INDEX[:] = [self.words, reps, index]
        return index.sentences(n)

    def render(self, n: int, rng: Rng) -> tuple[str, list[str]]:
        keys, values, needles = [], [], []
        for _ in range(self.nk):
            keys.append(random_value(self.k_type, rng))
            value = []
            for _ in range(self.nv):
                value.append(random_value(self.v_type, rng))
                needles.append(NEEDLE.format(type_needle_v=self.v_type, key=keys[-1],
                                             value=value[-1]))
            values.append(value)
        # The reference shuffles needles with a fresh Random(seed): the same permutation always.
        random.Random(self.opts.seed).shuffle(needles)

        if self.hay == "essay":
            sents = self._essay_sentences(n)
            cuts = sorted(int(len(sents) * (d / 100)) for d in rng.py.sample(DEPTHS, len(needles)))
            bounds = [0] + cuts + [len(sents)]
            parts = []
            for i in range(1, len(bounds)):
                parts.append(" ".join(sents[bounds[i - 1]:bounds[i]]))
                if i - 1 < len(needles):
                    parts.append(needles[i - 1])
            context = " ".join(parts)
        else:
            if self.hay == "repeat":
                sentences = [NOISE] * n
            else:
                sentences = [NEEDLE.format(type_needle_v=self.v_type,
                                           key=random_value(self.k_type, rng),
                                           value=random_value(self.v_type, rng))
                             for _ in range(n)]
            spots = sorted(rng.py.sample(range(n), len(needles)), reverse=True)
            for spot, needle in zip(spots, needles):
                sentences.insert(spot, needle)
            context = "\n".join(sentences)

        picked = rng.py.sample(range(self.nk), self.nq)
        queries = [keys[i] for i in picked]
        answers = [a for i in picked for a in values[i]]
        query = (", ".join(queries[:-1]) + ", and " + queries[-1]) if len(queries) > 1 \
            else queries[0]
        template, type_v = self.template, self.v_type
        if self.nq * self.nv == 1:  # singular wording, replaced over the whole template
            for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"),
                             ("answers", "answer")):
                template = template.replace(old, new)
            type_v = type_v[:-1]
        return template.format(type_needle_v=type_v, context=context, query=query), answers

    def search_text(self, text: str, answers: list[str]) -> str:
        return text + " ".join(answers)
