"""lctx: take an instruction-tuned LLM to million-token contexts.

This package import is deliberately empty: JAX-free modules (`lctx.records`,
`lctx.tokenizer`, `lctx.corpora`) are shared with the `datagen` and `evals` packages,
which must not import JAX.
"""
__version__ = "0.1.0"
