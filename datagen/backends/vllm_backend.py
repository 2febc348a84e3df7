"""vLLM offline-engine backend: a whole pipeline stage goes to the engine as one batch.

Runs only inside the vLLM virtual environment (`.venv-vllm`, built by `datagen/vllm_env.sh`):
`.venv-vllm/bin/python -m datagen ... --backend vllm`. Every request of a stage is queued on
the engine at once (`LLM.enqueue_chat`), which schedules them itself (continuous batching);
with prefix caching on, the many questions asked about the same document chunk share that
chunk's KV cache, which is where most of the speed of hierarchical data generation comes
from (He et al. 2025 ask dozens of questions per chunk). `generate_stream` steps the engine
and yields each request the moment it finishes, so the call cache records it at once and a
kill loses only the requests still running (`LLM.chat` returns nothing until all are done).

Failure isolation: requests are validated one by one as they are queued, so a bad one
(prompt longer than `max_model_len`, a schema that does not compile) comes back as
`Completion(finish_reason="error")` naming vLLM's reason while the rest run batched.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterator, Sequence

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

    def generate_stream(self, requests: Sequence[Request]
                        ) -> Iterator[tuple[int, Completion]]:
        """Queues every request, then yields `(index, Completion)` as each one finishes."""
        engine = self.llm.llm_engine
        ours: dict[str, int] = {}  # request id -> index (engine-internal and external ids)
        internal: list[str] = []
        for i, req in enumerate(requests):
            try:
                if not req.messages:
                    raise ValueError("Request.messages is empty")
                msgs = [{"role": role, "content": content} for role, content in req.messages]
                (rid,) = self.llm.enqueue_chat([msgs], [self._sampling_params(req)],
                                               use_tqdm=False)
            except Exception as e:  # bad request: its own error, never the batch's
                yield i, Completion("", "error", f"{type(e).__name__}: {e}")
                continue
            internal.append(rid)
            # Outputs carry the external id: the internal one minus vLLM's random suffix.
            ours[rid] = ours[rid.rsplit("-", 1)[0]] = i
        bar = None
        if self._progress and len(internal) > 1:
            from tqdm import tqdm
            bar = tqdm(total=len(internal), desc=f"vllm {self.model}", unit="req")
        done: set[int] = set()
        try:
            while len(done) < len(internal) and engine.has_unfinished_requests():
                for out in engine.step():
                    i = ours.get(out.request_id)
                    if out.finished and i is not None and i not in done:
                        done.add(i)
                        if bar is not None:
                            bar.update(1)
                        yield i, _to_completion(out)
        finally:  # a consumer that stops early leaves nothing running on the engine
            left = [r for r in internal if ours[r] not in done]
            if left:
                engine.abort_request(left, internal=True)
            if bar is not None:
                bar.close()
        for r in internal:
            if ours[r] not in done:
                done.add(ours[r])
                yield ours[r], Completion("", "error", "vLLM engine finished without it")

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Runs all requests (one stage) through the engine; order kept, errors isolated."""
        results: list[Completion | None] = [None] * len(requests)
        for i, c in self.generate_stream(requests):
            results[i] = c
        n_err = sum(c.finish_reason == "error" for c in results)
        if n_err:
            log.warning("vllm: %d of %d requests failed", n_err, len(requests))
        return results  # type: ignore[return-value]


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
