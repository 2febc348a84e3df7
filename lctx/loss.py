"""Chunked cross-entropy over the unembedding: [T, V] logits never exist at once.

At 1M tokens and a 128K vocabulary full fp32 logits are ~0.5 TB per sequence. The loss scans
over chunks of T, computes each chunk's logits in float32, reduces them to (loss sum, correct
count) and drops them; the chunk body is rematerialised so the backward recomputes each
chunk's logits instead of saving them. Memory is O(B * chunk * V).

Axes: B batch, T positions, C chunk length, D model dim, V vocab, P = B * C tokens.

A training step calls `loss_fn(model, batch)`; batch keys tokens, positions, segment_ids,
targets, loss_mask, all [B, T].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_F32 = jnp.float32
BATCH_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask")


def _chunk_stats(h_BCD, w_DV, tgt_BC, mask_BC):
    """(sum of masked token losses, masked correct count) of one chunk, float32.

    The chunk's B * C tokens are one axis P (bitcast reshapes): the unembedding's weight
    gradient then contracts one axis, not (B, C), which XLA:CPU lowers by first transposing
    the [B, C, V] logits cotangent (see lctx.model._tokens).
    """
    b, c, d = h_BCD.shape
    logits_PV = jnp.einsum("pd,dv->pv", h_BCD.reshape(b * c, d), w_DV,
                           preferred_element_type=_F32)
    tgt_P, mask_P = tgt_BC.reshape(-1), mask_BC.reshape(-1)
    lse_P = jax.nn.logsumexp(logits_PV, axis=-1)
    tgt_logit_P = jnp.take_along_axis(logits_PV, tgt_P[:, None], axis=-1)[:, 0]
    loss_sum = jnp.sum((lse_P - tgt_logit_P) * mask_P)
    correct = jnp.sum((jnp.argmax(logits_PV, axis=-1) == tgt_P) * mask_P)
    return loss_sum, jax.lax.stop_gradient(correct)


def cross_entropy_sums(hidden_BTD, w_DV, targets_BT, loss_mask_BT, chunk: int = 1024):
    """Unnormalised chunked cross-entropy: (loss_sum, num_tokens, num_correct), float32.

    Use the sums to normalise by a global token count (across devices, micro-batches).

    Args:
      hidden_BTD: final-normed hidden states (any float dtype).
      w_DV: unembedding [D, V] (same dtype as hidden, or castable).
      targets_BT: int next-token ids; entries where the mask is 0 may hold anything in [0, V).
      loss_mask_BT: 1 where the token counts (bool, int or float weights).
      chunk: tokens of T per chunk (clipped to T; T is padded up to a multiple with mask 0).
    """
    b, t, d = hidden_BTD.shape
    if w_DV.shape[0] != d:
        raise ValueError(f"unembedding {w_DV.shape} does not match hidden dim D={d}.")
    if targets_BT.shape != (b, t) or loss_mask_BT.shape != (b, t):
        raise ValueError(f"targets {targets_BT.shape} and loss_mask {loss_mask_BT.shape} must be "
                         f"[B, T] = {(b, t)}.")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive number of tokens.")
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t
    mask_BT = loss_mask_BT.astype(_F32)
    tgt_BT = targets_BT.astype(jnp.int32)
    if pad:
        hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
        tgt_BT, mask_BT = (jnp.pad(x, ((0, 0), (0, pad))) for x in (tgt_BT, mask_BT))
    w_DV = w_DV.astype(hidden_BTD.dtype)
    to_chunks = lambda x: jnp.moveaxis(x.reshape((b, n, c) + x.shape[2:]), 1, 0)  # noqa: E731
    # Remat: the backward recomputes a chunk's logits rather than keeping n of them alive.
    stats = jax.checkpoint(_chunk_stats, policy=jax.checkpoint_policies.nothing_saveable)

    def step(carry, xs):
        h_BCD, tgt_BC, mask_BC = xs
        loss_sum, correct = stats(h_BCD, w_DV, tgt_BC, mask_BC)
        return (carry[0] + loss_sum, carry[1] + correct), None

    zero = jnp.zeros((), _F32)
    (loss_sum, correct), _ = jax.lax.scan(
        step, (zero, zero), (to_chunks(hidden_BTD), to_chunks(tgt_BT), to_chunks(mask_BT)))
    return loss_sum, jnp.sum(mask_BT), correct


def chunked_cross_entropy_sum(hidden_BTD, w_DV, targets_BT, loss_mask_BT, chunk: int = 1024):
    """Sum of masked token losses only (a scalar to differentiate; divide by a global count)."""
    return cross_entropy_sums(hidden_BTD, w_DV, targets_BT, loss_mask_BT, chunk)[0]


def chunked_cross_entropy(hidden_BTD, w_DV, targets_BT, loss_mask_BT, chunk: int = 1024):
    """Mean cross-entropy over loss tokens and aux metrics, never building [T, V] logits.

    Returns:
      (loss, aux) with loss = loss_sum / max(num_tokens, 1) and aux a dict of float32 scalars
      `loss_sum`, `num_tokens`, `accuracy` (argmax == target over loss tokens).
    """
    loss_sum, num, correct = cross_entropy_sums(hidden_BTD, w_DV, targets_BT, loss_mask_BT,
                                                chunk)
    denom = jnp.maximum(num, 1.0)  # an all-masked batch gives loss 0, not NaN
    return loss_sum / denom, {"loss_sum": loss_sum, "num_tokens": num,
                              "accuracy": correct / denom}


def loss_fn(model, batch: dict, chunk: int = 1024):
    """Training loss of an `lctx.model.Llama` on a packed batch.

    Args:
      model: the NNX model (differentiate with `nnx.value_and_grad(loss_fn, has_aux=True)`).
      batch: dict with `BATCH_KEYS`, each [B, T].
      chunk: cross-entropy chunk length in tokens.

    Returns:
      (loss, aux): mean token loss and {'loss_sum', 'num_tokens', 'accuracy'}.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing key(s) {missing}; expected {BATCH_KEYS}.")
    hidden_BTD = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    return chunked_cross_entropy(hidden_BTD, model.unembedding(), batch["targets"],
                                 batch["loss_mask"], chunk)
