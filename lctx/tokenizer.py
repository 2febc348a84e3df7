"""Tokenizers (SentencePiece `.model`, HF `tokenizer.json`) behind one interface, with the
chat template their checkpoint carries. JAX-free: shared with `datagen` and `evals`.

    tok = load_tokenizer("path/to/model_dir")       # or a .model / tokenizer.json file
    ids = tok.encode("plain text")                   # no BOS; "<|eot_id|>" in text stays text
    tok.chat_template                                # the checkpoint's Jinja template, or None

    fmt = ChatFormat(tok)                            # renders with that template
    ids, loss_mask = fmt.render([{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}])

The chat format renders exactly what transformers' `apply_chat_template` renders with the
same template (same Jinja environment: trim/lstrip blocks, loop controls, `tojson`,
`raise_exception`, `strftime_now`), so training, HF and vLLM prompts agree. A tokenizer
without a template (e.g. a SentencePiece model trained here) gets Meta-Llama-3-8B-Instruct's.

How `ChatFormat` makes ids: the template is rendered once with a placeholder in place of
each message's content (the skeleton, cached per role sequence) and once with the real
contents; the two must agree after substitution, or the template depends on content in a
way we cannot split and rendering fails with a clear error. The skeleton's text is split at
the tokenizer's special tokens (one id each) and the rest encoded as plain text; each
content is encoded separately, so special-token strings inside user text stay text. For
Llama-3's pre-tokeniser this equals encoding the whole rendered string (checked against HF
in tests/tokenizer_test.py). The loss mask is 1 on assistant content and on the
end-of-turn token that closes it.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import re
from typing import Sequence

# The Llama-3 special tokens. Tiny tokenizers trained here reserve them as atomic pieces so
# that the chat format renders identically to Llama-3's.
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>")
# Extra end-of-turn pieces some Llama-3.x tokenizers carry; counted as EOS when present.
_EXTRA_EOS = ("<|eom_id|>",)
# Other Llama-3.x special pieces a chat template may emit (tool calls).
_OTHER_SPECIALS = ("<|python_tag|>", "<|finetune_right_pad_id|>")
_PAD_PIECES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]")
_LOOKED_FOR = ("a SentencePiece .model file, an HF tokenizer.json, or a directory containing "
               "tokenizer.json or tokenizer.model")


class TokenizerError(ValueError):
    """A tokenizer that cannot do what was asked (missing piece, missing special tokens)."""


def train_sentencepiece(text: str, vocab_size: int, out_prefix: str) -> str:
    """Trains a BPE SentencePiece model on `text`; returns the `.model` path (atomic write).

    The Llama-3 chat special tokens are user-defined symbols, so they tokenise atomically.
    """
    import sentencepiece as spm
    out_dir = os.path.dirname(os.path.abspath(out_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_prefix = f"{out_prefix}.tmp-{os.getpid()}"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for line in text.splitlines() if line.strip()),
        model_prefix=tmp_prefix, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, user_defined_symbols=list(LLAMA3_SPECIALS),
        bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, num_threads=2, minloglevel=2,
        max_sentence_length=1 << 16, add_dummy_prefix=False,
        # Keep text exactly (newlines fall back to bytes): chat formats depend on whitespace.
        normalization_rule_name="identity", remove_extra_whitespaces=False)
    os.replace(tmp_prefix + ".model", out_prefix + ".model")
    os.replace(tmp_prefix + ".vocab", out_prefix + ".vocab")
    return out_prefix + ".model"


class Tokenizer:
    """The interface shared by both backends. Subclasses fill in the `_`-prefixed hooks.

    Attributes:
      path: the file the tokenizer was read from.
      vocab_size: number of ids (including added/special tokens).
      bos_id: `<|begin_of_text|>` if present, else the native BOS, else None.
      eot_id: `<|eot_id|>` if present, else the native EOS, else None.
      eos_ids: every id that ends generation (eot, end_of_text, eom, native EOS).
      pad_id: a native pad piece if any, else `<|end_of_text|>`/EOS, else 0 (padding is
        always masked by segment id 0, so its value never reaches the loss).
      chat_template: the Jinja chat template stored beside the tokenizer file
        (chat_template.jinja, else tokenizer_config.json's `chat_template`), or None.
    """

    path: str
    vocab_size: int

    def __init__(self, path: str, native: dict[str, str | None]):
        self.path = path
        pick = lambda *names: next((self._piece_id(n) for n in names  # noqa: E731
                                    if n and self._piece_id(n) is not None), None)
        self.bos_id = pick("<|begin_of_text|>", native.get("bos"))
        self.eot_id = pick("<|eot_id|>", native.get("eos"))
        self.eos_ids = {i for i in (pick(n) for n in ("<|eot_id|>", "<|end_of_text|>",
                                                      *_EXTRA_EOS, native.get("eos")))
                        if i is not None}
        pad = pick(native.get("pad"), *_PAD_PIECES, "<|end_of_text|>", native.get("eos"))
        self.pad_id = 0 if pad is None else pad
        self._native = native
        self.chat_template = read_chat_template(os.path.dirname(os.path.abspath(path)))

    def special_token_strings(self) -> dict[str, str]:
        """The special-token variables a chat template sees (`bos_token`, `eos_token`, ...),
        as transformers passes them: the tokenizer config's strings, else our ids' pieces."""
        out = {f"{k}_token": v for k, v in self._native.items() if v}
        for key, i in (("bos_token", self.bos_id), ("eos_token", self.eot_id)):
            if key not in out and i is not None:
                out[key] = self.decode([i])
        return out

    def special_pieces(self) -> list[str]:
        """Strings that are one special id when a chat template emits them."""
        return [p for p in LLAMA3_SPECIALS + _EXTRA_EOS + _OTHER_SPECIALS if self.has_piece(p)]

    def _piece_id(self, piece: str) -> int | None:
        raise NotImplementedError

    def has_piece(self, piece: str) -> bool:
        """Whether `piece` is one token of the vocabulary."""
        return self._piece_id(piece) is not None

    def special_id(self, piece: str) -> int:
        """The id of the single token `piece` (e.g. "<|eot_id|>"); raises TokenizerError."""
        i = self._piece_id(piece)
        if i is None:
            raise TokenizerError(f"tokenizer {self.path} has no token {piece!r}")
        return i

    def encode(self, text: str) -> list[int]:
        """Token ids of plain `text`: no BOS/EOS added, special-token strings stay text."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts at once (multi-threaded in both backends)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens are rendered as their strings."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` file."""

    def __init__(self, path: str):
        import sentencepiece as spm
        self._sp = spm.SentencePieceProcessor(model_file=path)
        self.vocab_size = self._sp.get_piece_size()
        sp = self._sp
        native = {"bos": sp.id_to_piece(sp.bos_id()) if sp.bos_id() >= 0 else None,
                  "eos": sp.id_to_piece(sp.eos_id()) if sp.eos_id() >= 0 else None,
                  "pad": sp.id_to_piece(sp.pad_id()) if sp.pad_id() >= 0 else None}
        super().__init__(path, native)
        # User-defined symbols are matched inside any input text; these are the ones that
        # must not be produced from user text (control symbols never are).
        guarded = [p for p in LLAMA3_SPECIALS + _EXTRA_EOS if self._piece_id(p) is not None]
        self._guard = (re.compile("|".join(re.escape(p) for p in sorted(guarded, key=len,
                                                                         reverse=True)))
                       if guarded else None)

    def _piece_id(self, piece):
        i = self._sp.piece_to_id(piece)
        # piece_to_id answers unk_id for an unknown piece.
        return i if 0 <= i < self.vocab_size and self._sp.id_to_piece(i) == piece else None

    def _encode_guarded(self, text: str) -> list[int]:
        # A special string inside user text is encoded as its first char + the rest, both as
        # plain text: it decodes back to the same string but never becomes a special id.
        out, start = [], 0
        for m in self._guard.finditer(text):
            s = m.group(0)
            for part in (text[start:m.start()], s[:1], s[1:]):
                if part:
                    out.extend(self._sp.encode(part))
            start = m.end()
        if start < len(text):
            out.extend(self._sp.encode(text[start:]))
        return out

    def encode_batch(self, texts):
        texts = list(texts)
        out: list = [None] * len(texts)
        plain = []
        for i, t in enumerate(texts):
            if self._guard is not None and self._guard.search(t):
                out[i] = self._encode_guarded(t)
            else:
                plain.append(i)
        if len(plain) == 1:  # one text: SentencePiece's thread pool costs ~10x the encode
            out[plain[0]] = self._sp.encode(texts[plain[0]])
        elif plain:
            enc = self._sp.encode([texts[i] for i in plain], num_threads=os.cpu_count() or 1)
            for i, ids in zip(plain, enc):
                out[i] = list(ids)
        return out

    def decode(self, ids):
        return self._sp.decode([int(i) for i in ids])


class HFTokenizer(Tokenizer):
    """An HF `tokenizer.json` (the `tokenizers` library); reads `tokenizer_config.json` beside
    it, when present, for the native bos/eos/pad tokens."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer as RustTokenizer
        try:
            self._tok = RustTokenizer.from_file(path)
        except Exception as e:  # the Rust side raises a bare Exception on bad JSON
            raise TokenizerError(f"{path} is not a readable HF tokenizer.json ({e})") from e
        # Special-token strings in user text are encoded as ordinary text.
        self._tok.encode_special_tokens = True
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        super().__init__(path, _hf_native_specials(os.path.dirname(path)))

    def _piece_id(self, piece):
        return self._tok.token_to_id(piece) if piece else None

    def special_pieces(self):
        # Every added token, as transformers splits them out of rendered chat text.
        added = [t.content for t in self._tok.get_added_tokens_decoder().values()]
        return sorted(set(added) | set(super().special_pieces()))

    def encode_batch(self, texts):
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _hf_native_specials(model_dir: str) -> dict[str, str | None]:
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    if not os.path.exists(cfg_path):
        return {}
    with open(cfg_path) as f:
        cfg = json.load(f)
    token = lambda v: v.get("content") if isinstance(v, dict) else v  # noqa: E731
    return {k: token(cfg.get(f"{k}_token")) for k in ("bos", "eos", "pad")}


def read_chat_template(model_dir: str) -> str | None:
    """The chat template saved in `model_dir`: chat_template.jinja (transformers 5 writes it)
    takes precedence over tokenizer_config.json's `chat_template` (older checkpoints, e.g.
    Llama-3.1-8B-Instruct's), as in transformers; a list of named templates gives 'default'.
    """
    jinja_path = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(jinja_path):
        with open(jinja_path) as f:
            return f.read()
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path) as f:
        template = json.load(f).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a SentencePiece `.model`, an HF `tokenizer.json`, or a model directory holding
    either (tokenizer.json preferred).

    Raises:
      FileNotFoundError: nothing usable at `path` (the message says what was looked for).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise FileNotFoundError(f"no tokenizer in directory {path}: looked for "
                                f"tokenizer.json and tokenizer.model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer at {path}: expected {_LOOKED_FOR}")
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"{"):
        return HFTokenizer(path)
    return SentencePieceTokenizer(path)


# ---- the chat format ----------------------------------------------------------------

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
        self._literals: dict[str, tuple[int, ...]] = {}
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
        # Memoised: a conversation's literals are a few headers repeated once per message.
        got = self._literals.get(text)
        if got is not None:
            return list(got)
        ids = []
        for k, piece in enumerate(self._split.split(text)):
            if k % 2:
                ids.append(self._special_ids[piece])
            elif piece:
                ids.extend(self.tok.encode(piece))
        if len(self._literals) < 4096:
            self._literals[text] = tuple(ids)
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
