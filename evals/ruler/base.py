"""Shared machinery of the RULER task families: random streams, options, sample drawing."""
from __future__ import annotations

import dataclasses
import random
from typing import Optional

import numpy as np

from evals.ruler import fit

PROBE_OFFSET = 1_000_003  # numpy stream of the probe prompts: any seed other than the sample's


@dataclasses.dataclass
class Rng:
    """The reference's two random sources: Python's `random` and numpy's legacy global."""
    py: random.Random
    np: np.random.RandomState

    @classmethod
    def from_seed(cls, seed: int) -> "Rng":
        return cls(random.Random(seed), np.random.RandomState(seed))

    @classmethod
    def probe(cls, seed: int) -> "Rng":
        return cls(fit.probe_rng(seed), np.random.RandomState(seed + PROBE_OFFSET))


@dataclasses.dataclass(frozen=True)
class Options:
    """Generation options. Defaults reproduce RULER's 2024 code (commits e40fae1..230fddc).

    Attributes:
      chat_template: base | meta-chat (llama2) | meta-llama3 (llama3) | a literal template.
      search: 'linear' (2024: grow by a fixed increment) or 'binary' (2025 rewrite).
      repeat_haystack: repeat the essay corpus so essay tasks reach any length (2025); by
        default haystacks are capped at the corpus, as in 2024.
      fix_typos: the 2025 spelling of the VT answer prefix ('assigned').
      reserve_generation: count tokens_to_generate in fwe's budget too (2025 fix; the 2024 fwe
        fills the prompt itself up to the target length).
      remove_newline_tab: collapse newlines/tabs/space runs in each finished prompt
        (the reference's --remove_newline_tab; the recorded length stays the original's).
      seed: RULER's random_seed (42).
      reserve: tokens reserved for (and generated as) the answer instead of the task's
        tokens_to_generate (128 for NIAH); short-length variant, None = RULER's.
      step_words: grow essay haystacks by this many words per size-search step (RULER: 500)
        and every other haystack by one unit; short-length variant, None = RULER's steps.
        With `reserve` this lets NIAH prompts fit the few hundred tokens of a CPU demo.
    """
    chat_template: str = "base"
    search: str = "linear"
    repeat_haystack: bool = False
    fix_typos: bool = False
    reserve_generation: bool = False
    remove_newline_tab: bool = False
    seed: int = 42
    reserve: Optional[int] = None
    step_words: Optional[int] = None

    def __post_init__(self):
        if self.search not in ("linear", "binary"):
            raise ValueError(f"search={self.search!r}: use 'linear' (2024) or 'binary' (2025)")
        for name in ("reserve", "step_words"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}={v} must be >= 1 (or None for RULER's)")

    def recorded(self) -> dict:
        """The options as written into sample and results headers (the short-length fields
        only when set, so RULER's own headers are unchanged)."""
        out = dataclasses.asdict(self)
        for name in ("reserve", "step_words"):
            if out[name] is None:
                del out[name]
        return out


class Family:
    """A task family at one target length: render prompts of size n, search, draw samples."""

    tokens_to_generate: int = 0
    search: fit.SizeSearch

    def __init__(self, name: str, max_len: int, opts: Options):
        self.name, self.max_len, self.opts = name, max_len, opts

    def render(self, n: int, rng: Rng) -> tuple[str, list[str]]:
        raise NotImplementedError

    def search_text(self, text: str, answers: list[str]) -> str:
        """The string the reference tokenises during its size search."""
        return text + " " + str(answers)

    def binary_upper(self, counter) -> int:
        """Upper bound of the 2025 binary search: 3x the size estimated from a small prompt."""
        inc = self.search.incremental
        per_unit = max(counter.estimate(self.render(inc, Rng.probe(self.opts.seed))[0]) / inc,
                       1e-3)
        upper = max(int(self.max_len / per_unit * 3), inc * 2)
        return upper if self.search.cap is None else min(upper, self.search.cap)

    def find_size(self, counter, method: str = "fast") -> int:
        """Haystack size for this length. method: fast | reference (re-tokenise every step)."""
        probe = lambda n: self.search_text(*self.render(n, Rng.probe(self.opts.seed)))  # noqa
        s = self.search
        if self.opts.search == "binary":
            upper = self.binary_upper(counter)
            if method == "reference":
                return fit.reference_binary_search(lambda n: counter.exact(probe(n)), s, upper)
            return fit.fast_binary_search(probe, counter, s, upper)
        if method == "reference":
            # The reference draws a fresh random prompt at every step from the same stream.
            rng = Rng.probe(self.opts.seed)
            return fit.reference_size_search(
                lambda n: counter.exact(self.search_text(*self.render(n, rng))), s)
        return fit.fast_size_search(probe, counter, s)

    def samples(self, counter, num_samples: int, method: str = "fast") -> list[dict]:
        """`num_samples` samples (index, input, outputs, length), deterministic by seed."""
        size = self.find_size(counter, method)
        if size <= 0:
            raise fit.LengthTooSmallError(
                f"task {self.name}: target length {self.max_len} cannot hold the smallest "
                f"prompt plus {self.search.reserve} reserved tokens; use a larger length")
        rng = Rng.from_seed(self.opts.seed)
        self.before_samples(rng, counter)
        out = []
        for index in range(num_samples):
            text, answers, length, used = fit.draw_sample(
                lambda u: self.render_sample(u, rng, index), counter.exact, size, self.search,
                self.name)
            text = flatten(self.finish_sample(text, rng), self.opts)
            out.append({"index": index, "input": text, "outputs": answers, "length": length,
                        "size": used})
        return out

    # Hooks for families that differ from the plain draw (VT's example, QA's question index).
    def before_samples(self, rng: Rng, counter) -> None:
        pass

    def render_sample(self, n: int, rng: Rng, index: int) -> tuple[str, list[str]]:
        return self.render(n, rng)

    def finish_sample(self, text: str, rng: Rng) -> str:
        return text


def flatten(text: str, opts: Options) -> str:
    if not opts.remove_newline_tab:
        return text
    return " ".join(text.replace("\n", " ").replace("\t", " ").strip().split())


def cap_or_none(opts: Optional[Options], cap: int) -> Optional[int]:
    return None if opts is not None and opts.repeat_haystack else cap
