"""The model-runner interface every evaluation (RULER, InfiniteBench) drives.

A runner turns finished prompts into greedy continuations. Implementations:

* `evals.runners.vllm_runner.VLLMRunner`: HF-format models (including lctx exports) on a
  vLLM engine in `.venv-vllm`, driven through a JSON-lines worker subprocess.
* `evals.runners.openai_runner.OpenAIRunner`: an OpenAI-compatible `/v1/completions` server.
* `evals.runners.lctx_runner.LctxRunner` (written separately): lctx Flax checkpoints with
  `lctx.generate`. It implements exactly this interface:

      class LctxRunner:
          def __init__(self, model: str, **kwargs): ...   # model: checkpoint/HF dir
          tokenizer: lctx.tokenizer.Tokenizer
          max_len: int
          def generate(self, prompts, max_new_tokens, stop) -> list[str]: ...
          def close(self) -> None: ...

Contract shared by all runners (tests hold every implementation to it):

* `prompts` is either `list[str]` (fully formatted text: the caller has applied any chat
  template and includes any BOS text itself) or `list[list[int]]` (token ids, used as is).
  Text is tokenized with special-token strings (e.g. "<|eot_id|>") read as special tokens and
  with NO tokens added (no automatic BOS), so text and ids prompts mean the same thing.
* Decoding is greedy (temperature 0). Generation stops at the tokenizer's end-of-turn /
  end-of-text ids, at `max_new_tokens`, or at the first occurrence of any `stop` string.
* The result is the continuation text only: special tokens dropped, cut before the stop
  string (the stop string itself is not included). Order follows `prompts`.
* `max_len` is the context window (prompt + generated tokens). A prompt with more than
  `max_len - max_new_tokens` tokens raises `PromptTooLongError` naming its index; the caller
  (e.g. RULER's length fitting) must make prompts fit.
* `tokenizer` is an `lctx.tokenizer.Tokenizer` for the model (used by the evals to build
  prompts of exact token lengths).
* `close()` frees the engine; runners are also context managers.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, Union

Prompts = Union[Sequence[str], Sequence[Sequence[int]]]


class PromptTooLongError(ValueError):
    """A prompt that does not fit the runner's context window with its generation budget."""


class Runner(Protocol):
    tokenizer: Any
    max_len: int

    def generate(self, prompts: Prompts, max_new_tokens: int, stop: Sequence[str] = ()
                 ) -> list[str]:
        """Greedy continuations of `prompts` (see the module docstring for the contract)."""
        ...

    def close(self) -> None:
        ...


def check_prompts(prompts: Prompts, max_new_tokens: int) -> str:
    """Validates the arguments of `generate`; returns "text" or "ids"."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompts = list(prompts)
    if not prompts:
        return "text"
    if all(isinstance(p, str) for p in prompts):
        return "text"
    if all(isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p)
           for p in prompts):
        return "ids"
    raise TypeError("prompts must be all strings or all lists of token ids (ints)")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def check_lengths(lengths: Sequence[int], max_len: int, max_new_tokens: int) -> None:
    """Raises PromptTooLongError for the first prompt over `max_len - max_new_tokens`."""
    budget = max_len - max_new_tokens
    for i, n in enumerate(lengths):
        if n > budget:
            raise PromptTooLongError(
                f"prompt {i} has {n} tokens; with max_new_tokens={max_new_tokens} the "
                f"runner's max_len={max_len} leaves room for {budget}. Shorten the prompt "
                f"or raise max_len (max_model_len)")
        if n == 0:
            raise ValueError(f"prompt {i} is empty")
