"""lctx models in lm-evaluation-harness (`LctxLM`, registered as `--model lctx`) and the MMLU
table of He et al. 2025 (`python -m evals.harness.mmlu`). Importing this package imports
neither lm-eval nor JAX."""
