"""All pipeline settings in one frozen dataclass (recorded whole in every manifest).

Defaults follow He et al. 2025; where the paper is silent the choice is ours and says so.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Config:
    # Corpus.
    text_field: str = "text"          # JSONL key / Parquet or HF column with the text
    min_chars: int = 200              # shorter documents are skipped (ours)
    # Hierarchical split (Section 3.1): 4K small chunks; a medium chunk = 3 consecutive small.
    small_tokens: int = 4096
    small_per_medium: int = 3
    # Summary word limits (paper gives none; ours).
    words_small: int = 150
    words_medium: int = 250
    words_global: int = 400
    # Per-document QA banks (Section 4.1: 25 hierarchical and 50 diverse per book).
    n_hierarchical: int = 25
    n_diverse: int = 50
    multihop_prob: float = 0.2        # Appendix E: 20% chance a multi-hop QA follows a QA
    # Sampling and robustness.
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens_qa: int = 1024
    max_tokens_summary: int = 1024
    max_attempts: int = 3             # one call + 2 retries with new seeds (ours)
    batch_docs: int = 8               # documents whose calls are batched together
    # Algorithm 2 (Section 3.2).
    n1: int = 5                       # hierarchical and diverse QAs after each document
    n2: int = 9                       # diverse QAs from earlier documents (unused ones)
    n3: int = 3                       # follow-up hierarchical QAs per revisited document
    revisit_p: float = 0.6            # chance of revisiting each earlier document
    counts: str = "fixed"             # "fixed" | "randomized" (Table 7)
    rand_min: int = 2                 # randomized counts ~ U[rand_min, rand_max] (Table 7)
    rand_max: int = 10
    composition: str = "hs-hs-hs"     # Table 7: first doc - later docs - revisits
    global_summary: bool = True       # False = Table 7 "no-sum"
    fill: bool = True                 # Algorithm 2's "process remaining questions" to fill
    max_docs: int = 0                 # documents per conversation, 0 = as many as fit
    shuffle_hierarchical: bool = False  # Appendix E "4 hierarchies random": order not kept
    # Lengths.
    length_tolerance: float = 0.01    # conversations land in [target*(1-tol), hard_max]
    hard_max_ratio: float = 1.0       # hard max = target * ratio (never exceeded)
    samples_per_length: int = 8
    seed: int = 0
    write_jsonl: bool = False

    def __post_init__(self):
        parts = self.composition.split("-")
        if not 2 <= len(parts) <= 3 or any(not p or set(p) - {"h", "s"} for p in parts):
            raise ValueError(f"composition={self.composition!r}: expected x-y or x-y-z with "
                             f"x, y, z made of 'h' and 's' (e.g. hs-hs-hs, h-h-s, h-h-h)")
        if self.counts not in ("fixed", "randomized"):
            raise ValueError(f"counts={self.counts!r}: expected 'fixed' or 'randomized'")
        if not 0 <= self.revisit_p <= 1 or not 0 <= self.multihop_prob <= 1:
            raise ValueError("revisit_p and multihop_prob must be probabilities in [0, 1]")
        if self.hard_max_ratio < 1 or not 0 < self.length_tolerance < 1:
            raise ValueError("need hard_max_ratio >= 1 and 0 < length_tolerance < 1")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> "Config":
        """The settings of a named paper recipe (RECIPES), plus overrides."""
        if name not in RECIPES:
            raise ValueError(f"recipe {name!r} is unknown; known: {sorted(RECIPES)}")
        return cls(**{**RECIPES[name], **overrides})

    @classmethod
    def from_overrides(cls, overrides: dict[str, str], recipe: str = "") -> "Config":
        """Builds a Config from string overrides (CLI `--set key=value`), typed by field."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in overrides.items():
            if k not in fields:
                raise ValueError(f"unknown config field {k!r}; known: {sorted(fields)}")
            typ = type(getattr(cls(), k))
            kw[k] = (v.lower() in ("1", "true", "yes")) if typ is bool else typ(v)
        return cls.from_recipe(recipe, **kw) if recipe else cls(**kw)


# Named recipes matching configs/ablation_*.py variants. Table 7 (two documents at 180K):
# "fixed" = 6 questions after each document and 4 follow-ups on the first document, so
# n1 = 6, n2 = n3 = 4 and the one earlier document is always revisited (our reading of
# Section 4.4); "randomized" draws each count from 2-10. Table 7 recipes share the paper's
# QA banks (same calls, same cache), only the concatenation differs. Appendix E (one document at 100K):
# hierarchical only (ordered, shuffled, or with 20% multi-hop) or diverse only.
_T7 = dict(max_docs=2, n1=6, n2=4, n3=4, revisit_p=1.0)
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "hs-hs-hs-fixed": dict(_T7, composition="hs-hs-hs"),
    "hs-hs-hs-randomized": dict(_T7, composition="hs-hs-hs", counts="randomized"),
    "h-h-s-fixed": dict(_T7, composition="h-h-s"),
    "h-h-s-fixed-no-sum": dict(_T7, composition="h-h-s", global_summary=False),
    "h-h-s-randomized": dict(_T7, composition="h-h-s", counts="randomized"),
    "h-h-randomized": dict(_T7, composition="h-h", counts="randomized"),
    "h-h-h-randomized": dict(_T7, composition="h-h-h", counts="randomized"),
    "4-hierarchies": dict(max_docs=1, composition="h-h", multihop_prob=0.0),
    "4-hierarchies-random": dict(max_docs=1, composition="h-h", multihop_prob=0.0,
                                 shuffle_hierarchical=True),
    "4-hierarchies-multihop": dict(max_docs=1, composition="h-h", multihop_prob=0.2),
    "diverse": dict(max_docs=1, composition="s-s", multihop_prob=0.0),
}
