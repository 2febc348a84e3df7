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
          def generate(self, prompts, max_new_tokens, stop=(), *, stop_ids=(),
                       min_new_tokens=0) -> list[str]: ...
          def close(self) -> None: ...

Contract shared by all runners (tests hold every implementation to it):

* `prompts` is either `list[str]` (fully formatted text: the caller has applied any chat
  template and includes any BOS text itself) or `list[list[int]]` (token ids, used as is).
  Text is tokenized with special-token strings (e.g. "<|eot_id|>") read as special tokens and
  with NO tokens added (no automatic BOS), so text and ids prompts mean the same thing.
* Decoding is greedy (temperature 0). Generation stops at the tokenizer's end-of-turn /
  end-of-text ids, at `max_new_tokens`, at the first occurrence of any `stop` string, or
  after generating any of `stop_ids` (extra end-of-sequence ids, as HF's `eos_token_id`
  list: LongBench's "\n" id).
* `min_new_tokens=1` bars the end-of-sequence ids and `stop_ids` from the first generated
  token (HF's `min_length` = prompt length + 1; vLLM's `min_tokens`). Larger values are not
  needed by any benchmark and may be refused.
* The result is the continuation text only: special tokens dropped, cut before the stop
  string (the stop string itself is not included) and after a stop id (whose text, when it
  is not a special token, is included, as HF's decode of the generated ids). Order follows
  `prompts`.
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

    def generate(self, prompts: Prompts, max_new_tokens: int, stop: Sequence[str] = (), *,
                 stop_ids: Sequence[int] = (), min_new_tokens: int = 0) -> list[str]:
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


def check_min_new_tokens(min_new_tokens: int, max_new_tokens: int,
                         supported: int | None = None) -> None:
    """Validates `min_new_tokens` (0 <= it <= max_new_tokens, and <= `supported`)."""
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens={min_new_tokens} must be in [0, max_new_tokens="
                         f"{max_new_tokens}]")
    if supported is not None and min_new_tokens > supported:
        raise ValueError(f"min_new_tokens={min_new_tokens}: this runner supports up to "
                         f"{supported}")


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
