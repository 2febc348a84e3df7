"""lm-evaluation-harness's command line with the lctx model registered.

    python -m evals.harness --model lctx --model_args path=RUN_OR_EXPORT --tasks mmlu
    lctx-lm-eval --model lctx ...            (console script, same thing)

lctx declares itself in the `lm_eval.models` entry-point group (setup.py), which lm-eval
reads from its plugin release on (upstream PR #4013); `lm_eval --model lctx` then works as is.
lm-eval 0.4.13, pinned here, does not read the group yet: this wrapper loads the group's
entry points into lm-eval's model registry and runs its CLI unchanged.
"""
from __future__ import annotations

import importlib.metadata
import sys


def register_plugins() -> list[str]:
    """Registers every `lm_eval.models` entry point not already known; returns their names."""
    import lm_eval.models  # noqa: F401  the built-in models first (see evals/harness/lm.py)
    from lm_eval.api.registry import model_registry
    added = []
    for ep in importlib.metadata.entry_points(group="lm_eval.models"):
        if ep.name not in model_registry:
            model_registry.register(ep.name, target=ep)
            added.append(ep.name)
    if "lctx" not in model_registry:  # a source checkout without the installed metadata
        model_registry.register("lctx", target="evals.harness.lm:LctxLM")
        added.append("lctx")
    return added


def main() -> None:
    from lm_eval.__main__ import cli_evaluate
    register_plugins()
    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
