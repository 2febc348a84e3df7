"""LongBench v1 (Bai et al. 2024) as THUDM/LongBench defines it: prompts and generation budgets
(verbatim JSON), middle truncation, metrics, per-length LongBench-E scores, and three
pipelines: `official` (THUDM pred.py/eval.py), `beacon` (the activation-beacon evaluation Li
et al. 2025 used) and `he2025` (He et al. 2025's datasets and average). Run it with
`python -m evals.longbench`.
"""
from evals.longbench.datasets import DATASETS, PRESETS, max_new_tokens, prompt_template
from evals.longbench.metrics import averages, score_dataset, score_dataset_e, score_one
from evals.longbench.prompts import build_input, format_prompt, truncate_middle_text

__all__ = ["DATASETS", "PRESETS", "averages", "build_input", "format_prompt",
           "max_new_tokens", "prompt_template", "score_dataset", "score_dataset_e",
           "score_one", "truncate_middle_text"]
