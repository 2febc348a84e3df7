"""LongBench model inputs: the reference's prompt, middle cut, chat template and tokenisation.

THUDM `pred.py` (and the beacon pipeline alike): format the dataset's template with the row;
tokenise it as `tokenizer(prompt)` (with the tokenizer's BOS); if longer than `max_length`,
keep `decode(ids[:half]) + decode(ids[-half:])` with `half = int(max_length / 2)`, decoded
without special tokens, so the text is re-tokenised afterwards and may come out a few tokens
longer or shorter; wrap it in the chat template unless the dataset is on the skip list; the
model input is `tokenizer(prompt)` again. Inputs go to the runners as token ids, so every
runner sees the same ids.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

from evals.longbench import datasets as ds

# pred.py's build_chat for Llama-2 ("[INST]...[/INST]", no spaces, no system prompt); Llama-3's
# chat template for one user turn (content trimmed, as its Jinja template does; the BOS comes
# from the tokenizer, as in `tokenizer(apply_chat_template(..., tokenize=False))` minus the
# duplicate BOS that would give).
CHAT_TEMPLATES = {
    "none": "{prompt}",
    "llama2": "[INST]{prompt}[/INST]",
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


class DataError(ValueError):
    """A LongBench row or file that cannot be used (named by file, line and field)."""


def check_template(template: str) -> str:
    """A template name of `CHAT_TEMPLATES` or a literal holding '{prompt}'."""
    if template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[template]
    if "{prompt}" not in template:
        raise ValueError(f"chat template {template!r}: use one of {sorted(CHAT_TEMPLATES)} or "
                         "a literal template containing {prompt}")
    return template


def apply_chat(prompt: str, template: str) -> str:
    body = check_template(template)
    if template == "llama3":
        prompt = prompt.strip()
    return body.replace("{prompt}", prompt)


def format_prompt(dataset: str, row: dict) -> str:
    """`dataset2prompt[dataset].format(**row)`."""
    return ds.prompt_template(dataset).format(**row)


def truncate_middle_text(prompt: str, text, max_length: int) -> str:
    """pred.py's cut: `decode(ids[:half]) + decode(ids[-half:])` of `tokenizer(prompt)` when
    it is longer than `max_length` (`text`: an `evals.tokens.HFText`)."""
    ids = text(prompt)
    if len(ids) <= max_length:
        return prompt
    half = int(max_length / 2)
    return text.decode(ids[:half]) + text.decode(ids[-half:])


def build_input(dataset: str, row: dict, text, max_length: int, chat_template: str,
                chat_skip: Sequence[str]) -> list[int]:
    """The model input ids for one row."""
    prompt = truncate_middle_text(format_prompt(dataset, row), text, max_length)
    if dataset not in chat_skip:
        prompt = apply_chat(prompt, chat_template)
    return text(prompt)


def ids_digest(ids: Sequence[int]) -> str:
    """A short fingerprint of a model input (recorded with each prediction)."""
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def read_rows(path: str, dataset: str) -> list[dict]:
    """The rows of an official LongBench JSONL file, checked field by field."""
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            missing = ([k for k in ("context", "input", "answers") if k not in row]
                       if isinstance(row, dict) else ["(not an object)"])
            if missing:
                raise DataError(f"{path}:{n}: missing field(s) {missing}; LongBench rows hold "
                                "input, context, answers, length, all_classes")
            if not isinstance(row["answers"], list) or not row["answers"]:
                raise DataError(f"{path}:{n}: 'answers' must be a non-empty list")
            if ds.DATASETS[dataset][0] == "classification_score" and not row.get("all_classes"):
                raise DataError(f"{path}:{n}: {dataset} rows need 'all_classes'")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
