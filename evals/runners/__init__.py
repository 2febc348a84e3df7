"""Model runners behind one interface (`evals.runners.base`): vLLM, OpenAI-compatible, lctx.

Classes are exported lazily so that importing the package pulls in no engine:
`from evals.runners import VLLMRunner` imports `vllm_runner` only then.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "VLLMRunner": "evals.runners.vllm_runner",
    "OpenAIRunner": "evals.runners.openai_runner",
    "LctxRunner": "evals.runners.lctx_runner",
    "Runner": "evals.runners.base",
    "PromptTooLongError": "evals.runners.base",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evals.runners' has no attribute {name!r}")
