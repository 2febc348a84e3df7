"""He et al. 2025, Section 4.2: Llama-3.1-8B-Instruct to 1M tokens by stepwise RoPE scaling.

Not a config file itself: `180k.py`, `350k.py`, `650k.py` and `1m.py` call `paper_config`
with how many stages to run. Stages share one workdir, so `1m.py` in the workdir of a
finished `650k.py` run continues with the 1M stage only.

Paper facts: stage names, lengths and sample counts come from `datagen.presets.PAPER_STAGES`
(2000 / 1280 / 600 / 200 samples); lr 6e-5, 1 epoch per stage (steps = samples / batch; a
stage whose data has fewer records stops before training, naming the field); 8-32 H100s;
650K took 30 h, 1M a further 52.5 h. Choices of ours (the paper is silent): global batch 8 rows (one row per
micro-batch, grad_accum 8 on a single data replica); warmup 5% of the stage's steps, cosine
decay to 10%; Adam moments fresh each stage; RoPE per stage is lctx.rope's static NTK-aware
base change from Llama-3's original 8K window (type 'ntk', theta 5e5, factor L/8192, so
theta' = 5e5 * (L/8192)^(128/126) = 1.18e7, 2.32e7, 4.36e7, 6.91e7 at L = 180Ki, 350Ki,
650Ki, 1Mi; REFERENCE_NOTES), which drops the llama3 frequency blend from stage 1 on, as
Gradient's 1048K model did with plain theta. `:rope=llama3` instead keeps the llama3 type and scales its factor with length.
"""
from configs import common
from datagen.presets import PAPER_STAGES


def stage_rope(kind: str, seq_len: int):
    if kind == "ntk":
        return common.rope(type="ntk", theta=500_000.0, factor=seq_len / 8192)
    if kind == "llama3":
        return common.rope(**dict(common.LLAMA31_ROPE, factor=8.0 * seq_len / 131072))
    raise ValueError(f"rope={kind!r}; expected ntk or llama3")


def paper_config(n_stages: int, arg=None):
    a = common.parse_arg(arg, rope="ntk", data_root="data/paper", batch=8, epochs=1)
    c = common.base_config()
    c.model.update(common.LLAMA31_8B)
    c.model.update(max_seq_len=1024 * 1024, dtype="bfloat16", param_dtype="float32",
                   remat="full", scan_layers=True)
    c.attn.update(impl="ring", block_q=2048, block_k=2048)
    # Weights shard over fsdp x context; every device of the job holds one slice of each row.
    c.mesh.update(data=1, fsdp=1, context=-1, tensor=1)
    # Each stage reads its own data_path; the tokenizer is the ckpt.init_from directory's.
    c.data.update(path="", tokenizer="", batch_size=a.batch, pack=False, overlong="truncate",
                  epochs=a.epochs)
    c.opt.update(lr=6e-5, schedule="cosine", end_lr_frac=0.1, weight_decay=0.0,
                 clip_norm=1.0, grad_accum=a.batch, loss_chunk=8192)
    c.ckpt.update(every_steps=25, keep=2, init_from="models/Llama-3.1-8B-Instruct")
    c.log.peak_tflops = 989.0  # H100 SXM dense bf16
    for st in PAPER_STAGES[:n_stages]:
        steps = max(1, st.samples * a.epochs // a.batch)
        c.stages[st.name] = common.stage(
            seq_len=st.seq_len, steps=steps, rope_cfg=stage_rope(a.rope, st.seq_len),
            data_path=f"{a.data_root}/{st.name}/*.arrayrecord",
            warmup_steps=max(1, steps // 20), carry_opt_state=False)
    return c
