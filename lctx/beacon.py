"""Activation-beacon rules (Zhang et al. 2024, paper version; Li et al. 2025): window layout,
step-expansion mask, positions, memory sizes and the `adapt-N` ratio choice.

Pure Python/NumPy and JAX-free: the streaming model (`lctx.beacon_model`) and the golden tests
read the same definitions. Facts follow FlagEmbedding `0ad0dee`
(`Long_LLM/activation_beacon/src/activation_beacon_llama/`; /work/shared/REFERENCE_NOTES_WAVE2.md
section 1):

* An input is cut into windows of W tokens (stride = W). A *full* window with ratio a > 0 gets
  k = W / a beacon tokens appended after its raw tokens; the beacons' keys and values become
  memory and the raw ones are dropped. Ratio 0 keeps the raw keys and values as memory
  (no compression). A trailing partial window gets no beacons.
* Keys of one step: [memory (m) | raw window (W) | beacons (k)]. Positions: memory slot j at j,
  raw token t at m + t, beacon i at m + (i + 1) a (next to the last raw token it reads).
* Mask (step-expansion with attend-previous): raw rows are causal over memory and raw tokens
  and never see the current beacons; beacon row i sees all memory, raw tokens [0, (i + 1) a)
  and itself.
* `adapt-N`: the smallest ratio whose capacity covers the input plus N generation tokens,
  capacity(a) = (P - W) a + W for a > 0 and P for a = 0 (P = the base's native window).

Axes: W window, k beacons per window, m memory length, S keys of a step.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

ADAPTERS = ("experts", "shared", "clone")
TARGETS = ("q", "k", "v", "o")


class BeaconError(ValueError):
    """A beacon configuration or input the rules cannot serve; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class BeaconConfig:
    """How a frozen base model reads long inputs through beacons (frozen, hashable).

    Attributes:
      window: W, tokens per window (= the stride; the reference uses 1024 for a 4K model).
      native_len: P, the base model's trained context (Llama-2: 4096); memory + window <= P.
      ratios: compression ratios served, each > 0 and dividing `window`; with 'experts' one
        LoRA expert per ratio (Li et al.: 2, 4, ..., 1024).
      uncompressed: also serve ratio 0 (no compression, exact full attention) for inputs up
        to P tokens (the reference's rule includes it).
      headroom: N of `adapt-N`, generation tokens reserved when choosing the ratio (1024 in the
        reference; the CPU miniature scales it with W).
      adapter: 'experts' (one adapter per ratio, Li et al.), 'shared' (one LoRA adapter for
        every ratio) or 'clone' (full q/k/v/o copies, Zhang et al.'s "MHA" baseline).
      rank, alpha: LoRA rank and scale numerator (delta = alpha / rank * x A B).
      targets: projections that get an adapter on beacon rows (subset of q, k, v, o).
      embed_per_expert: one beacon embedding per expert (True) or one shared by all.
      overflow: an input longer than the largest ratio covers: 'error' (default) or
        'largest' (the reference's fallback: largest ratio; memory then exceeds P - W).
    """
    window: int = 1024
    native_len: int = 4096
    ratios: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    uncompressed: bool = True
    headroom: int = 1024
    adapter: str = "experts"
    rank: int = 32
    alpha: float = 64.0
    targets: tuple[str, ...] = TARGETS
    embed_per_expert: bool = True
    overflow: str = "error"

    def __post_init__(self):
        object.__setattr__(self, "ratios", tuple(int(r) for r in self.ratios))
        object.__setattr__(self, "targets", tuple(self.targets))
        w, p = self.window, self.native_len
        if not (isinstance(w, int) and w >= 1 and isinstance(p, int) and p > w):
            raise BeaconError(f"beacon.window={w} and beacon.native_len={p}: need integers with "
                              "native_len > window (memory lives in native_len - window).")
        if not self.ratios or len(set(self.ratios)) != len(self.ratios):
            raise BeaconError(f"beacon.ratios={self.ratios}: give distinct ratios, e.g. 2,4,8.")
        for r in self.ratios:
            if r < 1 or w % r:
                raise BeaconError(
                    f"beacon.ratios holds {r}, which does not divide beacon.window={w}: a window "
                    f"of W tokens gets W / ratio beacons. Use divisors of {w} "
                    f"(e.g. {', '.join(str(d) for d in _pow2_divisors(w))}).")
        if self.adapter not in ADAPTERS:
            raise BeaconError(f"beacon.adapter={self.adapter!r}; expected one of {ADAPTERS}.")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise BeaconError(f"beacon.targets={self.targets}: a non-empty subset of {TARGETS}.")
        if self.rank < 1 or self.alpha <= 0 or self.headroom < 0:
            raise BeaconError(f"beacon.rank={self.rank} must be >= 1, alpha={self.alpha} > 0 "
                              f"and headroom={self.headroom} >= 0.")
        if self.overflow not in ("error", "largest"):
            raise BeaconError(f"beacon.overflow={self.overflow!r}; expected 'error' or 'largest'.")

    @property
    def n_experts(self) -> int:
        """Adapters in the bank: one per ratio for 'experts', else one."""
        return len(self.ratios) if self.adapter == "experts" else 1

    def expert(self, ratio: int) -> int:
        """Bank index of the adapter that serves `ratio` (> 0)."""
        if ratio not in self.ratios:
            raise BeaconError(f"ratio {ratio} is not served (beacon.ratios={self.ratios}); a "
                              "checkpoint has no expert for it. Train one or pick another.")
        return self.ratios.index(ratio) if self.adapter == "experts" else 0

    def memory_capacity(self, ratio: int, windows: int | None = None) -> int:
        """Static memory slots a model call needs: P - W when the rules bound it (inference),
        or what `windows` full windows write (training, or the 'largest' overflow)."""
        per = beacons_per_window(self.window, ratio)
        need = 0 if windows is None else windows * per
        return max(self.native_len - self.window, need)


