"""The training library: a pure, module-level `train_step` and the multi-stage loop.

State is a dict pytree {params, opt, step, rng}: fp32 master weights (the model computes in
`model.dtype`), the optax state, this stage's step and a PRNG key. `train_step(state, batch)`
is compiled once per stage ahead of time with shardings and the state donated; metrics are a
flat dict with '/' keys, fetched one step late so the host never blocks the device.

    train_and_evaluate(cfg, workdir)
      validate: every stage to run checked, built and its step traced (nothing written)
      per stage (train_stage): data -> restore -> compile -> train_loop -> save, export

Resume order (`restore`, once): this workdir's checkpoint of the stage > the previous stage's
final checkpoint > ckpt.resume_from (another run) > ckpt.init_from (HF weights) > scratch.
No state is built before its source is known: the model is abstract until restored,
loaded (HF weights go straight into their shardings) or initialised.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lctx import checkpoint as ckpt_lib
from lctx import data as data_lib
from lctx import hf
from lctx import metrics as metrics_lib
from lctx import run as run_lib
from lctx import sharding
from lctx import stage_evals
from lctx import validate as validate_lib
from lctx.run import ConfigError
from lctx.step import Built, eval_step, flops_per_token, fresh_state
# lctx.plan and bench/ read these here (they live in lctx.run / lctx.step).
from lctx.run import model_config  # noqa: F401,E402
from lctx.step import batch_sharding, train_step  # noqa: F401,E402


class NonFiniteLoss(RuntimeError):
    """Raised after a non-finite loss: the state was saved under <workdir>/nonfinite/."""


def stage_dataset(run: run_lib.Run, stage: run_lib.Stage, mesh, *, paths=None, seed=None,
                  stats=None, epochs=None):
    """The one way a stage's batches are made (training: epochs=data.epochs; eval: None)."""
    d, m = run.cfg.data, stage.model
    return data_lib.make_dataset(
        paths or stage.data_paths, run.render, seq_len=stage.seq_len,
        batch_size=d.batch_size, seed=d.seed if seed is None else seed, pack=d.pack,
        packing_bins=d.packing_bins, overlong=d.overlong,
        context_shards=int(mesh.shape.get(sharding.CONTEXT, 1)), ring_layout=m.ring_layout,
        ring_blocks=(m.block_q, m.block_k),
        process_index=jax.process_index(), process_count=jax.process_count(), stats=stats,
        read_threads=d.read_threads, read_buffer=d.read_buffer, epochs=epochs)


# ---- where the state comes from ------------------------------------------------------------

def _adopt(built: Built, params, opt=None) -> dict:
    """A new stage's state from given parameters (and optimizer state, when carried)."""
    sh = built.shardings
    params = jax.device_put(params, sh["params"])
    if opt is None:
        opt = jax.jit(built.tx.init, out_shardings=sh["opt"])(params)
    seed = built.stage.run.cfg.seed
    return {"params": params, "opt": jax.device_put(opt, sh["opt"]),
            "step": jax.device_put(jnp.zeros((), jnp.int32), sh["step"]),
            "rng": jax.device_put(jax.random.key_data(jax.random.key(seed)), sh["rng"])}


