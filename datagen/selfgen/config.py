"""Settings of the Li et al. pipeline (one frozen dataclass, recorded whole in manifests),
the six task names, and the length presets: the paper's 6K training set and its release
buckets.

Where Li et al. are silent the choice is ours and the comment says so.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from datagen.selfgen import prompts

TASKS = ("single_qa", "summarization", "simdiff", "multi_qa", "logic", "code")

K, M = 1024, 1024 * 1024  # "8K", "1M" as the rest of lctx counts them (configs/paper.py)

# The release buckets of Section 2.1, as [lo, hi) token ranges of the rendered sample.
BUCKETS = {
    "0-8k": (0, 8 * K), "8k-16k": (8 * K, 16 * K), "16k-32k": (16 * K, 32 * K),
    "32k-64k": (32 * K, 64 * K), "64k-128k": (64 * K, 128 * K),
    "128k-256k": (128 * K, 256 * K), "256k-512k": (256 * K, 512 * K),
    "512k-1m": (512 * K, M), "1m-2m": (M, 2 * M), "2m-4m": (2 * M, 4 * M),
    "4m-10m": (4 * M, 10 * M),
}
# The paper's training set: 6,000 samples, 1,000 per task, lengths uniform in 1K-8K tokens.
PAPER_6K = {"name": "paper6k", "lo": 1 * K, "hi": 8 * K, "per_task": 1000, "tasks": TASKS}

# No sample can be shorter than its own content: its passages, the prompt and an answer, in
# the chat format. Targets are drawn from at least this many tokens and buckets must reach
# above it (ours). Measured with the offline backend and a 1K-piece tokenizer, the content
# alone has 166-269 tokens (logic), 245-615 (single-doc QA), up to 1,244 (sim-diff: two
# passages and their differences); a sample whose content exceeds its drawn target gets a
# new target drawn above its content, counted in the manifest as "retargeted".
MIN_SAMPLE_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class SelfGenConfig:
    seed: int = 0
    # Nouns and passages (Section 2.1: one passage per noun, genres varied).
    nouns_path: str = "/usr/share/wordnet/data.noun"
    num_nouns: int = 0                  # 0 = all 119,034; else a seeded subset of that size
    genres: tuple[str, ...] = prompts.GENRES
    passage_words: int = 200            # ours: ~270 tokens, so 1K-token samples still fit
    min_passage_words: int = 30         # shorter generator output is retried (ours)
    # Task contents (counts are ours; the paper gives none).
    summary_words: int = 60
    summary_passages: tuple[int, int] = (2, 4)   # passages summarized per sample, uniform
    code_steps: tuple[int, int] = (6, 10)         # policy steps per program, uniform
    code_vars: tuple[int, int] = (2, 3)           # variables per "initialize" step
    code_params: tuple[int, int] = (1, 3)         # parameters per invented function
    code_fallback: bool = True          # a step the generator fails becomes template code
    # Sampling and robustness.
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens_passage: int = 768
    max_tokens_qa: int = 512
    max_tokens_code: int = 384
    json_max_chars: int = 400           # cap of each string in structured (JSON) replies:
    #                                     schema-constrained decoding then always closes
    max_attempts: int = 3               # one call + 2 retries with derived seeds
    batch_samples: int = 64             # samples whose generator calls go out together
    batch_nouns: int = 512              # passages generated per generate() call
    # Length control.
    verify_render_max: int = 65536      # samples up to this many tokens are also rendered
    #                                     whole (ChatFormat) to check the exact count

    def __post_init__(self):
        for name in ("summary_passages", "code_steps", "code_vars", "code_params"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name}={getattr(self, name)}: need 1 <= min <= max")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} must be >= 1")
        if self.num_nouns < 0:
            raise ValueError(f"num_nouns={self.num_nouns} must be >= 0 (0 = all nouns)")
        if not self.genres:
            raise ValueError("genres is empty: give at least one genre")
        if self.passage_words < self.min_passage_words or self.min_passage_words < 1:
            raise ValueError(f"need 1 <= min_passage_words ({self.min_passage_words}) <= "
                             f"passage_words ({self.passage_words})")
        for name in ("batch_samples", "batch_nouns"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_overrides(cls, overrides: dict[str, str]) -> "SelfGenConfig":
        """From CLI `--set key=value` strings, typed by field; errors name the field."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in overrides.items():
            if k not in fields:
                raise ValueError(f"--set {k}=...: unknown field; known: {sorted(fields)}")
            default = getattr(cls(), k)
            try:
                if isinstance(default, bool):
                    if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError("expected true or false")
                    kw[k] = v.lower() in ("true", "1", "yes")
                elif isinstance(default, tuple):
                    parts = [p.strip() for p in v.split(",") if p.strip()]
                    kw[k] = tuple(type(default[0])(p) for p in parts)
                else:
                    kw[k] = type(default)(v)
            except ValueError as e:
                raise ValueError(f"--set {k}={v!r}: {e} (expected {type(default).__name__})"
                                 ) from None
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to build: a named set of samples, per task, with lengths in [lo, hi)."""
    name: str
    lo: int
    hi: int
    per_task: int
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"unknown task(s) {bad or '(none given)'}; known: "
                             f"{', '.join(TASKS)}")
        if self.lo < 0 or self.hi <= self.lo:
            raise ValueError(f"length bucket [{self.lo}, {self.hi}) is empty or inverted: "
                             f"need 0 <= lo < hi")
        if self.hi <= MIN_SAMPLE_TOKENS:
            raise ValueError(f"length bucket [{self.lo}, {self.hi}) lies below the smallest "
                             f"possible sample ({MIN_SAMPLE_TOKENS} tokens: a passage, the "
                             f"prompt and an answer); raise the upper bound")
        if self.per_task < 1:
            raise ValueError(f"samples per task = {self.per_task} must be >= 1")

    @property
    def target_lo(self) -> int:
        """Smallest target drawn: the bucket's floor, or the smallest possible sample."""
        return max(self.lo, MIN_SAMPLE_TOKENS)


