"""Synthetic InfiniteBench retrieval tasks at any length (`data/construct_synthetic_dataset.py`).

passkey: a 5-digit key in repeated noise; number_string: a 10-digit string (5 random digits,
then 5 digits duplicated in place); kv_retrieval: a JSON object of uuid4 key/value pairs and
one key to look up. The answer's depth runs evenly over the samples as in the reference.
Sizes are fitted to `max_len` tokens of the model's tokenizer from per-piece token counts
(the noise line and pairs are additive at newline/comma-space boundaries), then checked.
"""
from __future__ import annotations

import json
import random
import uuid

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
PASSKEY = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
           "memorize them. I will quiz you about the important information there.\n",
           "The pass key is {key}. Remember it. {key} is the pass key.\n",
           "What is the pass key?")
NUMBER = ("There is an important info hidden inside a lot of irrelevant text. Find it. I will "
          "quiz you about the important information there.\n",
          "The sequence of digits is {key}. Remember it. {key} is the sequence of digits.\n",
          "What is the sequence of digits?")


def _key(task: str, rng: random.Random) -> str:
    keys = [str(rng.randint(0, 9)) for _ in range(5)]
    if task == "number_string":
        for k in range(5):
            pos = rng.randint(0, 5 + k - 1)
            keys.insert(pos, keys[pos])
    return "".join(keys)


def _noise_size(task: str, max_len: int, tokenizer) -> int:
    prompt, answer, question = PASSKEY if task == "passkey" else NUMBER
    fixed = len(tokenizer.encode(prompt + answer.format(key="0" * 10) + question)) + 40
    return max(1, (max_len - fixed) // len(tokenizer.encode(NOISE)))


def _noise_examples(task: str, total: int, num_samples: int, seed: int):
    prompt, answer, question = PASSKEY if task == "passkey" else NUMBER
    rng = random.Random(seed)
    out = []
    for i in range(num_samples):
        depth = 0 if num_samples == 1 else round(i * total / (num_samples - 1))
        key = _key(task, rng)
        context = NOISE * depth + answer.format(key=key) + NOISE * (total - depth)
        out.append({"id": i, "prompt": prompt, "context": context, "input": question,
                    "answer": [key], "depth": depth / total})
    return out


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _kv_size(max_len: int, tokenizer) -> int:
    rng = random.Random(0)
    pair = len(tokenizer.encode(json.dumps({_uid(rng): _uid(rng)})[1:-1] + ", "))
    return max(2, (max_len - 80) // pair)


def _kv_examples(n_pairs: int, num_samples: int, seed: int):
    rng = random.Random(seed)
    uid = lambda: _uid(rng)  # noqa: E731
    out = []
    for i in range(num_samples):
        pairs = [(uid(), uid()) for _ in range(n_pairs)]
        at = 0 if num_samples == 1 else round(i * (n_pairs - 1) / (num_samples - 1))
        context = "JSON data:\n{" + ", ".join(f"\"{k}\": \"{v}\"" for k, v in pairs) + "}"
        question = (f"Key: \"{pairs[at][0]}\"\nThe value associated with the specified key "
                    "is: ")
        out.append({"id": i, "context": context, "input": question, "answer": [pairs[at][1]],
                    "depth": at / max(1, n_pairs - 1)})
    return out


def generate(task: str, max_len: int, num_samples: int, tokenizer, seed: int = 42,
             style: str = "open", prefix_tokens: int = 0) -> list[dict]:
    """Examples in the official JSONL layout whose prompts (plus `prefix_tokens`, e.g. the
    BOS the model input starts with) fit `max_len` tokens with the task's generation budget.

    The size (noise lines or pairs) starts from per-piece counts and shrinks in proportion
    to any overshoot of the longest prompt, measured exactly.
    """
    from evals.infinitebench.prompts import MAX_NEW_TOKENS, create_prompt
    if task in ("passkey", "number_string"):
        size = _noise_size(task, max_len, tokenizer)
        build = lambda n: _noise_examples(task, n, num_samples, seed)  # noqa: E731
    elif task == "kv_retrieval":
        size = _kv_size(max_len, tokenizer)
        build = lambda n: _kv_examples(n, num_samples, seed)  # noqa: E731
    else:
        raise ValueError(f"no synthetic generator for {task!r}: passkey, number_string, "
                         "kv_retrieval")
    budget = max_len - MAX_NEW_TOKENS[task] - prefix_tokens
    # Fit the size on exact counts: shrink in proportion to the overshoot until all fit.
    for _ in range(50):
        rows = build(size)
        longest = max(len(tokenizer.encode(create_prompt(eg, task, style))) for eg in rows)
        if longest <= budget:
            return rows
        if size <= 2:
            break
        size = max(2, min(size - 1, int(size * budget / longest)))
    raise ValueError(f"{task}: length {max_len} is too small for one example")
