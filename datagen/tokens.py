"""Exact token accounting in the target model's tokenizer and chat format.

Conversation lengths are sums of per-message token counts: each message is rendered and
tokenised once (Llama-3 messages start and end with atomic special tokens, so no token
spans two messages) and the final render is encoded whole to verify the sum.

Uses `lctx.tokenizer.load_tokenizer` / `ChatFormat` when present; until that module exposes
them, a local loader for SentencePiece `.model` and HF `tokenizer.json` files is used with the
same Llama-3 format (header `<|start_header_id|>role<|end_header_id|>\\n\\n`, `<|eot_id|>`).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

BOS = "<|begin_of_text|>"
from lctx.tokenizer import LLAMA3_SPECIALS  # noqa: E402,F401  (re-exported for callers)


class TokenizerError(ValueError):
    """A tokenizer path that cannot be loaded; the message names the path and the fix."""


class _LocalTokenizer:
    def __init__(self, path: str):
        self.path = path
        if path.endswith(".model"):
            import sentencepiece as spm
            self._sp = spm.SentencePieceProcessor(model_file=path)
            self._hf = None
        else:
            from tokenizers import Tokenizer
            f = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
            self._hf = Tokenizer.from_file(f)
            self._sp = None

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.encode(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._sp is not None:
            return self._sp.encode(list(texts))
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids)) if self._sp is not None else self._hf.decode(list(ids))


def load(path: str) -> Any:
    """Loads a tokenizer (`encode`, `encode_batch`, `decode`); raises TokenizerError."""
    if not path or not os.path.exists(path):
        raise TokenizerError(f"tokenizer {path!r} does not exist; pass --tokenizer= a "
                             f"SentencePiece .model file or a tokenizer.json / its directory")
    try:
        from lctx.tokenizer import load_tokenizer  # type: ignore[attr-defined]
    except ImportError:
        load_tokenizer = _LocalTokenizer
    try:
        return load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad tokenizer file
        raise TokenizerError(f"cannot load tokenizer {path!r}: {type(e).__name__}: {e}; "
                             f"expected a SentencePiece .model or HF tokenizer.json") from e


def render_message(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


def render(messages: Sequence[dict[str, str]]) -> str:
    """The Llama-3 chat render of a whole conversation (BOS, then every message)."""
    return BOS + "".join(render_message(m["role"], m["content"]) for m in messages)


class Counter:
    """Counts tokens of messages, memoised by content (documents are tokenised once)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.bos = len(tokenizer.encode(BOS))
        self._memo: dict[tuple[str, str], int] = {}

    def message(self, role: str, content: str) -> int:
        key = (role, content)
        n = self._memo.get(key)
        if n is None:
            n = self._memo[key] = len(self.tok.encode(render_message(role, content)))
        return n

    def messages(self, messages: Sequence[dict[str, str]]) -> int:
        return self.bos + sum(self.message(m["role"], m["content"]) for m in messages)

    def verify(self, messages: Sequence[dict[str, str]]) -> int:
        """Encodes the whole render; raises if it differs from the per-message sum."""
        whole = len(self.tok.encode(render(messages)))
        summed = self.messages(messages)
        if whole != summed:
            raise AssertionError(f"chat render has {whole} tokens but per-message counts sum "
                                 f"to {summed}: tokens merge across message boundaries")
        return whole

    def words_to_tokens(self, text: str) -> int:
        return len(self.tok.encode(text))


@functools.lru_cache(maxsize=8)
def cached_counter(path: str) -> Counter:
    return Counter(load(path))
