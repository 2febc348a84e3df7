"""Every prompt of Li et al. 2025's six tasks: the training-sample prompts the paper prints,
and the generator prompts it describes but does not print (ours, marked so).

Printed in Section 2.1 and used verbatim in the samples:
  QA_PROMPT         "Answer the question based on the passages." (single- and multi-doc QA,
                    multi-doc logic)
  summary_request   "Write a summary for Passage {index_1}, the passage about {noun_1}; a
                    summary for Passage {index_2}..."
  SIMDIFF_PROMPT    "Identify the similarities and differences in the two passages about
                    {noun}."
  code questions    'Explain how the variable {v} is initialized?', 'Which function produced
                    the variable {v}?', 'List all the variables that participated in
                    computing {v}'; the generator steps 'Ask 5 diverse questions about this
                    function {f}' and 'Summarize/Explain the function {f}'.
Not printed (ours): the passage, QA, summary, rewrite, linked-passage, logic and code-step
prompts below. The paper says only what each must achieve; each template says that in plain
words. Fields are `string.Template` `${name}`; `parse_prompt` reads a rendered prompt back
(the offline backend answers from the fields, as the He et al. extractive backend does).

Bump PROMPT_VERSION whenever any text here changes: it is recorded in every manifest and is
part of every cache key (through the prompt text).
"""
from __future__ import annotations

import json

# Templates are filled and read back exactly as the He et al. prompts are.
from datagen.prompts import _pattern, render  # noqa: F401 - render is this module's API too

PROMPT_VERSION = "li2025-sec2.1/1"

# The genres passages are written in ("from academic papers to sci-fi stories", Section
# 2.1; the list itself is ours). A noun's genre is drawn from its seed, so the corpus covers
# them evenly.
GENRES = (
    "an academic paper", "an encyclopedia article", "a news report", "a textbook section",
    "a science fiction story", "a fairy tale", "a mystery story", "a historical account",
    "a travel guide", "a personal essay", "a letter to a friend", "a product review",
    "an interview transcript", "a technical manual", "a blog post", "a speech",
)

# ---- sample prompts (the paper's words) ----------------------------------------------------
QA_PROMPT = "Answer the question based on the passages."
SIMDIFF_PROMPT = "Identify the similarities and differences in the two passages about ${noun}."
CODE_EXPLAIN_VAR = "Explain how the variable ${var} is initialized?"
CODE_WHICH_FUNCTION = "Which function produced the variable ${var}?"
CODE_LIST_VARIABLES = "List all the variables that participated in computing ${var}"
CODE_SUMMARIZE = "Summarize and explain the function ${func}."


def summary_request(items: list[tuple[int, str]]) -> str:
    """The summarization prompt for (passage index, noun) pairs, in the paper's words."""
    parts = [f"a summary for Passage {i}, the passage about {noun}" for i, noun in items]
    return "Write " + "; ".join(parts) + "."


# ---- generator prompts (ours) ---------------------------------------------------------------
PASSAGE = ("Write a passage of about ${words} words in the style of ${genre} about "
           "${noun}. Write only the passage itself: no title, no preamble, no notes.")

SINGLE_QA = """Passage about ${noun}:
${passage}

Write one highly specific question that can be answered only from a detail of the passage \
above, and its short answer. Reply in JSON: {"question": "...", "answer": "..."}"""

SUMMARY = """Summarize the following passage about ${noun} in no more than ${words} words.

${passage}"""

REWRITE = """Here is a passage about ${noun}:

${passage}

Rewrite this passage so that it stays very similar, with the same topic, structure and \
length, but differs from it in a few key details (for example a name, a number, a date, a \
place or an outcome). Write only the rewritten passage."""

SIMDIFF = """First passage:
${passage_a}

Second passage:
${passage_b}

Both passages are about ${noun}. Identify the similarities and differences in the two \
passages."""

LINKED = """Here is a passage about ${noun}:

${passage}

Write a different passage of about ${words} words, also about ${noun}, in the style of \
${genre}, that is linked to the passage above by a few key details (for example a shared \
person, place, date, object or event) but does not repeat it. Write only the new passage."""

