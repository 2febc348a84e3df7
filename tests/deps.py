"""Optional test dependencies: skipped where they are missing, a failure in CI.

A parity suite that imports torch or transformers must not vanish silently: on a developer
machine without them it is skipped (and pytest lists the skip), but in CI (`CI=true`, where
`bash setup.sh --dev` installs them) a missing one fails the run.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(module: str) -> ModuleType:
    """Imports `module`; when it is missing: skip (pytest.importorskip), or fail under CI."""
    if not in_ci():
        return pytest.importorskip(module)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"CI=true and the test dependency {module!r} is missing ({e}); "
                    "`bash setup.sh --dev` installs it", pytrace=False)
