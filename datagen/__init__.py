"""datagen: hierarchical long-context instruction data (He et al. 2025). Imports no JAX.

Pipeline (one module each):
  corpus.py    JSONL / text / Parquet / `datasets` directories / KJV -> Documents (+ Skips);
               ids are paths relative to the corpus root, unique
  chunking.py  token-exact hierarchical split: medium chunks of 3 small (~4K-token) chunks
  prompts.py   Appendix B prompts verbatim, PROMPT_VERSION
  qa.py        per-document banks: small -> medium -> global summaries first, then 75 QAs
               per book (25 hierarchical from the Algorithm 1 walk, multi-hop inside them,
               + 50 diverse); retries with fixed seeds and repair (jsonfix.py)
  concat.py    Algorithm 2 multi-document conversations at an exact token target
  presets.py   the paper's stages: lengths, sample counts, documents per sample
  cache.py     crash-safe per-worker call cache, one line per finished call
  pipeline.py  build_dataset(...) -> manifest; merge(out_dir); ArrayRecord shards
  backends/    extractive (offline, not an LLM), vLLM, OpenAI-compatible HTTP; all stream

Choices where the paper is silent (each configurable, datagen.config):
  * Length comes from choosing documents, not from padding with QAs. With the paper's
    documents per sample (2/4/8/12 at 180K/350K/650K/1M; `docs_per_sample=paper`), K whole
    documents are drawn whose sizes land just under the target; documents are never cut
    (a cut document's summary and QAs would describe text that is not there). Fill
    (Algorithm 2's "remaining questions") closes the last gap with the recipe's own kinds,
    in its proportions, after all recipe turns, and is capped at `max_fill` = half of a
    conversation's QA pairs; records say how much was fill (meta qa_pairs, fill_pairs,
    fill_tokens). A conversation that would need more is rejected and reported.
  * A rerun reproduces a run byte for byte: every random choice is seeded from (seed,
    document id, length, sample index), attempt k of a call always has seed + 7919 k, and
    the cache records every attempt, errors included, so a rerun replays the same retries.
    A call that failed on every attempt is tried afresh by the next run.
  * Durability per call: backends stream finished calls and the cache writes each at once,
    so kill -9 loses only the calls in flight; a torn last line is cut on open.
  * The CLI exits 2 on a bad flag or input (one line naming it and the fix, nothing written)
    and 3 when fewer conversations than asked were written (one line per length says why;
    --allow-short accepts it), so a SLURM array never mistakes a short shard for success.

Python API:
    from datagen.corpus import load_corpus
    from datagen.pipeline import build_dataset
    from datagen.backends import make_backend
    docs, skips = load_corpus("kjv")
    manifest = build_dataset(docs + skips, "tok.model", make_backend("extractive"),
                             [16384], "out/", Config(small_tokens=1024))
CLI: `python -m datagen --help`.
"""