def restore(run: run_lib.Run, built: Built, data_iter, found) -> tuple[dict, str]:
    """The stage's starting state by the resume order of the module docstring.

    Returns (state, a phrase saying where it came from). Only this stage's own checkpoint
    moves `data_iter` (to the saved position); every other source starts the data afresh.
    """
    stage, cfg = built.stage, run.cfg
    if built.restore is not None:  # a plug-in stage (lctx.step.STAGE_PLUGINS) restores itself
        return built.restore(run, built, data_iter, found)
    prev = run.previous(stage)
    if found is not None and found.stage == stage.name:
        with run.checkpoints(stage.name, async_save=False) as mgr:
            state, _ = mgr.restore(found.step, built.abstract, data_iter)
        return state, f"its own checkpoint, step {found.step}"
    if prev is not None:
        with run.checkpoints(prev.name, async_save=False) as mgr:
            step = mgr.latest_step()
            st, _ = mgr.restore(step, built.abstract)
        carry = stage.carry_opt_state
        return _adopt(built, st["params"], st["opt"] if carry else None), (
            f"{prev.name} step {step} (optimizer state {'carried' if carry else 'fresh'})")
    if cfg.ckpt.resume_from:
        st, meta = ckpt_lib.load_external(cfg.ckpt.resume_from, built.abstract)
        return _adopt(built, st["params"]), (f"ckpt.resume_from={cfg.ckpt.resume_from} "
                                             f"({meta.get('stage')} step {meta.get('step')})")
    if cfg.ckpt.init_from:
        # Every field of the stage's model config except the compute dtype, which load_hf's
        # `dtype` argument would take for the parameter dtype; the params do not depend on it.
        fields = {f.name: getattr(stage.model, f.name) for f in dataclasses.fields(
            stage.model) if f.name != "dtype"}
        _, model = hf.load_hf(cfg.ckpt.init_from, shardings=built.shardings["params"],
                              **fields)
        return _adopt(built, nnx.state(model, nnx.Param)), (
            f"HF weights ckpt.init_from={cfg.ckpt.init_from}")
    init = jax.jit(functools.partial(fresh_state, stage.model, built.tx, cfg.seed),
                   out_shardings=built.shardings)
    return init(), f"scratch (seed {cfg.seed})"


# ---- the loop --------------------------------------------------------------------------------

@dataclasses.dataclass
class StageRun:
    """What the loop of one stage reads and updates."""
    run: run_lib.Run
    built: Built
    writer: metrics_lib.MetricWriter
    data_iter: Any
    stats: data_lib.Stats
    state: dict = None
    compiled: Any = None
    last_metrics: dict = dataclasses.field(default_factory=dict)
    eval_batches: list | None = None
    peeked: dict | None = None  # the first batch, read before anything is written

    @property
    def stage(self) -> run_lib.Stage:
        return self.built.stage

    def next_batch(self, step: int) -> dict:
        if self.peeked is not None:
            batch, self.peeked = self.peeked, None
            return batch
        try:
            local = next(self.data_iter)
        except StopIteration:
            st, d = self.stage, self.run.cfg.data
            raise data_lib.DataError(
                f"stage {st.name}: the data ran out at step {step} of {st.steps}: "
                f"{st.records} records in {st.data_field}, read data.epochs={d.epochs} "
                f"time(s). Lower stages.{st.name}.steps to {step} (or -1: one epoch), or "
                "raise data.epochs to repeat the data on purpose") from None
        return {k: jax.make_array_from_process_local_data(self.built.batch_sharding, v)
                for k, v in local.items()}

    def save(self, step: int, finished: bool = False, mgr=None) -> None:
        st = self.stage
        meta = {"stage": st.name, "step": step, "steps": st.steps, "finished": finished,
                "seq_len": st.seq_len, "rope": st.rope_dict, "data": self.stats.as_dict()}
        mgr.save(step, self.state, self.data_iter, meta, force=finished)


def train_loop(sr: StageRun, start: int, mgr) -> None:
    """Runs steps `start..steps-1`, evaluating and saving on schedule, then the final save."""
    cfg, st = sr.run.cfg, sr.stage
    timer = metrics_lib.StepTimer()
    pending = None
    for step in range(start, st.steps):
        batch = sr.next_batch(step)
        timer.dispatched(step)
        sr.state, metrics = sr.compiled(sr.state, batch)
        if pending is not None:  # one step late: the device is already on `step`
            report(sr, timer, *pending)
        pending = (step, metrics, int(np.prod(batch["inputs"].shape)))
        last = step + 1 == st.steps
        if cfg.eval.every_steps > 0 and ((step + 1) % cfg.eval.every_steps == 0 or last):
            report(sr, timer, *pending)
            pending = None
            evaluate(sr, step)
            timer.pause()
        if (step + 1) % cfg.ckpt.every_steps == 0 and not last:
            if pending is not None:
                report(sr, timer, *pending)
                pending = None
            sr.save(step + 1, mgr=mgr)
            timer.pause()
    if pending is not None:
        report(sr, timer, *pending)
    sr.save(st.steps, finished=True, mgr=mgr)
    mgr.wait()


