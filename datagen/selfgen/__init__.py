"""selfgen: Li et al. 2025's six self-generated long-context tasks, any length, token-exact.

The generator may be the very model being extended (an lctx HF export served by vLLM), or
any datagen backend; everything runs through datagen's backends, call cache and shards.

  wordnet.py    the 119,034 WordNet noun lemma names (Debian wordnet-base, no nltk)
  prompts.py    the paper's sample prompts verbatim; our generator prompts; genres
  config.py     settings, the six task names, the paper's 6K preset and release buckets
  calls.py      per-sample coroutines batched into rounds of generator calls, retries
  passages.py   the passage corpus P: one generated passage per noun, random access
  tasks.py      the six tasks (code.py: the code task's policy, ast checks, provenance)
  assemble.py   distractors to an exact token length, counted without whole-sample encodes
  build.py      plan -> calls -> samples -> conversation + input/output ArrayRecords; merge
  offline.py    deterministic WordNet-text backend for tests and CPU demos (not an LLM)
  bootstrap.py  the self-bootstrapped extension loop (stage k's export makes stage k+1's data)

CLI: `python -m datagen.selfgen --help`.
"""
