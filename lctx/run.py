"""A run on disk: one workdir's config, its stages, checkpoints, tokenizer and HF exports.

    <workdir>/config.json               the run config (the trainer writes it at each start)
    <workdir>/ckpt/<stage>/<step>/      orbax checkpoints: state, data iterator, meta
    <workdir>/hf/<stage>/               the stage's HF export, with the stage's RoPE
    <workdir>/metrics.jsonl, tb/        training metrics (JSON lines, TensorBoard events)
    <workdir>/eval/<stage>/             evaluations of the stage's export

Everything a stage uses is decided here, once, and read by the trainer, the evaluation
runners, the export CLI and the planner alike::

    run = Run(cfg, workdir)                 # or Run.open(workdir) for a run on disk
    st = run.stage("s2_350k")
    st.model                                # lctx.model.ModelConfig with the stage's RoPE
    st.data_paths, st.steps                 # shards (stage data_path, else data.path); steps
    run.tokenizer                           # data.tokenizer, else the ckpt.init_from HF dir
    run.latest("s2_350k")                   # Found(stage, step, finished, directory) or None
    cfg, model, meta = run.load_model("s2_350k", step=None, mesh=None)

Config mistakes raise `ConfigError`, whose message names the field and the fix. Resolving
the model, RoPE and paths touches no data; `Stage.data_paths`, `Stage.records` and
`Stage.steps` read the disk the first time they are asked for, then keep the answer.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import ml_collections as mc

from lctx import checkpoint as ckpt_lib
from lctx import data as data_lib
from lctx import files
from lctx import rope as rope_lib
from lctx import sharding
from lctx.model import ModelConfig


class ConfigError(ValueError):
    """A mistake in the run config; the message names the field and how to fix it."""


def model_config(cfg: Any, rope_cfg: Any, **overrides) -> ModelConfig:
    """The frozen `ModelConfig` of a run config (`model`, `attn`) with a stage's RoPE."""
    m, a = cfg.model, cfg.attn
    fields = dict(
        vocab_size=m.vocab_size, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads, head_dim=m.head_dim, mlp_dim=m.mlp_dim, norm_eps=m.norm_eps,
        tie_embeddings=m.tie_embeddings, max_seq_len=m.max_seq_len,
        rope=rope_lib.make_rope(**dict(rope_cfg)), attn_impl=a.impl, block_q=a.block_q,
        block_k=a.block_k, attn_kernel=a.get("kernel", "xla"),
        ring_layout=a.get("ring_layout", "zigzag"), param_dtype=m.param_dtype,
        dtype=m.dtype, scan_layers=m.scan_layers, remat=m.remat)
    fields.update(overrides)
    return ModelConfig(**fields)