def report(sr: StageRun, timer: metrics_lib.StepTimer, step: int, metrics: dict,
           tokens: int) -> None:
    """Fetches a step's metrics and writes them; a non-finite loss saves and stops."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    dt = timer.finished(step)
    st = sr.stage
    if not np.isfinite(m["train/loss"]):
        d = os.path.join(sr.run.workdir, "nonfinite")
        with ckpt_lib.StageCheckpoints(d, st.name, async_save=False) as nf:
            nf.save(step + 1, sr.state, None, {"stage": st.name, "step": step + 1,
                                               "nonfinite": True})
        raise NonFiniteLoss(
            f"stage {st.name} step {step}: loss is {m['train/loss']} (grad norm "
            f"{m['train/grad_norm']}). The state after this step is saved in {d}; the "
            "last good checkpoint is in ckpt/. Lower opt.lr, raise opt.warmup_steps or "
            "check the data, then rerun (it resumes from the last good checkpoint).")
    sr.last_metrics = m
    sr.writer.write_train(st.name, step, m, tokens, dt, flops_per_token(st.model, st.seq_len))


def evaluate(sr: StageRun, step: int) -> None:
    """Loss over eval.batches fixed batches of eval.path (held out), or of the stage's
    training data in another order when eval.path is empty; written with the metrics."""
    run, built = sr.run, sr.built
    if sr.eval_batches is None:
        ecfg = run.cfg.eval
        paths = data_lib.resolve_paths(ecfg.path) if ecfg.path else None
        it = iter(stage_dataset(run, sr.stage, built.mesh, paths=paths,
                                seed=run.cfg.data.seed + 1))
        sr.eval_batches = [{k: jax.make_array_from_process_local_data(built.batch_sharding, v)
                            for k, v in next(it).items()} for _ in range(ecfg.batches)]
    fn = _eval_fn(built.graphdef, run.cfg.opt.loss_chunk)
    sums = [jax.device_get(fn(sr.state["params"], b)) for b in sr.eval_batches]
    loss = sum(float(m["eval/loss_sum"]) for m in sums) / max(
        1.0, sum(float(m["eval/loss_tokens"]) for m in sums))
    sr.writer.write_eval(sr.stage.name, step, loss)


@functools.lru_cache(maxsize=8)
def _eval_fn(graphdef, loss_chunk: int):
    return jax.jit(functools.partial(eval_step, graphdef=graphdef, loss_chunk=loss_chunk))


def export(run: run_lib.Run, stage: run_lib.Stage, graphdef, params) -> None:
    """Writes the stage's weights as an HF directory with the stage's RoPE (atomically), in
    ckpt.export_dtype."""
    hf.export_hf(nnx.merge(graphdef, params), stage.export_dir, tokenizer=run.tokenizer,
                 dtype=run.export_dtype)
    logging.info("stage %s: HF export (rope %s, %s) in %s", stage.name, stage.rope_dict,
                 run.export_dtype, stage.export_dir)


def export_finished(run: run_lib.Run, stage: run_lib.Stage, mesh) -> None:
    """Exports a finished stage whose export is missing (a run killed before its export)."""
    found = run.latest(stage.name)
    logging.warning("stage %s finished (step %d) but has no HF export in %s: exporting now",
                    stage.name, found.step, stage.export_dir)
    with sharding.use_mesh(mesh, run.rules):
        model, _ = ckpt_lib.load_params(found.directory, found.step, stage.model, mesh,
                                        run.rules)
        graphdef, params = nnx.split(model, nnx.Param)
        export(run, stage, graphdef, params)


# ---- the run ---------------------------------------------------------------------------------

def train_stage(run: run_lib.Run, built: Built, traced, writer, found) -> dict:
    """Restores, compiles and trains one built stage, then saves and exports it; returns its
    last metrics."""
    stage, mesh = built.stage, built.mesh
    stats = data_lib.Stats()
    it = iter((built.dataset or stage_dataset)(run, stage, mesh, stats=stats,
                                               epochs=int(run.cfg.data.epochs)))
    sr = StageRun(run, built, writer, it, stats)
    sr.state, source = restore(run, built, it, found)
    start = int(jax.device_get(sr.state["step"]))
    logging.info("stage %s starts at step %d of %d from %s", stage.name, start, stage.steps,
                 source)
    sr.peeked = sr.next_batch(start)  # bad data fails here, before anything is written
    t0 = time.perf_counter()
    sr.compiled = traced.lower().compile()
    writer.start_stage(stage.name, start, stage.steps, resumed=start > 0)
    writer.write_compile(stage.name, start, time.perf_counter() - t0)
    try:
        with run.checkpoints(stage.name, keep=run.cfg.ckpt.keep,
                             async_save=run.cfg.ckpt.async_save) as mgr:
            train_loop(sr, start, mgr)
    finally:
        writer.end_stage(stage.name)
    _log_data(run, stage, stats)
    if stage.export_hf:
        export(run, stage, built.graphdef, sr.state["params"])
        if jax.process_index() == 0:
            stage_evals.evaluate(run, stage)
    return sr.last_metrics


def _log_data(run, stage, stats: data_lib.Stats) -> None:
    s = stats.as_dict()
    logging.info("stage %s done: %d steps; data (this process): %s", stage.name, stage.steps, s)
    if s["truncated"] or s["dropped"]:
        logging.warning("stage %s: %d documents truncated, %d dropped (longer than %d tokens; "
                        "data.overlong=%s)", stage.name, s["truncated"], s["dropped"],
                        stage.seq_len, run.cfg.data.overlong)


def make_mesh(run: run_lib.Run):
    """The run's mesh from cfg.mesh (slowest-varying axis first: context/tensor innermost)."""
    try:
        return sharding.make_mesh([(a, run.cfg.mesh[a]) for a in sharding.MESH_AXES])
    except ValueError as e:
        raise ConfigError(f"mesh section: {e}") from e


