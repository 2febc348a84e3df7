"""Token layouts for ring attention: which tokens of a row each context shard holds.

The ring shards T contiguously over C devices, so a layout is a permutation of the row applied
once at data loading to tokens, targets, positions, segment ids and loss masks together (make
next-token targets before permuting). Masking is by ids, so any permutation is exact; layouts
differ only in how evenly they spread the causal work, counted in computed block pairs (the
ring skips a block pair exactly when its mask is empty, `lctx.blocks.needed`).

- `zigzag_indices`: chunks r and 2C-1-r of 2C on device r. Balances one causal document per
  row exactly; on packed rows documents land unevenly (T=16K, C=8, 8 documents, 256-token
  blocks: the busiest device computes 1.52x the mean).
- `balanced_indices`: per row, from its ids. Cuts the row into units of whole blocks in
  their original order (so block pairs are exactly those of an unpermuted row) and hands
  units to devices largest-work-first, each unit to the least-loaded device with room (LPT),
  where a unit's work is the number of key units its queries need. Same example: 1.02x.

numpy only (the data pipeline calls it); no JAX.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np


def zigzag_indices(seq_len: int, n_shards: int) -> np.ndarray:
    """Permutation putting chunks r and 2C-1-r of a sequence on context shard r.

    Use as `x_zig = x[:, perm]`. Sharding the permuted sequence contiguously over C devices
    then balances causal attention work of one document per row.

    Args:
      seq_len: sequence length T; must be divisible by 2 * n_shards.
      n_shards: context-axis size C.

    Returns:
      int64 array of shape [T]; `inverse_indices(perm)` undoes it.
    """
    if n_shards < 1 or seq_len % (2 * n_shards):
        raise ValueError(f"zigzag layout needs seq_len divisible by 2*n_shards: seq_len="
                         f"{seq_len}, n_shards={n_shards} (2*n_shards={2 * n_shards}).")
    chunk = seq_len // (2 * n_shards)
    order = [c for r in range(n_shards) for c in (r, 2 * n_shards - 1 - r)]
    return np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in order])


def contiguous_indices(seq_len: int, n_shards: int) -> np.ndarray:
    """Identity permutation (plain contiguous split), same contract as `zigzag_indices`."""
    if n_shards < 1 or seq_len % n_shards:
        raise ValueError(f"seq_len={seq_len} is not divisible by n_shards={n_shards}.")
    return np.arange(seq_len)


def inverse_indices(perm: np.ndarray) -> np.ndarray:
    """Inverse permutation: `x[:, perm][:, inverse_indices(perm)] == x` (also per row)."""
    perm = np.asarray(perm)
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[-1]), perm.shape), -1)
    return inv


def layout_indices(layout: str, seq_len: int, n_shards: int) -> np.ndarray:
    """`zigzag_indices` or `contiguous_indices` by name."""
    fns = {"zigzag": zigzag_indices, "contiguous": contiguous_indices}
    if layout not in fns:
        raise ValueError(f"layout={layout!r}; expected one of {sorted(fns)}.")
    return fns[layout](seq_len, n_shards)


def unit_needs(seg_T, pos_T, unit: int, causal: bool = True) -> np.ndarray:
    """Boolean [M, M], M = T / unit: does query unit i need key unit j (any allowed pair)?

    Exact from ranges per segment: a query and a key of segment s are allowed iff
    pos_q >= pos_k, so units i, j need each other iff for some s they share, the largest
    query position of s in i is >= the smallest key position of s in j.
    """
    seg_T, pos_T = np.asarray(seg_T), np.asarray(pos_T)
    m = len(seg_T) // unit
    unit_T = np.repeat(np.arange(m), unit)
    # One row per (unit, segment) present: its smallest and largest position.
    key = np.stack([seg_T, unit_T], 1)
    pairs, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    lo = np.full(len(pairs), np.iinfo(np.int64).max)
    hi = np.full(len(pairs), np.iinfo(np.int64).min)
    np.minimum.at(lo, inv, pos_T)
    np.maximum.at(hi, inv, pos_T)
    need = np.zeros((m, m), bool)
    for s in np.unique(pairs[:, 0]):
        rows = np.flatnonzero(pairs[:, 0] == s)
        units = pairs[rows, 1]
        ok = hi[rows][:, None] >= lo[rows][None, :] if causal else True
        need[np.ix_(units, units)] |= ok
    return need


def balanced_indices(seg_T, pos_T, n_shards: int, unit: int, causal: bool = True) -> np.ndarray:
    """Per-row permutation balancing computed block pairs over the context shards.

    Args:
      seg_T, pos_T: one row's segment and position ids in the original token order.
      n_shards: context-axis size C.
      unit: tokens per unit, a multiple of the ring's block lengths (`layout_unit`);
        T must be divisible by C * unit.
      causal: the mask the ring applies.

    Returns:
      int64 [T]: device r holds `perm[r * T/C:(r + 1) * T/C]`, whole units in their original
      order. Deterministic in the ids.
    """
    t = len(seg_T)
    if t % (n_shards * unit):
        raise ValueError(f"balanced layout needs T={t} divisible by n_shards x unit = "
                         f"{n_shards} x {unit}.")
    work = unit_needs(seg_T, pos_T, unit, causal).sum(1)
    m = len(work)
    room, load = np.full(n_shards, m // n_shards), np.zeros(n_shards, np.int64)
    owner = np.empty(m, np.int64)
    for u in np.argsort(-work, kind="stable"):
        free = np.flatnonzero(room > 0)
        r = free[np.argmin(load[free])]
        owner[u], load[r], room[r] = r, load[r] + work[u], room[r] - 1
    units = np.argsort(owner, kind="stable")  # by device, original order within a device
    return (units[:, None] * unit + np.arange(unit)).reshape(-1)


def layout_unit(seq_len: int, n_shards: int, block_q: int, block_k: int, *,
                names=("seq_len", "context", "block_q", "block_k")) -> int:
    """The unit of `balanced_indices` for the ring's blocks (`ring_blocks`, zigzag); `names`
    as in `ring_blocks`, for the errors."""
    bq, bk = ring_blocks(seq_len, n_shards, block_q, block_k, names=names)
    if max(bq, bk) % min(bq, bk):
        raise ValueError(
            f"the balanced layout moves whole ring blocks, which must divide one another: "
            f"{names[2]}={block_q} and {names[3]}={block_k} give blocks of {bq} and {bk} "
            f"tokens for {names[0]}={seq_len} over {names[1]}={n_shards}; set {names[2]} "
            f"and {names[3]} equal.")
    return max(bq, bk)


def balance_batch(batch: dict, n_shards: int, unit: int) -> dict:
    """Applies `balanced_indices` row by row to every [B, T] array of a batch dict."""
    seg_BT, pos_BT = batch["segment_ids"], batch["positions"]
    perm_BT = np.stack([balanced_indices(s, p, n_shards, unit) for s, p in zip(seg_BT, pos_BT)])
    return {k: np.take_along_axis(np.asarray(v), perm_BT, axis=1) for k, v in batch.items()}


LAYOUTS = ("zigzag", "balanced")  # what the data pipeline applies (attn.ring_layout)


def batch_layout(layout: str, seq_len: int, n_shards: int, block_q: int, block_k: int
                 ) -> Callable[[dict], dict] | None:
    """The function the data pipeline maps over batches for a ring of `n_shards` devices.

    Every [B, T] array of a batch dict moves together (tokens, targets, loss weights,
    segment and position ids: targets are made before, so they stay aligned).

    Args:
      layout: 'zigzag' (`zigzag_indices`, one permutation for all rows) or 'balanced'
        (`balance_batch`, per row, in units of the ring's blocks: `layout_unit`).
      seq_len, n_shards: T and the context-axis size C.
      block_q, block_k: the configured (maximum) ring blocks.

    Returns:
      batch -> batch, or None when there is nothing to do (C = 1). Raises ValueError when
      the layout cannot split T (`ring_blocks`, `layout_unit`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}.")
    if n_shards <= 1:
        return None
    if layout == "balanced":
        unit = layout_unit(seq_len, n_shards, block_q, block_k)
        return functools.partial(balance_batch, n_shards=n_shards, unit=unit)
    perm_T = zigzag_indices(seq_len, n_shards)
    return lambda batch: {k: np.asarray(v)[:, perm_T] for k, v in batch.items()}


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def ring_blocks(seq_len: int, context: int, block_q: int, block_k: int, *,
                layout: str = "zigzag", names=("seq_len", "context", "block_q", "block_k")):
    """The ring's (query, key) block lengths for a sequence, or a ValueError naming the fields.

    A device holds one chunk of the layout (T/C tokens, contiguous) or two (T/2C each,
    zigzag); blocks must not straddle chunks, so each block length is the largest divisor of
    the chunk that does not exceed the configured one (a 300-token chunk and block 512 give
    300; 11,520 and 2048 give 1,920). A divisor under half the configured block would make
    many tiny blocks: that is an error, as is a T the layout cannot split.

    Args:
      seq_len, context: T and the context-axis size C.
      block_q, block_k: configured (maximum) block lengths.
      layout: 'zigzag' or 'contiguous'.
      names: how the caller spells (seq_len, context, block_q, block_k) in errors.
    """
    parts = 2 * context if layout == "zigzag" else context
    if seq_len % parts:
        raise ValueError(
            f"{names[0]}={seq_len} is not divisible by {parts} ("
            f"{'2 x ' if layout == 'zigzag' else ''}{names[1]}={context}, the ring's "
            f"{layout} layout); use a multiple of {parts}.")
    chunk = seq_len // parts
    out = []
    for name, block in ((names[2], block_q), (names[3], block_k)):
        got = _largest_divisor_at_most(chunk, block)
        if 2 * got < min(block, chunk):
            raise ValueError(
                f"{name}={block}: the ring's chunk of {chunk} tokens ({names[0]}={seq_len} / "
                f"{parts}) has no divisor between {min(block, chunk) // 2} and {block} (best "
                f"{got}); pick a {names[0]} whose chunk ({names[0]} / {parts}) has a divisor "
                f"near {block}, or a {name} that divides {chunk}.")
        out.append(got)
    return tuple(out)
