"""datagen.presets: the paper's stage facts, as the paper states them."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from datagen import pipeline, presets


def test_paper_stages_match_the_paper():
    got = [(s.name, s.seq_len, s.samples, s.docs_per_sample) for s in presets.PAPER_STAGES]
    # Section 4.1 (samples), Section 4.2 (4/8/12 documents), Section 4.4 (2 at 180K).
    assert got == [("s1_180k", 184320, 2000, 2), ("s2_350k", 358400, 1280, 4),
                   ("s3_650k", 665600, 600, 8), ("s4_1m", 1048576, 200, 12)]
    # 75 QAs per book: 582,900 pairs over 7,772 books.
    assert presets.PAPER_HIERARCHICAL_PER_BOOK + presets.PAPER_DIVERSE_PER_BOOK == \
        582_900 // 7_772 == 582_900 / 7_772
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets.PAPER_STAGES[0].samples = 1  # type: ignore[misc]


def test_lookups_and_pipeline_read_presets():
    assert presets.by_name("s3_650k").docs_per_sample == 8
    assert presets.by_length(1024 * 1024).name == "s4_1m"
    assert presets.by_length(8192) is None
    with pytest.raises(ValueError, match="s1_180k"):
        presets.by_name("s9")
    assert [pipeline.parse_length(s.alias) for s in presets.PAPER_STAGES] == \
        [s.seq_len for s in presets.PAPER_STAGES]
    assert pipeline.length_dir(350 * 1024) == "s2_350k"


def test_cli_shell_fields():
    run = lambda *a: subprocess.run([sys.executable, "-m", "datagen.presets", *a],  # noqa: E731
                                    capture_output=True, text=True)
    assert run("--shell", "samples").stdout.strip() == "2000,1280,600,200"
    assert run("--shell", "alias").stdout.strip() == "180k,350k,650k,1m"
    bad = run("--shell", "nope")
    assert bad.returncode == 2 and "docs_per_sample" in bad.stderr


def test_paper_recipe_at_tiny_lengths_by_stage_name():
    """`--recipe=paper --lengths=4096,8192 --names=s1_180k,s2_350k` (the walkthrough test's
    size flags on docs/PAPER.md's command): the stage names give the paper's documents per
    sample at any length; an explicit --samples count wins over the recipe's."""
    from datagen.config import Config, ConfigError
    cfg = Config.from_recipe("paper")
    assert [cfg.docs_for(t, s) for t, s in ((4096, "s1_180k"), (8192, "s2_350k"),
                                           (9000, "s4_1m"))] == [2, 4, 12]
    assert cfg.samples_for(8192, "s2_350k") == 1280 and cfg.docs_for(180 * 1024) == 2
    with pytest.raises(ConfigError, match="4096 tokens is not a paper length.*--names"):
        cfg.docs_for(4096, "len4096")
