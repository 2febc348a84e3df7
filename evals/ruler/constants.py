"""RULER benchmark definitions: task families, the 13 tasks, model templates.

These are facts of the benchmark (NVIDIA/RULER, 2024 code up to commit 230fddc:
`scripts/data/synthetic/constants.py`, `scripts/synthetic.yaml`, `scripts/data/template.py`).
A score from lctx means what a RULER score means only if every string here matches.
"""
from __future__ import annotations

import dataclasses

# Per family: tokens the model may generate, the task template and the answer prefix (an
# assistant prefill appended after the model's chat template). `assgined` is the reference's
# 2024 typo, kept by default; `fix_typos=True` restores the 2025 spelling.
FAMILIES = {
    "niah": dict(
        tokens_to_generate=128,
        template=("Some special magic {type_needle_v} are hidden within the following text. "
                  "Make sure to memorize it. I will quiz you about the {type_needle_v} "
                  "afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for "
                  "{query} mentioned in the provided text?"),
        answer_prefix=(" The special magic {type_needle_v} for {query} mentioned in the "
                       "provided text are")),
    "variable_tracking": dict(
        tokens_to_generate=30,
        template=("Memorize and track the chain(s) of variable assignment hidden in the "
                  "following text.\n\n{context}\nQuestion: Find all variables that are assigned "
                  "the value {query} in the text above."),
        answer_prefix=(" Answer: According to the chain(s) of variable assignment in the text "
                       "above, {num_v} variables are assgined the value {query}, they are: ")),
    "common_words_extraction": dict(
        tokens_to_generate=120,
        template=("Below is a numbered list of words. In these words, some appear more often "
                  "than others. Memorize the ones that appear most often.\n{context}\nQuestion: "
                  "What are the 10 most common words in the above list?"),
        answer_prefix=" Answer: The top 10 words that appear most often in the list are:"),
    "freq_words_extraction": dict(
        tokens_to_generate=50,
        template=("Read the following coded text and track the frequency of each coded word. "
                  "Find the three most frequently appeared coded words. {context}\nQuestion: Do "
                  "not provide any explanation. Please ignore the dots '....'. What are the "
                  "three most frequently appeared words in the above coded text?"),
        answer_prefix=(" Answer: According to the coded text above, the three most frequently "
                       "appeared words are:")),
    "qa": dict(
        tokens_to_generate=32,
        template=("Answer the question based on the given documents. Only give me the answer "
                  "and do not output any other words.\n\nThe following are given documents.\n\n"
                  "{context}\n\nAnswer the question based on the given documents. Only give me "
                  "the answer and do not output any other words.\n\nQuestion: {query}"),
        answer_prefix=" Answer:"),
}

# Which metric scores each family (evaluate.py / eval/synthetic/constants.py).
METRIC = {"niah": "string_match_all", "variable_tracking": "string_match_all",
          "common_words_extraction": "string_match_all",
          "freq_words_extraction": "string_match_all", "qa": "string_match_part"}

# Model templates wrapping the task template (the answer prefix follows them).
CHAT_TEMPLATES = {
    "base": "{task_template}",
    "meta-chat": "[INST] {task_template} [/INST]",  # Llama-2 chat
    "meta-llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                    "{task_template}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
}
# 'chatformat' = lctx.tokenizer.ChatFormat (a user turn, then the assistant header, then the
# answer prefix as prefill), which renders exactly the reference's meta-llama3 string.
CHAT_ALIASES = {"llama2": "meta-chat", "llama-2": "meta-chat", "llama3": "meta-llama3",
                "llama-3": "meta-llama3", "chatformat": "meta-llama3"}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One RULER task: its family and the family's arguments (synthetic.yaml)."""
    name: str
    family: str
    args: tuple[tuple[str, object], ...]

    def kwargs(self) -> dict:
        return dict(self.args)


def _niah(name, hay, k, v, nk=1, nv=1, nq=1):
    return TaskSpec(name, "niah", (("type_haystack", hay), ("type_needle_k", k),
                                   ("type_needle_v", v), ("num_needle_k", nk),
                                   ("num_needle_v", nv), ("num_needle_q", nq)))


# The 13 tasks in the reference's order (the order of its summary table).
TASKS = {t.name: t for t in [
    _niah("niah_single_1", "repeat", "words", "numbers"),
    _niah("niah_single_2", "essay", "words", "numbers"),
    _niah("niah_single_3", "essay", "words", "uuids"),
    _niah("niah_multikey_1", "essay", "words", "numbers", nk=4),
    _niah("niah_multikey_2", "needle", "words", "numbers"),
    _niah("niah_multikey_3", "needle", "uuids", "uuids"),
    _niah("niah_multivalue", "essay", "words", "numbers", nv=4),
    _niah("niah_multiquery", "essay", "words", "numbers", nk=4, nq=4),
    TaskSpec("vt", "variable_tracking", (("num_chains", 1), ("num_hops", 4))),
    TaskSpec("cwe", "common_words_extraction", (("freq_cw", 30), ("freq_ucw", 3),
                                                ("num_cw", 10))),
    TaskSpec("fwe", "freq_words_extraction", (("alpha", 2.0),)),
    TaskSpec("qa_1", "qa", (("dataset", "squad"),)),
    TaskSpec("qa_2", "qa", (("dataset", "hotpotqa"),)),
]}


def resolve_tasks(spec: str) -> list[str]:
    """`all` or a comma list of task names -> names; unknown names raise, listing known ones."""
    if spec.strip() in ("all", ""):
        return list(TASKS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown RULER task(s) {unknown}; known tasks: {', '.join(TASKS)} "
                         "(or 'all')")
    return names


def model_template(name_or_template: str) -> str:
    """A template name (base, meta-chat/llama2, meta-llama3/llama3) or a literal template
    containing `{task_template}` -> the template string."""
    key = CHAT_ALIASES.get(name_or_template, name_or_template)
    if key in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[key]
    if "{task_template}" in name_or_template:
        return name_or_template
    raise ValueError(f"unknown chat template {name_or_template!r}: use one of "
                     f"{sorted(CHAT_TEMPLATES) + sorted(CHAT_ALIASES)} or a string containing "
                     "'{task_template}'")


def full_template(family: str, chat: str, fix_typos: bool = False) -> str:
    """Model template around the task template, then the answer prefix (prepare.py)."""
    fam = FAMILIES[family]
    prefix = fam["answer_prefix"]
    if fix_typos:
        prefix = prefix.replace("assgined", "assigned")
    return model_template(chat).format(task_template=fam["template"]) + prefix
