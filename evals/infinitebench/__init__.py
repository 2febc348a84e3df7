"""InfiniteBench (Zhang et al. 2024): prompts, model inputs, scorers, synthetic tasks."""
from evals.infinitebench.prompts import (MAX_NEW_TOKENS, TASKS, build_input, create_prompt,
                                         labels, read_jsonl, truncate_middle)
from evals.infinitebench.scoring import average, score_one, score_task

__all__ = ["MAX_NEW_TOKENS", "TASKS", "average", "build_input", "create_prompt", "labels",
           "read_jsonl", "score_one", "score_task", "truncate_middle"]
