"""Streaming prefill over windows with compressed memory, then KV-cache decoding.

For one prompt (the reference serves batch 1 too): the ratio is chosen by `adapt-N`
(`lctx.beacon.choose_ratio`) unless given; every full window is stepped through
`BeaconModel.step` in a `lax.fori_loop` (trip count traced, so one program serves every prompt
of a window-count bucket); then the memory keys are rotated once at their positions and
become the head of an ordinary `lctx.model.KVCache`, the trailing partial window is prefilled
by the base model into that cache and decoding continues with the base model, greedy.

Memory per step is static (capacity P - W slots for any input the ratio rule admits), so the
per-window cost does not grow with the input. Decoding does not compress: generated tokens stay
raw (the reference compresses again once the tail plus generated tokens fill a window; with
`headroom` reserved this only differs for generations longer than W - tail).

Axes: B batch (1), T prompt tokens, W window, M memory slots, S cache slots, D model dim.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lctx import beacon as rules
from lctx import generate as gen_lib
from lctx import model as model_lib
from lctx import rope as rope_lib


def prefill(model, tokens_BT, n_windows, *, ratio: int, expert, capacity: int):
    """Steps the first `n_windows` full windows of `tokens_BT` (traced count).

    Returns:
      (memory, last_BD): the memory after those windows and the final-normed hidden state of
      the last raw token of the last window (zeros when n_windows == 0).
    """
    w = model.bcfg.window
    b = tokens_BT.shape[0]
    mem = model.init_memory(b, capacity)
    last_BD = jnp.zeros((b, model.base.cfg.d_model), model.base.cfg.dtype)

    def body(i, carry):
        mem, _ = carry
        win_BW = jax.lax.dynamic_slice_in_dim(tokens_BT, i * w, w, axis=1)
        hidden_BWD, mem = model.step(win_BW, mem, ratio=ratio, expert=expert)
        return mem, hidden_BWD[:, -1]

    return jax.lax.fori_loop(0, n_windows, body, (mem, last_BD))


def memory_to_cache(model, mem, extra: int) -> model_lib.KVCache:
    """A base-model KV cache whose first M slots hold the memory, rotated at slot positions
    (slots >= length get segment 0), followed by `extra` empty slots."""
    c = model.base.cfg
    n_l, b, m_cap = mem.k_LBMKH.shape[:3]
    slots_M = jnp.arange(m_cap, dtype=jnp.int32)
    cos_MK, sin_MK = rope_lib.cos_sin(c.rope, slots_M[None], c.head_dim,
                                      seq_len=mem.length + extra)
    k_rot = rope_lib.apply_rope(mem.k_LBMKH, cos_MK, sin_MK)
    pad = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
    seg_BS = jnp.pad(jnp.broadcast_to(slots_M < mem.length, (b, m_cap)).astype(jnp.int32),
                     ((0, 0), (0, extra)))
    pos_BS = jnp.pad(jnp.broadcast_to(slots_M, (b, m_cap)), ((0, 0), (0, extra)))
    return model_lib.KVCache(jnp.pad(k_rot, pad), jnp.pad(mem.v_LBMKH, pad), seg_BS, pos_BS,
                             jnp.asarray(m_cap, jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef", "ratio", "capacity", "max_new"))
def _generate(graphdef, state, tokens_1T, n_full, tail_len, expert, ends_E, bar_V, *, ratio,
              capacity, max_new):
    model = nnx.merge(graphdef, state)
    w = model.bcfg.window
    mem, last_1D = prefill(model, tokens_1T, n_full, ratio=ratio, expert=expert,
                           capacity=capacity)
    cache = memory_to_cache(model, mem, w + max_new)
    tail_1W = jax.lax.dynamic_slice_in_dim(tokens_1T, n_full * w, w, axis=1)
    idx_1W = jnp.arange(w, dtype=jnp.int32)[None]
    seg_1W = (idx_1W < tail_len).astype(jnp.int32)
    hidden_1WD, cache = model.base(tail_1W, mem.length + idx_1W, seg_1W, cache=cache)
    tail_last = jax.lax.dynamic_index_in_dim(hidden_1WD, jnp.maximum(tail_len - 1, 0), 1,
                                             keepdims=False)
    h_1D = jnp.where(tail_len > 0, tail_last, last_1D)
    first_1V = jnp.where(bar_V, -jnp.inf, model.base.logits(h_1D[:, None])[:, 0])
    tok_1 = gen_lib.sample_logits(first_1V, None)
    out_1M = jnp.full((1, max_new), -1, jnp.int32)
    start = mem.length + tail_len

    def cond(st):
        i, _, _, _, done = st
        return (i < max_new) & ~done

    def body(st):
        i, cache, tok_1, out, _ = st
        out = jax.lax.dynamic_update_slice_in_dim(out, tok_1[:, None], i, axis=1)
        done = jnp.any(tok_1[0] == ends_E)
        pos_11 = (start + i)[None, None]
        hidden_11D, cache = model.base(tok_1[:, None], pos_11, jnp.ones_like(pos_11),
                                       cache=cache)
        nxt = gen_lib.sample_logits(model.base.logits(hidden_11D)[:, 0], None)
        return i + 1, cache, nxt, out, done

    st = (jnp.zeros((), jnp.int32), cache, tok_1, out_1M, jnp.asarray(False))
    out_1M = jax.lax.while_loop(cond, body, st)[3]
    return out_1M, mem.length


def plan(length: int, cfg: rules.BeaconConfig, ratio: int | None = None):
    """(ratio, full windows, tail tokens, memory capacity) for a prompt of `length` tokens."""
    r = rules.choose_ratio(length, cfg) if ratio is None else int(ratio)
    if r and r not in cfg.ratios:
        cfg.expert(r)  # raises: the checkpoint has no expert for this ratio
    n_full = rules.full_windows(length, cfg.window)
    return r, n_full, length - n_full * cfg.window, cfg.memory_capacity(r, n_full)


def generate(model, prompt: list[int], *, max_new_tokens: int, eos_ids=(),
             ratio: int | None = None, bar_first=()) -> tuple[list[int], dict]:
    """Greedy continuation of one prompt through the beacon model.

    Args:
      model: a `lctx.beacon_model.BeaconModel`.
      prompt: token ids.
      max_new_tokens: decode budget.
      eos_ids: stop after any of these ids (it is included in the output).
      ratio: force a ratio (must be served); default `adapt-N` by the prompt's length.
      bar_first: ids the first generated token may not be (HF's min_new_tokens=1).

    Returns:
      (generated ids, info {ratio, windows, memory, tail}).
    """
    cfg = model.bcfg
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    r, n_full, tail, m_cap = plan(len(prompt), cfg, ratio)
    w = cfg.window
    # Window-count buckets (powers of two): one compiled program per (ratio, bucket).
    n_pad = 1 << max(0, math.ceil(math.log2(max(n_full, 1))))
    buf = np.zeros((1, (n_pad + 1) * w), np.int32)
    buf[0, :len(prompt)] = prompt
    graphdef, state = nnx.split(model)
    expert = cfg.expert(r) if r else 0
    ends = np.asarray(sorted(set(int(i) for i in eos_ids)) or [-1], np.int32)
    bar = np.zeros(model.base.cfg.vocab_size, bool)
    bar[list(int(i) for i in bar_first)] = True
    out, mem_len = _generate(graphdef, state, jnp.asarray(buf), jnp.int32(n_full),
                             jnp.int32(tail), jnp.int32(expert), jnp.asarray(ends),
                             jnp.asarray(bar), ratio=r, capacity=m_cap,
                             max_new=int(max_new_tokens))
    ids = [int(t) for t in np.asarray(out)[0] if t >= 0]
    end = next((k for k, t in enumerate(ids) if t in set(ends.tolist())), None)
    ids = ids if end is None else ids[:end + 1]
    return ids, {"ratio": r, "windows": n_full, "memory": int(mem_len), "tail": tail}
