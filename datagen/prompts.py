"""Every prompt the pipeline sends, verbatim from He et al. 2025 Appendix B (the spec).

The paper prints each prompt as a Python triple-quoted string wrapped to the PDF column; here
the PDF line wraps are joined into flowing sentences and paragraph breaks are kept. Two
placeholders styles in the paper (`{word_limit}` and `${context}`) are unified as
`string.Template` `${name}` fields. Two prompts are NOT in the paper and are marked so:
`HIERARCHICAL_GENERAL` (Algorithm 1's GenerateGeneralQAPair(context, summary) has no printed
prompt) and the chunk-count word in `MULTI_HOP` (the paper prints "three chunks" for its
3-chunk case; Section 3.1 says multi-hop spans 2-4 chunks, so the count word follows the
number of chunks actually given).

Bump PROMPT_VERSION whenever any text here changes: it is recorded in every manifest and is
part of every cache key (through the prompt text itself).
"""
from __future__ import annotations

import re
import string

PROMPT_VERSION = "he2025-appB/1"

# Word limits are not given in the paper; these defaults are ours (configurable in config).
DEFAULT_WORD_LIMITS = {"small": 150, "medium": 250, "global": 400}

SUMMARY = """Summarize the following text concisely in no more than ${word_limit} words:

${chunk}"""

_HEAD = """Context information is below.
-----
${context}
-----

Given the context information and not prior knowledge.
Generate content based on the below query.
"""
_JSON_TAIL = "You must return the result in JSON: {'question': <question>, 'answer': <answer>}"

# The diverse-question pool (Appendix B, "Diverse Questions"), keyed by question type.
DIVERSE = {
    "temporal": _HEAD + (
        "You are a Teacher/Professor. Your task is to set up 1 diverse temporal question about "
        "the context for an upcoming quiz/examination. The question should cover different time "
        "periods and events described in the context. Restrict the question to the context "
        "information provided. " + _JSON_TAIL),
    "character": _HEAD + (
        "You are a Teacher/Professor. Your task is to create 1 character-based question from the "
        "context for an upcoming quiz/examination. The question should explore different aspects "
        "of the characters, such as their motivations, actions, and relationships. Restrict the "
        "question to the context information provided. " + _JSON_TAIL),
    "complex": _HEAD + (
        "Formulate 1 complex question that requires analysis of multiple aspects from the context "
        "for an upcoming quiz/examination. The question should encourage critical thinking and "
        "synthesis of different pieces of information within the context. Restrict the question "
        "to the context information provided. " + _JSON_TAIL),
    "theme": _HEAD + (
        "You are a Teacher/Professor. Ask 1 question about the main themes or messages of the "
        "text for an upcoming quiz/examination. The question should cover different aspects of "
        "the themes and how they are developed in the context. Restrict the question to the "
        "context information provided. " + _JSON_TAIL),
    "comparison": _HEAD + (
        "You are a Teacher/Professor. Create 1 question that compare different elements within "
        "the context for an upcoming quiz/examination. The question should highlight "
        "similarities and differences between various elements such as characters, events, and "
        "themes. Restrict the question to the context information provided. " + _JSON_TAIL),
    "cause_effect": _HEAD + (
        "You are a Teacher/Professor. Develop 1 question that explore the cause and effect "
        "relationships within the context for an upcoming quiz/examination. The question should "
        "focus on understanding the reasons behind events and their outcomes. Restrict the "
        "question to the context information provided. " + _JSON_TAIL),
    "hypothetical": _HEAD + (
        "You are a Teacher/Professor. Create 1 hypothetical question based on the context for "
        "an upcoming quiz/examination. The question should explore what-if scenarios and "
        "possible alternate outcomes. Restrict the question to the context information "
        "provided. " + _JSON_TAIL),
    "interpretation": _HEAD + (
        "You are a Teacher/Professor. Formulate 1 question that require interpretation of the "
        "context for an upcoming quiz/examination. The question should encourage students to "
        "provide their own insights and interpretations based on the information given. "
        "Restrict the question to the context information provided. " + _JSON_TAIL),
    "detail": _HEAD + (
        "You are a Teacher/Professor. Ask 1 detail-oriented question about the context for an "
        "upcoming quiz/examination. These question should focus on specific details, facts, and "
        "figures mentioned in the context. Restrict the question to the context information "
        "provided. " + _JSON_TAIL),
    "perspective": _HEAD + (
        "You are a Teacher/Professor. Create 1 question that explore different perspectives or "
        "viewpoints within the context for an upcoming quiz/examination. The question should "
        "examine how different characters or groups might view events or themes differently. "
        "Restrict the questions to the context information provided. You must return the result "
        "in JSON: {'question': <question>, 'answer': <answer>}"),
}

