"""Orbax checkpoints of the whole training state, one manager per stage.

Layout under the workdir::

    ckpt/<stage>/<step>/state   params, optimizer state, step, RNG (StandardSave, sharded)
    ckpt/<stage>/<step>/data    the grain iterator state of every process
    ckpt/<stage>/<step>/meta    JSON: stage name, step, steps of the stage, RoPE, finished

Saves are atomic (orbax writes a temporary directory and renames it) and may be async;
`latest()` only ever sees finished checkpoints. A stage whose final step is saved is
"finished": the next stage starts from it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


@dataclasses.dataclass(frozen=True)
class Found:
    """A checkpoint to resume from."""
    stage: str
    step: int
    finished: bool
    directory: str


class StageCheckpoints:
    """CheckpointManager for one stage's directory (`<root>/<stage>`)."""

    def __init__(self, root: str, stage: str, *, keep: int = 2, async_save: bool = True):
        self.stage = stage
        self.directory = os.path.join(os.path.abspath(root), stage)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=opts,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, meta: dict[str, Any],
             *, force: bool = False) -> None:
        """Saves state, the iterator position and metadata together as one step."""
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> tuple[Any, dict]:
        """Restores into `abstract_state`'s shapes, dtypes and shardings (and the iterator)."""
        args = {"state": ocp.args.StandardRestore(abstract_state),
                "meta": ocp.args.JsonRestore()}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        return out["state"], out["meta"]

    def read_meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> "StageCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def abstract(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree of arrays (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def find_resume(root: str, stages: list[str]) -> Found | None:
    """The latest checkpoint of the latest stage that has one, or None.

    Stages are searched from the last to the first, so a finished stage 1 with an empty
    stage-2 directory resumes as 'stage 1 finished' and the caller starts stage 2 from it.
    """
    for stage in reversed(stages):
        d = os.path.join(os.path.abspath(root), stage)
        if not os.path.isdir(d):
            continue
        mgr = StageCheckpoints(root, stage, async_save=False)
        step = mgr.latest_step()
        if step is None:
            mgr.close()
            continue
        meta = mgr.read_meta(step)
        mgr.close()
        logging.info("checkpoint: found %s step %d (finished=%s)", stage, step,
                     meta.get("finished"))
        return Found(stage, step, bool(meta.get("finished")), d)
    return None


def load_external(directory: str, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the latest step of another run's stage directory (`ckpt.resume_from`).

    `directory` is `<other workdir>/ckpt/<stage>` or that run's workdir (last stage found).
    The iterator state is not restored: a new run reads its own data from the start.
    """
    directory = os.path.abspath(directory)
    if os.path.isdir(os.path.join(directory, "ckpt")):
        stages = sorted(os.listdir(os.path.join(directory, "ckpt")))
        found = find_resume(os.path.join(directory, "ckpt"), stages)
        if found is None:
            raise FileNotFoundError(f"ckpt.resume_from={directory!r} has no checkpoint")
        directory = found.directory
    mgr = StageCheckpoints(os.path.dirname(directory), os.path.basename(directory),
                           async_save=False)
    step = mgr.latest_step()
    if step is None:
        raise FileNotFoundError(f"ckpt.resume_from={directory!r} has no checkpoint; "
                                "point it at <workdir>/ckpt/<stage> of a previous run")
    state, meta = mgr.restore(step, abstract_state)
    mgr.close()
    return state, meta


def load_params(directory: str, step: int, mcfg: Any, mesh: Any = None,
                rules: Any = None) -> tuple[Any, dict]:
    """A `Llama` with the parameters of `<directory>/<step>` (a stage directory's step).

    Only the `params` of the saved {params, opt, step, rng} are read, straight into their
    shardings on `mesh` by `rules` (default: lctx.sharding's; no mesh: the first device);
    the optimizer moments are never loaded.

    Returns:
      (the model, the checkpoint's meta dict).
    """
    from flax import nnx

    from lctx import model as model_lib
    from lctx import sharding
    step_dir = os.path.join(os.path.abspath(directory), str(step))
    graphdef, abs_params = nnx.split(nnx.eval_shape(lambda: model_lib.Llama(
        mcfg, rngs=nnx.Rngs(0))))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = (sharding.param_shardings(abs_params, mesh, rules or sharding.DEFAULT_RULES)
                 if mesh is not None else
                 jax.tree.map(lambda _: device, abs_params))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abs_params, shardings)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
            item={"params": target}, partial_restore=True,
            restore_args={"params": ocp.checkpoint_utils.construct_restore_args(target)}))
    meta = {}
    if os.path.isdir(os.path.join(step_dir, "meta")):
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
            os.path.join(step_dir, "meta"))
    return nnx.merge(graphdef, restored["params"]), meta
