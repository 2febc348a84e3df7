"""Shared config pieces: the base run config, model presets, stages and `:arg` parsing.

A run config has the sections model, attn, mesh, data, opt, ckpt, eval, log and a `stages`
dict. Stages run in sorted key order (name them `s1_...`, `s2_...`); each starts from the
previous stage's final checkpoint with its own length, RoPE settings, data and LR schedule.
RoPE is a stage setting only: there is no run-wide RoPE to override.
"""
from __future__ import annotations

import ml_collections as mc

from lctx import sharding

# Llama-3.1-8B-Instruct (HF config.json of meta-llama/Llama-3.1-8B-Instruct).
LLAMA31_8B = dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                  head_dim=128, mlp_dim=14336, norm_eps=1e-5, tie_embeddings=False)
# Llama 3.1's own RoPE (rope_type llama3): theta 5e5, factor 8 over an 8K original window.
LLAMA31_ROPE = dict(type="llama3", theta=500_000.0, factor=8.0, low_freq_factor=1.0,
                    high_freq_factor=4.0, original_max_position_embeddings=8192)
TINY = dict(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
            mlp_dim=128, norm_eps=1e-5, tie_embeddings=False)


def parse_arg(arg: str | None, **defaults):
    """Parses a `:arg` string 'k1=v1,k2=v2' (or a bare 'name' -> variant=name) over defaults.

    Values are converted to the type of the default; unknown keys are an error.
    """
    out = mc.ConfigDict(defaults)
    if not arg:
        return out
    for part in arg.split(","):
        if "=" not in part:
            if "variant" not in defaults:
                raise ValueError(f"config arg {part!r} needs the form key=value")
            part = f"variant={part}"
        k, v = part.split("=", 1)
        if k not in defaults:
            raise ValueError(f"config arg {k!r} unknown; known: {sorted(defaults)}")
        d = defaults[k]
        out[k] = (v.lower() in ("1", "true", "yes")) if isinstance(d, bool) else type(d)(v)
    return out


def rope(type: str = "default", theta: float = 10_000.0, **kw) -> mc.ConfigDict:  # noqa: A002
    """A RoPE config: `lctx.rope.make_rope(type, theta=..., **kw)` fields, nothing else.

    type: default | linear | ntk | dynamic | yarn | llama3 | longrope (lctx.rope registry);
    theta: base frequency (inv_freq_i = theta^(-2i/H)); kw: the type's own fields, e.g.
    factor (context scaling, unitless) and original_max_position_embeddings (L0, tokens).
    """
    return mc.ConfigDict(dict(type=type, theta=float(theta), **kw))


def stage(*, seq_len: int, steps: int, rope_cfg: mc.ConfigDict, data_path: str = "",
          lr: float = -1.0, warmup_steps: int = -1, carry_opt_state: bool = False,
          export_hf: bool = True) -> mc.ConfigDict:
    """One stage of stepwise RoPE scaling."""
    return mc.ConfigDict(dict(
        seq_len=seq_len,  # tokens per row T for this stage
        steps=steps,  # optimizer steps; -1 = one epoch of the records present
        rope=rope_cfg,  # RoPE settings used throughout this stage and exported with it
        data_path=data_path,  # ArrayRecord glob for this stage ('' = data.path)
        lr=lr,  # peak LR for this stage (-1 = opt.lr)
        warmup_steps=warmup_steps,  # LR warmup steps (-1 = opt.warmup_steps)
        carry_opt_state=carry_opt_state,  # keep Adam moments from the previous stage
        export_hf=export_hf,  # write an HF directory (with this stage's RoPE) at the end
    ))


