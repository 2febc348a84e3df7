r"""Li et al. 2025 on Llama-2-7B-chat: a frozen 4K base reads up to ~3M tokens through
activation beacons, one LoRA compression expert per ratio (2x ... 1024x); `:adapter=shared`
and `:adapter=clone` are the paper's Table 1 baselines (one shared adapter; Zhang et al.'s
cloned q/k/v/o, "MHA").

Command (8 GPUs; data: RedPajama sample, LongAlpaca and the self-generated synthetic tasks as
ArrayRecord conversation shards, `datagen` / `datagen.selfgen`):
    python3 -m lctx.train --config=configs/beacon_llama2.py:adapter=experts \
        --config.ckpt.init_from=/models/Llama-2-7b-chat-hf \
        --config.beacon.data_mix='/data/redpajama/*.arrayrecord=150;/data/longalpaca/*.arrayrecord=10;/data/selfgen/*.arrayrecord=6' \
        --workdir=runs/beacon_experts
Evaluate (LongBench as Li et al., truncated to 16K; the runner picks the expert by length):
    python3 -m evals.longbench --runner=beacon --model=runs/beacon_experts ...

Settings follow the reference (FlagEmbedding 0ad0dee, REFERENCE_NOTES_WAVE2 section 1):
window = stride = 1024, native window 4096, step-expansion, beacons attend to memory, 8192-
token rows, batch 8, lr 5e-5 linear decay without warmup, clip 1.0; one epoch of Li et al.'s
166K samples = 20,750 steps. Our choices where Li et al. are silent are in docs/BEACON.md:
LoRA rank 32, alpha 64 on q/k/v/o of beacon rows only (10 experts: 335,544,320 parameters
vs the clone's 2,147,483,648), one beacon embedding per expert, ratio 0 kept for inputs that
fit 3,072 tokens, the three sources mixed 150:10:6 by batch.
Expected: Li et al. Table 1 (LongBench average, 7B: MHA 36.74, experts 37.66, experts + synth.
38.87); not run here (CPU only). Hardware: 8 x A100/H100 80 GB.
"""
import ml_collections as mc

from configs import common

LLAMA2_7B = dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                 head_dim=128, mlp_dim=11008, norm_eps=1e-5, tie_embeddings=False)
ALL_RATIOS = "2,4,8,16,32,64,128,256,512,1024"


def get_config(arg=None):
    a = common.parse_arg(arg, adapter="experts")
    if a.adapter not in ("experts", "shared", "clone"):
        raise ValueError(f"beacon_llama2 adapter {a.adapter!r}; expected experts, shared or "
                         "clone")
    c = common.base_config()
    # The frozen base is stored in bf16 (it never updates: no fp32 master is needed); the
    # adapters are fp32 masters whatever this says (lctx.lora).
    c.model.update(**LLAMA2_7B, max_seq_len=8192, dtype="bfloat16", param_dtype="bfloat16",
                   remat="full")
    c.attn.update(impl="blockwise", block_q=512, block_k=512)
    c.mesh.update(data=1, fsdp=-1)
    c.data.update(batch_size=8, overlong="truncate", pack=False)  # one document a row
    c.opt.update(lr=5e-5, warmup_steps=0, schedule="linear", end_lr_frac=0.0, clip_norm=1.0,
                 weight_decay=0.0, b2=0.999)
    c.ckpt.update(every_steps=1000, keep=2)
    c.stages["s1_beacon"] = common.stage(seq_len=8192, steps=20_750,
                                         rope_cfg=common.rope(theta=10_000.0), export_hf=False)
    c.beacon = mc.ConfigDict(dict(
        adapter=a.adapter,  # experts | shared | clone
        window=1024,  # W = stride, tokens
        native_len=4096,  # P, Llama-2's context, tokens
        ratios=ALL_RATIOS,  # served ratios (each divides W; 1024 = one beacon a window)
        uncompressed=True,  # ratio 0 (exact) for inputs up to P - headroom
        headroom=1024,  # adapt-1024
        rank=32, alpha=64.0,  # LoRA (ignored by 'clone')
        targets="q,k,v,o",
        embed_per_expert=True,
        overflow="error",
        train_ratios=ALL_RATIOS,  # one ratio per optimizer step, uniform
        ratio_weights="",
        data_mix="",  # 'glob=weight;...' (see the command above); '' = data.path
        remat=True,  # recompute each window in the backward pass (BPTT through memory)
    ))
    return c