SPECIFIC = """Context information is below.
${context}
Given the context information and not prior knowledge, generate content based on the below \
query. You are a Teacher/Professor. Create 1 specific question about the details, events, \
characters, and settings from the context provided. This question should have an exact, \
unambiguous answer that can be directly found in the given information. The question should \
be similar in style to the following examples:
"Where does Character A meet Character B for the first time?"
"What is Character C's religion?"
"Where does Character D live for the majority of the story?"
"Which of the following is NOT one of Character E's responsibilities?"
"Which among [list of names] is not [Character F]'s child?"
"Who among [list of names] is the final to perish?"
"What's the name of [Family name]'s summer home?"
"Who accompanied [Character G] [specific activity] at last?"
Ensure that the question and answer are strictly based on the context information provided. \
The question may include multiple-choice options when appropriate. You must return the result \
in JSON: {'question': <question>, 'answer': <answer>}"""

MULTI_HOP = """Context information is below.
${chunks}
You are a Professor designing a final exam for an advanced interdisciplinary course. Create 1 \
complex question requiring deep analysis and synthesis of information from all ${n_word} \
chunks. Do not mention that there are ${n_word} chunks/your questions. Do not mention excerpts \
either. For example, instead of a question that says "Analyze the theme of justice and its \
various forms as portrayed in the three provided literary excerpts. How do the characters' \
actions and the outcomes of their situations reflect or challenge traditional notions of \
justice? Consider the legal, personal, and societal implications of justice in each excerpt \
and discuss the role of power dynamics in shaping justice." You should say: "Analyze the theme \
of justice and its various forms as portrayed. How do the characters' actions and the outcomes \
of their situations reflect or challenge traditional notions of justice? Consider the legal, \
personal, and societal implications of justice and discuss the role of power dynamics in \
shaping justice."
Question Guidelines:
1. The question must integrate and require reasoning across all ${n_word} chunks.
2. The question should be multi-layered, promoting analysis, synthesis, and evaluation.
Answer Guidelines:
1. Provide a comprehensive answer addressing all question aspects.
2. Reference and interconnect information from each chunk.
Return 1 question-answer pair in JSON format:
{ "question": <question>, "answer": <answer> }
"""

# NOT in the paper: Algorithm 1's GenerateGeneralQAPair(context, summary) for a medium chunk.
HIERARCHICAL_GENERAL = _HEAD + """Summary of this part of the document:
${summary}

You are a Teacher/Professor. Ask 1 broad question about the main events, ideas or arguments \
of this part of the document for an upcoming quiz/examination, answerable from the context \
and its summary. Restrict the question to the context information provided. """ + _JSON_TAIL

GLOBAL_SUMMARY_REQUEST = "Please give me a summary of the book"
CHUNK_SEPARATOR = "\n\n"  # between chunks inside MULTI_HOP's ${chunks}
_NUM_WORDS = {2: "two", 3: "three", 4: "four"}

QA_JSON_SCHEMA = ('{"additionalProperties": false, "properties": {"answer": {"type": "string"}, '
                  '"question": {"type": "string"}}, "required": ["question", "answer"], '
                  '"type": "object"}')


def render(template: str, **fields: object) -> str:
    """Fills a template; every `${name}` must be given (a missing field is a bug)."""
    return string.Template(template).substitute({k: str(v) for k, v in fields.items()})


def summary_prompt(chunk: str, word_limit: int) -> str:
    return render(SUMMARY, chunk=chunk, word_limit=word_limit)


def multi_hop_prompt(chunks: list[str]) -> str:
    if len(chunks) not in _NUM_WORDS:
        raise ValueError(f"multi-hop takes 2-4 chunks (paper Section 3.1); got {len(chunks)}")
    return render(MULTI_HOP, chunks=CHUNK_SEPARATOR.join(chunks), n_word=_NUM_WORDS[len(chunks)])


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\$\{(\w+)\}", template)
    out, seen = [], set()
    for i, p in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(p))
        elif p in seen:
            out.append(f"(?P={p})")
        else:
            seen.add(p)
            out.append(f"(?P<{p}>.*)")
    return re.compile("".join(out), re.DOTALL)


# Every template by name, for backends that must read a prompt back (the extractive backend).
TEMPLATES = {"summary": SUMMARY, "specific": SPECIFIC, "multi_hop": MULTI_HOP,
             "general": HIERARCHICAL_GENERAL, **{f"diverse/{k}": v for k, v in DIVERSE.items()}}
_PATTERNS = {name: _pattern(t) for name, t in TEMPLATES.items()}
# The literal text before a template's first field and after its last: a cheap test that
# rules out most templates before a regex scans a whole chunk.
_ENDS = {name: (re.split(r"\$\{\w+\}", t)[0], re.split(r"\$\{\w+\}", t)[-1])
         for name, t in TEMPLATES.items()}


def parse_prompt(prompt: str) -> tuple[str, dict[str, str]] | None:
    """Inverse of rendering: (template name, fields) for a prompt built here, else None."""
    for name, pat in _PATTERNS.items():
        head, tail = _ENDS[name]
        if not (prompt.startswith(head) and prompt.endswith(tail)):
            continue
        m = pat.fullmatch(prompt)
        if m:
            return name, m.groupdict()
    return None
