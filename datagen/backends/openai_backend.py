"""OpenAI-compatible HTTP backend (`/v1/chat/completions`): vLLM/SGLang servers, hosted APIs.

Built on maintained libraries: `httpx` (one pooled, thread-safe client) and `tenacity`
(bounded retries). Requests run N at a time (default 32, as He et al. 2025 ran their
generator) and stream back as each finishes (`generate_stream`), so the call cache records
every finished call at once. Each request has bounded retries: 429, 5xx, timeouts, dropped
connections and unparseable bodies are retried with exponential backoff and full jitter (a
`Retry-After` header is honoured up to the backoff cap); other 4xx fail at once. A request
that still fails comes back as `Completion(finish_reason="error")`, never as an exception.

The API key is read from the environment variable that the config names (`api_key_env`), is
sent only in the Authorization header, and is kept out of `describe()`, `repr()`, logs and
error strings (it is redacted from any server message that echoes it).
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import httpx
import tenacity

from datagen.backends.base import Completion, Request

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class HTTPError(RuntimeError):
    """A request that failed for good (after retries, or a non-retryable status)."""


class _Retryable(Exception):
    """One failed attempt that may succeed if repeated."""

    def __init__(self, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class JSONClient:
    """POSTs JSON with bounded retries; shared by the datagen backend and the evals runner.

    Args:
      base_url: e.g. "http://127.0.0.1:8000/v1" (paths are appended to it).
      api_key_env: name of the environment variable holding the key; None sends no key.
      timeout_s: per-attempt timeout (connect, read, write).
      max_retries: retries after the first attempt (so at most max_retries + 1 attempts).
      backoff_s: first backoff; retry k waits uniform(0, min(cap, backoff_s * 2**k)).
      backoff_cap_s: largest single wait.
      max_connections: pooled connections (the concurrency of its users).
      sleep: injectable for tests.
    """

    def __init__(self, base_url: str, *, api_key_env: str | None = None,
                 timeout_s: float = 600.0, max_retries: int = 6, backoff_s: float = 1.0,
                 backoff_cap_s: float = 60.0, max_connections: int = 64,
                 sleep: Callable[[float], None] = time.sleep):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://")
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError(f"need max_retries >= 0, timeout_s > 0, backoff_s >= 0; got "
                             f"{max_retries}, {timeout_s}, {backoff_s}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.__key = None
        if api_key_env is not None:
            self.__key = os.environ.get(api_key_env)
            if not self.__key:
                raise ValueError(f"api_key_env={api_key_env!r}: that environment variable is "
                                 f"unset or empty; export it or pass api_key_env=None")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_cap_s, self._sleep = backoff_s, backoff_cap_s, sleep
        self._jitter = tenacity.wait_random_exponential(multiplier=backoff_s, exp_base=2,
                                                        max=backoff_cap_s)
        self._http = httpx.Client(timeout=timeout_s, limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections))
        self._lock = threading.Lock()
        self.retries = 0  # total retries so far (all threads)

    def __repr__(self) -> str:
        return f"JSONClient({self.base_url!r}, api_key_env={self.api_key_env!r})"

    def redact(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    def close(self) -> None:
        self._http.close()

    def backoff(self, retry: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number `retry` (0-based): full jitter below
        min(cap, backoff_s * 2**retry), at least a numeric Retry-After (capped)."""
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = retry + 1
        delay = self._jitter(state)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.backoff_cap_s))
            except ValueError:
                pass  # an HTTP-date Retry-After: our own backoff is good enough
        return delay

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.backoff(state.attempt_number - 1, getattr(exc, "retry_after", None))

    def _before_sleep(self, path: str, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self.retries += 1
        log.warning("%s%s: attempt %d/%d failed (%s); retrying", self.base_url, path,
                    state.attempt_number, self.max_retries + 1,
                    self.redact(str(state.outcome.exception()))[:200])

    def _attempt(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.__key}"} if self.__key else {}
        try:
            resp = self._http.request(method, self.base_url + path, json=body, headers=headers)
        except httpx.TransportError as e:  # timeouts, refused or dropped connections
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        if resp.status_code >= 400:
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if resp.status_code not in RETRY_STATUS:
                raise HTTPError(self.redact(last))
            raise _Retryable(last, resp.headers.get("Retry-After"))
        try:
            obj = json.loads(resp.content)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise _Retryable(f"unparseable response body ({e}): {resp.content[:120]!r}") from None
        return obj

    def get(self, path: str) -> dict[str, Any]:
        """GET base_url + path (same retries); returns the parsed JSON object."""
        return self.post(path, None)

    def post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """POST `body` to base_url + path (GET when None); returns the parsed JSON object or
        raises HTTPError."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1), wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retryable), sleep=self._sleep,
            before_sleep=lambda state: self._before_sleep(path, state), reraise=True)
        try:
            return retrying(self._attempt, "GET" if body is None else "POST", path, body)
        except _Retryable as e:
            raise HTTPError(self.redact(f"gave up after {self.max_retries + 1} attempts: "
                                        f"{e}")) from None


class OpenAIGenerator:
    """`Generator` over an OpenAI-compatible `/chat/completions` endpoint.

    Args:
      model: model name the server serves (recorded in manifests and cache keys).
      base_url: server root including `/v1`.
      api_key_env: environment variable holding the API key (None: no key, local servers).
      concurrency: requests in flight at once.
      timeout_s, max_retries, backoff_s, backoff_cap_s: see `JSONClient`.
      progress: show a tqdm bar per batch.
      extra_body: more request fields (e.g. {"top_k": 20}); recorded by `describe()`.
    """

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", *,
                 api_key_env: str | None = None, concurrency: int = 32,
                 timeout_s: float = 600.0, max_retries: int = 6, backoff_s: float = 1.0,
                 backoff_cap_s: float = 60.0, progress: bool = True,
                 extra_body: dict[str, Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.concurrency, self.progress = concurrency, progress
        self.extra_body = dict(extra_body or {})
        self.client = JSONClient(base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                                 max_retries=max_retries, backoff_s=backoff_s,
                                 backoff_cap_s=backoff_cap_s, max_connections=concurrency,
                                 sleep=sleep)

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.model!r}, client={self.client!r})"

    def describe(self) -> dict[str, Any]:
        """Settings for the manifest: the key's variable name, never the key."""
        c = self.client
        return {"backend": "openai", "model": self.model, "base_url": c.base_url,
                "api_key_env": c.api_key_env, "concurrency": self.concurrency,
                "timeout_s": c.timeout_s, "max_retries": c.max_retries,
                "backoff_s": c.backoff_s, "backoff_cap_s": c.backoff_cap_s,
                "extra_body": self.extra_body}

    def body(self, req: Request) -> dict[str, Any]:
        """The chat-completions request body for one `Request`."""
        body: dict[str, Any] = {
            "model": self.model, "messages": [{"role": r, "content": c} for r, c in req.messages],
            "max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p,
            "seed": req.seed, **self.extra_body}
        if req.json_schema is not None:
            try:
                schema = json.loads(req.json_schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"Request.json_schema is not valid JSON ({e})") from e
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": schema, "strict": True}}
        return body

    def _one(self, req: Request) -> Completion:
        try:
            resp = self.client.post("/chat/completions", self.body(req))
            choice = resp["choices"][0]
            text = choice["message"]["content"] or ""
            reason = choice.get("finish_reason") or "stop"
        except (HTTPError, ValueError) as e:
            return Completion("", "error", f"{type(e).__name__}: {e}")
        except (KeyError, IndexError, TypeError) as e:
            return Completion("", "error", f"malformed chat completion ({type(e).__name__}: "
                                           f"{e})")
        if reason not in ("stop", "length"):
            return Completion(text, "error", f"finish_reason={reason!r}")
        return Completion(text, reason)

    def generate_stream(self, requests: Sequence[Request]
                        ) -> Iterator[tuple[int, Completion]]:
        """`(index, Completion)` as each request finishes, `concurrency` in flight."""
        bar = None
        if self.progress and len(requests) > 1:
            from tqdm import tqdm
            bar = tqdm(total=len(requests), desc=f"openai {self.model}", unit="req")
        pool = concurrent.futures.ThreadPoolExecutor(self.concurrency)
        n_err = 0
        try:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for fut in concurrent.futures.as_completed(futures):
                c = fut.result()
                n_err += c.finish_reason == "error"
                if bar is not None:
                    bar.update(1)
                yield futures[fut], c
        finally:  # a consumer that stops early (or dies) leaves no request queued
            pool.shutdown(wait=False, cancel_futures=True)
            if bar is not None:
                bar.close()
        if n_err:
            log.warning("openai: %d of %d requests failed", n_err, len(requests))

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Runs requests `concurrency` at a time; results in request order."""
        results: list[Completion | None] = [None] * len(requests)
        for i, c in self.generate_stream(requests):
            results[i] = c
        return results  # type: ignore[return-value]
