"""Exact token accounting in the target model's tokenizer and chat format.

Conversation lengths are sums of per-message token counts: each message is counted once
(memoised; a document is tokenised once however many candidate conversations it is tried
in) with `lctx.tokenizer.ChatFormat`, which is what training renders. Llama-3 messages are
delimited by special-token ids, so counts add up exactly; the pipeline still renders every
finished conversation whole to verify.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from lctx.tokenizer import LLAMA3_SPECIALS, ChatFormat, load_tokenizer  # noqa: F401


class TokenizerError(ValueError):
    """A tokenizer path that cannot be loaded; the message names the path and the fix."""


def load(path: str) -> Any:
    """Loads a tokenizer (`encode`, `encode_batch`, `decode`); raises TokenizerError."""
    if not path or not os.path.exists(path):
        raise TokenizerError(f"tokenizer {path!r} does not exist; pass --tokenizer= a "
                             f"SentencePiece .model file or a tokenizer.json / its directory")
    try:
        return load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad tokenizer file
        raise TokenizerError(f"cannot load tokenizer {path!r}: {type(e).__name__}: {e}; "
                             f"expected a SentencePiece .model or HF tokenizer.json") from e


class Counter:
    """Counts chat-format tokens of messages, memoised by (role, content)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        try:
            self.fmt = ChatFormat(tokenizer)
        except Exception as e:  # noqa: BLE001 - e.g. a tokenizer without Llama-3 specials
            raise TokenizerError(f"tokenizer {getattr(tokenizer, 'path', '?')!r} cannot "
                                 f"render the chat format: {e}") from e
        # Tokens beyond the turns: BOS, and the default system block of templates that
        # have one (Llama-3.1's "Cutting Knowledge Date" header).
        self.bos = self.fmt.fixed_count
        self._memo: dict[tuple[str, str], int] = {}

    def message(self, role: str, content: str) -> int:
        """Tokens of one message: header + content + <|eot_id|>."""
        key = (role, content)
        n = self._memo.get(key)
        if n is None:
            n = self._memo[key] = self.fmt.count_turn(role, content)
        return n

    def messages(self, messages: Sequence[dict[str, str]]) -> int:
        return self.bos + sum(self.message(m["role"], m["content"]) for m in messages)

    def exact(self, messages: Sequence[dict[str, str]]) -> int:
        """Length of the whole rendered conversation (what training sees): the chat
        format's count of the whole conversation, laid out as one (ChatFormat.count equals
        len(render(...)); it skips render's full-text template check, a third of its time)."""
        return self.fmt.count(list(messages))

    def verify(self, messages: Sequence[dict[str, str]]) -> int:
        """Renders the whole conversation; raises if it differs from the per-message sum."""
        whole, summed = self.exact(messages), self.messages(messages)
        if whole != summed:
            raise AssertionError(f"chat render has {whole} tokens but per-message counts sum "
                                 f"to {summed}")
        return whole
