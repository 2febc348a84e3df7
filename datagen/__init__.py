"""datagen: hierarchical long-context instruction data (He et al. 2025). Imports no JAX.

Pipeline (one module each):
  corpus.py    JSONL / text / Parquet / `datasets` directories / KJV -> Documents (+ Skips)
  chunking.py  token-exact hierarchical split: medium chunks of 3 small (~4K-token) chunks
  prompts.py   Appendix B prompts verbatim, PROMPT_VERSION
  qa.py        per-document banks: small -> medium -> global summaries, Algorithm 1
               hierarchical QAs (+20% multi-hop), diverse QAs; retries and repair (jsonfix.py)
  concat.py    Algorithm 2 multi-document conversations at an exact token target
  cache.py     crash-safe per-worker call cache (rerun = no repeated call, same bytes)
  pipeline.py  build_dataset(...) -> manifest; merge(out_dir); ArrayRecord shards
  backends/    extractive (offline, not an LLM), vLLM, OpenAI-compatible HTTP

Python API:
    from datagen.corpus import load_corpus
    from datagen.pipeline import build_dataset
    from datagen.backends import make_backend
    docs, skips = load_corpus("kjv")
    manifest = build_dataset(docs + skips, "tok.model", make_backend("extractive"),
                             [16384], "out/", Config(small_tokens=1024))
CLI: `python -m datagen --help`.
"""
