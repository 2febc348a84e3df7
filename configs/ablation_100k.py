r"""He et al. 2025 Table 11 (Appendix E): single-document data recipes at 100K tokens.

Command:
    python3 -m lctx.train --config=configs/ablation_100k.py:4-hierarchies-multihop \
        --workdir=runs/abl100k-multihop --config.ckpt.init_from=/path/to/Llama-3.1-8B-Instruct
Variants: 4-hierarchies, diverse, 4-hierarchies-random (hierarchy without enforced order),
4-hierarchies-multihop (20% chance of a multi-hop follow-up). Args: docs=N (paper: 300-600,
default 500), data_root=DIR.

100K is inside Llama-3.1's native 128K window, so the model's own llama3 RoPE is kept.
Hardware: one node of 8 H100. Expected time: ~3-4 h each. Expected result: InfiniteBench
averages of Table 11 (multi-hop best at 54.70; 4 hierarchies 52.08; baseline 51.31).
"""
from configs import common, paper

VARIANTS = ("4-hierarchies", "diverse", "4-hierarchies-random", "4-hierarchies-multihop")


def get_config(arg=None):
    a = common.parse_arg(arg, variant="4-hierarchies", docs=500, data_root="data/ablation_100k")
    if a.variant not in VARIANTS:
        raise ValueError(f"ablation_100k variant {a.variant!r}; expected one of {VARIANTS}")
    c = paper.paper_config(1)
    c.data.recipe = a.variant  # the datagen recipe that produced data.path (provenance)
    del c.stages["s1_180k"]
    steps = max(1, a.docs // c.data.batch_size)
    c.stages.s1_100k = common.stage(
        seq_len=100 * 1024, steps=steps, rope_cfg=common.rope(**common.LLAMA31_ROPE),
        data_path=f"{a.data_root}/{a.variant}/*.arrayrecord", warmup_steps=max(1, steps // 20))
    return c