def _pow2_divisors(w: int) -> list[int]:
    return [d for d in (2 ** i for i in range(1, 21)) if d <= w and w % d == 0]


def beacons_per_window(window: int, ratio: int) -> int:
    """k: beacons a full window gets (ratio 0: its W raw tokens become memory as they are)."""
    return window if ratio == 0 else window // ratio


def capacity(ratio: int, native_len: int, window: int) -> int:
    """The longest sequence (input + generation) a ratio serves inside the native window."""
    return native_len if ratio == 0 else (native_len - window) * ratio + window


def choose_ratio(length: int, cfg: BeaconConfig) -> int:
    """`adapt-N` (reference `set_condensing_ratio`): the ratio with the smallest capacity that
    covers `length` + headroom; ratio 0 competes when `cfg.uncompressed`.

    Raises BeaconError when no ratio covers the input and `cfg.overflow == 'error'`; with
    'largest' it returns the largest ratio, as the reference does.
    """
    if length < 1:
        raise BeaconError(f"input length {length} must be >= 1 token.")
    need = length + cfg.headroom
    cands = ([0] if cfg.uncompressed else []) + sorted(cfg.ratios)
    fits = [(capacity(r, cfg.native_len, cfg.window), r) for r in cands
            if capacity(r, cfg.native_len, cfg.window) >= need]
    if fits:
        return min(fits)[1]
    if cfg.overflow == "largest":
        return max(cfg.ratios)
    top = max(cfg.ratios)
    raise BeaconError(
        f"input of {length} tokens (+{cfg.headroom} headroom) is longer than the largest "
        f"ratio {top} covers ({capacity(top, cfg.native_len, cfg.window) - cfg.headroom} input "
        f"tokens with beacon.window={cfg.window}, native_len={cfg.native_len}). Shorten it, "
        "train a larger expert, or set beacon.overflow='largest' (memory then exceeds the "
        "native window).")


def full_windows(length: int, window: int) -> int:
    """Windows that get beacons: every full window (a trailing partial one stays raw)."""
    return length // window


def memory_length(length: int, window: int, ratio: int) -> int:
    """Memory slots after prefilling `length` tokens: k per full window."""
    return full_windows(length, window) * beacons_per_window(window, ratio)


def step_positions(mem_len, window: int, ratio: int, xp=np):
    """Position ids of one full window's queries [W + k]: raw tokens, then beacons.

    `mem_len` may be a traced scalar with `xp=jax.numpy` (the model uses this definition)."""
    raw = mem_len + xp.arange(window)
    if ratio == 0:
        return raw
    k = window // ratio
    return xp.concatenate([raw, mem_len + (xp.arange(k) + 1) * ratio])


def step_mask(mem_len, window: int, ratio: int, capacity: int | None = None, xp=np):
    """Boolean [W + k, M + W + k] of one full window (True = may attend): step-expansion
    with the memory visible to beacons, as the reference's 4-D mask.

    Keys are [memory slots (M = `capacity`, default `mem_len`; slots >= mem_len are empty) |
    raw window | beacons]. `mem_len` may be traced when `xp=jax.numpy`.
    """
    k = 0 if ratio == 0 else window // ratio
    m_cap = mem_len if capacity is None else capacity
    r = xp.arange(window + k)[:, None]  # query row
    c = xp.arange(m_cap + window + k)[None, :]  # key column
    j = c - m_cap  # raw index of the column (>= window: a beacon column)
    is_mem, is_raw = c < m_cap, (j >= 0) & (j < window)
    raw_row = r < window
    mem_ok = is_mem & (c < mem_len)
    raw_ok = is_raw & xp.where(raw_row, j <= r, j < (r - window + 1) * max(ratio, 1))
    beacon_ok = (j >= window) & ~raw_row & (j - window == r - window)
    return mem_ok | raw_ok | beacon_ok


def expert_table(cfg: BeaconConfig, lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """(length, ratio, memory slots after prefill) per length, for docs and CLIs."""
    out = []
    for n in lengths:
        r = choose_ratio(n, cfg)
        out.append((n, r, memory_length(n, cfg.window, r)))
    return out
