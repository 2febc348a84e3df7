"""All pipeline settings in one frozen dataclass (recorded whole in every manifest).

Defaults follow He et al. 2025; where the paper is silent the choice is ours and says so.
Every field is checked when a Config is built (`ConfigError` names the field and the fix),
so a bad setting fails before the first generator call, never after hours of generation.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from datagen import presets


class ConfigError(ValueError):
    """A setting that cannot work; the message names the field and the fix."""


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
    # Per-document QA banks (Section 4.1: 25 hierarchical and 50 diverse per book; multi-hop
    # QAs count inside the 25).
    n_hierarchical: int = presets.PAPER_HIERARCHICAL_PER_BOOK
    n_diverse: int = presets.PAPER_DIVERSE_PER_BOOK
    multihop_prob: float = 0.2        # Appendix E: 20% chance a multi-hop QA follows a QA
    # Sampling and robustness.
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens_qa: int = 1024
    max_tokens_summary: int = 1024
    max_attempts: int = 3             # one call + 2 retries, seed + 7919 k (ours)
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
    max_fill: float = 0.5             # fill QA pairs <= this share of all QA pairs (ours)
    # Documents per conversation: "" = as many as fit (ours), "N" at every length,
    # "LEN:N,..." per length (LEN as --lengths), "paper" = datagen.presets (2/4/8/12).
    docs_per_sample: str = ""
    max_docs: int = 0                 # as-many-as-fit mode: at most this many (0 = no limit)
    shuffle_hierarchical: bool = False  # Appendix E "4 hierarchies random": order not kept
    # Lengths.
    length_tolerance: float = 0.01    # conversations land in [target*(1-tol), hard_max]
    hard_max_ratio: float = 1.0       # hard max = target * ratio (never exceeded)
    # Conversations per length over all shards: "" = samples_per_length at every length,
    # "N", "LEN:N,...", or "paper" (2000/1280/600/200). The CLI's --samples overrides.
    samples: str = ""
    samples_per_length: int = 8
    seed: int = 0
    write_jsonl: bool = False

    def __post_init__(self):
        parts = self.composition.split("-")
        if not 2 <= len(parts) <= 3 or any(not p or set(p) - {"h", "s"} for p in parts):
            raise ConfigError(f"composition={self.composition!r}: expected x-y or x-y-z with "
                              f"x, y, z made of 'h' and 's' (e.g. hs-hs-hs, h-h-s, h-h-h)")
        if self.counts not in ("fixed", "randomized"):
            raise ConfigError(f"counts={self.counts!r}: expected 'fixed' or 'randomized'")
        for f in dataclasses.fields(self):
            v, typ = getattr(self, f.name), type(f.default)
            if not (type(v) is typ or typ is float and type(v) is int):
                raise ConfigError(f"{f.name}={v!r}: expected {typ.__name__}")
        at_least = dict(small_tokens=16, small_per_medium=1, words_small=1, words_medium=1,
                        words_global=1, max_tokens_qa=1, max_tokens_summary=1, max_attempts=1,
                        batch_docs=1)
        for name in ("min_chars", "n_hierarchical", "n_diverse", "n1", "n2", "n3",
                     "rand_min", "rand_max", "max_docs", "samples_per_length", "seed"):
            at_least.setdefault(name, 0)
        for name, lo in at_least.items():
            if getattr(self, name) < lo:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= {lo}")
        for name in ("revisit_p", "multihop_prob", "max_fill", "top_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be in [0, 1]")
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature}: must be >= 0")
        if self.rand_min > self.rand_max:
            raise ConfigError(f"rand_min={self.rand_min} > rand_max={self.rand_max}: "
                              f"randomized counts are drawn from [rand_min, rand_max]")
        if self.hard_max_ratio < 1 or not 0 < self.length_tolerance < 1:
            raise ConfigError(f"need hard_max_ratio >= 1 and 0 < length_tolerance < 1; got "
                              f"{self.hard_max_ratio} and {self.length_tolerance}")
        for name in ("docs_per_sample", "samples"):
            _parse_per_length(getattr(self, name), name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def docs_for(self, target: int, stage: str | None = None) -> int:
        """Documents per conversation at `target` tokens (0 = as many as fit); `stage`, a
        paper stage name (--names), resolves "paper" at any length (tiny runs)."""
        return per_length(self.docs_per_sample, target, "docs_per_sample", stage) or 0

    def samples_for(self, target: int, stage: str | None = None) -> int:
        """Conversations at `target` tokens over all shards (`stage` as in docs_for)."""
        n = per_length(self.samples, target, "samples", stage)
        return self.samples_per_length if n is None else n

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> "Config":
        """The settings of a named paper recipe (RECIPES), plus overrides."""
        if name not in RECIPES:
            raise ConfigError(f"recipe {name!r} is unknown; known: {sorted(RECIPES)}")
        return cls(**{**RECIPES[name], **overrides})

    @classmethod
    def from_overrides(cls, overrides: dict[str, str], recipe: str = "") -> "Config":
        """Builds a Config from string overrides (CLI `--set key=value`), typed by field."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in overrides.items():
            if k not in fields:
                raise ConfigError(f"--set {k}=...: unknown config field {k!r}; known: "
                                  f"{sorted(fields)}")
            kw[k] = _typed(k, v, type(fields[k].default))
        return cls.from_recipe(recipe, **kw) if recipe else cls(**kw)


