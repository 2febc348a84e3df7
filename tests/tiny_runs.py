"""Inputs of tiny training runs, made locally: KJV QA conversations in ArrayRecord shards and
a tiny random HF Llama directory (lctx export + an HF tokenizer.json), no hub, no torch."""
from __future__ import annotations

import json
import os
import random

import numpy as np

from lctx import records

# The tiny architecture every test run shares (model section overrides).
TINY_MODEL = dict(vocab_size=1024, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  mlp_dim=64, tie_embeddings=False)


def qa_records(num_records: int, seed: int = 0, max_verses: int = 3, max_questions: int = 2
               ) -> list[dict]:
    """Conversations over short KJV passages: quote a verse, name the book, or give the verse
    that follows a reference (answers are in the passage)."""
    from lctx.corpora import kjv_verses
    verses = kjv_verses()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_records):
        k = int(rng.integers(2, max_verses + 1))
        start = int(rng.integers(0, len(verses) - k))
        window = verses[start:start + k]
        refs = [f"{b} {c}:{v}" for b, c, v, _ in window]
        passage = "\n".join(f"{r} {v[3]}" for r, v in zip(refs, window))
        msgs = [{"role": "system", "content": "Answer from the passage."}]
        for n, q in enumerate(rng.choice(3, size=int(rng.integers(1, max_questions + 1)))):
            j = int(rng.integers(0, k - 1))
            ask, answer = ((f"Quote {refs[j]}.", window[j][3]) if q == 0 else
                           ("Which book?", window[0][0]) if q == 1 else
                           (f"What follows {refs[j]}?", window[j + 1][3]))
            msgs += [{"role": "user", "content": f"{passage}\n\n{ask}" if n == 0 else ask},
                     {"role": "assistant", "content": answer}]
        out.append(records.make_record(f"kjv-qa-{seed}-{i}", msgs, {"source": "kjv"}))
    return out


def write_shards(directory: str, recs: list[dict], shards: int = 2) -> str:
    """Writes `recs` into `shards` ArrayRecord files under `directory`; returns their glob."""
    os.makedirs(directory, exist_ok=True)
    for i in range(shards):
        records.write_array_record(os.path.join(directory, f"part-{i:03d}.arrayrecord"),
                                   recs[i::shards])
    return os.path.join(directory, "*.arrayrecord")


def tiny_hf_dir(out_dir: str, text: str, seed: int = 0) -> str:
    """A random tiny Llama in HF format with a byte-level BPE tokenizer.json (the kind of
    tokenizer a Llama-3.1 directory has) and the Llama-3 chat template."""
    from flax import nnx

    from lctx import hf
    from lctx.model import Llama, ModelConfig
    from vllm_helpers import train_tokenizer
    tok_dir = out_dir + "-tokenizer"
    train_tokenizer(text, tok_dir, vocab_size=TINY_MODEL["vocab_size"])
    model = Llama(ModelConfig(**TINY_MODEL, max_seq_len=4096), rngs=nnx.Rngs(seed))
    return hf.export_hf(model, out_dir, tokenizer=tok_dir)


def ruler_qa_files(directory: str) -> tuple[str, str]:
    """Tiny RULER QA inputs in the real formats: a SQuAD v2 dev JSON (40 answerable and 40
    impossible questions) and a HotpotQA dev distractor JSON (30 questions, 10 paragraphs
    each). Returns (squad path, hotpotqa path)."""
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    para = lambda: " ".join(rng.choices(words, k=60)) + "."  # noqa: E731
    squad = {"data": [{"paragraphs": [
        {"context": f"City {a}{p} is the capital. " + para(),
         "qas": [{"question": f"Which city is the capital of {a}{p}?", "is_impossible": False,
                  "answers": [{"text": f"City {a}{p}"}, {"text": f"{a}{p}"}]},
                 {"question": "Unanswerable?", "is_impossible": True, "answers": []}]}
        for p in range(4)]} for a in "ABCDEFGHIJ"]}
    hotpot = [{"question": f"Who wrote book {i}?", "answer": f"Author {i}",
               "context": [[f"Title {i}-{j}", [para(), f" Author {i} wrote it."]]
                           for j in range(10)]} for i in range(30)]
    paths = os.path.join(directory, "squad.json"), os.path.join(directory, "hotpot.json")
    for path, obj in zip(paths, (squad, hotpot)):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f)
    return paths
