"""InfiniteBench prompts (xinrongzhang2022/InfiniteBench `src/prompt.py`, `eval_utils.py`).

Two template sets from the reference: 'open' (the one it uses for open models, yarn-mistral,
ending in an answer cue) and 'chat' (its GPT-4 set). Generation budgets per task and middle
truncation `tokens[:L//2] + tokens[-L//2:]` are the reference's.
"""
from __future__ import annotations

import json
import os
import re

MAX_NEW_TOKENS = {"passkey": 6, "number_string": 12, "kv_retrieval": 50,
                  "longbook_sum_eng": 1200, "longbook_choice_eng": 40, "longbook_qa_eng": 40,
                  "longdialogue_qa_eng": 40, "math_find": 3}
TASKS = tuple(MAX_NEW_TOKENS)

_RETRIEVAL = ("There is an important info hidden inside a lot of irrelevant text. Find it{} "
              "I will quiz you about the important information there.\n\n{{context}}\n\n"
              "{{input}}")
_DIALOGUE = ("Below is a dialogue script where one random occurrence of a character name is "
             "replaced with \"$$MASK$$\", and you should try to guess who that character is.")
_OPTIONS = "A. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}"

TEMPLATES = {
    "open": {
        "passkey": _RETRIEVAL.format(" and memorize them.") + "\n\nThe pass key is",
        "number_string": _RETRIEVAL.format(".") + "\n\nThe sequence of digits is",
        "kv_retrieval": ("Extract the value corresponding to the specified key in the JSON "
                         "object below.\n\n{context}\n\n{input}"),
        "longbook_sum_eng": "Summarize the book below.\n\n{context}\n\nSummary:",
        "longbook_choice_eng": ("Read the book and answer the question.\n\n{context}\n\n"
                                "Question: {question}\n" + _OPTIONS +
                                "\n\nThe letter of the correct answer is"),
        "longbook_qa_eng": ("Read the book and answer the question. Be very concise in your "
                            "answer.\n\n{context}\n\nQuestion: {question}\nAnswer:"),
        "math_find": "{prompt}\n\n{context}\n\n{input}",
        "longdialogue_qa_eng": (_DIALOGUE + "\n\n{context}\n\nThe name that has been replaced "
                                "with $$MASK$$ is likely"),
    },
    "chat": {
        "passkey": _RETRIEVAL.format(" and memorize them."),
        "number_string": _RETRIEVAL.format("."),
        "kv_retrieval": ("Extract the value corresponding to the specified key in the JSON "
                         "object below.\n\n{context}\n\n{input}"),
        "longbook_sum_eng": "Summarize the following book.\n\n{context}",
        "longbook_choice_eng": ("Read the book and answer the question.\n\n{context}\n\n"
                                "Question: {question}\n\nOnly one of the following options is "
                                "correct, tell me the answer using one single letter (A, B, C, "
                                "or D). Don't say anything else.\n" + _OPTIONS),
        "longbook_qa_eng": ("Read the book below and answer a question.\n\n{context}\n\n"
                            "Question: {question}\n\nBe very concise."),
        "math_find": "{prompt}\n\n{context}\n\n{input}",
        "longdialogue_qa_eng": (_DIALOGUE + "\n\nThe dialogue:\n\n---\n\n{context}\n\n---\n\n"
                                "End of dialogue.\n\nWhich character is most likely "
                                "\"$$MASK$$\"? Just say the name used by the scriptwriter "
                                "(before the colon marks) of one single character and nothing "
                                "else."),
    },
}


def _document(eg: dict, data_dir: str | None, sub: str) -> str:
    """Official rows carry the text in `context`; older releases name a file in `document`."""
    if eg.get("context"):
        return eg["context"]
    if data_dir and eg.get("document"):
        with open(os.path.join(data_dir, sub, eg["document"]), encoding="utf-8") as f:
            return f.read()
    raise ValueError(f"example {eg.get('id')}: no 'context' text and no readable 'document'")


def create_prompt(eg: dict, task: str, style: str = "open", data_dir: str | None = None) -> str:
    """The reference's prompt for one example of the official JSONL."""
    if task not in MAX_NEW_TOKENS:
        raise ValueError(f"unknown InfiniteBench task {task!r}; known: {', '.join(TASKS)}")
    if style not in TEMPLATES:
        raise ValueError(f"style {style!r}: use 'open' or 'chat'")
    template = TEMPLATES[style][task]
    if task in ("longbook_choice_eng", "longbook_qa_eng", "longbook_sum_eng"):
        book = _document(eg, data_dir, "longbook_eng")
        opts = {f"OPTION_{c}": o for c, o in zip("ABCD", eg.get("options") or [""] * 4)}
        return template.format(context=book, question=eg.get("input", ""), **opts)
    if task == "longdialogue_qa_eng":
        return template.format(context=_document(eg, data_dir, "longdialogue_eng"))
    if task == "math_find":
        found = re.findall(r"The \w+ number", eg["input"])
        if not found:
            raise ValueError(f"math_find example {eg.get('id')}: no 'The ... number' in input")
        prefix = f"What is {found[0].lower()} in the following list?"
        return template.format(prompt=prefix, context=eg["context"], input=eg["input"])
    return template.format(context=eg["context"], input=eg["input"])


def truncate_middle(ids: list[int], max_len: int) -> list[int]:
    """The reference's middle truncation: keep the first L//2 and last L//2 tokens."""
    if len(ids) <= max_len:
        return ids
    return ids[:max_len // 2] + ids[-max_len // 2:]


def build_prompt(eg: dict, task: str, tokenizer, max_len: int, style: str = "open",
                 data_dir: str | None = None) -> str:
    """Prompt truncated in the middle to `max_len` tokens of the model's tokenizer."""
    prompt = create_prompt(eg, task, style, data_dir)
    ids = tokenizer.encode(prompt)
    return prompt if len(ids) <= max_len else tokenizer.decode(truncate_middle(ids, max_len))


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def labels(eg: dict, task: str) -> list:
    """Ground truth as the reference's `get_answer` gives it: for choices, the option text
    and its letter (scores accept either)."""
    answer = eg["answer"] if isinstance(eg["answer"], list) else [eg["answer"]]
    if task == "longbook_choice_eng" and eg.get("options"):
        return [answer[0], "ABCD"[eg["options"].index(answer[0])]]
    return answer