MULTI_QA = """Passage 1:
${passage_a}

Passage 2:
${passage_b}

Write one question about ${noun} whose answer needs information from both passages above \
(neither passage alone is enough), and its short answer. Reply in JSON: \
{"question": "...", "answer": "..."}"""

LOGIC_FACTS = """Invent three statements A, B and C about ${noun} such that A implies B and B \
implies C. Then write two facts as self-contained sentences: fact_1 says that A implies B, \
fact_2 says that B implies C. Reply in JSON: {"a": "...", "b": "...", "c": "...", \
"fact_1": "...", "fact_2": "..."}"""

LOGIC_QA = """Fact 1: ${fact_1}
Fact 2: ${fact_2}

Write one question about the relationship between "${a}" and "${c}" that can be answered \
only by combining both facts, and its short answer. Reply in JSON: \
{"question": "...", "answer": "..."}"""

_PROGRAM = """You are writing a Python program about ${noun}, one step at a time. The \
program so far:
```python
${code}
```
"""
CODE_VARS = _PROGRAM + """Invent and initialize a set of ${n} new variables for this \
program, with names not used so far. Reply with Python code only: ${n} assignment \
statements, one per line."""

CODE_FUNC = _PROGRAM + """Invent a new function for this program that takes exactly ${k} \
parameters and returns a value, with a name not used so far. Reply with the Python \
function definition only."""

CODE_CALL = _PROGRAM + """Write one line of Python that calls the function ${func} with the \
arguments ${args}, in this order, and assigns the result to a new variable with a \
descriptive name not used so far. Reply with that one line only."""

_SNIPPET = """Here is part of a Python program:
```python
${snippet}
```
"""
CODE_EXPLAIN_GEN = _SNIPPET + "Explain how the variable ${var} is initialized."
CODE_ASK5_GEN = _SNIPPET + ("Ask 5 diverse questions about this function ${func}. Reply in "
                            'JSON: {"questions": ["...", "...", "...", "...", "..."]}')
CODE_ANSWER_GEN = _SNIPPET + "Answer this question about the function ${func} in the " \
                             "context of the program: ${question}"
CODE_SUMMARY_GEN = _SNIPPET + "Summarize and explain the function ${func}."


def _schema(fields: dict[str, int], array: str = "", items: int = 0, item_chars: int = 0
            ) -> str:
    """A JSON Schema of required strings with length caps (chars). The caps make structured
    decoding close every string, so even a weak generator's output parses."""
    props = {k: {"type": "string", "minLength": 1, "maxLength": n} for k, n in fields.items()}
    if array:
        props[array] = {"type": "array", "minItems": items, "maxItems": items,
                        "items": {"type": "string", "minLength": 1, "maxLength": item_chars}}
    return json.dumps({"type": "object", "additionalProperties": False,
                       "required": sorted(props), "properties": props}, sort_keys=True)


def qa_schema(chars: int) -> str:
    """{"question", "answer"}, each at most `chars` characters."""
    return _schema({"question": chars, "answer": chars})


def logic_schema(chars: int) -> str:
    return _schema({k: chars for k in ("a", "b", "c", "fact_1", "fact_2")})


def ask5_schema(chars: int) -> str:
    return _schema({}, array="questions", items=5, item_chars=chars)

TEMPLATES = {
    "passage": PASSAGE, "single_qa": SINGLE_QA, "summary": SUMMARY, "rewrite": REWRITE,
    "simdiff": SIMDIFF, "linked": LINKED, "multi_qa": MULTI_QA, "logic_facts": LOGIC_FACTS,
    "logic_qa": LOGIC_QA, "code_vars": CODE_VARS, "code_func": CODE_FUNC,
    "code_call": CODE_CALL, "code_explain": CODE_EXPLAIN_GEN, "code_ask5": CODE_ASK5_GEN,
    "code_answer": CODE_ANSWER_GEN, "code_summary": CODE_SUMMARY_GEN,
}


_PATTERNS = {name: _pattern(t) for name, t in TEMPLATES.items()}


def parse_prompt(prompt: str) -> tuple[str, dict[str, str]] | None:
    """(template name, fields) of a prompt rendered from TEMPLATES, else None."""
    for name, pat in _PATTERNS.items():
        m = pat.fullmatch(prompt)
        if m:
            return name, m.groupdict()
    return None
