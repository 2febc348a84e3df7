"""LongBench v1 metrics and scoring, as THUDM/LongBench `metrics.py` and `eval.py` define them.

The libraries are the reference's: ROUGE-L from the `rouge` package (1.0.1; case-sensitive,
raises on empty or punctuation-only hypotheses, which score 0 as in the reference; not
`rouge-score`, which lower-cases), `fuzzywuzzy` on the python-Levenshtein backend (its
pure-difflib fallback gives other ratios on most short strings, so it is refused), `jieba` for
the Chinese datasets. Quirks kept: classification_score removes matches from the list it is
iterating over (so the match after a removed one is never examined); code_sim_score takes the
first line without ` # or //; the few-shot datasets score only the first line; scores are
`round(100 * mean, 2)`.
"""
from __future__ import annotations

import functools
import re
import string
from collections import Counter
from typing import Sequence

from evals.longbench import datasets as ds

_ZH_PUNCT = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟"
             "〰〾〿–—‘’‛“”„‟…‧﹏.")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation, drop a/an/the, collapse spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def normalize_zh_answer(s: str) -> str:
    """Lower-case, drop ASCII and Chinese punctuation, drop all whitespace."""
    drop = set(string.punctuation + _ZH_PUNCT)
    return "".join("".join(ch for ch in s.lower() if ch not in drop).split())


