"""InfiniteBench prompts and model inputs, as OpenBMB/InfiniteBench builds them at 88b3daa.

Templates (`src/prompt.py`) are stored verbatim: 'open' is the reference's open-model set
(`yarn_mistral_templates`, also used for Yi-200K and ChatGLM3), 'chat' its GPT-4 set
(`gpt4_templates`). `create_prompt` follows `src/eval_utils.py:create_prompt`; model inputs
follow `src/eval_yarn_mistral.py`: the prompt is tokenised with the tokenizer's BOS, cut to
`max_len` tokens keeping the first and last `max_len // 2`, decoded without special tokens and
tokenised again (BOS included). Generation budgets are `DATA_NAME_TO_MAX_NEW_TOKENS`.
"""
from __future__ import annotations

import json
import os
import re

# Truncation lengths of the reference's scripts: open models (YaRN-Mistral, 128 * 1024),
# GPT-4 (`create_msgs`: 128_000 - 1000) and Yi-200K (200_000).
MAX_LEN = {"open": 128 * 1024, "chat": 128_000 - 1000, "yi": 200_000}

MAX_NEW_TOKENS = {"passkey": 6, "number_string": 12, "kv_retrieval": 50,
                  "longbook_sum_eng": 1200, "longbook_choice_eng": 40, "longbook_qa_eng": 40,
                  "longbook_qa_chn": 40, "longdialogue_qa_eng": 40, "math_find": 3,
                  "math_calc": 30000, "code_run": 5, "code_debug": 5}
TASKS = tuple(MAX_NEW_TOKENS)
CODE_TASKS = ("code_run", "code_debug")

_DIALOGUE = ("Below is a dialogue script where one random occurrence of a character name is "
             "replaced with \"$$MASK$$\", and you should try to guess who that character is.")
_OPTIONS = "A. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}"

TEMPLATES = {
    "open": {  # yarn_mistral_templates
        "passkey": ("There is an important info hidden inside a lot of irrelevant text. Find it "
                    "and memorize it. I will quiz you about the important information.\n\n"
                    "{context}\n\n{input}\n\nThe pass key is"),
        "number_string": ("There is an important info hidden inside a lot of irrelevant text. "
                          "Find it. I will quiz you about the important information there.\n\n"
                          "{context}\n\n{input}\n\nThe sequence of digits is"),
        "kv_retrieval": ("Extract the value corresponding to the specified key in the JSON "
                         "object below.\n\n{context}\n\n{input}"),
        "longbook_sum_eng": "Summarize the book below.\n\n{context}\n\nSummary:",
        "longbook_choice_eng": ("Read the book and answer the question.\n\n{context}\n\n"
                                "Question: {question}\n" + _OPTIONS +
                                "\n\nThe letter of the correct answer is"),
        "longbook_qa_eng": ("Read the book and answer the question. Be very concise in your "
                            "answer.\n\n{context}\n\nQuestion: {question}\nAnswer:"),
        "longbook_qa_chn": "阅读以下书籍然后回答问题。\n\n{context}\n\n问题：{question}\n答案：",
        "math_find": "{prefix}\n\n{context}\n\n{input}",
        "math_calc": ("Let us calculate the intermediate values of an expression.\n\n"
                      "Expression: 1 + 3 + 4\nValues: [1, 4, 8]\n\nExpression: 8 - 3 + 2 - 4\n"
                      "Values: [8, 5, 7, 3]\n\nExpression: {context}\nValues:"),
        "code_run": ("There is a function called {func} in the following Python code.\n\n"
                     "{context}\n\nPlease compute the exact value of {func_call}. The value of "
                     "{func_call} is"),
        "code_debug": ("Following is a Python code where exactly one of the functions/methods "
                       "has a deliberate error that makes it crash.\n\n{context}\n\nOptions:\n"
                       + _OPTIONS + "\n\nThe correct option is:"),
        "longdialogue_qa_eng": (_DIALOGUE + "\n\n{context}\n\nThe name that has been replaced "
                                "with $$MASK$$ is likely"),
    },
    "chat": {  # gpt4_templates (math_calc: the reference sends the bare context to GPT-4)
        "passkey": ("There is an important info hidden inside a lot of irrelevant text. Find it "
                    "and memorize them. I will quiz you about the important information there."
                    "\n\n{context}\n\n{input}"),
        "number_string": ("There is an important info hidden inside a lot of irrelevant text. "
                          "Find it. I will quiz you about the important information there.\n\n"
                          "{context}\n\n{input}"),
        "kv_retrieval": ("Extract the value corresponding to the specified key in the JSON "
                         "object below.\n\n{context}\n\n{input}"),
        "longbook_sum_eng": "Summarize the following book.\n\n{context}",
        "longbook_choice_eng": ("Read the book and answer the question.\n\n{context}\n\n"
                                "Question: {question}\n\nOnly one of the following options is "
                                "correct, tell me the answer using one single letter (A, B, C, "
                                "or D). Don't say anything else.\n" + _OPTIONS),
        "longbook_qa_eng": ("Read the book below and answer a question.\n\n{context}\n\n"
                            "Question: {question}\n\nBe very concise."),
        "longbook_qa_chn": ("请根据以下书籍回答我的问题。\n\n{context}\n\n问题：{question}\n"
                            "请尽量简短地回答。"),
        "math_find": "{prefix}\n\n{context}\n\n{input}",
        "math_calc": "{context}",
        "code_run": ("Following is a set of Python functions. There is a function called named "
                     "{func}.\n\n{context}\n\nPlease give me the exact number of the return "
                     "value of {func_call}. Be concise. Your response must end with the final "
                     "returned value."),
        "code_debug": ("There is ONLY ONE function in the large project that is deliberately "
                       "made to include an obvious error. Please find the function that "
                       "contains the most obvious errors. I will give you four options to "
                       "narrow your scope. You can inspect the options and think. Eventually, "
                       "tell me the answer using one single letter (A, B, C, or D).\n\n"
                       "{context}\n\nWhich funtion has deliberate error?\n" + _OPTIONS +
                       "\n\nYou should first find the functions in the options. Repeat their "
                       "content, inspect through code, and at last give me your answer for the "
                       "function that has the deliberate and obvious error in A, B, C, or D."),
        "longdialogue_qa_eng": (_DIALOGUE + "\n\nThe dialogue:\n\n---\n\n{context}\n\n---\n\n"
                                "End of dialogue.\n\nWhich character is most likely "
                                "\"$$MASK$$\"? Just say the name used by the scriptwriter "
                                "(before the colon marks) of one single character and nothing "
                                "else."),
    },
}