def _typed(name: str, value: str, typ: type) -> Any:
    """A `--set name=value` string as the field's type, or ConfigError naming both."""
    v = value.strip()
    if typ is bool:
        low = v.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {name}={value}: {name} is a boolean; use true or false")
    try:
        return typ(v)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(typ, typ.__name__)
        raise ConfigError(f"--set {name}={value}: {name} must be {kind}") from None


def _parse_per_length(spec: str, name: str) -> dict[int, int] | int | str | None:
    """"" -> None, "N" -> N, "paper" -> "paper", "LEN:N,..." -> {tokens: N}."""
    spec = spec.strip()
    if not spec:
        return None
    if spec == "paper":
        return spec
    hint = f'expected "", "paper", a count, or LEN:COUNT pairs like "350k:4,1m:12"'
    try:
        if ":" not in spec:
            n = int(spec)
            out: dict[int, int] | int = n
            values = [n]
        else:
            pairs = [p.split(":") for p in spec.split(",") if p.strip()]
            out = {presets.parse_length(a): int(b) for a, b in pairs}
            values = list(out.values())
    except ValueError:
        raise ConfigError(f"{name}={spec!r}: {hint}") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{name}={spec!r}: counts must be >= 1")
    return out


def per_length(spec: str, target: int, name: str, stage_name: str | None = None
               ) -> int | None:
    """The count a per-length spec gives at `target` tokens (None = spec is empty); "paper"
    reads the paper stage of that length, else the stage named `stage_name`."""
    parsed = _parse_per_length(spec, name)
    if parsed is None or isinstance(parsed, int):
        return parsed
    if parsed == "paper":
        named = {s.name: s for s in presets.PAPER_STAGES}
        stage = presets.by_length(target) or named.get(stage_name or "")
        if stage is None:
            raise ConfigError(f"{name}=paper: {target} tokens is not a paper length "
                              f"({[s.alias for s in presets.PAPER_STAGES]}) and its --names "
                              f"entry is no paper stage; give counts per length, e.g. "
                              f"{name}={target}:4")
        return stage.docs_per_sample if name == "docs_per_sample" else stage.samples
    if target not in parsed:
        raise ConfigError(f"{name}={spec!r} gives no count for {target} tokens; add "
                          f"{target}:N")
    return parsed[target]


# Named recipes matching configs/ablation_*.py variants. "paper" (Section 4.2): the default
# algorithm with the paper's documents per sample and sample counts per length. Table 7 (two
# documents at 180K): "fixed" = 6 questions after each document and 4 follow-ups on the
# first document, so n1 = 6, n2 = n3 = 4 and the one earlier document is always revisited
# (our reading of Section 4.4); "randomized" draws each count from 2-10. Table 7 recipes
# share the paper's QA banks (same calls, same cache), only the concatenation differs.
# Appendix E (one document at 100K): every hierarchical QA of the document's Algorithm 1
# walk (ordered, shuffled, or with 20% multi-hop), or every diverse QA.
_T7 = dict(docs_per_sample="2", n1=6, n2=4, n3=4, revisit_p=1.0)
_E = dict(docs_per_sample="1", n1=presets.PAPER_HIERARCHICAL_PER_BOOK)
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(docs_per_sample="paper", samples="paper"),
    "hs-hs-hs-fixed": dict(_T7, composition="hs-hs-hs"),
    "hs-hs-hs-randomized": dict(_T7, composition="hs-hs-hs", counts="randomized"),
    "h-h-s-fixed": dict(_T7, composition="h-h-s"),
    "h-h-s-fixed-no-sum": dict(_T7, composition="h-h-s", global_summary=False),
    "h-h-s-randomized": dict(_T7, composition="h-h-s", counts="randomized"),
    "h-h-randomized": dict(_T7, composition="h-h", counts="randomized"),
    "h-h-h-randomized": dict(_T7, composition="h-h-h", counts="randomized"),
    "4-hierarchies": dict(_E, composition="h-h", multihop_prob=0.0),
    "4-hierarchies-random": dict(_E, composition="h-h", multihop_prob=0.0,
                                 shuffle_hierarchical=True),
    "4-hierarchies-multihop": dict(_E, composition="h-h", multihop_prob=0.2),
    "diverse": dict(_E, composition="s-s", multihop_prob=0.0,
                    n1=presets.PAPER_DIVERSE_PER_BOOK),
}
