"""Exact token counts of long prompts from cached counts of token-safe chunks.

A 1M-token RULER prompt takes seconds to tokenise in one call (one thread), and every sample
needs its exact count. Samples of a task share almost all their text (the haystack; only the
needles and their places change), so the prompt is cut into chunks whose counts add up to the
whole prompt's count, and each distinct chunk is tokenised once (new ones in one multi-threaded
batch):

- cuts go before a space that follows a non-space (a word boundary for SentencePiece's
  whitespace split and for byte-level BPE pre-tokenisers), chosen by a hash of the 8 bytes
  before them (content-defined chunking), so equal text gives equal chunks wherever it sits;
- each cut is verified on the tokenizer: encode(left + right) == encode(left) + encode(right)
  for 24-byte windows around it (cached per window); a cut that fails is dropped. A tokenizer
  that merges across spaces (e.g. SentencePiece with add_dummy_prefix) fails every check and
  is counted whole;
- the first long text a tokenizer meets (per process) is also tokenised whole: if the sum
  differs (a tokenizer whose merges reach past the windows), counts of that tokenizer's texts
  are whole-text counts from then on.

The tests hold the count equal to a whole-prompt tokenisation on every RULER task.
"""
from __future__ import annotations

import numpy as np

_WS = np.array([32, 9, 10, 13], np.uint8)
_MULT = np.array([0x9E3779B97F4A7C15], np.uint64)  # Fibonacci hashing's odd multiplier
_CONTEXT = 24  # bytes each side of a cut, for its safety check
_TRUSTED: dict = {}  # id(tokenizer) -> (tokenizer, chunked counts equal whole counts)


def _char_start(data: bytes, i: int) -> int:
    """The start of the UTF-8 character at byte i (moving left over continuation bytes)."""
    while 0 < i < len(data) and data[i] & 0xC0 == 0x80:
        i -= 1
    return i


class ChunkCounter:
    """`count(text)` == len(tokenizer.encode(text)) (see the module docstring).

    Args:
      tok: a tokenizer with `encode_batch(list[str]) -> list[list[int]]`.
      target: the mean chunk length in bytes (cut where hash % target == 0; a stretch
        without such a cut is cut at word boundaries every 4 * target bytes).
      min_text: texts shorter than this are tokenised whole (cheaper than cutting).
      max_cache: chunk counts (and checked cuts) kept; a cache is emptied when it grows past
        this.
    """

    def __init__(self, tok, target: int = 1024, min_text: int = 16384,
                 max_cache: int = 500_000):
        self.tok, self.target, self.min_text, self.max_cache = tok, target, min_text, max_cache
        self.counts: dict[bytes, int] = {}
        self.estimates: dict[bytes, int] = {}
        self.safe: dict[bytes, bool] = {}
        self.encoded_bytes = 0  # bytes actually tokenised (the benchmark reports it)

    @property
    def trusted(self) -> bool | None:
        """Whether chunked counts equal whole counts for this tokenizer (None: unchecked)."""
        entry = _TRUSTED.get(id(self.tok))
        return None if entry is None or entry[0] is not self.tok else entry[1]

    def _cuts(self, data: bytes) -> list[int]:
        arr = np.frombuffer(data, np.uint8)
        pos = np.flatnonzero(arr[8:] == 32) + 8  # spaces with 8 bytes before them
        pos = pos[~np.isin(arr[pos - 1], _WS)]
        if not len(pos):
            return []
        # The 8 bytes before each space as one integer (an unaligned strided view), mixed.
        words = np.ndarray((len(data) - 7,), np.dtype("<u8"), data, 0, (1,))
        with np.errstate(over="ignore"):
            h = words[pos - 8] * _MULT[0]
        h ^= h >> np.uint64(29)
        chosen = pos[h % np.uint64(self.target) == 0]
        # A long stretch without a chosen cut (a repeated pattern whose hash never hits) is
        # cut at the word boundaries next to every 4 * target bytes.
        limit = 4 * self.target
        edges = np.concatenate([[0], chosen, [len(data)]])
        long = np.flatnonzero(np.diff(edges) > limit)
        if len(long):
            marks = np.concatenate([np.arange(edges[i] + limit, edges[i + 1], limit)
                                    for i in long])
            j = np.searchsorted(pos, marks)
            extra = pos[j[j < len(pos)]]
            chosen = np.union1d(chosen, extra)
        return chosen.tolist()

    def _check(self, data: bytes, cuts: list[int]) -> list[int]:
        if len(self.safe) > self.max_cache:
            self.safe.clear()
        keys = {}
        for p in cuts:
            lo, hi = _char_start(data, max(0, p - _CONTEXT)), _char_start(data, p + _CONTEXT)
            keys[p] = (data[lo:p], data[p:hi])
        new = {k for k in keys.values() if k[0] + b"\0" + k[1] not in self.safe}
        if new:
            new = sorted(new)
            texts = []
            for left, right in new:
                texts += [(left + right).decode(), left.decode(), right.decode()]
            ids = self.tok.encode_batch(texts)
            for i, (left, right) in enumerate(new):
                whole, a, b = ids[3 * i:3 * i + 3]
                self.safe[left + b"\0" + right] = list(whole) == list(a) + list(b)
        return [p for p in cuts if self.safe[keys[p][0] + b"\0" + keys[p][1]]]

    def _whole(self, text: str, n_bytes: int) -> int:
        self.encoded_bytes += n_bytes
        return len(self.tok.encode_batch([text])[0])

    def count(self, text: str) -> int:
        data = text.encode("utf-8")
        if len(data) < self.min_text or self.trusted is False:
            return self._whole(text, len(data))
        total = self._chunked(data)
        if self.trusted is None:
            whole = self._whole(text, len(data))
            _TRUSTED[id(self.tok)] = (self.tok, whole == total)
            if whole != total:
                import logging
                logging.getLogger("evals.ruler").warning(
                    "chunked token counts differ from whole-text counts (%d vs %d) for this "
                    "tokenizer: counting whole texts from now on", total, whole)
                return whole
        return total

    def estimate(self, text: str, estimate_fn) -> int:
        """Sum of `estimate_fn` over the chunks (unverified cuts), cached per chunk: for an
        additive estimate (a sum over whitespace-led pieces, which the cuts never split) this
        equals estimate_fn(text), and costs only the new chunks."""
        data = text.encode("utf-8")
        if len(self.estimates) > self.max_cache:
            self.estimates.clear()
        bounds = [0] + self._cuts(data) + [len(data)]
        total = 0
        for a, b in zip(bounds, bounds[1:]):
            chunk = data[a:b]
            n = self.estimates.get(chunk)
            if n is None:
                n = self.estimates[chunk] = estimate_fn(chunk.decode())
            total += n
        return total

    def _chunked(self, data: bytes) -> int:
        if len(self.counts) > self.max_cache:
            self.counts.clear()
        bounds = [0] + self._check(data, self._cuts(data)) + [len(data)]
        chunks = [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        missing = list({c for c in chunks if c not in self.counts})
        if missing:
            ids = self.tok.encode_batch([c.decode() for c in missing])
            for c, x in zip(missing, ids):
                self.counts[c] = len(x)
            self.encoded_bytes += sum(map(len, missing))
        return sum(self.counts[c] for c in chunks)
