"""Generator backends behind one interface (see base.py), and the factory the CLI uses.

vllm/openai backends are imported lazily: their heavy dependencies live in other environments.
"""
from __future__ import annotations

from typing import Any

BACKENDS = ("extractive", "vllm", "openai")


def make_backend(name: str, **kwargs: Any):
    """Builds a backend by name; kwargs go to its constructor."""
    if name == "extractive":
        from datagen.backends.extractive import ExtractiveGenerator
        return ExtractiveGenerator(**kwargs)
    if name == "vllm":
        from datagen.backends.vllm_backend import VLLMGenerator
        return VLLMGenerator(**kwargs)
    if name == "openai":
        from datagen.backends.openai_backend import OpenAIGenerator
        return OpenAIGenerator(**kwargs)
    raise ValueError(f"--backend={name!r} is not one of {BACKENDS}")
