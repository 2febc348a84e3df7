"""The paper's stage facts, in one place (He et al. 2025, Sections 4.1-4.2 and 4.4).

`PAPER_STAGES` is read by `configs/paper.py` (training stages), `launch/datagen_array.sbatch`
(what to generate) and datagen's `paper` recipe (documents per sample, sample counts). Nothing
else spells these numbers.

Where each number comes from:
  seq_len          180K/350K/650K/1M with K = 1024 tokens (our reading; the paper writes
                   "180K ... 1M tokens" and never says 1000 or 1024; configs/paper.py has
                   always used 1024).
  samples          Section 4.1: "2000 samples of 180K tokens, 1280 samples of 350K tokens,
                   600 samples of 650K tokens, and 200 samples of 1M tokens".
  docs_per_sample  Section 4.2: "progressed through checkpoints at 350K, 650K, and 1M
                   tokens, concatenating 4, 8, and 12 documents" (Appendix C's example:
                   "concatenating four documents (350K context length)"). The paper gives no
                   count for the main 180K stage; its 180K ablations (Section 4.4) concatenate
                   two documents, which we take for s1_180k.

`python -m datagen.presets` prints the table (also as shell words for the sbatch file).
"""
from __future__ import annotations

import dataclasses
import sys

# Section 4.1: 7,772 books, 582,900 QA pairs = 75 per book: 25 hierarchical + 50 diverse.
PAPER_HIERARCHICAL_PER_BOOK = 25
PAPER_DIVERSE_PER_BOOK = 50


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage of the paper's stepwise schedule and the data it trains on."""
    name: str             # stage name = data subdirectory (configs/paper.py data_root/<name>)
    seq_len: int          # conversation length in tokens (K = 1024)
    samples: int          # conversations generated for the stage
    docs_per_sample: int  # documents concatenated per conversation (Algorithm 2's K)

    @property
    def alias(self) -> str:
        """The CLI length word: "180k", "350k", "650k", "1m"."""
        return self.name.split("_", 1)[1]


PAPER_STAGES: tuple[Stage, ...] = (
    Stage("s1_180k", 180 * 1024, 2000, 2),
    Stage("s2_350k", 350 * 1024, 1280, 4),
    Stage("s3_650k", 650 * 1024, 600, 8),
    Stage("s4_1m", 1024 * 1024, 200, 12),
)


def by_name(name: str) -> Stage:
    """The paper stage called `name` (e.g. "s2_350k"); ValueError naming the known ones."""
    for s in PAPER_STAGES:
        if s.name == name:
            return s
    raise ValueError(f"no paper stage {name!r}; known: {[s.name for s in PAPER_STAGES]}")


def by_length(seq_len: int) -> Stage | None:
    """The paper stage of `seq_len` tokens, or None for a length the paper does not use."""
    for s in PAPER_STAGES:
        if s.seq_len == int(seq_len):
            return s
    return None


def parse_length(s: str) -> int:
    """ "180k" -> 184320 (a paper stage's alias), "8192" -> 8192, "16k" -> 16384, "1m"."""
    s = str(s).strip().lower()
    for st in PAPER_STAGES:
        if s == st.alias:
            return st.seq_len
    mult = {"k": 1024, "m": 1024 * 1024}.get(s[-1:], 1)
    try:
        n = int(float(s[:-1] if mult > 1 else s) * mult)
    except ValueError:
        raise ValueError(f"length {s!r}: expected tokens (8192), or 180k / 1m") from None
    if n < 1:
        raise ValueError(f"length {s!r}: must be positive")
    return n


def main(argv: list[str] | None = None) -> int:
    """Prints the stages; `--shell FIELD` prints one field per stage, comma-separated."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--shell"] and len(argv) == 2:
        field = argv[1]
        if field not in ("alias",) + tuple(f.name for f in dataclasses.fields(Stage)):
            print(f"error: --shell {field}: expected one of name, seq_len, samples, "
                  f"docs_per_sample, alias", file=sys.stderr)
            return 2
        print(",".join(str(getattr(s, field)) for s in PAPER_STAGES))
        return 0
    if argv:
        print("usage: python -m datagen.presets [--shell FIELD]", file=sys.stderr)
        return 2
    for s in PAPER_STAGES:
        print(f"{s.name:8s} seq_len={s.seq_len:>8,d} samples={s.samples:>5d} "
              f"docs_per_sample={s.docs_per_sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
