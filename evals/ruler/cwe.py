"""RULER common words extraction (cwe): a numbered word list where 10 words repeat 30 times
and the others 3 times, after a one-shot example of 40 words (10 x 10, 30 x 3); below 4K
tokens the reference uses (20 words: 3 / 1) and (6 / 1) instead. Mirrors
`common_words_extraction.py` (2024): the example and the task are each wrapped in the full
model template, word lists shuffled with a fresh Random(seed) (the same permutation always).
"""
from __future__ import annotations

import functools
import random

from evals.ruler import constants, fit
from evals.ruler.base import Family, Options, Rng
from evals.ruler.text import wonderwords_lists


@functools.lru_cache(maxsize=4)
def cwe_words(seed: int) -> tuple[str, ...]:
    nouns, adjs, verbs = wonderwords_lists()
    words = sorted(set(nouns + adjs + verbs))
    random.Random(seed).shuffle(words)
    return tuple(words)


def numbered(words) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


class CommonWords(Family):
    tokens_to_generate = constants.FAMILIES["common_words_extraction"]["tokens_to_generate"]

    def __init__(self, name: str, max_len: int, opts: Options, *, freq_cw: int = 30,
                 freq_ucw: int = 3, num_cw: int = 10):
        super().__init__(name, max_len, opts)
        self.freq_cw, self.freq_ucw, self.num_cw = freq_cw, freq_ucw, num_cw
        self.words = cwe_words(opts.seed)
        self.template = constants.full_template("common_words_extraction", opts.chat_template,
                                                opts.fix_typos)
        self.search = fit.SizeSearch(10, max_len, self.tokens_to_generate, len(self.words),
                                     "after_increment")

    def _example(self, num_words: int, rep_c: int, rep_u: int, rng: Rng):
        full = rng.py.sample(self.words, num_words)
        common, uncommon = full[:self.num_cw], full[self.num_cw:]
        word_list = common * int(rep_c) + uncommon * int(rep_u)
        random.Random(self.opts.seed).shuffle(word_list)
        return numbered(word_list), common

    def render(self, n: int, rng: Rng) -> tuple[str, list[str]]:
        if self.max_len < 4096:
            ctx_ex, ans_ex = self._example(20, 3, 1, rng)
            ctx, ans = self._example(n, 6, 1, rng)
        else:
            ctx_ex, ans_ex = self._example(40, 10, 3, rng)
            ctx, ans = self._example(n, self.freq_cw, self.freq_ucw, rng)
        example = self.template.format(context=ctx_ex, query="") + numbered(ans_ex)
        return example + "\n" + self.template.format(context=ctx, query=""), ans

    def search_text(self, text: str, answers: list[str]) -> str:
        return text + " " + numbered(answers)
