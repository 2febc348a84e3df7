"""`VLLMRunner`: greedy generation with vLLM for the evals, from the system python.

vLLM lives in its own virtual environment (`.venv-vllm`, `bash datagen/vllm_env.sh`), so the
runner starts `evals.runners.vllm_worker` there and talks JSON lines to it: one engine start
per runner, whole batches per call. HF-format directories load as they are (including lctx
exports); RoPE settings can be overridden at load time (`rope_parameters`, e.g. to evaluate a
model with a longer-context RoPE than its config says).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Any, Sequence

from evals.runners.base import (Prompts, PromptTooLongError, check_min_new_tokens,
                                check_prompts)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_python() -> str:
    """`$LCTX_VLLM_PYTHON`, else `<repo>/.venv-vllm/bin/python`."""
    return os.environ.get("LCTX_VLLM_PYTHON") or os.path.join(REPO, ".venv-vllm", "bin",
                                                              "python")


class VLLMRunner:
    """Runner over a vLLM engine in a worker subprocess (see `evals.runners.base`).

    Args:
      model: HF-format model directory (config.json + safetensors + tokenizer files).
      tokenizer: tokenizer path for `self.tokenizer` and the engine; default: `model`.
      max_model_len: engine context window; None takes the model config's.
      rope_parameters: HF v5 `rope_parameters` to use instead of the config's (e.g.
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0}); passed to vLLM as `hf_overrides`.
      hf_overrides: further config overrides (e.g. {"max_position_embeddings": 1048576}).
      allow_long_max_model_len: let `max_model_len` exceed what the config derives
        (VLLM_ALLOW_LONG_MAX_MODEL_LEN=1), e.g. for a model extended by training.
      dtype, tensor_parallel_size, enforce_eager: vLLM engine settings.
      llm_kwargs: further JSON-serialisable `vllm.LLM` arguments.
      python: interpreter of the vLLM venv; default `default_python()`.
      env: extra environment variables for the worker.
    """

    def __init__(self, model: str, *, tokenizer: str | None = None,
                 max_model_len: int | None = None,
                 rope_parameters: dict[str, Any] | None = None,
                 hf_overrides: dict[str, Any] | None = None,
                 allow_long_max_model_len: bool = False, dtype: str = "auto",
                 tensor_parallel_size: int = 1, enforce_eager: bool = False,
                 llm_kwargs: dict[str, Any] | None = None, python: str | None = None,
                 env: dict[str, str] | None = None):
        from lctx.tokenizer import load_tokenizer
        if not os.path.isdir(model):
            raise FileNotFoundError(f"model={model!r} is not a directory: VLLMRunner loads "
                                    f"HF-format model directories (offline)")
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer or model)
        overrides = dict(hf_overrides or {})
        if rope_parameters is not None:
            overrides["rope_parameters"] = dict(rope_parameters)
        self.config = {"model": model, "tokenizer": tokenizer, "max_model_len": max_model_len,
                       "hf_overrides": overrides or None, "dtype": dtype,
                       "tensor_parallel_size": tensor_parallel_size,
                       "enforce_eager": enforce_eager, "llm_kwargs": dict(llm_kwargs or {})}
        py = python or default_python()
        if not os.path.exists(py):
            raise FileNotFoundError(f"{py} does not exist: VLLMRunner needs the vLLM venv; "
                                    f"build it with `bash datagen/vllm_env.sh` or set "
                                    f"LCTX_VLLM_PYTHON")
        wenv = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    TOKENIZERS_PARALLELISM="false", **(env or {}))
        wenv.pop("XLA_FLAGS", None)
        if allow_long_max_model_len:
            wenv["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        self._log = tempfile.NamedTemporaryFile("w+", prefix="vllm_worker_", suffix=".log",
                                                delete=False)
        self._proc = subprocess.Popen(
            [py, "-m", "evals.runners.vllm_worker", json.dumps(self.config)], cwd=REPO,
            env=wenv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, bufsize=1)
        hello = self._read()
        if not hello.get("ready"):
            self.close()
            raise RuntimeError(f"vLLM worker failed to start: {hello.get('error')}\n"
                               f"{self.log_tail()}")
        self.max_len = int(hello["max_len"])
        self.max_model_len = self.max_len
        self.vllm_version = hello.get("vllm_version")

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the worker's log (vLLM output, tracebacks) for error messages."""
        try:
            with open(self._log.name, encoding="utf-8", errors="replace") as f:
                return "--- vllm worker log (tail) ---\n" + f.read()[-n_chars:]
        except OSError:
            return ""

    def _read(self) -> dict[str, Any]:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.poll()
            raise RuntimeError(f"vLLM worker exited (rc={code}) without a reply\n"
                               f"{self.log_tail()}")
        return json.loads(line)

    def generate(self, prompts: Prompts, max_new_tokens: int, stop: Sequence[str] = (), *,
                 stop_ids: Sequence[int] = (), min_new_tokens: int = 0) -> list[str]:
        """Greedy continuations, batched in one engine call (contract: `runners.base`)."""
        check_prompts(prompts, max_new_tokens)
        check_min_new_tokens(min_new_tokens, max_new_tokens)
        if not list(prompts):
            return []
        if self._proc.poll() is not None:
            raise RuntimeError("the vLLM worker is not running (closed or crashed)")
        msg = {"op": "generate", "prompts": [p if isinstance(p, str) else list(p)
                                             for p in prompts],
               "max_new_tokens": int(max_new_tokens), "stop": list(stop),
               "stop_ids": [int(t) for t in stop_ids], "min_new_tokens": int(min_new_tokens)}
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()
        rep = self._read()
        if rep.get("ok"):
            return rep["texts"]
        if rep.get("kind") == "PromptTooLongError":
            raise PromptTooLongError(rep["error"])
        raise RuntimeError(f"vLLM worker: {rep.get('kind')}: {rep.get('error')}")

    def close(self) -> None:
        """Stops the worker (engine memory is freed with the process)."""
        proc = getattr(self, "_proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write(json.dumps({"op": "close"}) + "\n")
            proc.stdin.flush()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def __enter__(self) -> "VLLMRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
