"""`OpenAIRunner`: greedy generation from an OpenAI-compatible `/v1/completions` server.

For models served elsewhere (`vllm serve`, SGLang, TGI). Prompts go as raw completions (the
caller has formatted them), N requests in flight, with the datagen HTTP client's bounded
retries. The API key comes from the environment variable named by `api_key_env`.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Sequence

from datagen.backends.openai_backend import HTTPError, JSONClient
from evals.runners.base import (Prompts, check_lengths, check_min_new_tokens, check_prompts,
                                cut_at_stop)


class OpenAIRunner:
    """Runner over `/v1/completions` (contract: `evals.runners.base`).

    Args:
      model: the served model name.
      tokenizer: path of the model's tokenizer (for `self.tokenizer` and length checks).
      base_url: server root including `/v1`.
      max_len: context window; None asks the server (`GET /models`, vLLM's `max_model_len`).
      api_key_env: environment variable with the API key (None: no key).
      concurrency: requests in flight.
      vllm_extensions: send vLLM's `add_special_tokens: false` so no BOS is added to text
        prompts (the runner contract); turn off for servers that reject unknown fields.
      timeout_s, max_retries: see `JSONClient`.
    """

    def __init__(self, model: str, *, tokenizer: str, base_url: str = "http://127.0.0.1:8000/v1",
                 max_len: int | None = None, api_key_env: str | None = None,
                 concurrency: int = 32, vllm_extensions: bool = True,
                 timeout_s: float = 3600.0, max_retries: int = 6, backoff_s: float = 1.0):
        from lctx.tokenizer import load_tokenizer
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.model, self.concurrency, self.vllm_extensions = model, concurrency, vllm_extensions
        self.tokenizer = load_tokenizer(tokenizer)
        self.client = JSONClient(base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                                 max_retries=max_retries, backoff_s=backoff_s)
        self.max_len = int(max_len) if max_len else self._server_max_len()
        self.max_model_len = self.max_len

    def _server_max_len(self) -> int:
        models = self.client.get("/models").get("data", [])
        for m in models:
            if m.get("id") == self.model and m.get("max_model_len"):
                return int(m["max_model_len"])
        raise ValueError(f"the server at {self.client.base_url} reports no max_model_len for "
                         f"model {self.model!r} (models: {[m.get('id') for m in models]}); "
                         f"pass max_len=")

    def _one(self, prompt: Any, max_new_tokens: int, stop: list[str], stop_ids: list[int],
             min_new_tokens: int) -> str:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt,
                                "max_tokens": max_new_tokens, "temperature": 0.0}
        if stop:
            body["stop"] = stop
        if self.vllm_extensions:
            body["add_special_tokens"] = False
            body["skip_special_tokens"] = True
            if stop_ids:
                body["stop_token_ids"] = stop_ids
            if min_new_tokens:
                body["min_tokens"] = min_new_tokens
        resp = self.client.post("/completions", body)
        try:
            text = resp["choices"][0]["text"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise RuntimeError(f"malformed completion from {self.client.base_url}: "
                               f"{str(resp)[:200]}") from e
        return cut_at_stop(text, stop)

    def generate(self, prompts: Prompts, max_new_tokens: int, stop: Sequence[str] = (), *,
                 stop_ids: Sequence[int] = (), min_new_tokens: int = 0) -> list[str]:
        """Greedy continuations, `concurrency` requests at a time, in prompt order.
        `stop_ids` and `min_new_tokens` are vLLM server extensions (`stop_token_ids`,
        `min_tokens`): refused when `vllm_extensions` is off."""
        kind = check_prompts(prompts, max_new_tokens)
        check_min_new_tokens(min_new_tokens, max_new_tokens)
        if (stop_ids or min_new_tokens) and not self.vllm_extensions:
            raise ValueError("stop_ids / min_new_tokens need a vLLM server (vllm_extensions="
                             "True): the OpenAI API has no such fields")
        prompts = [p if isinstance(p, str) else list(p) for p in prompts]
        lengths = ([len(x) for x in self.tokenizer.encode_batch(prompts)] if kind == "text"
                   else [len(p) for p in prompts])
        check_lengths(lengths, self.max_len, max_new_tokens)
        stop = [s for s in stop if s]
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._one, p, max_new_tokens, stop,
                                   [int(t) for t in stop_ids], int(min_new_tokens))
                       for p in prompts]
            try:
                return [f.result() for f in futures]
            except HTTPError as e:
                raise RuntimeError(f"completions request failed: {e}") from e

    def close(self) -> None:
        """Nothing to free (the server is not ours)."""

    def __enter__(self) -> "OpenAIRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
