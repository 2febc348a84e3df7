"""Training beacon adapters on a frozen base: the trainer's loop with a windowed loss.

The loss of a [B, T] batch (T a multiple of the window W) scans over its T / W windows: each
window is one `BeaconModel.step` whose raw tokens' next-token loss is summed (answer-only for
conversation records, every token for plain text), the memory is the scan carry, so gradients
flow back through every earlier window's beacons (BPTT, as the reference: no detach). The
window body is rematerialised: the backward recomputes a window's activations, and what is
kept per window is its memory carry, bounded by the static capacity.

Each optimizer step trains one ratio, drawn from `beacon.train_ratios` (weights
`beacon.ratio_weights`) by a generator seeded with (seed, step), so a resumed run draws the
same ratios; with adapter 'experts' the step's ratio picks its expert, so each expert only
ever sees its own ratio (Li et al.); 'shared' and 'clone' train one adapter on all of them.
A ratio fixes the number of beacons, a static shape: one compiled step per ratio.

The trainer state of a beacon run: `params` = the adapter (`lora.AdapterParam`), `frozen` =
the base; `micro_loss` has the signature of the trainer's micro-batch loss plus that entry.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lctx import beacon as rules
from lctx import loss as loss_lib
from lctx import lora


def beacon_config(section) -> rules.BeaconConfig:
    """`BeaconConfig` from a run config's `beacon` section (unknown fields are ignored)."""
    names = {f for f in rules.BeaconConfig.__dataclass_fields__}
    kw = {k: section[k] for k in section.keys() if k in names}
    for k in ("ratios", "targets"):
        if k in kw and isinstance(kw[k], str):
            kw[k] = tuple(x.strip() for x in kw[k].split(",") if x.strip())
    if "ratios" in kw:
        kw["ratios"] = tuple(int(r) for r in kw["ratios"])
    return rules.BeaconConfig(**kw)


def window_loss_sums(model, batch: dict, *, ratio: int, expert, chunk: int = 1024,
                     remat: bool = True):
    """(loss sum, loss tokens) of a batch read window by window through the beacons."""
    inputs_BT = batch["inputs"]
    b, t = inputs_BT.shape
    w = model.bcfg.window
    if t % w:
        raise rules.BeaconError(f"training length {t} is not a multiple of beacon.window={w}; "
                                "set the stage seq_len to n * window.")
    n = t // w
    cap = n * rules.beacons_per_window(w, ratio)
    windows = lambda x: jnp.moveaxis(x.reshape(b, n, w), 1, 0)  # noqa: E731
    unembed = model.base.unembedding()

    def body(mem, xs):
        tok_BW, tgt_BW, wt_BW = xs
        hidden_BWD, mem = model.step(tok_BW, mem, ratio=ratio, expert=expert)
        return mem, loss_lib.chunked_cross_entropy_sum(hidden_BWD, unembed, tgt_BW, wt_BW,
                                                       chunk=min(chunk, w))

    if remat:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    _, sums = jax.lax.scan(body, model.init_memory(b, cap), (
        windows(inputs_BT), windows(batch["targets"]), windows(batch["weights"])))
    return sums.sum(), batch["weights"].sum()


def micro_loss(params, graphdef, batch, loss_chunk, frozen, *, ratio: int, expert: int,
               remat: bool = True):
    """`lctx.trainer.train_step`'s micro-batch loss for beacon training (adapter params)."""
    model = nnx.merge(graphdef, params, frozen)
    return window_loss_sums(model, batch, ratio=ratio, expert=expert, chunk=loss_chunk,
                            remat=remat)[0]


def ratio_for_step(seed: int, step: int, ratios, weights=None) -> int:
    """The ratio trained at `step` (seeded by (seed, step): resumes draw the same ones)."""
    rng = np.random.default_rng([int(seed), int(step)])
    p = None if not weights else np.asarray(weights, np.float64) / np.sum(weights)
    return int(rng.choice(np.asarray(ratios), p=p))


def split_model(model):
    """(graphdef, adapter state, frozen base state) of a `BeaconModel`."""
    return nnx.split(model, lora.AdapterParam, ...)


def load_base_params(path: str, abstract_params):
    """Parameters of an lctx run's latest checkpoint (`<workdir>`, `ckpt/<stage>` or a step
    directory) restored into `abstract_params` (the base model's state); the optimizer
    state is never read."""
    import orbax.checkpoint as ocp

    from lctx import checkpoint as ckpt_lib
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, "state")):
        if os.path.isdir(os.path.join(path, "ckpt")):
            root = os.path.join(path, "ckpt")
            found = ckpt_lib.find_resume(root, sorted(os.listdir(root)))
            if found is None:
                raise FileNotFoundError(f"{path}: no checkpoint under {root}")
            path = found.directory
        mgr = ckpt_lib.StageCheckpoints(os.path.dirname(path), os.path.basename(path),
                                        async_save=False)
        step = mgr.latest_step()
        mgr.close()
        if step is None:
            raise FileNotFoundError(f"ckpt.resume_from={path!r} has no checkpoint; point it at "
                                    "the base run's workdir or <workdir>/ckpt/<stage>")
        path = os.path.join(path, str(step))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)
    out = ocp.PyTreeCheckpointer().restore(
        os.path.join(path, "state"), args=ocp.args.PyTreeRestore(
            item={"params": target}, partial_restore=True,
            restore_args={"params": ocp.checkpoint_utils.construct_restore_args(target)}))
    return out["params"]
