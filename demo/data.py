"""The demo's inputs: corpus passages, its SentencePiece tokenizer and per-stage training data.

Training data of a stage of length T (He et al. 2025 in miniature):
  * hierarchical single- and multi-document instruction conversations of about T tokens,
    built by `datagen.pipeline.build_dataset` (offline extractive backend by default, or a
    vLLM / OpenAI-compatible endpoint), and
  * a share of RULER-format retrieval conversations (needle-in-a-haystack and variable
    tracking drawn by `evals.ruler` with a training seed, never the evaluation seed). A tiny
    model learns no retrieval skill from a few minutes of QA alone; these stand in for the
    short-context ability the paper's base model (Llama-3.1-8B-Instruct) already has.

RULER at the demo's short lengths (384-3072 tokens): RULER targets 4K+ contexts, reserving 128
generated tokens for NIAH and growing essay haystacks 500 words at a time, so no NIAH prompt
fits in 384 tokens. The demo draws the same prompts with `evals.ruler`'s short-length options
(`ruler_options`): RESERVE tokens for the answer, haystacks grown STEP_WORDS words (essay) or
one unit at a time. Variable tracking is left out: its one-shot example alone needs ~1000
tokens. JAX-free.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import numpy as np
import sentencepiece as spm

from datagen.backends import make_backend
from datagen.chunking import sentences
from datagen.config import Config
from datagen.corpus import Document, load_corpus
from datagen.pipeline import build_dataset
from evals.ruler import registry
from evals.ruler.base import Options
from evals.ruler.text import PieceCounter, load_tokenizer
from lctx import files, records
from lctx.corpora import kjv_verses
from lctx.tokenizer import train_sentencepiece

log = logging.getLogger("demo")

# Splits a RULER prompt into the user turn and the assistant's answer prefix: the evals
# accept a literal chat template holding `{task_template}`; this character is in no prompt.
SEP = "\u241e"
CHAT_SPLIT_TEMPLATE = "{task_template}" + SEP
RESERVE = 32  # tokens reserved for (and generated as) the answer (RULER: 128 for NIAH)
STEP_WORDS = 25  # essay haystack growth per size-search step (RULER: 500)
SUPPORTED = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
             "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery")


def ruler_options(seed: int) -> Options:
    """evals.ruler options of the demo: the split chat template, the short-length variant."""
    return Options(chat_template=CHAT_SPLIT_TEMPLATE, seed=seed, reserve=RESERVE,
                   step_words=STEP_WORDS)


def check_tasks(tasks: Sequence[str], field: str) -> list[str]:
    """The demo's RULER tasks, validated (NIAH only: they fit a few hundred tokens)."""
    bad = [t for t in tasks if t not in SUPPORTED]
    if bad:
        raise ValueError(f"{field}: RULER task(s) {bad} unsupported at the demo's short "
                         f"lengths; use some of {', '.join(SUPPORTED)}")
    return list(tasks)


def ruler_samples(task: str, length: int, n: int, tok, counter, seed: int) -> list[dict]:
    """`n` RULER samples of `task` at `length` tokens, drawn with the demo's options."""
    check_tasks([task], "demo RULER tasks")
    return registry.prepare(task, length, n, tok, ruler_options(seed), registry.Resources(),
                            counter)


def passages(units: Sequence[tuple[str, str]], doc_words: int) -> list[tuple[str, str]]:
    """Groups consecutive (group id, text) units into documents of about `doc_words` words,
    never across a group (a KJV book, a corpus document). Returns (doc id, text)."""
    out: list[tuple[str, str]] = []
    cur_id, cur, n, part = None, [], 0, 0
    for gid, text in list(units) + [(None, "")]:
        if cur and (gid != cur_id or n >= doc_words):
            out.append((f"{cur_id}/{part:04d}", " ".join(cur)))
            part = part + 1 if gid == cur_id else 0
            cur, n = [], 0
        if gid is None:
            break
        cur_id = gid
        cur.append(text)
        n += len(text.split())
    return out


def corpus_units(spec: str) -> list[tuple[str, str]]:
    """(group, unit text) pairs: KJV verses by book, or a corpus's documents by sentence."""
    if spec == "kjv":
        return [(b, t) for b, _, _, t in kjv_verses()]
    docs, skips = load_corpus(spec)
    if not docs:
        raise ValueError(f"demo.corpus={spec!r} has no usable documents ({len(skips)} skipped)")
    return [(d.doc_id, s) for d in docs for s in sentences(d.text)]


def build_corpus(spec: str, doc_words: int, max_docs: int, out_path: str) -> dict[str, Any]:
    """Writes the demo documents (JSONL: id, text) and the tokenizer text; returns counts.

    `max_docs` documents are taken evenly spaced over the corpus (every k-th passage), so a
    small demo still sees the whole book range.
    """
    if doc_words < 16:
        raise ValueError(f"demo.doc_words={doc_words} is too small; use >= 16")
    units = corpus_units(spec)
    docs = passages(units, doc_words)
    stride = max(1, len(docs) // max(1, max_docs))
    picked = docs[::stride][:max_docs]
    files.atomic_write(out_path, "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n"
                                    for i, t in picked))
    files.atomic_write(os.path.splitext(out_path)[0] + ".txt", "\n".join(t for _, t in units))
    return {"corpus": spec, "units": len(units), "passages": len(docs), "documents":
            len(picked), "words": sum(len(t.split()) for _, t in picked), "path": out_path}


def read_docs(path: str):
    with open(path, encoding="utf-8") as f:
        return [Document(r["id"], r["text"], "demo") for r in map(json.loads, f)]