def base_config() -> mc.ConfigDict:
    """Every field of a run with its unit; presets override what they need."""
    c = mc.ConfigDict()
    c.seed = 0  # PRNG seed for init and dropout-free training noise (data has its own)
    c.entry = ""  # 'module:function(cfg, workdir)' lctx.train runs instead of the trainer
    c.model = mc.ConfigDict(dict(TINY))
    c.model.max_seq_len = 2048  # largest T the model accepts, in tokens (stages must fit)
    c.model.dtype = "float32"  # compute dtype of activations (bfloat16 on GPU)
    c.model.param_dtype = "float32"  # master weight dtype (always float32 for training)
    c.model.remat = "none"  # remat policy: none | full | dots (save matmul outputs)
    c.model.scan_layers = True  # scan the layer stack (compile time independent of L)
    c.attn = mc.ConfigDict(dict(
        impl="dense",  # dense | blockwise | ring (ring needs mesh.context > 1)
        block_q=512,  # blockwise / ring query block, tokens (ring: a divisor of its chunk)
        block_k=512,  # blockwise / ring key block, tokens
        kernel="xla",  # block kernel of blockwise / ring: xla (portable) | cudnn (GPU)
        ring_layout="zigzag",  # ring token layout: zigzag (static plan) | balanced (packed rows)
    ))
    c.mesh = mc.ConfigDict(dict(
        data=1,  # data-parallel replicas (-1 = all remaining devices)
        fsdp=-1,  # parameter/optimizer shards (-1 = all remaining devices)
        context=1,  # sequence shards (ring attention); > 1: data laid out by attn.ring_layout
        tensor=1,  # tensor-parallel shards
        # Logical tensor axis -> mesh axes (None = replicated); the model names only logical
        # axes. Default: lctx.sharding's (batch over data x fsdp, seq over context, weights'
        # embed over fsdp x context, heads / mlp / vocab over tensor).
        rules=sharding.DEFAULT_RULES,
    ))
    c.data = mc.ConfigDict(dict(
        recipe="",  # datagen recipe that produced the data (provenance only)
        path="",  # glob(s) of ArrayRecord shards (comma-separated), lctx.conversation/v1
        tokenizer="",  # SentencePiece .model or HF tokenizer dir ('' = ckpt.init_from dir)
        batch_size=8,  # global rows per optimizer step (split over processes)
        pack=True,  # first-fit pack documents per row; False = one document a row
        packing_bins=8,  # rows packed at once (more = less padding, more memory)
        read_threads=2,  # threads reading and rendering records ahead (0 = none)
        read_buffer=32,  # records read ahead. grain's default (16 threads, 500 records)
        # polls every pending record on each read: on the 2-core CPU the demo's copy stage
        # ran at 6,446 tokens/s with it and 9,375 with 2 / 32 (200 steps each, same run)
        overlong="truncate",  # documents longer than T: truncate | drop (counted, logged)
        seed=0,  # shuffle seed
        epochs=1,  # passes over a stage's records at most (more steps than that: an error)
    ))
    c.opt = mc.ConfigDict(dict(
        lr=3e-4,  # peak learning rate
        warmup_steps=10,  # linear warmup, optimizer steps
        schedule="cosine",  # decay after warmup: cosine | linear | constant
        end_lr_frac=0.1,  # final LR as a fraction of peak
        b1=0.9, b2=0.95, eps=1e-8,  # AdamW moments and epsilon
        weight_decay=0.0,  # decoupled weight decay per step (times LR)
        clip_norm=1.0,  # global gradient-norm clip (0 = off)
        grad_accum=1,  # micro-batches per optimizer step (batch_size % grad_accum == 0)
        loss_chunk=1024,  # tokens per cross-entropy chunk (never builds [T, V] logits)
    ))
    c.ckpt = mc.ConfigDict(dict(
        every_steps=100,  # save every N steps within a stage (the stage end always saves)
        keep=2,  # checkpoints kept per stage
        async_save=True,  # save in the background (orbax async)
        init_from="",  # HF model directory to start from (lctx.hf.load_hf); '' = scratch
        resume_from="",  # another run's checkpoint dir to start from (ignored if own exists)
        export_dtype="bfloat16",  # HF export weights: bfloat16 | float16 | float32 (exact)
    ))
    c.eval = mc.ConfigDict(dict(
        every_steps=0,  # held-out loss every N steps (0 = off)
        batches=2,  # batches per evaluation
        path="",  # ArrayRecord glob of held-out data ('' = training data, another order)
    ))
    # Each stage's HF export evaluated when the stage finishes (lctx.stage_evals runs the
    # evals CLIs in their own processes; results in <workdir>/eval/<stage>/<bench>/).
    c.eval.ruler = mc.ConfigDict(dict(
        enabled=False,  # run RULER on every stage's export
        runner="vllm",  # evals runner: vllm | lctx | openai
        lengths="",  # comma list of tokens ('' = 4K doubling up to the stage length)
        # more evals.ruler flags; he2025: He et al.'s 13 tasks x 10 samples, Llama-3 template
        args="--preset=he2025",
    ))
    c.eval.infinitebench = mc.ConfigDict(dict(
        enabled=False,  # run InfiniteBench on every stage's export
        runner="vllm",  # evals runner: vllm | lctx | openai
        args="--preset=he2025",  # more evals.infinitebench flags (He et al. Table 1 tasks)
    ))
    c.log = mc.ConfigDict(dict(
        every_steps=1,  # metrics to JSONL/console every N steps
        peak_tflops=989.0,  # per-device peak for MFU, TFLOP/s (H100 SXM bf16 dense)
        progress=True,  # tqdm progress bar
    ))
    c.perf = mc.ConfigDict(dict(  # throughput table for lctx.plan's step-time projection
        # Where these were measured (docs/GPU.md has both runs' tables).
        source="one H200, jax 0.11.2, bf16, 2026-11-30: matmul and xla_block* in issue 17's "
               "run, cudnn in exploratory run 1 (docs/GPU.md)",
        matmul_tflops=615.0,  # bf16 8192^3 matmul, TFLOP/s per device (the ceiling)
        # attention forward+backward TFLOP/s per device, Llama-3.1-8B heads (N=32, K=8,
        # H=128), T=32K causal; key: cudnn or xla_block<block_k>. xla_block*: lctx's
        # blockwise kernel, one row. cudnn: the cuDNN fused call that lctx.cudnn_attention
        # makes (sequence packing through offsets, PADDING_CAUSAL, 8 documents, FLOPs inside
        # documents); 545 with one document and no packing. lctx.cudnn_attention end to end
        # (its own backward wrapper, GQA, fp32 lse) is not measured on a device yet
        # (bench/gpu_bench.py does it when one is lent).
        attn_tflops=mc.ConfigDict(dict(xla_block512=26.0, xla_block1024=46.0, cudnn=446.5)),
    ))
    c.stages = mc.ConfigDict()
    return c
