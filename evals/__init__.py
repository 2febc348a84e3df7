"""Long-context evaluation: RULER, InfiniteBench, model runners, scoring and plots.

JAX-free except the lctx runner (evals/runners), imported lazily by the CLIs.
"""