def train_tokenizer(corpus_txt: str, vocab_size: int, out_prefix: str) -> str:
    """SentencePiece BPE (with the Llama-3 chat specials) on the corpus text."""
    with open(corpus_txt, encoding="utf-8") as f:
        return train_sentencepiece(f.read(), vocab_size, out_prefix)


def datagen_config(d: Any):
    """The datagen settings of the miniature: the paper's algorithm, small chunk sizes."""
    return Config(min_chars=40, small_tokens=int(d.small_tokens), small_per_medium=2,
                  words_small=12, words_medium=16, words_global=20,
                  n_hierarchical=int(d.qa_hierarchical), n_diverse=int(d.qa_diverse),
                  n1=1, n2=2, n3=1, batch_docs=64, length_tolerance=0.25,
                  samples_per_length=1, seed=int(d.seed))


def build_conversations(docs_path: str, tokenizer: str, lengths: dict[int, str],
                        samples: dict[int, int], out_dir: str, d: Any) -> dict[str, Any]:
    """datagen conversations for every stage length; returns {stage: [shard paths]}."""
    kw = {}
    if d.backend != "extractive":
        kw = {k: v for k, v in (("model", d.backend_model), ("base_url", d.backend_url)) if v}
    backend = make_backend(d.backend, **kw)
    manifest = build_dataset(read_docs(docs_path), tokenizer, backend, sorted(lengths), out_dir,
                             datagen_config(d), names=lengths, samples=samples,
                             progress=bool(d.progress))
    out: dict[str, Any] = {"paths": {}, "counts": {}}
    for length, info in manifest["lengths"].items():
        stage = lengths[int(length)]
        out["paths"][stage] = [os.path.join(out_dir, info["file"])]
        out["counts"][stage] = {"conversations": info["conversations"],
                                "tokens": info["tokens"], "rejected": info["rejected"]}
        if info["conversations"] == 0:
            raise RuntimeError(f"datagen wrote no {length}-token conversations "
                               f"({info['rejected']}); raise demo.max_docs or demo.doc_words")
    return out


def split_prompt(text: str) -> tuple[str, str]:
    """A RULER prompt rendered with CHAT_SPLIT_TEMPLATE -> (user turn, answer prefix)."""
    if SEP not in text:
        raise ValueError("prompt lacks the demo's separator: prepare it with "
                         "chat_template=CHAT_SPLIT_TEMPLATE")
    user, prefix = text.split(SEP, 1)
    return user.strip(), prefix.strip()


def retrieval_records(tasks: Sequence[str], lengths: Sequence[int], n: int, tokenizer_path: str,
                      seed: int, out_path: str) -> int:
    """`n` RULER-format retrieval conversations spread over tasks x lengths, one shard.

    Drawn with `seed` (the evaluation uses RULER's 42): the same generators, other needles.
    """
    tok = load_tokenizer(tokenizer_path)
    counter = PieceCounter(tok)
    cells = [(t, L) for t in tasks for L in lengths]
    recs = []
    for c, (task, length) in enumerate(cells):
        k = n // len(cells) + (1 if c < n % len(cells) else 0)
        if k == 0:
            continue
        cseed = seed + 7919 * c
        for s in ruler_samples(task, length, k, tok, counter, cseed):
            user, prefix = split_prompt(s["input"])
            answer = f"{prefix} {', '.join(s['outputs'])}".strip()
            recs.append(records.make_record(
                f"{task}/{length}/{s['index']:05d}",
                [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                {"task": task, "length_target": length, "seed": cseed}))
    records.write_array_record(out_path, recs)
    return len(recs)


def copy_records(tokenizer_path: str, n: int, seed: int, out_path: str, max_items: int = 24,
                 digit_share: float = 0.3) -> int:
    """`n` copy conversations ("Repeat: X" -> "X"), one shard; returns the count.

    The pretraining stand-in of the miniature. A pretrained LLM can already copy what it has
    read (its induction heads), which every retrieval task needs; a tiny model trained from
    scratch on a few thousand retrieval rows never learns it in a CPU budget (measured: RULER
    NIAH 0 at the base length after 900 steps). Copying random strings forces the skill: X is
    4..`max_items` random tokenizer pieces, each a random digit with probability
    `digit_share` (digits are what NIAH answers are made of), so no n-gram shortcut exists.
    """
    if n < 1 or max_items < 5 or not 0.0 <= digit_share <= 1.0:
        raise ValueError(f"copy records: need n >= 1, max_items >= 5 and 0 <= digit_share "
                         f"<= 1; got {n}, {max_items}, {digit_share}")
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    pieces = [p for p in (sp.id_to_piece(i).replace("\u2581", " ")
                          for i in range(sp.get_piece_size()))
              if p.strip() and p.isprintable() and "<" not in p and ">" not in p]
    if len(pieces) < 50:
        raise ValueError(f"{tokenizer_path}: only {len(pieces)} printable pieces; a copy task "
                         "needs a real vocabulary (vocab_size >= 256)")
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        k = int(rng.integers(4, max_items))
        text = "".join(str(rng.integers(10)) if rng.random() < digit_share
                       else pieces[rng.integers(len(pieces))] for _ in range(k)).strip()
        recs.append(records.make_record(
            f"copy/{i:06d}", [{"role": "user", "content": f"Repeat: {text}"},
                              {"role": "assistant", "content": text}],
            {"task": "copy", "seed": seed}))
    records.write_array_record(out_path, recs)
    return len(recs)
