"""Log-likelihood scoring and next-token logits with an lctx model (for `LctxRunner`).

`continuation_logprobs` is what lm-evaluation-harness's `loglikelihood` needs: for each
(context, continuation) pair of token lists, the summed log-probability of the continuation
given the context and whether greedy decoding would produce it. Rows are right-padded into
one [B, T] call (padding has segment id 0, so it is never attended to); only the positions
that predict continuation tokens go through the unembedding, in chunks, so the [B, C, V]
float32 logits of a long continuation (rolling log-likelihood) never exist at once.

Axes: B batch, T tokens, C scored positions, D model dim, V vocab.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_CHUNK = 512  # scored positions per unembedding: caps the float32 logits at B x 512 x V


@functools.partial(jax.jit, static_argnames=("graphdef", "n_scored"))
def _scores(graphdef, state, tokens_BT, lengths_B, targets_BC, n_cont_B, *, n_scored):
    model = nnx.merge(graphdef, state)
    b, t = tokens_BT.shape
    pos_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    seg_BT = (pos_BT < lengths_B[:, None]).astype(jnp.int32)
    hidden_BTD = model(tokens_BT, pos_BT, seg_BT)
    # The input is context + continuation minus its last token (length L): position
    # L - n_cont + j predicts continuation token j (j < n_cont).
    j_C = jnp.arange(n_scored, dtype=jnp.int32)
    at_BC = jnp.clip(lengths_B[:, None] - n_cont_B[:, None] + j_C[None, :], 0, t - 1)
    valid_BC = j_C[None, :] < n_cont_B[:, None]
    total_B = jnp.zeros((b,), jnp.float32)
    greedy_B = jnp.ones((b,), bool)
    for start in range(0, n_scored, _CHUNK):  # static: unrolled chunks
        sl = slice(start, min(start + _CHUNK, n_scored))
        h_BCD = jnp.take_along_axis(hidden_BTD, at_BC[:, sl, None], axis=1)
        logits_BCV = model.logits(h_BCD)  # float32
        logp_BCV = jax.nn.log_softmax(logits_BCV, axis=-1)
        tgt_BC = targets_BC[:, sl]
        lp_BC = jnp.take_along_axis(logp_BCV, tgt_BC[..., None], axis=-1)[..., 0]
        ok_BC = valid_BC[:, sl]
        total_B += jnp.sum(jnp.where(ok_BC, lp_BC, 0.0), axis=1)
        hit_BC = jnp.argmax(logits_BCV, axis=-1) == tgt_BC
        greedy_B &= jnp.all(hit_BC | ~ok_BC, axis=1)
    return total_B, greedy_B


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_logits(graphdef, state, tokens_BT, lengths_B):
    model = nnx.merge(graphdef, state)
    b, t = tokens_BT.shape
    pos_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    seg_BT = (pos_BT < lengths_B[:, None]).astype(jnp.int32)
    hidden_BTD = model(tokens_BT, pos_BT, seg_BT)
    last_B1D = jnp.take_along_axis(hidden_BTD, (lengths_B - 1)[:, None, None], axis=1)
    return model.logits(last_B1D)[:, 0]


def _put(mesh, *arrays):
    if mesh is None:
        return arrays
    from jax.sharding import NamedSharding, PartitionSpec as P
    rep = NamedSharding(mesh, P())
    return tuple(jax.device_put(a, rep) for a in arrays)


def continuation_logprobs(model, rows: list[tuple[list[int], list[int]]], *, pad_id: int,
                          width: int, n_scored: int | None = None, mesh=None
                          ) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), greedy?) per (context, continuation) pair.

    Args:
      model: an `lctx.model.Llama`.
      rows: (context ids, continuation ids) with len(context) >= 1, len(continuation) >= 1
        and len(context) + len(continuation) - 1 <= width.
      pad_id: filler id for padding (never attended to).
      width: the static padded length T of the call (the caller buckets it).
      n_scored: the static number C of scored positions (>= the longest continuation).
      mesh: a mesh the model's parameters are sharded over (inputs are replicated).
    """
    b = len(rows)
    n_scored = n_scored or max(len(c) for _, c in rows)
    tokens_BT = np.full((b, width), pad_id, np.int32)
    targets_BC = np.zeros((b, n_scored), np.int32)
    lengths_B = np.zeros((b,), np.int32)
    n_cont_B = np.zeros((b,), np.int32)
    for r, (ctx, cont) in enumerate(rows):
        whole = list(ctx) + list(cont)
        inp = whole[:-1]  # the last token is only a target
        if not ctx or not cont or len(inp) > width or len(cont) > n_scored:
            raise ValueError(f"row {r}: context {len(ctx)} and continuation {len(cont)} "
                             f"tokens do not fit width {width} (both must be >= 1)")
        tokens_BT[r, :len(inp)] = inp
        lengths_B[r], n_cont_B[r] = len(inp), len(cont)
        targets_BC[r, :len(cont)] = cont
    graphdef, state = nnx.split(model)
    args = _put(mesh, tokens_BT, lengths_B, targets_BC, n_cont_B)
    total_B, greedy_B = _scores(graphdef, state, *args, n_scored=n_scored)
    total_B, greedy_B = np.asarray(total_B), np.asarray(greedy_B)
    return [(float(total_B[r]), bool(greedy_B[r])) for r in range(b)]


def next_token_logits(model, prompts: list[list[int]], *, pad_id: int, width: int,
                      mesh=None) -> np.ndarray:
    """float32 logits [B, V] of the token after each prompt (prompts right-padded to width)."""
    tokens_BT = np.full((len(prompts), width), pad_id, np.int32)
    lengths_B = np.array([len(p) for p in prompts], np.int32)
    for r, p in enumerate(prompts):
        tokens_BT[r, :len(p)] = p
    graphdef, state = nnx.split(model)
    return np.asarray(_last_logits(graphdef, state, *_put(mesh, tokens_BT, lengths_B)))
