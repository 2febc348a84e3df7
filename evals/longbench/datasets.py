"""LongBench v1's datasets and the settings each evaluation pipeline gives them.

Benchmark facts from THUDM/LongBench at `REFERENCE` (`LongBench/pred.py`, `eval.py`,
`metrics.py`, byte-identical to the root files of a0bd51e): the prompt templates and
generation budgets are `config/dataset2prompt.json` and `config/dataset2maxlen.json`, copied
verbatim (sha256 checked by the tests); metrics, categories and languages are `eval.py`'s and
the README's. The 'beacon' pipeline is FlagEmbedding's activation-beacon evaluation at
`BEACON_REFERENCE` (`Long_LLM/activation_beacon/main/eval_longbench.py`), which Li et al. 2025
evidently used (their averages are its plain means).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

REFERENCE = "THUDM/LongBench 2e00731 (LongBench/)"
BEACON_REFERENCE = "FlagOpen/FlagEmbedding 0ad0dee (Long_LLM/activation_beacon/main/)"
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")

# name: (metric, category, language); metric names are metrics.py's functions.
DATASETS = {
    "narrativeqa": ("qa_f1_score", "Single-Doc QA", "en"),
    "qasper": ("qa_f1_score", "Single-Doc QA", "en"),
    "multifieldqa_en": ("qa_f1_score", "Single-Doc QA", "en"),
    "multifieldqa_zh": ("qa_f1_zh_score", "Single-Doc QA", "zh"),
    "hotpotqa": ("qa_f1_score", "Multi-Doc QA", "en"),
    "2wikimqa": ("qa_f1_score", "Multi-Doc QA", "en"),
    "musique": ("qa_f1_score", "Multi-Doc QA", "en"),
    "dureader": ("rouge_zh_score", "Multi-Doc QA", "zh"),
    "gov_report": ("rouge_score", "Summarization", "en"),
    "qmsum": ("rouge_score", "Summarization", "en"),
    "multi_news": ("rouge_score", "Summarization", "en"),
    "vcsum": ("rouge_zh_score", "Summarization", "zh"),
    "trec": ("classification_score", "Few-shot Learning", "en"),
    "triviaqa": ("qa_f1_score", "Few-shot Learning", "en"),
    "samsum": ("rouge_score", "Few-shot Learning", "en"),
    "lsht": ("classification_score", "Few-shot Learning", "zh"),
    "passage_count": ("count_score", "Synthetic Tasks", "en"),
    "passage_retrieval_en": ("retrieval_score", "Synthetic Tasks", "en"),
    "passage_retrieval_zh": ("retrieval_zh_score", "Synthetic Tasks", "zh"),
    "lcc": ("code_sim_score", "Code Completion", "code"),
    "repobench-p": ("code_sim_score", "Code Completion", "code"),
}
CATEGORIES = ("Single-Doc QA", "Multi-Doc QA", "Summarization", "Few-shot Learning",
              "Code Completion", "Synthetic Tasks")
# LongBench-E: these datasets with the `_e` suffix; scores per `length` bucket (eval.py).
LONGBENCH_E = ("qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report",
               "multi_news", "trec", "triviaqa", "samsum", "passage_count",
               "passage_retrieval_en", "lcc", "repobench-p")
# pred.py: "chat models are better off without build prompts on these tasks".
NO_CHAT_TEMPLATE = ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")
# eval.py: only the first line of these predictions is scored.
FIRST_LINE = ("trec", "triviaqa", "samsum", "lsht")
# The beacon pipeline adds "\n" to the end-of-sequence ids for these (no min_length).
BEACON_NEWLINE_EOS = ("2wikimqa", "hotpotqa", "musique", "multifieldqa_en", "qasper",
                      "narrativeqa", "samsum")
# Li et al. 2025 Table 1: the 14 English datasets (3,350 samples).
LI2025 = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
          "gov_report", "qmsum", "multi_news", "trec", "triviaqa", "samsum", "lcc",
          "repobench-p")


@functools.lru_cache(maxsize=None)
def _config(name: str) -> dict:
    with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def prompt_template(dataset: str) -> str:
    """`config/dataset2prompt.json[dataset]`, verbatim."""
    return _config("dataset2prompt.json")[dataset]


def max_new_tokens(dataset: str) -> int:
    """`config/dataset2maxlen.json[dataset]`: the generation budget."""
    return _config("dataset2maxlen.json")[dataset]


@dataclasses.dataclass(frozen=True)
class Preset:
    """How one pipeline runs LongBench.

    Attributes:
      name: official | beacon | he2025.
      datasets: the datasets it evaluates, in report order.
      max_length: prompt tokens before the middle cut (None: must be given; the official
        model2maxlen.json has 3500 for 4K models, 7500 for 8K, 15500 for 16K, 31500 for 32K).
      chat_template: 'none', 'llama2' or 'llama3' (see `prompts.CHAT_TEMPLATES`).
      chat_skip: datasets left without the chat template.
      newline_eos: datasets whose generation also stops at the "\\n" token.
      min_one_token: datasets where end-of-sequence ids are barred from the first token.
      average: 'categories' (the README: per language, the mean of the category means, code
        in both) or 'datasets' (the plain mean over the datasets run).
      all_classes_row: which row's `all_classes` the scorer uses for a whole dataset
        ('last': eval.py's loop leaves the last; 'first': the beacon script's [0]).
    """
    name: str
    datasets: tuple[str, ...]
    max_length: int | None
    chat_template: str
    chat_skip: tuple[str, ...]
    newline_eos: tuple[str, ...]
    min_one_token: tuple[str, ...]
    average: str
    all_classes_row: str


PRESETS = {
    # THUDM pred.py / eval.py; the chat template is the model's (llama2 is pred.py's own).
    "official": Preset("official", tuple(DATASETS), None, "llama2", NO_CHAT_TEMPLATE,
                       ("samsum",), ("samsum",), "categories", "last"),
    # activation-beacon eval_longbench.py as Li et al. ran it: 15,500 tokens, no template.
    "beacon": Preset("beacon", LI2025, 15500, "none", (), BEACON_NEWLINE_EOS, (), "datasets",
                     "first"),
    # He et al. 2025 Tables 2/5/10: the 19 non-code datasets, "All" = their plain mean
    # (48.11 for Llama-3.1-8B-Instruct from the 19 cells of Table 10); the official prompts.
    "he2025": Preset("he2025", tuple(d for d in DATASETS if DATASETS[d][1] != "Code Completion"),
                     None, "llama3", NO_CHAT_TEMPLATE, ("samsum",), ("samsum",), "datasets",
                     "last"),
}
