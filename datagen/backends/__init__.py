"""Generator backends behind one interface (see base.py), and the factory the CLI uses.

vllm/openai backends are imported lazily: their heavy dependencies live in other environments.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any

BACKENDS = ("extractive", "vllm", "openai")


class BackendError(ValueError):
    """A backend that cannot be built as asked; the message names the flag and the fix."""


class BackendUnavailable(BackendError, ImportError):
    """A backend whose package this python lacks (also an ImportError naming the module)."""

    def __init__(self, message: str, module: str):
        super().__init__(message)
        self.name = module


def _backend_class(name: str):
    if name == "extractive":
        from datagen.backends.extractive import ExtractiveGenerator
        return ExtractiveGenerator
    if name == "vllm":
        try:
            import vllm  # noqa: F401 - only to say which interpreter to use
        except ImportError:
            venv = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))), ".venv-vllm", "bin", "python")
            raise BackendUnavailable(
                f"--backend=vllm needs 'vllm', which {sys.executable} lacks; run with the vLLM "
                f"venv: `{venv} -m datagen ...` (build it with `bash datagen/vllm_env.sh`)",
                "vllm") from None
        from datagen.backends.vllm_backend import VLLMGenerator
        return VLLMGenerator
    if name == "openai":
        try:
            from datagen.backends.openai_backend import OpenAIGenerator
        except ImportError as e:
            raise BackendUnavailable(f"--backend=openai needs {e.name!r}, which "
                                     f"{sys.executable} lacks; `pip install -e .` installs it",
                                     e.name or "httpx") from None
        return OpenAIGenerator
    raise BackendError(f"--backend={name!r} is not one of {BACKENDS}")


def make_backend(name: str, **kwargs: Any):
    """Builds a backend by name; kwargs go to its constructor.

    Raises BackendError naming the backend, the bad or missing argument and the accepted ones
    (a user's --backend-args mistake, never a traceback).
    """
    cls = _backend_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self" and params[p].kind in
                (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    missing = [p for p in accepted if params[p].default is inspect.Parameter.empty
               and p not in kwargs]
    if unknown and not accepted:
        raise BackendError(f"--backend={name} takes no --backend-args (got {unknown}); "
                           f"drop them")
    if unknown:
        raise BackendError(f"--backend={name} --backend-args: unknown argument(s) {unknown}; "
                           f"accepted: {accepted}")
    if missing:
        example = json.dumps({p: "..." for p in missing})
        raise BackendError(f"--backend={name} needs {missing} in --backend-args, e.g. "
                           f"--backend-args='{example}' (accepted: {accepted})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, OSError) as e:  # the backend's own checks of its args
        raise BackendError(f"--backend={name} --backend-args: {e}") from None
