"""Text sources and token counting for RULER.

- `load_tokenizer`: the evaluated model's tokenizer (lctx.tokenizer when present).
- `PieceCounter`: token counts of long prompts from cached counts of whitespace-led pieces,
  so the length search never re-tokenises a whole prompt (exact counts are taken only to
  verify the final choice).
- Haystacks: Paul Graham essays JSON ({"text": ...}, the reference's format), any text file,
  or the offline KJV; wonderwords 2.2.0 word lists; a sentence splitter.
"""
from __future__ import annotations

import bisect
import json
import re
from typing import Sequence

_PIECE = re.compile(r"\s*\S+|\s+")


class _SentencePieceAdapter:
    def __init__(self, path: str):
        import sentencepiece as spm
        self._sp = spm.SentencePieceProcessor(model_file=path)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))


class _HFJsonAdapter:
    def __init__(self, path: str):
        from tokenizers import Tokenizer
        self._tok = Tokenizer.from_file(path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
             "<|end_header_id|>", "<|eot_id|>")


class SpecialTextTokenizer:
    """Encodes special-token strings found in text as their single ids.

    RULER's HF tokenizer (and vLLM) parse `<|begin_of_text|>` etc. inside a prompt string as
    special tokens, while `lctx.tokenizer` deliberately keeps them plain text; counting a
    chat-templated RULER prompt needs the former.
    """

    def __init__(self, tok):
        self.tok = tok
        has = getattr(tok, "has_piece", lambda p: False)
        self.ids = {p: tok.special_id(p) for p in _SPECIALS if has(p)}
        self._re = re.compile("(" + "|".join(map(re.escape, self.ids)) + ")") if self.ids \
            else None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        if self._re is None or not any(self._re.search(t) for t in texts):
            return self.tok.encode_batch(texts)
        parts = [self._re.split(t) for t in texts]
        plain = [p for ps in parts for p in ps if p and p not in self.ids]
        enc = iter(self.tok.encode_batch(plain) if plain else [])
        out = []
        for ps in parts:
            ids: list[int] = []
            for p in ps:
                if p in self.ids:
                    ids.append(self.ids[p])
                elif p:
                    ids.extend(next(enc))
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids)


def load_tokenizer(path: str):
    """The evaluated model's tokenizer: `encode` (no BOS added, like RULER's `text_to_tokens`;
    special-token strings count as one token), `encode_batch`, `decode`. Uses
    `lctx.tokenizer.load_tokenizer` when it exists."""
    try:
        from lctx.tokenizer import load_tokenizer as lctx_load
    except ImportError:
        lctx_load = None
    if lctx_load is not None:
        return SpecialTextTokenizer(lctx_load(path))
    import os
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
    if path.endswith(".json"):
        return _HFJsonAdapter(path)
    if path.endswith(".model"):
        return _SentencePieceAdapter(path)
    raise ValueError(f"tokenizer {path!r}: expected a SentencePiece .model, a tokenizer.json "
                     "or a folder holding one")


def _encode_batch(tok, texts: list[str]) -> list[list[int]]:
    if hasattr(tok, "encode_batch"):
        return tok.encode_batch(texts)
    return [tok.encode(t) for t in texts]


class PieceCounter:
    """Estimates token counts by summing cached counts of whitespace-led pieces; exact counts
    from cached counts of token-safe chunks (`evals.ruler.count`).

    Tokenizers in use (SentencePiece with whitespace splitting, byte-level BPE with a
    pre-tokeniser) rarely merge across a space, so the estimate is within a few tokens of the
    exact count; the caller verifies the final prompt exactly.
    """

    def __init__(self, tokenizer):
        from evals.ruler.count import ChunkCounter
        self.tok = tokenizer
        self.cache: dict[str, int] = {}
        self.exact_calls = 0  # exact counts of whole prompts, for the benchmark
        self.chunks = ChunkCounter(tokenizer if hasattr(tokenizer, "encode_batch") else
                                   _BatchEncoder(tokenizer))

    def pieces(self, text: str) -> list[str]:
        return _PIECE.findall(text)

    def estimate(self, text: str) -> int:
        """About len(encode(text)): the sum of cached whitespace-led piece counts, summed per
        cached chunk for long texts (repeated haystack text is then nearly free)."""
        if len(text) >= self.chunks.min_text:
            return self.chunks.estimate(text, self._piece_sum)
        return self._piece_sum(text)

    def _piece_sum(self, text: str) -> int:
        pieces = self.pieces(text)
        cache = self.cache
        missing = list(set(pieces).difference(cache))
        if missing:
            for p, ids in zip(missing, _encode_batch(self.tok, missing)):
                cache[p] = len(ids)
        return sum(map(cache.__getitem__, pieces))

    def exact(self, text: str) -> int:
        self.exact_calls += 1
        return self.chunks.count(text)


