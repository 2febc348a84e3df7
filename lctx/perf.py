"""Projected training step time from a measured per-kernel throughput table (the run
config's `perf` section; `lctx.plan` prints it).

    st = step_time(cfg, mcfg, seq_len=1 << 20, devices=32)   # StepTime or None
    print(describe(cfg))                                      # what is measured, what not

The model, per optimizer step: B x T tokens, each costing the matmul FLOPs (6 x matmul
params) and the causal attention FLOPs (6 x L x N x H x T) of `lctx.trainer.flops_per_token`,
split evenly over the devices (FSDP and the zigzag ring balance the work); matmuls run at
`perf.matmul_tflops`, attention at its kernel's measured forward+backward rate
`perf.attn_tflops[kernel]`; remat='full' recomputes each layer's forward, 4/3 of the FLOPs.

What is measured and what is not: the table's rates are measured (on the device named in
`perf.source`); everything computed here is a projection. Assumed: attention throughput
does not depend on T (measured at 32K; blockwise kernels are compute-bound), ring K/V
transfers hide behind compute, optimizer update and data loading are negligible. A check:
for one Llama-3.1-8B layer at T=32K, remat full, this gives 13.1% of the matmul ceiling with
the XLA blockwise kernel (block 1024); issue 17 measured 14.0%. With the cuDNN entry (the
packed fused call) it projects 65.6%: not yet measured as a layer step on a device.
"""
from __future__ import annotations

import dataclasses
from typing import Any

TFLOP = 1e12
REMAT_FACTOR = {"full": 4 / 3, "dots": 4 / 3, "none": 1.0}  # forward recomputed: +1/3


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Projected seconds of one optimizer step on `devices` devices.

    Attributes:
      seconds: matmul_s + attn_s.
      kernel: the attention entry of the throughput table used.
      wanted: the entry the config asks for (differs when that one is not measured).
    """
    seconds: float
    matmul_s: float
    attn_s: float
    kernel: str
    wanted: str


def wanted_kernel(cfg: Any) -> str:
    """The table entry for the config's attention: 'cudnn', or 'xla_block<block_k>'."""
    if cfg.attn.get("kernel", "xla") == "cudnn":
        return "cudnn"
    return f"xla_block{int(cfg.attn.block_k)}"


def table_kernel(cfg: Any) -> str | None:
    """The measured entry used for the config's attention: the wanted one, else the XLA
    entry with the nearest block size (larger blocks run faster: the largest measured one
    not above the wanted size, else the smallest)."""
    table = dict(cfg.perf.attn_tflops)
    want = wanted_kernel(cfg)
    if want in table:
        return want
    if not want.startswith("xla_block"):
        return None
    blocks = sorted(int(k[len("xla_block"):]) for k in table if k.startswith("xla_block"))
    if not blocks:
        return None
    size = int(want[len("xla_block"):])
    below = [b for b in blocks if b <= size]
    return f"xla_block{below[-1] if below else blocks[0]}"


def attention_flops_per_token(mcfg: Any, seq_len: int) -> float:
    """Causal attention training FLOPs per token (the attention part of flops_per_token)."""
    return 6.0 * mcfg.n_layers * mcfg.n_heads * mcfg.head_dim * seq_len


def step_time(cfg: Any, mcfg: Any, seq_len: int, devices: int) -> StepTime | None:
    """Projected step time of `cfg` (run config) with model `mcfg` at `seq_len` tokens per
    row; None when the config has no `perf` table or no entry for its attention."""
    from lctx import trainer
    if "perf" not in cfg or cfg.attn.impl == "dense":
        return None
    kernel = table_kernel(cfg)
    if kernel is None:
        return None
    tokens = seq_len * cfg.data.batch_size
    attn = attention_flops_per_token(mcfg, seq_len)
    matmul = trainer.flops_per_token(mcfg, seq_len) - attn
    remat = REMAT_FACTOR.get(mcfg.remat, 4 / 3)
    mm_s = remat * tokens * matmul / devices / (cfg.perf.matmul_tflops * TFLOP)
    at_s = remat * tokens * attn / devices / (cfg.perf.attn_tflops[kernel] * TFLOP)
    return StepTime(mm_s + at_s, mm_s, at_s, kernel, wanted_kernel(cfg))


def layer_mfu(cfg: Any, mcfg: Any, seq_len: int) -> float:
    """Projected fraction of the matmul ceiling one decoder layer reaches (model FLOPs,
    without remat's recompute), the figure issue 17 measured on the H200."""
    per_layer = dataclasses.replace(mcfg, n_layers=1)
    attn = attention_flops_per_token(per_layer, seq_len)
    d, n, k, h, f = mcfg.d_model, mcfg.n_heads, mcfg.n_kv_heads, mcfg.head_dim, mcfg.mlp_dim
    matmul = 6.0 * (d * (n + 2 * k) * h + n * h * d + 3 * d * f)
    remat = REMAT_FACTOR.get(mcfg.remat, 4 / 3)
    kernel = table_kernel(cfg)
    secs = remat * (matmul / cfg.perf.matmul_tflops + attn / cfg.perf.attn_tflops[kernel])
    return (matmul + attn) / secs / cfg.perf.matmul_tflops


def describe(cfg: Any) -> str:
    """Which numbers are measured and which are projections, for the planner's output."""
    if "perf" not in cfg:
        return "step time: no `perf` throughput table in the config (not projected)."
    p = cfg.perf
    rates = ", ".join(f"{k} {v:g}" for k, v in sorted(dict(p.attn_tflops).items()))
    out = [f"MEASURED ({p.source}): matmul ceiling {p.matmul_tflops:g} TFLOP/s; attention "
           f"fwd+bwd TFLOP/s at T=32K: {rates}."]
    want, used = wanted_kernel(cfg), table_kernel(cfg)
    if cfg.attn.impl == "dense":
        out.append("attention impl dense: no throughput entry, step time not projected.")
    elif used is None:
        out.append(f"attention kernel {want}: not in the table, step time not projected.")
    elif used != want:
        out.append(f"attention kernel {want}: NOT MEASURED; projected with {used}'s rate.")
    out.append("PROJECTED: step s and stage h = FLOPs split evenly over the devices at these "
               "rates, remat=full x4/3; assumes attention throughput independent of T, ring "
               "transfers hidden behind compute. H100 SXM has the H200's bf16 peak (989 "
               "TFLOP/s) but 3.35 vs 4.8 TB/s of HBM, so H200 rates are optimistic for H100.")
    return "\n".join(out)
