"""A run checked before anything is written: every stage still to run, by field name.

`validate(run, mesh)` raises `lctx.run.ConfigError` for the first mistake it finds, with the
field (`stages.s2_350k.seq_len`, `ckpt.every_steps`, ...) and the fix in the message, and
returns a `Plan`: where the run resumes, which stages it trains, and each of those stages
built and its train step traced (the trainer compiles that trace). What it checks:

  * fields: checkpoint and logging intervals, batch vs grad_accum and processes, epochs;
  * the workdir: a stage's checkpoints agree with its config (RoPE, length, and a finished
    stage is not silently "extended" by more steps);
  * every stage to run: RoPE, length vs model.max_seq_len, the attn section against its
    length and the mesh (kernel, ring blocks, the token layout the data applies), data paths
    and record counts against steps x batch (one epoch unless data.epochs says otherwise),
    and the train step traced abstractly on the mesh;
  * the tokenizer loads; ckpt.init_from's architecture matches the model section.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax

from lctx import attention
from lctx import hf
from lctx import sharding
from lctx import stage_evals
from lctx import step as step_lib
from lctx.run import ConfigError, Run, Stage


@dataclasses.dataclass
class Plan:
    """What a valid run will do."""
    found: Any  # lctx.checkpoint.Found to resume from, or None
    todo: list[str]  # stages to train, in order
    built: dict[str, tuple[Any, Any]]  # stage -> (lctx.step.Built, its traced train step)


def validate(run: Run, mesh) -> Plan:
    """Checks `run` on `mesh` (see the module docstring); raises ConfigError."""
    cfg = run.cfg
    if not run.stages:
        raise ConfigError("the config has no stages: add cfg.stages.<name> = common.stage(...)")
    check_fields(cfg)
    for name in run.stages:
        run.stage(name)  # RoPE, seq_len and the model config of every stage
    stage_evals.check(run)
    found = run.latest()
    first = 0 if found is None else run.stages.index(found.stage) + int(found.finished)
    for name in run.stages[:first + 1 if found is not None else 0]:
        check_checkpoint(run, run.stage(name))
    todo = run.stages[first:]
    if not todo:
        return Plan(found, todo, {})
    run.render  # the tokenizer loads
    fresh = found is None or found.stage != todo[0]
    if first == 0 and fresh:
        if cfg.ckpt.resume_from and not os.path.isdir(cfg.ckpt.resume_from):
            raise ConfigError(f"ckpt.resume_from={cfg.ckpt.resume_from!r} is not a directory; "
                              "point it at another run's workdir or <workdir>/ckpt/<stage>")
        if cfg.ckpt.init_from and not cfg.ckpt.resume_from:
            check_init_from(run)
    for name in todo:  # cheap checks of every stage before any is built
        check_attention(run, run.stage(name), mesh)
    built = {}
    for name in todo:
        stage = run.stage(name)
        check_data(run, stage)
        built[name] = check_shapes(run, stage, mesh)
    return Plan(found, todo, built)


def check_fields(cfg) -> None:
    """Intervals, batch arithmetic and the data options (no stage, no disk)."""
    positive = {"ckpt.every_steps": cfg.ckpt.every_steps, "ckpt.keep": cfg.ckpt.keep,
                "log.every_steps": cfg.log.every_steps, "data.batch_size": cfg.data.batch_size,
                "data.epochs": cfg.data.epochs, "opt.grad_accum": cfg.opt.grad_accum}
    for field, value in positive.items():
        if int(value) < 1:
            raise ConfigError(f"{field}={value} must be >= 1" + (
                " (a stage always saves at its end: a large value saves only there)"
                if field == "ckpt.every_steps" else ""))
    if cfg.eval.every_steps < 0 or (cfg.eval.every_steps and cfg.eval.batches < 1):
        raise ConfigError(f"eval.every_steps={cfg.eval.every_steps} (0 = off) and eval.batches="
                          f"{cfg.eval.batches} must be >= 0 and >= 1")
    b = cfg.data.batch_size
    if b % cfg.opt.grad_accum:
        raise ConfigError(f"data.batch_size={b} is not divisible by opt.grad_accum="
                          f"{cfg.opt.grad_accum}")
    if b % jax.process_count():
        raise ConfigError(f"data.batch_size={b} is not divisible by the {jax.process_count()} "
                          "JAX processes")
    dtype = cfg.ckpt.get("export_dtype", "bfloat16")
    if dtype not in hf.EXPORT_DTYPES:
        raise ConfigError(f"ckpt.export_dtype={dtype!r}; use one of "
                          f"{', '.join(hf.EXPORT_DTYPES)} (the weights' dtype in HF exports)")
    if cfg.data.overlong not in ("truncate", "drop"):
        raise ConfigError(f"data.overlong={cfg.data.overlong!r}; use 'truncate' or 'drop'")
    if cfg.data.read_threads < 0 or cfg.data.read_buffer < 0:
        raise ConfigError(f"data.read_threads={cfg.data.read_threads} and data.read_buffer="
                          f"{cfg.data.read_buffer} must be >= 0")


def check_checkpoint(run: Run, stage: Stage) -> None:
    """A stage's checkpoint in this workdir must come from the stage's current config."""
    found = run.latest(stage.name)
    if found is None:
        return
    with run.checkpoints(stage.name, async_save=False) as mgr:
        meta = mgr.read_meta(found.step)
    where = f"{stage.ckpt_dir} (step {found.step})"
    if meta.get("rope") not in (None, stage.rope_dict):
        raise ConfigError(f"stages.{stage.name}.rope={stage.rope_dict} but the checkpoint in "
                          f"{where} was trained with {meta['rope']}; restore the setting or "
                          "use a new --workdir")
    if meta.get("seq_len") not in (None, stage.seq_len):
        raise ConfigError(f"stages.{stage.name}.seq_len={stage.seq_len} but the checkpoint in "
                          f"{where} was trained at {meta['seq_len']}; restore the setting or "
                          "use a new --workdir")
    steps = meta.get("steps")
    if stage.configured_steps < 1 or steps in (None, stage.configured_steps):
        return
    if found.finished:
        raise ConfigError(
            f"stages.{stage.name}.steps={stage.configured_steps} but the stage already "
            f"finished at {steps} steps in this workdir ({where}); a finished stage is not "
            f"extended. Set it back to {steps}, or train further in a new --workdir with "
            f"--config.ckpt.resume_from={stage.ckpt_dir}")
    logging.warning("stages.%s.steps=%d but its checkpoint was written for %d steps: the "
                    "learning-rate schedule now spans %d", stage.name, stage.configured_steps,
                    steps, stage.configured_steps)


def check_init_from(run: Run) -> None:
    """ckpt.init_from is an HF Llama directory whose shapes are the model section's."""
    directory = run.cfg.ckpt.init_from
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt.init_from={directory!r} has no config.json: point it at an HF "
                          "Llama directory (config.json + *.safetensors)")
    with open(path, encoding="utf-8") as f:
        theirs = hf.config_from_hf(json.load(f))
    ours = run.stage(run.stages[0]).model
    fields = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
              "mlp_dim", "tie_embeddings")
    bad = [f"model.{f}={getattr(ours, f)} (HF: {getattr(theirs, f)})" for f in fields
           if getattr(ours, f) != getattr(theirs, f)]
    if bad:
        raise ConfigError(f"ckpt.init_from={directory!r} does not match the model section: "
                          f"{', '.join(bad)}; set the model section to the HF config.json's "
                          "values")


