"""The chat format: a checkpoint's own Jinja `chat_template`, rendered into token ids with
an answer-only loss mask. JAX-free: shared with `datagen` and `evals`.

    fmt = ChatFormat(load_tokenizer("/models/Llama-3.1-8B-Instruct"))  # its own template
    ids, loss_mask = fmt.render([{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}])
    prompt_ids = fmt.render_prompt([{"role": "user", "content": "hi"}])

The text is exactly what transformers' `apply_chat_template` renders with the same template
(same Jinja environment: trim/lstrip blocks, loop controls, `tojson`, `raise_exception`,
`strftime_now`), so training, HF and vLLM prompts agree. A tokenizer without a template
(e.g. a SentencePiece model trained here) gets Meta-Llama-3-8B-Instruct's.

How the ids are made: the template is rendered once with a placeholder in place of each
message's content (the skeleton) and once with the real contents; the two must agree after
substitution, or the template depends on content in a way we cannot split and rendering
fails with a clear error. The skeleton's text is split at the tokenizer's special tokens
(one id each) and the rest encoded as plain text; each content is encoded separately, so
special-token strings inside user text stay text. For Llama-3's pre-tokeniser this equals
encoding the whole rendered string (checked against HF in tests/tokenizer_test.py).
The loss mask is 1 on assistant content and on the end-of-turn token that closes it.
"""
from __future__ import annotations

import datetime
import functools
import json
import re
from typing import Sequence

from lctx.tokenizer import LLAMA3_SPECIALS, Tokenizer, TokenizerError

# Meta-Llama-3-8B-Instruct's chat template (its tokenizer_config.json): BOS before the first
# turn, content trimmed, no date header. The default for tokenizers that carry no template;
# Llama-3.1 checkpoints carry their own (with the "Cutting Knowledge Date" system block).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")
ROLES = ("system", "user", "assistant")
# Placeholders for contents in the skeleton: private-use characters, no whitespace (so a
# template's `trim` leaves them whole), never produced by a tokenizer's decode of real text.
_OPEN, _CLOSE = "\ue000", "\ue001"
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
_PAD = " \n"  # wrapped around a probe placeholder to see whether the template trims content


