"""The runner registry every evaluation CLI shares."""
import importlib

import pytest

from evals.runners import registry
from evals_ruler_run_test import RegexRunner


def test_names_module_class_and_register(monkeypatch):
    with pytest.raises(ValueError, match="use one of"):
        registry.make_runner("tgi", "m")
    assert isinstance(registry.make_runner("evals_ruler_run_test:RegexRunner", "m"), RegexRunner)
    monkeypatch.setattr(registry, "RUNNERS", dict(registry.RUNNERS))
    monkeypatch.setattr(registry, "TAKES_TOKENIZER", set(registry.TAKES_TOKENIZER))
    registry.register("regex", "evals_ruler_run_test:RegexRunner")
    assert isinstance(registry.make_runner("regex", "m"), RegexRunner)
    with pytest.raises(ValueError, match="package.module:Class"):
        registry.register("bad", "evals_ruler_run_test.RegexRunner")


def test_runner_args_and_real_runner_modules(tmp_path):
    assert registry.parse_runner_args(["max_model_len=131072", "base_url=http://x/v1",
                                       "rope_parameters={\"factor\": 4}"]) == {
        "max_model_len": 131072, "base_url": "http://x/v1", "rope_parameters": {"factor": 4}}
    with pytest.raises(ValueError, match="key=value"):
        registry.parse_runner_args(["oops"])
    for kind, target in registry.RUNNERS.items():  # the modules exist and export the classes
        module, cls = target.split(":")
        assert hasattr(importlib.import_module(module), cls), kind
    with pytest.raises(FileNotFoundError, match="not a directory"):
        registry.make_runner("vllm", str(tmp_path / "missing"), tokenizer="t")
