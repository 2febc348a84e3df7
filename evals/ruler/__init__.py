"""RULER (Hsieh et al. 2024), faithful to NVIDIA/RULER's 2024 code (e40fae1..230fddc).

Benchmark definitions live in `constants`; one module per task family (`niah`, `vt`, `cwe`,
`fwe`, `qa`); `registry.prepare` makes samples; `scoring` scores them; `run` and
`python -m evals.ruler` run a model resumably. Defaults are the 2024 behaviour; `Options`
offers the 2025 rewrite's fixes (binary search, repeated haystacks, typo fix, generation
reserve for fwe).

Where we differ from the reference, on purpose:
- Sizes are searched on token counts (cached pieces + 1-2 exact tokenisations) instead of
  re-tokenising at every step; for a fixed probe prompt the result equals the reference's loop
  (tests), but the probe comes from its own random stream, so the sample stream does not
  depend on how many search steps were taken (the reference's does).
- Essay sentences are split by a regex (nltk's punkt model cannot be fetched offline); this
  only moves needle insertion points between sentence boundaries.
- Where the reference would retry forever (a prompt that never fits), we raise
  `LengthTooSmallError`; a VT one-shot example that cannot fit 5 noises in 500 tokens shrinks
  to 1 noise.
- qa with a haystack larger than the corpus: the reference shuffles its global document list
  in place (a bug that reorders later samples); we shuffle a copy.
- Special-token strings in a chat template count as one token each, as with RULER's HF
  tokenizer (lctx's tokenizer keeps them plain text by design).
"""
from evals.ruler.base import Options
from evals.ruler.constants import TASKS, resolve_tasks
from evals.ruler.registry import Resources, TaskNotRunnable, build_task, prepare

__all__ = ["Options", "Resources", "TASKS", "TaskNotRunnable", "build_task", "prepare",
           "resolve_tasks"]
