"""RULER (Hsieh et al. 2024), faithful to NVIDIA/RULER's 2024 code; see `constants` for the
benchmark definitions, `registry.prepare` for data, `evals.scoring` for scores."""
from evals.ruler.base import Options
from evals.ruler.constants import TASKS, resolve_tasks
from evals.ruler.registry import Resources, TaskNotRunnable, build_task, prepare

__all__ = ["Options", "Resources", "TASKS", "TaskNotRunnable", "build_task", "prepare",
           "resolve_tasks"]
