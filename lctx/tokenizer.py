"""Tokenizers (SentencePiece `.model`, HF `tokenizer.json`) behind one interface, and the
Llama-3 chat format. JAX-free: shared with `datagen` and `evals`.
"""
from __future__ import annotations

import os

# The Llama-3 special tokens. Tiny tokenizers trained here reserve them as atomic pieces so
# that the chat format renders identically to Llama-3's.
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>")


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
