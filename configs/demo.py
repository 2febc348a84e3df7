r"""CPU demo: He et al. 2025 end to end in miniature (data -> stepwise RoPE stages -> RULER).

Command (from the repository root; builds everything it needs under the workdir):
    python3 -m lctx.train --config=configs/demo.py --workdir=runs/demo
Variants: `configs/demo.py:smoke` (CI: a few minutes; `quick` is the same).

Phases (demo/pipeline.py; each is cached under the workdir and skipped on a rerun, also after
kill -9): KJV passages -> SentencePiece tokenizer -> per stage data -> s0_copy, a copy
stage standing in for pretraining ("Repeat: X" -> X over random pieces and digits: the
induction/copy skill every retrieval needs, which a tiny model does not pick up from
retrieval rows alone) -> the base model at 384 tokens (theta 1e4: datagen conversations,
RULER-format retrieval, copy rows) -> stepwise RoPE stages at 768 (theta 4e4) and 1536
(theta 1.6e5), each from the previous stage -> RULER NIAH (single_1, single_2) at 384-3072
for the base model, the base with zero-shot RoPE scaling (the last stage's RoPE) and every
stage.

Hardware: 2 CPU cores, ~3 GB RAM. Expected time: 17-19 minutes (17.2 on the idle 2-core
machine; 18.6 at load ~6: copy stage ~4 min, base stage ~5 min, 768 stage ~1.5 min, 1536
stage 3-5 min, evaluations ~0.7 min a model); more when other jobs share the cores.
Expected result: `<workdir>/summary.txt` (effective lengths, RULER at 4x the base length,
held-out NIAH answer loss per model), `ruler_curves.png`, `results/*.json`,
`stage_metrics.json`. Measured on main (README, with how much single cells move between
commits): at 1536 tokens (4x) zero-shot RoPE scaling 25.0, stepwise 81.2 (+56.2 points),
base 0; answer loss at 1536: zero-shot 1.95, stepwise 0.05 nats/token.
"""
from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, variant="full")
    if a.variant == "quick":
        a.variant = "smoke"
    if a.variant not in ("full", "smoke"):
        raise ValueError(f"demo variant {a.variant!r}; expected full or smoke")
    full = a.variant == "full"
    c = common.base_config()
    c.entry = "demo.pipeline:run"  # the demo package's phases (lctx.train imports it by name)
    c.model.update(vocab_size=1024, d_model=128 if full else 32, n_layers=2, n_heads=4,
                   n_kv_heads=2, head_dim=32 if full else 8, mlp_dim=256 if full else 64)
    c.model.max_seq_len = 1536 if full else 768
    c.mesh.update(data=-1, fsdp=1)  # CPU: plain data parallel over the local devices
    # Blockwise (flash-style) attention with 128-token blocks: on the 2-core CPU a train step
    # is 1.25x (384), 1.74x (768) and 2.31x (1536 tokens) faster than dense attention
    # (bench/demo_attn_bench.py); the evaluations prefill with the same blocks.
    c.attn.update(impl="blockwise", block_q=128, block_k=128)
    # Paths and tokenizer: filled in by demo.pipeline. By design (demo.epochs, the shares) a
    # stage's steps need more packed rows than one pass over its records gives: up to two.
    c.data.update(batch_size=8, epochs=2)
    c.opt.update(lr=3e-3, warmup_steps=30 if full else 2, schedule="cosine", end_lr_frac=0.1,
                 clip_norm=1.0)
    c.ckpt.update(every_steps=100, keep=2, async_save=False)
    c.eval.update(every_steps=50 if full else 0, batches=2)  # fixed-batch loss (training data)
    c.log.update(progress=True)
    # s0_copy: the pretraining stand-in (copy conversations only, lr 1e-3: induction heads
    # formed there in ~600 steps and not at all at 3e-3 in our sweeps). Then the base stage at
    # 384 tokens (theta 1e4; 900 steps: held-out NIAH exact match was 0.28 at 500 steps and
    # still climbing, RULER 33 at 500 vs 97 at 900) and the stepwise RoPE stages: lengths
    # double, theta quadruples (NTK-style base growth per 2x); Adam is carried between the
    # RoPE stages.
    c.stages["s0_copy"] = common.stage(seq_len=384, steps=800 if full else 4,
                                       rope_cfg=common.rope(theta=10_000.0), lr=1e-3,
                                       export_hf=False)
    steps = (900, 80, 60) if full else (12, 4)
    lens = (384, 768, 1536) if full else (384, 768)
    for i, (n, T) in enumerate(zip(steps, lens)):
        c.stages[f"s{i + 1}_{T}"] = common.stage(
            seq_len=T, steps=n, rope_cfg=common.rope(theta=10_000.0 * 4 ** i),
            lr=-1.0 if i == 0 else 5e-4, warmup_steps=-1 if i == 0 else 5 if full else 1,
            carry_opt_state=i > 0, export_hf=False)
    c.demo = dict(
        corpus="kjv",  # 'kjv' (Debian bible-kjv) or a datagen corpus spec (file/dir)
        doc_words=50,  # words per document (consecutive verses of one book)
        max_docs=600 if full else 40,  # documents used (evenly spaced over the corpus)
        small_tokens=48,  # datagen small-chunk size (tokens); medium = 2 small
        qa_hierarchical=6, qa_diverse=8,  # datagen QA bank per document
        backend="extractive",  # datagen backend: extractive | vllm | openai
        backend_model="", backend_url="",  # for vllm / openai backends
        epochs=2.0,  # datagen conversations are seen about this many times
        retrieval_share=0.6,  # share of training rows that are RULER-format retrieval
        copy_share=0.25,  # share of rows of packed copy conversations (after the copy stages)
        copy_stages=1,  # leading stages trained on copy conversations only (pretraining)
        copy_max_items=24, copy_digit_share=0.3,  # copy strings: pieces per string, digits
        train_tasks="niah_single_1,niah_single_2",  # retrieval tasks trained on
        min_retrieval_len=384,  # shortest retrieval length drawn (RULER budget, tokens)
        eval_tasks="niah_single_1,niah_single_2" if full else "niah_single_1",
        eval_lengths="384,768,1536,3072" if full else "384,768",
        eval_samples=16 if full else 2,  # per task and length
        eval_batch=8,
        zero_shot_rope="",  # JSON rope for the zero-shot baseline ('' = last stage's)
        seed=0, progress=True)
    return c
