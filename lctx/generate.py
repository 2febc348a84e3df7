"""Batched generation: one prefill, then KV-cache decoding in a jitted `lax.while_loop`.

Shapes are static: the cache holds prompt length + max_new_tokens slots. Prompts are
right-padded [B, T] with their lengths; padding gets segment id 0 so it is never attended
to, and each row's new tokens continue at position `length_b`, so rows of different lengths
decode together without shifting (masking is by ids, never by index). Decoding stops when
every row has emitted `eos_id` or after `max_new_tokens`.

Axes: B batch, T prompt length, D model dim, V vocab, M max new tokens.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def sample_logits(logits_BV, rng, *, temperature: float = 0.0, top_k: int = 0):
    """Next tokens [B] from float32 logits: greedy when temperature == 0, else top-k sampling.

    Args:
      logits_BV: float32 logits of the last position.
      rng: PRNG key (unused when greedy).
      temperature: softmax temperature; 0 means argmax.
      top_k: keep only the k largest logits before sampling (0 = all).
    """
    if temperature < 0 or top_k < 0:
        raise ValueError(f"temperature={temperature} and top_k={top_k} must be >= 0.")
    if temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
        logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature",
                                             "top_k", "eos_id", "pad_id"))
def _generate(graphdef, state, prompt_BT, lengths_B, rng, *, max_new_tokens, temperature,
              top_k, eos_id, pad_id):
    model = nnx.merge(graphdef, state)
    b, t = prompt_BT.shape
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k)
    cache = model.init_cache(b, t + max_new_tokens)
    idx_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    seg_BT = (idx_BT < lengths_B[:, None]).astype(jnp.int32)
    hidden_BTD, cache = model(prompt_BT, idx_BT, seg_BT, cache=cache)
    last_B1D = jnp.take_along_axis(hidden_BTD, (lengths_B - 1)[:, None, None], axis=1)
    rng, sub = jax.random.split(rng)
    tok_B = sample(model.logits(last_B1D)[:, 0], sub)
    out_BM = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    done_B = jnp.zeros((b,), bool)

    def cond(st):
        i, _, _, done_B, _, _ = st
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(st):
        i, cache, tok_B, done_B, out_BM, rng = st
        out_BM = out_BM.at[:, i].set(jnp.where(done_B, pad_id, tok_B))
        if eos_id is not None:
            done_B = done_B | (tok_B == eos_id)
        pos_B1 = (lengths_B + i)[:, None]
        hidden_B1D, cache = model(tok_B[:, None], pos_B1, jnp.ones_like(pos_B1), cache=cache)
        rng, sub = jax.random.split(rng)
        return i + 1, cache, sample(model.logits(hidden_B1D)[:, 0], sub), done_B, out_BM, rng

    st = (jnp.zeros((), jnp.int32), cache, tok_B, done_B, out_BM, rng)
    _, _, _, _, out_BM, _ = jax.lax.while_loop(cond, body, st)
    if eos_id is None:
        n_B = jnp.full((b,), max_new_tokens, jnp.int32)
    else:  # tokens up to and including the first eos
        is_eos = out_BM == eos_id
        first = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
        n_B = first.astype(jnp.int32)
    return out_BM, n_B


def generate(model, prompt_BT, lengths_B=None, *, max_new_tokens: int, eos_id: int | None = None,
             temperature: float = 0.0, top_k: int = 0, rng=None, pad_id: int = 0):
    """Generates up to `max_new_tokens` tokens per row after right-padded prompts.

    Args:
      model: an `lctx.model.Llama`.
      prompt_BT: int prompts, right-padded.
      lengths_B: prompt lengths (default: all T); each must be in [1, T].
      max_new_tokens: M, the static decode budget (cache = T + M slots).
      eos_id: stop token; rows stop after emitting it (None: always M tokens).
      temperature: 0 = greedy; > 0 samples.
      top_k: sample from the k most likely tokens (0 = all).
      rng: PRNG key for sampling (default key 0).
      pad_id: written after a row's eos.

    Returns:
      (tokens_BM int32, num_tokens_B int32): generated tokens (eos included) and their counts.
    """
    prompt_BT = jnp.asarray(prompt_BT, jnp.int32)
    if prompt_BT.ndim != 2 or prompt_BT.shape[1] < 1:
        raise ValueError(f"prompt must be [B, T] with T >= 1, got shape {prompt_BT.shape}.")
    b, t = prompt_BT.shape
    lengths_B = jnp.full((b,), t, jnp.int32) if lengths_B is None else jnp.asarray(
        lengths_B, jnp.int32)
    if lengths_B.shape != (b,):
        raise ValueError(f"lengths has shape {lengths_B.shape}, expected ({b},).")
    if not isinstance(lengths_B, jax.core.Tracer) and (
        int(lengths_B.min()) < 1 or int(lengths_B.max()) > t):
        raise ValueError(f"prompt lengths must be in [1, {t}], got {lengths_B.tolist()}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    if t + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt length {t} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_seq_len={model.cfg.max_seq_len}; raise max_seq_len or shorten.")
    graphdef, state = nnx.split(model)
    rng = jax.random.key(0) if rng is None else rng
    return _generate(graphdef, state, prompt_BT, lengths_B, rng, max_new_tokens=max_new_tokens,
                     temperature=float(temperature), top_k=int(top_k), eos_id=eos_id,
                     pad_id=int(pad_id))