def parse_tokens(s: str) -> int:
    """ "8k" -> 8192, "1m" -> 1048576, "1500" -> 1500 (K = 1024)."""
    s = s.strip().lower()
    mult = {"k": K, "m": M}.get(s[-1:], 1)
    try:
        return int(float(s[:-1] if mult > 1 else s) * mult)
    except ValueError:
        raise ValueError(f"length {s!r}: expected tokens (1500) or 8k / 1m") from None


def make_spec(preset: str = "", bucket: str = "", per_task: int = 0,
              tasks: str = "") -> Spec:
    """A Spec from CLI words: `--preset=paper6k`, or `--bucket=8k-16k` (a release bucket or
    any `lo-hi`), with optional per-task count and task subset."""
    names = tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else TASKS
    if preset and bucket:
        raise ValueError("give --preset or --bucket, not both")
    if preset:
        if preset != PAPER_6K["name"]:
            raise ValueError(f"--preset={preset!r} is unknown; known: {PAPER_6K['name']}")
        return Spec(PAPER_6K["name"], PAPER_6K["lo"], PAPER_6K["hi"],
                    per_task or PAPER_6K["per_task"], names)
    if not bucket:
        raise ValueError("give --preset=paper6k or --bucket=lo-hi (e.g. 8k-16k; release "
                         f"buckets: {', '.join(BUCKETS)})")
    if bucket in BUCKETS:
        lo, hi = BUCKETS[bucket]
    else:
        parts = bucket.split("-")
        if len(parts) != 2:
            raise ValueError(f"--bucket={bucket!r}: expected lo-hi such as 8k-16k")
        lo, hi = parse_tokens(parts[0]), parse_tokens(parts[1])
    return Spec(bucket, lo, hi, per_task or 8, names)
