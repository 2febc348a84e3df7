"""Training metrics: JSON lines and TensorBoard events side by side, and honest step times.

    <workdir>/metrics.jsonl     one line per logged step: {"stage", "step", "train/loss", ...}
    <workdir>/tb/<stage>/       TensorBoard event files (tensorboardX), one run per stage

Only process 0 writes. A resumed stage first drops the lines of the steps it is about to
redo (`rewind`), so no step is written twice; TensorBoard is told the same with purge_step.

Step time is measured from when the host saw the previous step finish (or from this step's
dispatch, if later) to when it sees this step finish: checkpoint saves and evaluations
between steps are not counted, and each step gets its own time. The first step a process
runs is left out of the series (first-run allocation); compilation is timed apart
(`perf/compile_s`, compiled ahead of time).
"""
from __future__ import annotations

import json
import logging
import os
import time

import jax
import tqdm

from lctx import files


class StepTimer:
    """Per-step wall times from dispatch and completion stamps (see the module docstring)."""

    def __init__(self):
        self._dispatch: dict[int, float] = {}
        self._last_done: float | None = None
        self._first: int | None = None

    def dispatched(self, step: int) -> None:
        self._dispatch[step] = time.perf_counter()
        if self._first is None:
            self._first = step

    def finished(self, step: int) -> float | None:
        """Call after the step's results were fetched; its time, or None for the first."""
        now = time.perf_counter()
        start = self._dispatch.pop(step)
        if self._last_done is not None:
            start = max(start, self._last_done)
        self._last_done = now
        return None if step == self._first else now - start

    def pause(self) -> None:
        """Host work between steps (a save, an evaluation) is not a step's time."""
        self._last_done = None


class MetricWriter:
    """Writes metrics to metrics.jsonl and TensorBoard and drives a tqdm bar (process 0).

    Args:
      workdir: the run directory.
      every: write every N-th step's train metrics (evaluations are always written).
      peak_tflops: per-device peak for MFU, TFLOP/s.
      progress: show a progress bar.
    """

    def __init__(self, workdir: str, every: int, peak_tflops: float, progress: bool):
        self.workdir = workdir
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.every, self.peak, self.show = max(1, int(every)), peak_tflops * 1e12, progress
        self.main = jax.process_index() == 0
        self._tb: dict[str, object] = {}
        self._bar = None

    # ---- a stage's lifetime ------------------------------------------------------------
    def start_stage(self, stage: str, start: int, total: int, resumed: bool) -> None:
        """Opens the stage's bar and TensorBoard run; a resumed stage rewinds to `start`."""
        if self.main and resumed:
            self.rewind(stage, start)
        if self.main:
            from tensorboardX import SummaryWriter
            self._tb[stage] = SummaryWriter(os.path.join(self.workdir, "tb", stage),
                                            purge_step=start if resumed else None,
                                            flush_secs=30)
        self._bar = tqdm.tqdm(total=total, initial=start, desc=f"stage {stage}", unit="step",
                              disable=not (self.show and self.main), dynamic_ncols=True)

    def end_stage(self, stage: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        tb = self._tb.pop(stage, None)
        if tb is not None:
            tb.close()

    def rewind(self, stage: str, step: int) -> None:
        """Drops the lines of `stage` at steps >= `step` (and lines cut by a kill)."""
        if os.path.exists(self.path):
            keep = [json.dumps(r) + "\n" for r in files.json_lines(self.path)
                    if not (r.get("stage") == stage and r.get("step", -1) >= step)]
            files.atomic_write(self.path, "".join(keep))

    # ---- records ---------------------------------------------------------------------
    def _append(self, stage: str, step: int, values: dict) -> None:
        if not self.main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "step": step, **values}) + "\n")
        tb = self._tb.get(stage)
        if tb is not None:
            for k, v in values.items():
                tb.add_scalar(k, v, step)

    def write_compile(self, stage: str, step: int, seconds: float) -> None:
        logging.info("stage %s: train step compiled in %.1f s", stage, seconds)
        self._append(stage, step, {"perf/compile_s": seconds})

    def write_eval(self, stage: str, step: int, loss: float) -> None:
        logging.info("stage %s step %d: eval/loss %.4f", stage, step, loss)
        self._append(stage, step, {"eval/loss": loss})

    def write_train(self, stage: str, step: int, m: dict, tokens: int, step_time: float | None,
                    flops_per_token: float) -> None:
        """One step's train metrics, with throughput and MFU when it has a step time."""
        rec = dict(m)
        if step_time:
            tps = tokens / step_time
            rec.update({"perf/step_time_s": step_time, "perf/tokens_per_s": tps,
                        "perf/model_flops_per_token": flops_per_token,
                        "perf/mfu": tps * flops_per_token / (self.peak * jax.device_count())})
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{m['train/loss']:.4f}",
                                  gnorm=f"{m['train/grad_norm']:.3g}")
        if step % self.every == 0:
            self._append(stage, step, rec)
