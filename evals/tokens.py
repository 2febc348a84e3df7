"""HF-style tokenisation for benchmarks whose definitions are written against `transformers`.

LongBench and InfiniteBench build their model inputs with an HF tokenizer: `tokenizer(text)`
(special-token strings in the text read as special tokens, and the tokenizer's own prefix,
usually BOS, added), `tokenizer.decode(ids, skip_special_tokens=True)` when they truncate, and
the same call on the generated ids. `HFText` gives those three operations over an
`lctx.tokenizer.Tokenizer`, so the evals can hand token ids to every runner and every runner
sees the same prompt.

Two details follow the transformers 4.x releases the references ran (LongBench pins 4.31):
- the prefix is what the tokenizer's post-processor adds (`tokenizer.json`), or BOS for a
  SentencePiece model that has one; the suffix some tokenizers add is not used (none of the
  Llama/Mistral/Qwen tokenizers adds one);
- `clean_up_tokenization_spaces` from `tokenizer_config.json` is applied when decoding (4.x
  did; transformers 5 ignores it for BPE tokenizers), e.g. Llama-3.1's config sets it.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from evals.ruler.text import SpecialTextTokenizer


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: drops the space before , . ? ! and contractions."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                     (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                     (" 're", "'re")):
        text = text.replace(old, new)
    return text


def special_ids(tok) -> set[int]:
    """Ids `skip_special_tokens` drops: BOS, every EOS, the Llama-3 chat specials, and the
    tokens an HF `tokenizer.json` flags special."""
    ids = set(SpecialTextTokenizer(tok).ids.values()) | set(tok.eos_ids)
    if tok.bos_id is not None:
        ids.add(tok.bos_id)
    rust = getattr(tok, "_tok", None)  # lctx.tokenizer.HFTokenizer's `tokenizers` object
    if rust is not None and hasattr(rust, "get_added_tokens_decoder"):
        ids |= {i for i, t in rust.get_added_tokens_decoder().items() if t.special}
    return ids


def _tokenizer_config(tok) -> dict:
    path = os.path.join(os.path.dirname(getattr(tok, "path", "") or ""), "tokenizer_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _prefix_ids(tok) -> list[int]:
    rust = getattr(tok, "_tok", None)
    if rust is not None and hasattr(rust, "encode"):
        with_ = rust.encode("a", add_special_tokens=True).ids
        without = rust.encode("a", add_special_tokens=False).ids
        n = len(with_) - len(without)
        return list(with_[:n]) if n > 0 and with_[n:n + len(without)] == without else []
    return [tok.bos_id] if tok.bos_id is not None else []


class HFText:
    """`tokenizer(text)` and `decode(ids, skip_special_tokens=True)` as transformers does them.

    Args:
      tok: an `lctx.tokenizer.Tokenizer`.
      add_prefix: add the tokenizer's own prefix (BOS) in `__call__`; None: what the
        tokenizer does (its post-processor, or BOS for SentencePiece).
      clean_up_spaces: apply `clean_up_tokenization` when decoding; None: the
        tokenizer_config.json setting (False when absent).
    """

    def __init__(self, tok, *, add_prefix: Optional[bool] = None,
                 clean_up_spaces: Optional[bool] = None):
        self.tok = tok
        self.encoder = SpecialTextTokenizer(tok)
        prefix = _prefix_ids(tok)
        if add_prefix and not prefix:
            prefix = [tok.bos_id] if tok.bos_id is not None else []
        self.prefix = prefix if add_prefix is not False else []
        if clean_up_spaces is None:
            clean_up_spaces = bool(_tokenizer_config(tok).get("clean_up_tokenization_spaces"))
        self.clean_up_spaces = clean_up_spaces
        self.skip = special_ids(tok)

    def __call__(self, text: str) -> list[int]:
        """`tokenizer(text).input_ids`: prefix + ids, special-token strings as their ids."""
        return self.prefix + self.encoder.encode(text)

    def batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.prefix + ids for ids in self.encoder.encode_batch(list(texts))]

    def encode(self, text: str) -> list[int]:
        """Ids without the prefix (`add_special_tokens=False`)."""
        return self.encoder.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """`tokenizer.decode(ids, skip_special_tokens=True)`."""
        text = self.tok.decode([int(i) for i in ids if int(i) not in self.skip])
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def newline_id(self) -> int:
        """`tokenizer.encode("\\n", add_special_tokens=False)[-1]`: the id LongBench's and the
        beacon pipeline's generation loops add to the end-of-sequence ids."""
        ids = self.encode("\n")
        if not ids:
            raise ValueError(f"tokenizer {self.tok.path} encodes '\\n' to nothing")
        return ids[-1]