class Stage:
    """One stage of a run, resolved from the config (see the module docstring)."""

    def __init__(self, run: "Run", name: str):
        cfg, c = run.cfg, run.cfg.stages[name]
        self.run, self.name = run, name
        self.index = run.stages.index(name)
        self.seq_len = int(c.seq_len)
        self.configured_steps = int(c.steps)
        self.rope_dict = dict(c.rope.to_dict() if hasattr(c.rope, "to_dict") else c.rope)
        self.lr = float(c.lr) if c.lr > 0 else float(cfg.opt.lr)
        self.warmup_steps = int(c.warmup_steps if c.warmup_steps >= 0 else cfg.opt.warmup_steps)
        self.carry_opt_state, self.export_hf = bool(c.carry_opt_state), bool(c.export_hf)
        own = bool(c.get("data_path", ""))
        self.data_field = f"stages.{name}.data_path" if own else "data.path"
        self.data_glob = c.data_path if own else cfg.data.get("path", "")
        self.ckpt_dir = os.path.join(run.ckpt_root, name)
        self.export_dir = os.path.join(run.workdir, "hf", name)
        try:
            self.rope = rope_lib.make_rope(**self.rope_dict)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"stages.{name}.rope={self.rope_dict}: {e}; fix the stage's "
                              "RoPE fields (lctx.rope registry)") from e
        if self.seq_len > cfg.model.max_seq_len:
            raise ConfigError(f"stages.{name}.seq_len={self.seq_len} exceeds model.max_seq_len="
                              f"{cfg.model.max_seq_len}; raise the model maximum or shorten "
                              "the stage")
        if self.configured_steps < 1 and self.configured_steps != -1:
            raise ConfigError(f"stages.{name}.steps={self.configured_steps}: use >= 1, or -1 "
                              "for one epoch of the records present")
        try:
            self.model = model_config(cfg, self.rope_dict)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model / attn sections (stage {name}): {e}") from e

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, seq_len={self.seq_len}, rope={self.rope_dict})"

    @functools.cached_property
    def data_paths(self) -> list[str]:
        """The stage's ArrayRecord shards: its own data_path, else data.path (globbed)."""
        if not self.data_glob:
            raise ConfigError(f"{self.data_field} is empty: set --config.{self.data_field} to "
                              "a glob of ArrayRecord shards (datagen writes them)")
        try:
            return data_lib.resolve_paths(self.data_glob)
        except data_lib.DataError as e:
            raise ConfigError(f"{self.data_field}={self.data_glob!r} matches no files; check "
                              "the path or generate the data first (python3 -m datagen)") from e

    @functools.cached_property
    def records(self) -> int:
        """Records in the stage's shards (all processes together)."""
        import grain
        return len(grain.sources.ArrayRecordDataSource(self.data_paths))

    @functools.cached_property
    def steps(self) -> int:
        """Optimizer steps: as configured, or (steps=-1) one epoch of the records present."""
        if self.configured_steps > 0:
            return self.configured_steps
        return self.run.epoch_steps(self)