def check_attention(run: Run, stage: Stage, mesh) -> None:
    """The attn section against the stage's length and the mesh: kernel, blocks, and the
    ring's token layout (`lctx.attention.validate`)."""
    a, context = run.cfg.attn, int(mesh.shape.get(sharding.CONTEXT, 1))
    try:
        attention.validate(a.impl, a.get("kernel", "xla"), a.block_q, a.block_k,
                           seq_len=stage.seq_len, context=context, prefix="attn",
                           seq_field=f"stages.{stage.name}.seq_len",
                           layout=a.get("ring_layout", "zigzag"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_data(run: Run, stage: Stage) -> None:
    """Shards exist, and steps x batch fits in data.epochs passes over the records."""
    d = run.cfg.data
    stage.data_paths  # noqa: B018  (resolves, or names the field)
    rows = stage.steps * int(d.batch_size)
    limit = stage.records * int(d.epochs)  # a row holds at least one record
    if rows > limit:
        per_epoch = stage.records // int(d.batch_size)
        raise ConfigError(
            f"stages.{stage.name}.steps={stage.steps} x data.batch_size={d.batch_size} = "
            f"{rows} rows, but {stage.data_field} has {stage.records} records and "
            f"data.epochs={d.epochs}: the data would repeat. Set stages.{stage.name}.steps="
            f"{max(per_epoch, 1)} or -1 (one epoch), add data, or raise data.epochs to "
            "repeat it on purpose")


def check_shapes(run: Run, stage: Stage, mesh) -> tuple[Any, Any]:
    """Builds the stage and traces its train step abstractly on the mesh (seq_len vs mesh
    and block sizes); returns (Built, the traced step) for the trainer to compile."""
    a = run.cfg.attn
    what = (f"stages.{stage.name}.seq_len={stage.seq_len} with attn.impl={a.impl!r}, "
            f"attn.block_q/block_k={a.block_q}/{a.block_k}, mesh {dict(mesh.shape)}, "
            f"data.batch_size={run.cfg.data.batch_size}, opt.grad_accum={run.cfg.opt.grad_accum}")
    try:
        with sharding.use_mesh(mesh, run.rules):
            built = step_lib.build_stage(run, stage, mesh)
            traced = built.step_fn.trace(built.abstract,
                                         step_lib.abstract_batch(built, run.cfg.data.batch_size))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what}: {e}") from e
    return built, traced