def f1_score(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(pred: str, gold: str, **_) -> float:
    return f1_score(normalize_answer(pred).split(), normalize_answer(gold).split())


@functools.lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba
    jieba.setLogLevel(logging.WARNING)
    return jieba


def _cut(text: str) -> list[str]:
    return list(_jieba().cut(text, cut_all=False))


def qa_f1_zh_score(pred: str, gold: str, **_) -> float:
    p = [t for t in (normalize_zh_answer(x) for x in _cut(pred)) if t]
    g = [t for t in (normalize_zh_answer(x) for x in _cut(gold)) if t]
    return f1_score(p, g)


@functools.lru_cache(maxsize=1)
def _rouge():
    from rouge import Rouge
    return Rouge()


def rouge_score(pred: str, gold: str, **_) -> float:
    """ROUGE-L F of the `rouge` package; any exception (empty hypothesis, ...) scores 0."""
    try:
        return _rouge().get_scores([pred], [gold], avg=True)["rouge-l"]["f"]
    except Exception:  # noqa: BLE001  the reference's bare except
        return 0.0


def rouge_zh_score(pred: str, gold: str, **_) -> float:
    return rouge_score(" ".join(_cut(pred)), " ".join(_cut(gold)))


@functools.lru_cache(maxsize=1)
def fuzz():
    """fuzzywuzzy's `fuzz`, refusing the difflib fallback (it scores differently)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz as fuzz_mod
    if fuzz_mod.SequenceMatcher.__module__ != "fuzzywuzzy.StringMatcher":
        raise ImportError("fuzzywuzzy runs on its difflib fallback, which gives other "
                          "code_sim scores than LongBench's; pip install python-Levenshtein "
                          "(the [eval] extra pins it)")
    return fuzz_mod


def code_sim_score(pred: str, gold: str, **_) -> float:
    """fuzz.ratio / 100 of the first prediction line holding none of ` # // (else '')."""
    line = next((x for x in pred.lstrip("\n").split("\n")
                 if "`" not in x and "#" not in x and "//" not in x), "")
    return fuzz().ratio(line, gold) / 100


def classification_score(pred: str, gold: str, *, all_classes: Sequence[str], **_) -> float:
    matches = [c for c in all_classes if c in pred]
    # Removing from the list being iterated skips the element after each removal: kept.
    for m in matches:
        if m in gold and m != gold:
            matches.remove(m)
    return 1.0 / len(matches) if gold in matches else 0.0


def _id_share(pred: str, gold_id: str) -> float:
    numbers = re.findall(r"\d+", pred)
    return 0.0 if not numbers else sum(n == gold_id for n in numbers) / len(numbers)


def count_score(pred: str, gold, **_) -> float:
    return _id_share(pred, str(gold))


def retrieval_score(pred: str, gold: str, **_) -> float:
    return _id_share(pred, re.findall(r"Paragraph (\d+)", gold)[0])


def retrieval_zh_score(pred: str, gold: str, **_) -> float:
    return _id_share(pred, re.findall(r"段落(\d+)", gold)[0])


METRICS = {f.__name__: f for f in (qa_f1_score, qa_f1_zh_score, rouge_score, rouge_zh_score,
                                   classification_score, code_sim_score, count_score,
                                   retrieval_score, retrieval_zh_score)}


def score_one(dataset: str, pred: str, answers: Sequence[str],
              all_classes: Sequence[str] | None) -> float:
    """eval.py's per-sample score: first line for the few-shot sets, max over the answers."""
    if dataset in ds.FIRST_LINE:
        pred = pred.lstrip("\n").split("\n")[0]
    metric = METRICS[ds.DATASETS[dataset][0]]
    score = 0.0
    for gold in answers:
        score = max(score, metric(pred, gold, all_classes=all_classes))
    return score


def score_dataset(dataset: str, preds: Sequence[str], answers: Sequence[Sequence[str]],
                  all_classes: Sequence[str] | None) -> float:
    """eval.py `scorer`: round(100 * mean, 2)."""
    if not preds:
        raise ValueError(f"{dataset}: no predictions to score")
    total = sum(score_one(dataset, p, a, all_classes) for p, a in zip(preds, answers))
    return round(100 * total / len(preds), 2)


def score_dataset_e(dataset: str, preds: Sequence[str], answers: Sequence[Sequence[str]],
                    lengths: Sequence[int], all_classes: Sequence[str] | None) -> dict:
    """eval.py `scorer_e` (LongBench-E): per `length` bucket (words; characters for Chinese)."""
    buckets: dict[str, list[float]] = {"0-4k": [], "4-8k": [], "8k+": []}
    for p, a, n in zip(preds, answers, lengths):
        key = "0-4k" if n < 4000 else "4-8k" if n < 8000 else "8k+"
        buckets[key].append(score_one(dataset, p, a, all_classes))
    # np.mean of an empty bucket is nan in the reference; None here (JSON has no nan).
    return {k: round(100 * sum(v) / len(v), 2) if v else None for k, v in buckets.items()}


def averages(scores: dict[str, float], how: str) -> dict:
    """Category means and the overall average of per-dataset scores.

    how='datasets': category means over the datasets run and 'avg', their plain mean (Li et
    al. Table 1; He et al. Table 10). how='categories': the README's tables, per language
    ('en', 'zh'; code counts in both), each category the mean of its datasets and 'avg' the
    mean of the category means.
    """
    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    def r2(x):
        return None if x is None else round(x, 2)

    if how == "datasets":
        cats = {c: mean([s for d, s in scores.items() if ds.DATASETS[d][1] == c])
                for c in ds.CATEGORIES}
        return {"categories": {c: r2(v) for c, v in cats.items() if v is not None},
                "avg": r2(mean(list(scores.values())))}
    if how != "categories":
        raise ValueError(f"average {how!r}: use 'datasets' or 'categories'")
    out = {}
    for lang in ("en", "zh"):
        cats = {c: mean([s for d, s in scores.items() if ds.DATASETS[d][1] == c
                         and ds.DATASETS[d][2] in (lang, "code")]) for c in ds.CATEGORIES}
        cats = {c: v for c, v in cats.items() if v is not None}
        if any(ds.DATASETS[d][2] == lang for d in scores):
            out[lang] = {"categories": {c: r2(v) for c, v in cats.items()},
                         "avg": r2(mean(list(cats.values())))}
    return out
