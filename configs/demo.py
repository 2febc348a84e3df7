r"""CPU demo: a tiny Llama learns KJV passage QA, with two-stage stepwise RoPE scaling.

Command (from the repository root; builds its own data and tokenizer under the workdir):
    python3 -m lctx.train --config=configs/demo.py --workdir=runs/demo
Variants: `configs/demo.py:quick` (a 1-minute smoke run).

Hardware: 2 CPU cores, ~2 GB RAM. Expected time: ~6 minutes (stage s1: 512 tokens with
theta 1e4; stage s2: 1024 tokens with theta 4e4, starting from s1's final checkpoint).
Expected result: loss on answer tokens falls from ~7.0 (ln 1024) to below ~3.5 by the end
of s1 and keeps falling in s2; each stage ends with a checkpoint and an HF export under
`<workdir>/hf/<stage>`.
"""
from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, variant="full")
    c = common.base_config()
    c.model.update(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                   head_dim=32, mlp_dim=384)
    c.model.max_seq_len = 1024
    c.rope = common.rope(theta=10_000.0)
    c.mesh.update(data=-1, fsdp=1)  # CPU: plain data parallel over the local devices
    c.data.update(builder="kjv_demo", batch_size=8, demo_records=4000)
    c.opt.update(lr=1e-3, warmup_steps=20, schedule="cosine", end_lr_frac=0.1, clip_norm=1.0)
    c.ckpt.update(every_steps=50, keep=2)
    c.eval.update(every_steps=50, batches=2)  # fixed-batch loss (demo data, not held out)
    s1, s2 = (150, 50) if a.variant == "full" else (20, 6)
    if a.variant not in ("full", "quick"):
        raise ValueError(f"demo variant {a.variant!r}; expected full or quick")
    # Stage 2 quadruples theta (NTK-style base growth for 2x length) and keeps Adam moments.
    c.stages.s1 = common.stage(seq_len=512, steps=s1, rope_cfg=common.rope(theta=10_000.0))
    c.stages.s2 = common.stage(seq_len=1024, steps=s2, rope_cfg=common.rope(theta=40_000.0),
                               lr=5e-4, warmup_steps=5, carry_opt_state=True)
    return c
