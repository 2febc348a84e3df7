"""vLLM offline-engine backend: a whole pipeline stage goes to the engine as one batch.

Runs only inside the vLLM virtual environment (`.venv-vllm`, built by `datagen/vllm_env.sh`):
`.venv-vllm/bin/python -m datagen ... --backend vllm`. The engine schedules the batch
itself (continuous batching), and with prefix caching on, the many questions asked about the
same document chunk share that chunk's KV cache, which is where most of the speed of
hierarchical data generation comes from (He et al. 2025 ask dozens of questions per chunk).

Failure isolation: vLLM validates a batch before it runs it and rejects the whole call when
one request is bad (prompt longer than `max_model_len`, a schema it cannot compile). The
generator then bisects the batch, so the good requests still run batched and each bad one
comes back as `Completion(finish_reason="error")` naming vLLM's reason.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from datagen.backends.base import Completion, Request

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length"}


class VLLMGenerator:
    """`Generator` over `vllm.LLM` (offline engine, batched `LLM.chat`).

    Args:
      model: HF-format model directory or name (offline: a local directory).
      tensor_parallel_size: GPUs the model is split over.
      max_model_len: context limit of the engine (prompt + output); None takes the model's.
      enable_prefix_caching: share KV cache between requests with a common prefix.
      enforce_eager: skip CUDA-graph/compile warm-up (faster start, slower steps).
      dtype: weight/activation dtype ("auto", "bfloat16", "float32", ...).
      seed: engine seed (requests carry their own per-request seeds too).
      structured_backend: vLLM structured-output backend ("xgrammar", "guidance", "auto").
      compact_json: forbid free whitespace inside JSON output (fewer wasted tokens); needs
        the xgrammar or guidance backend.
      progress: show vLLM's tqdm bar per batch.
      llm_kwargs: further `vllm.LLM` keyword arguments (e.g. `gpu_memory_utilization`,
        `hf_overrides`); must be JSON-serialisable since they are recorded by `describe()`.
      llm: an already-built `vllm.LLM` to reuse (tests, several generators on one engine).
    """

    def __init__(self, model: str, *, tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True,
                 enforce_eager: bool = False, dtype: str = "auto", seed: int = 0,
                 structured_backend: str = "xgrammar", compact_json: bool = True,
                 progress: bool = True, llm_kwargs: dict[str, Any] | None = None,
                 llm: Any = None):
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if max_model_len is not None and max_model_len < 16:
            raise ValueError(f"max_model_len must be >= 16 tokens (or None for the model's "
                             f"own limit), got {max_model_len}")
        if compact_json and structured_backend not in ("xgrammar", "guidance"):
            raise ValueError(f"compact_json=True needs structured_backend 'xgrammar' or "
                             f"'guidance', got {structured_backend!r}; pass "
                             f"compact_json=False to use it")
        self.model = model
        self._settings = {
            "tensor_parallel_size": tensor_parallel_size, "max_model_len": max_model_len,
            "enable_prefix_caching": enable_prefix_caching, "enforce_eager": enforce_eager,
            "dtype": dtype, "seed": seed, "structured_backend": structured_backend,
            "compact_json": compact_json, "llm_kwargs": dict(llm_kwargs or {})}
        self._progress = progress
        if llm is None:
            import vllm
            kwargs = dict(llm_kwargs or {})
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            added = _cpu_workaround(kwargs, max_model_len)
            kwargs.update(added)
            self._settings["engine_kwargs_added"] = added
            llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                           enable_prefix_caching=enable_prefix_caching,
                           enforce_eager=enforce_eager, dtype=dtype, seed=seed,
                           structured_outputs_config={
                               "backend": structured_backend,
                               "disable_any_whitespace": compact_json},
                           **kwargs)
        self.llm = llm
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)

    def describe(self) -> dict[str, Any]:
        """Engine settings for the manifest (no secrets exist for this backend)."""
        import vllm
        return {"backend": "vllm", "model": self.model, "vllm_version": vllm.__version__,
                **self._settings, "effective_max_model_len": self.max_model_len}

    def _sampling_params(self, req: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams
        structured = None
        if req.json_schema is not None:
            try:
                schema = json.loads(req.json_schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"Request.json_schema is not valid JSON ({e})") from e
            structured = StructuredOutputsParams(json=schema)
        return SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature,
                              top_p=req.top_p, seed=req.seed, structured_outputs=structured)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Runs all requests (one stage) through the engine; order kept, errors isolated."""
        results: list[Completion | None] = [None] * len(requests)
        todo: list[tuple[int, list[dict[str, str]], Any]] = []
        for i, req in enumerate(requests):
            try:
                if not req.messages:
                    raise ValueError("Request.messages is empty")
                msgs = [{"role": role, "content": content} for role, content in req.messages]
                todo.append((i, msgs, self._sampling_params(req)))
            except Exception as e:  # bad request: its own error, never the batch's
                results[i] = Completion("", "error", f"{type(e).__name__}: {e}")
        self._run(todo, results)
        n_err = sum(c.finish_reason == "error" for c in results)
        if n_err:
            log.warning("vllm: %d of %d requests failed", n_err, len(requests))
        return results  # type: ignore[return-value]

    def _run(self, todo, results) -> None:
        """One `LLM.chat` for the batch; on rejection, bisect to isolate the bad requests."""
        if not todo:
            return
        try:
            outs = self.llm.chat([m for _, m, _ in todo], [p for _, _, p in todo],
                                 use_tqdm=self._progress and len(todo) > 1)
        except Exception as e:
            if len(todo) == 1:
                results[todo[0][0]] = Completion("", "error", f"{type(e).__name__}: {e}")
                return
            log.info("vllm rejected a batch of %d (%s); bisecting", len(todo), e)
            half = len(todo) // 2
            self._run(todo[:half], results)
            self._run(todo[half:], results)
            return
        if len(outs) != len(todo):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(todo)} requests")
        for (i, _, _), out in zip(todo, outs):
            results[i] = _to_completion(out)


def _cpu_workaround(kwargs: dict[str, Any], max_model_len: int | None) -> dict[str, Any]:
    """Engine settings that per-request seeds need on the CPU platform (vLLM 0.32).

    With chunked prefill, a seeded request whose prompt is split over two engine steps makes
    vLLM rewind its torch generator (`set_offset`), which CPU generators do not support
    ("CPU Generator does not use offset"), and the whole batch dies. Prefilling each prompt
    in one step avoids the rewind. GPUs are unaffected and keep chunked prefill.
    """
    from vllm.platforms import current_platform
    if not current_platform.is_cpu() or "enable_chunked_prefill" in kwargs:
        return {}
    extra: dict[str, Any] = {"enable_chunked_prefill": False}
    if max_model_len is not None and "max_num_batched_tokens" not in kwargs:
        extra["max_num_batched_tokens"] = max(max_model_len, 8192)
    return extra


def _to_completion(out) -> Completion:
    if not out.outputs:
        return Completion("", "error", "vLLM returned no output sequence")
    seq = out.outputs[0]
    reason = _FINISH.get(seq.finish_reason or "")
    if reason is None:
        return Completion(seq.text, "error", f"vLLM finish_reason={seq.finish_reason!r}")
    return Completion(seq.text, reason)
