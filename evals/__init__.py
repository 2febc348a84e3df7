"""Long-context evaluation: RULER, InfiniteBench, LongBench, MMLU (lm-evaluation-harness),
model runners, scoring and plots.

JAX-free except the lctx runner (evals/runners) and the lm-eval adapter (evals/harness),
imported lazily by the CLIs.
"""
