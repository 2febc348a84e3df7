"""Hierarchical split (He et al. Section 3.1): a document -> medium chunks -> small chunks.

Sizes are in tokens of the target tokenizer. Default (the paper's "12K sections, then 4K
chunks"): a small chunk is at most 4096 tokens and a medium chunk is `small_per_medium=3`
consecutive small chunks. Cuts fall on sentence boundaries; a single sentence longer than a
small chunk is cut at whitespace (it would otherwise exceed the generator's window).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace.
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


@dataclasses.dataclass(frozen=True)
class Chunks:
    small: tuple[str, ...]                 # small chunk texts, in document order
    medium: tuple[tuple[int, ...], ...]    # small-chunk indices of each medium chunk
    small_tokens: tuple[int, ...]

    def medium_text(self, m: int) -> str:
        return " ".join(self.small[i] for i in self.medium[m])


def sentences(text: str) -> list[str]:
    """Splits text into sentences (whitespace-normalised, non-empty)."""
    out, start = [], 0
    for m in _SENT_END.finditer(text):
        out.append(text[start:m.start() + len(m.group(0).rstrip())])
        start = m.end()
    out.append(text[start:])
    return [" ".join(s.split()) for s in out if s.strip()]


def split(text: str, tokenizer: Any, small_tokens: int = 4096, small_per_medium: int = 3
          ) -> Chunks:
    """Hierarchical split by tokens.

    Args:
      text: the document.
      tokenizer: has `encode_batch`.
      small_tokens: most tokens in a small chunk (paper: 4K).
      small_per_medium: small chunks per medium chunk (3 x 4K = the paper's 12K).
    """
    if small_tokens < 16 or small_per_medium < 1:
        raise ValueError(f"small_tokens={small_tokens} must be >= 16 and small_per_medium="
                         f"{small_per_medium} >= 1")
    sents = sentences(text)
    pieces: list[tuple[str, int]] = []
    for s, ids in zip(sents, tokenizer.encode_batch(sents)):
        if len(ids) <= small_tokens:
            pieces.append((s, len(ids)))
            continue
        words, cur = s.split(" "), []
        for w in words:  # an over-long "sentence": cut at whitespace
            cur.append(w)
            if len(cur) >= small_tokens // 4:
                piece = " ".join(cur)
                pieces.append((piece, len(tokenizer.encode(piece))))
                cur = []
        if cur:
            piece = " ".join(cur)
            pieces.append((piece, len(tokenizer.encode(piece))))
    small, counts, cur, cur_n = [], [], [], 0
    for s, n in pieces:
        # +1: the joining space usually costs about a token; recounted exactly below.
        if cur and cur_n + n + 1 > small_tokens:
            small.append(" ".join(cur))
            cur, cur_n = [], 0
        cur.append(s)
        cur_n += n + 1
    if cur:
        small.append(" ".join(cur))
    counts = [len(ids) for ids in tokenizer.encode_batch(small)] if small else []
    medium = tuple(tuple(range(i, min(i + small_per_medium, len(small))))
                   for i in range(0, len(small), small_per_medium))
    return Chunks(tuple(small), medium, tuple(counts))