class PromptError(ValueError):
    """An example the reference's prompt builder cannot handle (named by id and field)."""


def _document(eg: dict, data_dir: str | None, sub: str) -> str:
    """Official rows carry the text in `context`; older releases name a file in `document`."""
    if eg.get("context"):
        return eg["context"]
    if data_dir and eg.get("document"):
        with open(os.path.join(data_dir, sub, eg["document"]), encoding="utf-8") as f:
            return f.read()
    raise PromptError(f"example {eg.get('id')}: no 'context' text and no readable 'document'")


def _options(eg: dict) -> dict:
    opts = eg.get("options") or []
    if len(opts) != 4:
        raise PromptError(f"example {eg.get('id')}: 'options' must hold 4 strings, got {opts!r}")
    return {f"OPTION_{c}": o for c, o in zip("ABCD", opts)}


def math_find_prefix(question: str) -> str:
    """'What is <the ... > in the following list?' from 'The <...> of' in the question: the
    reference's greedy `The .+ of`, lower-cased, with ' of' dropped."""
    found = re.findall(r"The .+ of", question)
    if not found:
        raise PromptError(f"math_find question {question!r} holds no 'The ... of' (the "
                          "reference asserts on such rows)")
    return f"What is {found[0].lower()[:-3]} in the following list?"


def create_prompt(eg: dict, task: str, style: str = "open", data_dir: str | None = None) -> str:
    """The reference's prompt text for one row of the official JSONL."""
    if task not in MAX_NEW_TOKENS:
        raise ValueError(f"unknown InfiniteBench task {task!r}; known: {', '.join(TASKS)}")
    if style not in TEMPLATES:
        raise ValueError(f"style {style!r}: use 'open' or 'chat'")
    template = TEMPLATES[style][task]
    if task == "code_run":
        calls = re.findall(r"func_[0-9]+\(\-?[0-9]+\)", eg["input"])
        if not calls:
            raise PromptError(f"code_run example {eg.get('id')}: no func_N(arg) in 'input'")
        return template.format(func=calls[0].split("(")[0], func_call=calls[0],
                               context=eg["context"])
    if task == "code_debug":
        return template.format(context=eg["context"], **_options(eg))
    if task == "longdialogue_qa_eng":
        return template.format(context=_document(eg, data_dir, "longdialogue_eng"))
    if task.startswith("longbook_"):
        book = _document(eg, data_dir, "longbook_chn" if task.endswith("_chn") else
                         "longbook_eng")
        extra = _options(eg) if task == "longbook_choice_eng" else {}
        return template.format(context=book, question=eg.get("input", ""), **extra)
    if task == "math_calc":
        return template.format(context=eg["context"])
    if task == "math_find":
        return template.format(prefix=math_find_prefix(eg["input"]), context=eg["context"],
                               input=eg["input"])
    return template.format(context=eg["context"], input=eg["input"])


def truncate_middle(ids: list, max_len: int) -> list:
    """The open-model script's cut: the first and the last `max_len // 2` tokens."""
    if len(ids) <= max_len:
        return ids
    split = max_len // 2
    return ids[:split] + ids[-split:]


def build_input(eg: dict, task: str, text, max_len: int, style: str = "open",
                data_dir: str | None = None, hard_max: int | None = None) -> list[int]:
    """Model input ids: the prompt with BOS, cut to `max_len` tokens in the middle, decoded
    without special tokens and tokenised again (`text`: an `evals.tokens.HFText`).

    `hard_max`: the most tokens the model can take; re-tokenising the decoded cut can add a
    token or two at the seam, which are then cut again from the middle (ids only).
    """
    prompt = create_prompt(eg, task, style, data_dir)
    ids = text(prompt)
    if len(ids) > max_len:
        ids = text(text.decode(truncate_middle(ids, max_len)))
    if hard_max is not None and len(ids) > hard_max:
        ids = truncate_middle(ids, hard_max)
    return ids


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file; a malformed line is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def labels(eg: dict, task: str) -> list:
    """Ground truth as the reference's `get_answer`: for choices, the option text and its
    letter."""
    answer = eg["answer"]
    if task in ("code_debug", "longbook_choice_eng"):
        if isinstance(answer, str):
            answer = [answer]
        if len(answer) == 2 and answer[1] in ("A", "B", "C", "D"):
            return list(answer)
        if len(answer) != 1 or answer[0] not in (eg.get("options") or []):
            raise PromptError(f"{task} example {eg.get('id')}: answer {eg['answer']!r} is not "
                              "one of its options")
        return [answer[0], "ABCD"[eg["options"].index(answer[0])]]
    return answer
