r"""CPU miniature of Li et al. 2025: a tiny base with a short native window reads 4x-16x longer
inputs through activation beacons; NIAH (RULER) compares truncation, one shared LoRA adapter
for all ratios and one LoRA expert per ratio.

Command (from the repository root; builds everything under the workdir, resumable):
    python3 -m lctx.train --config=configs/beacon_demo.py --workdir=runs/beacon_demo
Variant: `configs/beacon_demo.py:smoke` (CI: tiny sizes, a few steps). One adapter run can
also be trained alone on a finished miniature (its tokenizer, adapter data and frozen base
from the `base=` workdir, default runs/beacon_demo):
    python3 -m lctx.train --config=configs/beacon_demo.py:adapter=experts,base=runs/beacon_demo \
        --workdir=runs/beacon_experts

Phases (demo/beacon.py): KJV corpus and tokenizer -> data (copy rows; NIAH-format retrieval
at the native window; retrieval at 2x-4x the window for the adapters, and KJV text rows,
unused at text_share=0) -> base
model (s0_copy then s1_base at the native window, 320 tokens) -> two adapter runs from the
same frozen base ('shared': one LoRA for ratios 5/10/20; 'experts': one LoRA per ratio), same
data, same ratio draws -> RULER NIAH at 1x (the base), 4x/8x/16x (1280/2560/5120 tokens) for
truncation, shared and experts -> summary.

Hardware: 2 CPU cores, ~3 GB RAM. Expected time and result: measured numbers in README
("Context compression (beacons)") and docs/BEACON.md.
"""
import os

import ml_collections as mc

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, variant="full", adapter="", base="runs/beacon_demo")
    if a.variant not in ("full", "smoke"):
        raise ValueError(f"beacon_demo variant {a.variant!r}; expected full or smoke")
    full = a.variant == "full"
    c = common.base_config()
    c.entry = "demo.beacon:run"  # the miniature's phases (lctx.train imports it by name)
    c.model.update(vocab_size=1024, d_model=128 if full else 32, n_layers=2, n_heads=4,
                   n_kv_heads=2, head_dim=32 if full else 8, mlp_dim=256 if full else 64)
    native = 320  # the base's native window P, tokens
    # Beacon window W (= stride), tokens. 40, not a power of two, so that ratios 5/10/20
    # divide it: the smallest ratios whose capacity (P - W) * ratio + W covers 4x/8x/16x
    # the native window (with W = 64 they are 8/16/32; docs/BEACON.md has the measurements).
    window = 40
    seq = 1320 if full else 640  # adapter training rows: 33 / 16 windows
    c.model.max_seq_len = seq
    c.mesh.update(data=-1, fsdp=1)  # CPU: data parallel over the local devices
    c.attn.update(impl="blockwise", block_q=64, block_k=64)
    # Paths and tokenizer: filled in by demo.beacon. The base stages' packed rows need up to
    # two passes over their records (as configs/demo.py).
    c.data.update(batch_size=8, epochs=2)
    c.opt.update(lr=3e-3, warmup_steps=30 if full else 2, schedule="cosine", end_lr_frac=0.1,
                 clip_norm=1.0)
    c.ckpt.update(every_steps=100, keep=1, async_save=False)
    c.log.update(progress=True)
    # The base run: a copy stage (induction, as in configs/demo.py) then NIAH-format retrieval
    # and copy rows at the native window.
    c.stages["s0_copy"] = common.stage(seq_len=native, steps=500 if full else 3,
                                       rope_cfg=common.rope(theta=10_000.0), lr=1e-3,
                                       export_hf=False)
    c.stages["s1_base"] = common.stage(seq_len=native, steps=600 if full else 3,
                                       rope_cfg=common.rope(theta=10_000.0), export_hf=False)
    beacon = mc.ConfigDict(dict(
        adapter=a.adapter or "experts",  # experts | shared | clone (demo.beacon runs several)
        window=window,  # W, tokens per window (= stride)
        native_len=native,  # P, the base's native window, tokens
        ratios="5,10,20",  # served compression ratios (each divides W)
        uncompressed=True,  # ratio 0 for inputs that fit P
        headroom=window,  # adapt-N generation headroom, tokens (reference 1024 = W)
        rank=32, alpha=64.0,  # LoRA rank and alpha (scale 2, as LongLoRA's); rank 8 learnt
        # no retrieval through memory even at ratio 2 (docs/BEACON.md)
        targets="q,k,v,o",  # projections with an adapter on beacon rows
        embed_per_expert=True,  # one beacon embedding per expert
        overflow="error",  # inputs beyond the largest ratio: error | largest
        train_ratios="5,10,20" if full else "5",  # drawn per optimizer step (seeded by step)
        ratio_weights="",  # '' = uniform
        data_mix="",  # 'glob=weight;glob=weight' ('' = the stage's data_path)
        remat=True,  # recompute each window in the backward pass
    ))
    c.beacon_demo = mc.ConfigDict(dict(
        adapters="shared,experts",  # adapter runs compared (truncation needs none)
        steps=720 if full else 2,  # optimizer steps per adapter run (experts: ~240 per ratio)
        seq_len=seq,  # adapter training row length, tokens (a multiple of W)
        batch_size=4 if full else 2,  # adapter rows per step
        lr=3e-3,  # adapter peak LR (cosine to 10%; 1e-2 was worse, docs/BEACON.md)
        # Share of adapter batches that are KJV text (loss on every token). 0: the tiny base
        # never learnt KJV text, so its text loss (~7.7 nats) swamped the ~10 answer tokens
        # of a retrieval row and the adapters learnt nothing (measured, docs/BEACON.md).
        text_share=0.0,
        train_lengths="640,1280" if full else "560",  # retrieval lengths for adapters
        base_tasks="niah_single_1,niah_single_2",  # retrieval tasks of the base stage
        copy_share=0.25,  # base stage rows that are copy conversations
        copy_max_items=24, copy_digit_share=0.3,
        eval_tasks="niah_single_1",
        eval_lengths="1280,2560,5120" if full else "640",  # 4x/8x/16x the native window
        eval_samples=16 if full else 2,
        seed=0,
    ))
    if not a.adapter:  # the whole miniature (demo.beacon): base stages, adapters from these
        c.beacon_demo.beacon = beacon
    else:  # `lctx.train` on this config: the adapter stage alone (a `beacon` section)
        del c["entry"]
        c.beacon = beacon
        c.data.pack = False
        del c.stages["s0_copy"], c.stages["s1_base"]
        c.stages["s2_adapter"] = common.stage(seq_len=seq, steps=c.beacon_demo.steps,
                                              rope_cfg=common.rope(theta=10_000.0),
                                              lr=c.beacon_demo.lr, export_hf=False)
        c.data.batch_size = c.beacon_demo.batch_size
        # What demo.beacon wrote in the miniature's workdir (tokenizer, data and base phases).
        c.data.tokenizer = os.path.join(a.base, "tokenizer", "sp.model")
        c.data.path = c.stages["s2_adapter"].data_path = os.path.join(
            a.base, "data", "adapter_retrieval.arrayrecord")
        c.ckpt.resume_from = os.path.join(a.base, "base", "ckpt", "s1_base")
    return c
