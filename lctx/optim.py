"""AdamW with the learning rate outside the optimizer state, and per-stage LR schedules.

The optax transform holds only clipping, Adam moments and decoupled weight decay; the
train step multiplies its update by `-schedule(step)`, where `step` counts this stage's
optimizer steps. That keeps "carry Adam moments into the next stage" and "start a new LR
schedule in the next stage" independent: carrying the optimizer state never drags the old
schedule's position along.
"""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]


def make_schedule(*, lr: float, warmup_steps: int, total_steps: int, kind: str,
                  end_lr_frac: float) -> Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine/linear/constant decay.

    The LR of step s (0-based) is taken at s + 1 so the first update is not zero.
    """
    if lr <= 0:
        raise ValueError(f"opt.lr={lr} must be > 0")
    if total_steps < 1:
        raise ValueError(f"stage steps={total_steps} must be >= 1")
    if kind not in ("cosine", "linear", "constant"):
        raise ValueError(f"opt.schedule={kind!r}; expected cosine, linear or constant")
    warmup = max(0, min(warmup_steps, total_steps))
    end = lr * end_lr_frac

    def schedule(step):
        s = jnp.asarray(step, jnp.float32) + 1.0
        warm = lr * jnp.minimum(1.0, s / max(warmup, 1))
        frac = jnp.clip((s - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        if kind == "cosine":
            decayed = end + (lr - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        elif kind == "linear":
            decayed = lr + (end - lr) * frac
        else:
            decayed = jnp.asarray(lr, jnp.float32)
        return jnp.where(s <= warmup, warm, decayed)

    return schedule


def make_tx(opt_cfg: Any) -> optax.GradientTransformation:
    """Clip by global norm, Adam moments, decoupled weight decay (no LR: see module doc)."""
    parts = []
    if opt_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.clip_norm))
    parts.append(optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps))
    if opt_cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(opt_cfg.weight_decay))
    return optax.chain(*parts)