class Run:
    """A run config and its workdir (see the module docstring).

    Args:
      cfg: the run config (ml_collections ConfigDict with the sections of configs/common.py).
      workdir: the run directory; created by the trainer, not here.
    """

    def __init__(self, cfg: Any, workdir: str):
        self.cfg, self.workdir = cfg, os.path.abspath(workdir)
        self.ckpt_root = os.path.join(self.workdir, "ckpt")
        self.stages = sorted(cfg.stages.keys())
        self._stages: dict[str, Stage] = {}

    @classmethod
    def open(cls, workdir: str) -> "Run":
        """The run whose config.json lies in `workdir` (a run on disk)."""
        path = os.path.join(os.path.abspath(workdir), "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: the trainer writes the run config "
                                    "there; point at a training run's workdir")
        with open(path, encoding="utf-8") as f:
            return cls(mc.ConfigDict(json.load(f)), workdir)

    def stage(self, name: str) -> Stage:
        """The resolved stage `name` (resolved once, then cached)."""
        if name not in self.cfg.stages:
            raise ConfigError(f"stage {name!r} is not in the config's stages {self.stages}")
        if name not in self._stages:
            self._stages[name] = Stage(self, name)
        return self._stages[name]

    @property
    def rules(self) -> tuple:
        """Logical-axis -> mesh-axes rules: cfg.mesh.rules, else lctx.sharding's defaults."""
        rules = self.cfg.mesh.get("rules")
        if not rules:
            return sharding.DEFAULT_RULES
        return tuple((str(k), tuple(v) if isinstance(v, (list, tuple)) else v)
                     for k, v in rules)

    @property
    def export_dtype(self) -> str:
        """Weight dtype of the run's HF exports: ckpt.export_dtype (bfloat16 for runs whose
        config predates the field)."""
        return str(self.cfg.ckpt.get("export_dtype", "bfloat16"))

    def previous(self, stage: Stage) -> Stage | None:
        return self.stage(self.stages[stage.index - 1]) if stage.index > 0 else None

    @functools.cached_property
    def tokenizer(self) -> str:
        """The tokenizer path: data.tokenizer, else the ckpt.init_from HF directory."""
        path = self.cfg.data.get("tokenizer", "") or self.cfg.ckpt.get("init_from", "")
        if not path:
            raise ConfigError("data.tokenizer and ckpt.init_from are both empty: set "
                              "--config.data.tokenizer to a SentencePiece .model or an HF "
                              "tokenizer directory, or --config.ckpt.init_from to an HF model")
        return path

    @functools.cached_property
    def render(self) -> data_lib.RenderFn:
        """The chat-format renderer over the run's tokenizer (loaded once)."""
        field = "data.tokenizer" if self.cfg.data.get("tokenizer", "") else "ckpt.init_from"
        try:
            return data_lib.render_fn_from_tokenizer(self.tokenizer)
        except Exception as e:  # the tokenizer loader's own errors name what is missing
            raise ConfigError(f"{field}={self.tokenizer!r} (the tokenizer): {e}") from e

    def epoch_steps(self, stage: Stage) -> int:
        """Optimizer steps in one epoch of the stage's records (steps=-1)."""
        d = self.cfg.data
        if not d.pack:  # one record a row
            rows = stage.records
        else:
            logging.info("stage %s: counting the packed rows of one epoch (steps=-1)",
                         stage.name)
            rows = data_lib.count_rows(stage.data_paths, self.render, seq_len=stage.seq_len,
                                       packing_bins=d.packing_bins, overlong=d.overlong)
        steps = rows // int(d.batch_size)
        if steps < 1:
            raise ConfigError(f"stages.{stage.name}.steps=-1: {stage.data_field} gives "
                              f"{rows} rows, less than one batch of data.batch_size="
                              f"{d.batch_size}; add data or lower the batch size")
        return steps

    # ---- checkpoints and exports ------------------------------------------------------
    def checkpoints(self, name: str, **kw) -> ckpt_lib.StageCheckpoints:
        """The stage's checkpoint manager (close it after use)."""
        return ckpt_lib.StageCheckpoints(self.ckpt_root, name, **kw)

    def latest(self, name: str | None = None) -> ckpt_lib.Found | None:
        """The latest checkpoint of stage `name`, or of the last stage that has one."""
        return ckpt_lib.find_resume(self.ckpt_root, [name] if name else self.stages)

    def exported(self, name: str) -> bool:
        """True when the stage's HF export is complete (exports are renamed into place)."""
        return os.path.isfile(os.path.join(self.stage(name).export_dir, "config.json"))

    def save_config(self) -> None:
        """Writes config.json atomically (process 0 only)."""
        import jax
        if jax.process_index() == 0:
            files.atomic_write(os.path.join(self.workdir, "config.json"),
                         self.cfg.to_json_best_effort(indent=2, sort_keys=True))

    def load_model(self, stage: str | None = None, step: int | None = None, mesh=None,
                   **overrides):
        """A stage checkpoint's parameters in a `Llama` (optimizer state is never read).

        Args:
          stage: the stage (default: the last stage with a checkpoint).
          step: the step (default: the stage's latest).
          mesh: shard the parameters over this mesh (`lctx.sharding` rules); None: 1 device.
          **overrides: ModelConfig fields to change (attn_impl, rope, max_seq_len, ...).

        Returns:
          (ModelConfig, Llama, the checkpoint's meta dict plus `workdir`).
        """
        found = self.latest(stage)
        if found is None:
            raise FileNotFoundError(f"{self.workdir}: no checkpoint of "
                                    f"{stage or 'any stage'} under {self.ckpt_root}")
        step = found.step if step is None else int(step)
        if not os.path.isdir(os.path.join(found.directory, str(step), "state")):
            raise FileNotFoundError(f"{found.directory}/{step} has no 'state' item "
                                    f"(step={step} not saved?)")
        mcfg = model_config(self.cfg, self.stage(found.stage).rope_dict, **overrides)
        model, meta = ckpt_lib.load_params(found.directory, step, mcfg, mesh, self.rules)
        return mcfg, model, dict(meta, workdir=self.workdir)


def locate(path: str) -> tuple[Run, str | None, int | None]:
    """(run, stage, step) named by a path: a workdir, `ckpt/<stage>` or `ckpt/<stage>/<step>`."""
    path = os.path.abspath(path)
    stage = step = None
    if os.path.isdir(os.path.join(path, "state")):  # <workdir>/ckpt/<stage>/<step>
        path, step = os.path.dirname(path), int(os.path.basename(path))
    if os.path.basename(os.path.dirname(path)) == "ckpt":  # <workdir>/ckpt/<stage>
        path, stage = os.path.dirname(os.path.dirname(path)), os.path.basename(path)
    return Run.open(path), stage, step

