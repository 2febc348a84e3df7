r"""He et al. 2025 Table 7: data-recipe ablations at 180K tokens (two documents per sample).

Command:
    python3 -m lctx.train --config=configs/ablation_180k.py:hs-hs-hs-fixed \
        --workdir=runs/abl180k-hs-hs-hs-fixed --config.ckpt.init_from=/path/to/Llama-3.1-8B-Instruct
Variants (x-y-z: questions after doc 1, after doc 2, referencing doc 1 after doc 2; h
hierarchical, s diverse): hs-hs-hs-randomized, hs-hs-hs-fixed, h-h-s-randomized,
h-h-s-fixed-no-sum, h-h-s-fixed, h-h-randomized, h-h-h-randomized. Args: docs=N (the paper
used 300-600 per variant; default 500), data_root=DIR.

Only the data differs between variants: each reads `<data_root>/<variant>/*.arrayrecord`,
produced by datagen with the recipe of the same name (`data.recipe`). Hardware: one node
of 8 H100. Expected time: ~6-8 h each. Expected result: InfiniteBench averages of Table 7
(hs-hs-hs-fixed best at 59.45; baseline Llama-3.1-8B-Instruct 51.31).
"""
from configs import common, paper
from datagen.presets import PAPER_STAGES

VARIANTS = ("hs-hs-hs-randomized", "hs-hs-hs-fixed", "h-h-s-randomized",
            "h-h-s-fixed-no-sum", "h-h-s-fixed", "h-h-randomized", "h-h-h-randomized")


def get_config(arg=None):
    a = common.parse_arg(arg, variant="hs-hs-hs-fixed", docs=500, data_root="data/ablation_180k")
    if a.variant not in VARIANTS:
        raise ValueError(f"ablation_180k variant {a.variant!r}; expected one of {VARIANTS}")
    c = paper.paper_config(1)
    c.data.recipe = a.variant  # the datagen recipe that produced data.path (provenance)
    name, seq_len = PAPER_STAGES[0].name, PAPER_STAGES[0].seq_len
    steps = max(1, a.docs // c.data.batch_size)
    c.stages[name] = common.stage(
        seq_len=seq_len, steps=steps, rope_cfg=paper.stage_rope("ntk", seq_len),
        data_path=f"{a.data_root}/{a.variant}/*.arrayrecord", warmup_steps=max(1, steps // 20))
    return c
