"""tests/deps.py: a missing parity dependency skips locally and fails in CI."""
import pytest

import deps


def test_missing_dependency_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        deps.require("lctx_no_such_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true.*lctx_no_such_module"):
        deps.require("lctx_no_such_module")
    assert deps.require("json").__name__ == "json"  # present: imported either way
