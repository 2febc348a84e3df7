"""RULER frequent words extraction (fwe): coded 6-letter words drawn with Zipf counts
(alpha 2); the top-ranked word becomes '...' noise and the answer is ranks 2-4.

Mirrors `freq_words_extraction.py` (2024): vocabulary of max_len // 50 words, word counts
int(N k^-alpha / zeta(alpha)), one fixed shuffle permutation (Random(seed)), and its own size
search: start at N = max_len // 6 and grow by max_len // 32 while the prompt is shorter than
max_len. The 2024 budget is the prompt alone (generation not reserved);
`Options.reserve_generation` subtracts the 50 generated tokens (2025).
"""
from __future__ import annotations

import random
import string

import numpy as np

from evals.ruler import constants, fit
from evals.ruler.base import Family, Options, Rng, flatten


def zeta(alpha: float, terms: int = 1_000_000) -> float:
    """Riemann zeta: scipy.special.zeta (the reference's) when installed, else a partial sum
    with an Euler-Maclaurin tail (equal to float precision at alpha 2)."""
    try:
        from scipy.special import zeta as scipy_zeta
        return float(scipy_zeta(alpha))
    except ImportError:
        pass
    k = np.arange(1, terms + 1, dtype=np.float64)
    n = float(terms)
    tail = n ** (1 - alpha) / (alpha - 1) - 0.5 * n ** -alpha + alpha / 12 * n ** (-alpha - 1)
    return float(np.sum(k ** -alpha) + tail)


class FreqWords(Family):
    tokens_to_generate = constants.FAMILIES["freq_words_extraction"]["tokens_to_generate"]

    def __init__(self, name: str, max_len: int, opts: Options, *, alpha: float = 2.0,
                 coded_wordlen: int = 6, vocab_size: int = -1):
        super().__init__(name, max_len, opts)
        self.alpha, self.wordlen = alpha, coded_wordlen
        self.vocab_size = max_len // 50 if vocab_size == -1 else vocab_size
        self.template = constants.full_template("freq_words_extraction", opts.chat_template,
                                                opts.fix_typos)
        self.budget = max_len - (self.tokens_to_generate if opts.reserve_generation else 0)
        self.inc = max(self.budget // 32, 1)
        self._zeta = zeta(alpha)
        # draw_sample compares count + reserve with max_len: the budget is max_len - reserve.
        self.search = fit.SizeSearch(self.inc, max_len, max_len - self.budget)

    def vocab(self, rng: Rng) -> list[str]:
        letters = string.ascii_lowercase
        vocab = ["".join(rng.py.choices(letters, k=self.wordlen)) for _ in range(self.vocab_size)]
        while len(set(vocab)) < self.vocab_size:
            vocab.append("".join(rng.py.choices(letters, k=self.wordlen)))
        vocab = sorted(set(vocab))
        random.Random(self.opts.seed).shuffle(vocab)
        vocab[0] = "..."  # the top rank is noise
        return vocab

    def text(self, vocab: list[str], num_words: int) -> tuple[str, list[str]]:
        k = np.arange(1, len(vocab) + 1)
        counts = (num_words * (k ** -self.alpha) / self._zeta).astype(int)
        words = [w for w, c in zip(vocab, counts) for _ in range(c)]
        random.Random(self.opts.seed).shuffle(words)
        return self.template.format(context=" ".join(words), query=""), vocab[1:4]

    def render(self, n: int, rng: Rng) -> tuple[str, list[str]]:
        """A prompt of n words on a fresh vocabulary."""
        return self.text(self.vocab(rng), n)

    def _search(self, vocab, count) -> int:
        """The reference's fwe search on one vocabulary: first N with count >= budget, minus
        one increment."""
        n = self.budget // self.wordlen
        while count(self.text(vocab, n)[0]) < self.budget:
            n += self.inc
        return n - self.inc

    def find_size(self, counter, method: str = "fast") -> int:
        vocab = self.vocab(Rng.from_seed(self.opts.seed))
        if method == "reference":
            return self._search(vocab, counter.exact)
        # Estimates first, then exact counts at the boundary: the reference stops at the first
        # size f (from N0 by increments) whose prompt reaches the budget and returns f - inc.
        n0 = self.budget // self.wordlen
        f = self._search(vocab, counter.estimate) + self.inc
        exact = lambda m: counter.exact(self.text(vocab, m)[0])  # noqa: E731
        while f > n0 and exact(f - self.inc) >= self.budget:
            f -= self.inc
        while exact(f) < self.budget:
            f += self.inc
        return f - self.inc

    def samples(self, counter, num_samples: int, method: str = "fast") -> list[dict]:
        n = self.find_size(counter, method)
        rng = Rng.from_seed(self.opts.seed)
        self.vocab(rng)  # the reference's search consumed one vocabulary draw
        out = []
        for index in range(num_samples):
            vocab, used = self.vocab(rng), n
            text, ans = self.text(vocab, used)
            while (length := counter.exact(text)) > self.budget:
                used -= self.inc
                if used <= 0:
                    raise fit.LengthTooSmallError(
                        f"task {self.name}: target length {self.max_len} is too small")
                text, ans = self.text(vocab, used)
            out.append({"index": index, "input": flatten(text, self.opts), "outputs": ans,
                        "length": length + self.tokens_to_generate, "size": used})
        return out
