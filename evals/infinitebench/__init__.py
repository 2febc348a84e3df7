"""InfiniteBench (Zhang et al. 2024): prompts, middle truncation, scorers, synthetic tasks."""
from evals.infinitebench.prompts import (MAX_NEW_TOKENS, TASKS, build_prompt, create_prompt, labels,
                                         read_jsonl, truncate_middle)
from evals.infinitebench.scoring import score_one, score_task

__all__ = ["MAX_NEW_TOKENS", "TASKS", "build_prompt", "create_prompt", "labels", "read_jsonl",
           "score_one", "score_task", "truncate_middle"]