class _BatchEncoder:
    def __init__(self, tok):
        self.tok = tok

    def encode_batch(self, texts):
        return _encode_batch(self.tok, list(texts))


# ----------------------------------------------------------------------------- haystacks
def load_essay_words(essay_json: str | None = None, corpus_path: str | None = None) -> list[str]:
    """Haystack words as the reference makes them: whitespace runs to one space, split on it.

    Args:
      essay_json: a PaulGrahamEssays.json ({"text": "..."}), the reference's haystack.
      corpus_path: any UTF-8 text file, used when no essay JSON is given.
    Without either, the KJV from `lctx.corpora` (offline) is used.
    """
    if essay_json:
        with open(essay_json, encoding="utf-8") as f:
            text = json.load(f)["text"]
    elif corpus_path:
        with open(corpus_path, encoding="utf-8") as f:
            text = f.read()
    else:
        from lctx.corpora import kjv_text
        text = kjv_text()
    return re.sub(r"\s+", " ", text).split(" ")


# nltk's punkt model cannot be downloaded offline; this splitter cuts after ., ! or ? (and
# closing quotes/brackets) before a capital letter, digit or opening quote. It only decides
# the sentence boundaries where needles may go (the text itself is unchanged).
_ABBREVS = ("Mr", "Mrs", "Ms", "Dr", "Prof", "Sr", "Jr", "St", "vs", "etc", "e.g", "i.e", "Inc",
            "Ltd", "Co")
_SENT_END = re.compile(r"(?<=[.!?])" + "".join(rf"(?<!\b{re.escape(a)}\.)" for a in _ABBREVS)
                       + r"([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (stripped) such that ' '.join(result) == text for 1-space text."""
    parts = _SENT_END.split(text)  # sentence, closing quotes, sentence, ...
    sents = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)] + [parts[-1]]
    return [x for x in (p.strip() for p in sents) if x]


class SentenceIndex:
    """`split_sentences(" ".join(words[:n]).strip())` for any n, from one split of the whole
    word list (the essay NIAH renders every probe and sample from a prefix of the corpus).

    A boundary of the whole text lies inside a prefix ending at a word end iff the word it
    looks ahead to is in the prefix; the prefix's last sentence is the rest up to its end.
    """

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.text = " ".join(self.words)
        # word_end[k]: characters of " ".join(words[:k]).
        self.word_end = [0] * (len(self.words) + 1)
        pos = -1
        for k, w in enumerate(self.words):
            pos += len(w) + 1
            self.word_end[k + 1] = pos
        self.cuts = [(m.end(1), m.end()) for m in _SENT_END.finditer(self.text)]
        self.next_start = [b for _, b in self.cuts]

    def sentences(self, n: int) -> list[str]:
        if not 0 <= n <= len(self.words):
            raise ValueError(f"n={n} outside [0, {len(self.words)}]")
        end = self.word_end[n] if n else 0
        k = bisect.bisect_left(self.next_start, end)  # boundaries whose next word is inside
        out, start = [], 0
        for a, b in self.cuts[:k]:
            out.append(self.text[start:a])
            start = b
        out.append(self.text[start:end])
        return [x for x in (p.strip() for p in out) if x]


def wonderwords_lists() -> tuple[list[str], list[str], list[str]]:
    """(nouns, adjectives, verbs) as shipped in wonderwords (RULER 2024 pinned 2.2.0)."""
    from wonderwords import random_word
    get = random_word._get_words_from_text_file  # the reference reads the same private helper
    return get("nounlist.txt"), get("adjectivelist.txt"), get("verblist.txt")
