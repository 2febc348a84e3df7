"""Tokenizers (SentencePiece `.model`, HF `tokenizer.json`) behind one interface, with the
chat template their checkpoint carries. JAX-free: shared with `datagen` and `evals`.

    tok = load_tokenizer("path/to/model_dir")       # or a .model / tokenizer.json file
    ids = tok.encode("plain text")                   # no BOS; "<|eot_id|>" in text stays text
    tok.chat_template                                # the checkpoint's Jinja template, or None

The chat format (`ChatFormat`, rendering conversations with that template) is in
`lctx.chat`; it stays importable from here.
"""
from __future__ import annotations

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
        if plain:
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


def __getattr__(name: str):
    # The chat format moved to lctx.chat (which imports this module); keep the old names.
    if name in ("ChatFormat", "LLAMA3_CHAT_TEMPLATE"):
        from lctx import chat
        return getattr(chat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