def train_and_evaluate(cfg, workdir: str) -> dict[str, Any]:
    """Runs every stage of `cfg` in `workdir`, resuming where a previous run stopped.

    Every stage still to run is validated before the first trains; a config mistake raises
    `ConfigError` and writes nothing. Returns {stage: final metrics} for the stages run now.
    """
    run = run_lib.Run(cfg, workdir)
    mesh = make_mesh(run)
    plan = validate_lib.validate(run, mesh)
    logging.info("mesh: %s; stages to run: %s", dict(mesh.shape), plan.todo or "none")
    os.makedirs(run.workdir, exist_ok=True)
    run.save_config()
    writer = metrics_lib.MetricWriter(run.workdir, cfg.log.every_steps, cfg.log.peak_tflops,
                                      cfg.log.progress)
    results, found = {}, plan.found
    for name in run.stages:
        stage = run.stage(name)
        if name not in plan.todo:  # finished earlier: its export and evaluations may be due
            if stage.export_hf and not run.exported(name):
                export_finished(run, stage, mesh)
            if stage.export_hf and jax.process_index() == 0:
                stage_evals.evaluate(run, stage)
            continue
        with sharding.use_mesh(mesh, run.rules):
            results[name] = train_stage(run, *plan.built.pop(name), writer, found)
        found = None
    return results