@functools.lru_cache(maxsize=16)
def compile_template(template: str):
    """A Jinja template in the environment transformers renders chat templates in."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatFormat:
    """Renders conversations with a chat template into (ids, loss_mask).

    Args:
      tokenizer: an `lctx.tokenizer.Tokenizer` with the Llama-3 special tokens.
      template: Jinja chat template; default the tokenizer's own (`tokenizer.chat_template`,
        from tokenizer_config.json or chat_template.jinja), else `LLAMA3_CHAT_TEMPLATE`.
      **template_kwargs: extra template variables, as for `apply_chat_template` (e.g.
        `date_string="26 Jul 2024"`: Llama-3.1's template uses that fixed date unless given).
    """

    def __init__(self, tokenizer: Tokenizer, template: str | None = None, **template_kwargs):
        missing = [p for p in LLAMA3_SPECIALS if not tokenizer.has_piece(p)]
        if missing:
            raise TokenizerError(
                f"tokenizer {tokenizer.path} lacks the Llama-3 special tokens {missing} that "
                f"the chat format needs; use a Llama-3 tokenizer or one trained with "
                f"lctx.tokenizer.train_sentencepiece (which reserves them)")
        self.tok = tokenizer
        self.template = template or tokenizer.chat_template or LLAMA3_CHAT_TEMPLATE
        self._jinja = compile_template(self.template)
        self._vars = {**tokenizer.special_token_strings(), "tools": None, "documents": None,
                      **template_kwargs}
        specials = sorted(tokenizer.special_pieces(), key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(p) for p in specials) + ")")
        self._special_ids = {p: tokenizer.special_id(p) for p in specials}
        self._trims = self._probe_trims()
        self._skeletons: dict[tuple, tuple[list, list]] = {}
        self.fixed_count = self._skeleton(("user",), False)[2] - self._turn_overhead("user")

    # ---- template rendering ---------------------------------------------------------------
    def _text(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        import jinja2
        try:
            return self._jinja.render(messages=list(messages),
                                      add_generation_prompt=add_generation_prompt,
                                      **self._vars)
        except jinja2.TemplateError as e:
            raise TokenizerError(f"chat template of {self.tok.path} failed on "
                                 f"{len(messages)} messages: {e}") from e

    def _probe_trims(self) -> dict[str, bool]:
        """Per role: does the template strip whitespace around content (Llama's `| trim`)?"""
        probe = [{"role": r, "content": f"{_PAD}{_OPEN}{i}{_CLOSE}{_PAD}"}
                 for i, r in enumerate(ROLES)]
        text = self._text(probe, False)
        return {r: f"{_PAD}{_OPEN}{i}{_CLOSE}{_PAD}" not in text for i, r in enumerate(ROLES)}

    def _skeleton(self, roles: tuple[str, ...], gen: bool) -> tuple[list, list, int]:
        """How the template lays out a conversation with these roles: (texts, parts,
        literal token count). Both lists alternate literals and content indexes (literal,
        index, literal, ..., literal); `parts` holds each literal's ids."""
        key = (roles, gen)
        if key not in self._skeletons:
            if len(self._skeletons) > 4096:  # role patterns are few; bound it anyway
                self._skeletons.clear()
            texts = _SENTINEL.split(self._text([{"role": r, "content": f"{_OPEN}{i}{_CLOSE}"}
                                                for i, r in enumerate(roles)], gen))
            texts = [int(t) if j % 2 else t for j, t in enumerate(texts)]
            indexes = texts[1::2]
            if len(indexes) != len(set(indexes)):
                raise TokenizerError(f"chat template of {self.tok.path} renders a message's "
                                     "content more than once; lctx cannot mask such a format")
            parts = [t if j % 2 else self._literal_ids(t) for j, t in enumerate(texts)]
            self._skeletons[key] = (texts, parts, sum(len(p) for p in parts[::2]))
        return self._skeletons[key]

    def _literal_ids(self, text: str) -> list[int]:
        ids = []
        for k, piece in enumerate(self._split.split(text)):
            if k % 2:
                ids.append(self._special_ids[piece])
            elif piece:
                ids.extend(self.tok.encode(piece))
        return ids

    def _contents(self, messages: Sequence[dict]) -> list[str]:
        return [m["content"].strip() if self._trims[m["role"]] else m["content"]
                for m in messages]

    def _check(self, messages: Sequence[dict]) -> None:
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
                raise TokenizerError(f"messages[{i}] must be {{'role': str, 'content': str}}, "
                                     f"found {m!r:.80}")
            if m["role"] not in ROLES:
                raise TokenizerError(f"messages[{i}] role {m['role']!r} is not one of {ROLES}")

    def _render(self, messages: Sequence[dict], gen: bool) -> tuple[list[int], list[int]]:
        self._check(messages)
        texts, parts, _ = self._skeleton(tuple(m["role"] for m in messages), gen)
        contents = self._contents(messages)
        # The skeleton is shared by all conversations with these roles: check that this
        # one renders to the same text with its contents in place.
        if "".join(contents[t] if j % 2 else t for j, t in enumerate(texts)) != self._text(
                messages, gen):
            raise TokenizerError(
                f"chat template of {self.tok.path} renders message content in a way lctx "
                "cannot split into literal text and contents (it changes more than "
                "surrounding whitespace); pass a template that inserts content verbatim or "
                "trimmed")
        encoded = self.tok.encode_batch(contents)
        ids, mask, closing = [], [], False
        for j, p in enumerate(parts):
            if j % 2:
                w = 1 if messages[p]["role"] == "assistant" else 0
                ids += encoded[p]
                mask += [w] * len(encoded[p])
                closing = bool(w)
            else:
                ids += p
                # The end-of-turn token right after an answer is learnt too (to stop).
                first = 1 if closing and p and p[0] in self.tok.eos_ids else 0
                mask += [first] + [0] * (len(p) - 1) if p else []
                closing = False
        return ids, mask

    # ---- public API -----------------------------------------------------------------------
    def render(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """Token ids of a whole conversation and its loss mask.

        Returns:
          (ids, loss_mask): loss_mask is 1 exactly on assistant content tokens and the
          end-of-turn token closing each (the model must learn to stop), 0 elsewhere.
        """
        return self._render(messages, False)

    def render_prompt(self, messages: Sequence[dict], answer_prefix: str = "") -> list[int]:
        """Ids for generation: the conversation with the template's generation prompt (the
        assistant header), then the (unstripped) `answer_prefix` as an assistant prefill."""
        ids, _ = self._render(messages, True)
        return ids + self.tok.encode(answer_prefix) if answer_prefix else ids

    def count(self, messages: Sequence[dict]) -> int:
        """Exact number of tokens `render(messages)` produces."""
        self._check(messages)
        literal = self._skeleton(tuple(m["role"] for m in messages), False)[2]
        return literal + sum(len(c) for c in self.tok.encode_batch(self._contents(messages)))

    def _turn_overhead(self, role: str) -> int:
        """Literal tokens one more `role` message adds after a user message."""
        return (self._skeleton(("user", role), False)[2]
                - self._skeleton(("user",), False)[2])

    def count_turn(self, role: str, content: str) -> int:
        """Tokens one message adds to a conversation (header, content, end of turn).

        Without a system message, `count(msgs) == fixed_count + sum(count_turn(...))`, with
        `fixed_count` the tokens a conversation has beyond its turns (BOS; Llama-3.1's
        default system block).
        """
        self._check([{"role": role, "content": content}])
        return self._turn_overhead(role) + len(self.tok.encode(
            content.strip() if self._trims[role] else content))
