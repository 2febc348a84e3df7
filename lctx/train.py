r"""Training entry point (thin): flags, multi-host set-up, logging; the work is in trainer.py.

    python3 -m lctx.train --config=configs/demo.py --workdir=runs/demo
    python3 -m lctx.train --config=configs/1m.py:rope=llama3 --workdir=runs/1m \
        --config.ckpt.init_from=/models/Llama-3.1-8B-Instruct --config.opt.lr=5e-5

Multi-host: under SLURM (srun, one task per host) `jax.distributed.initialize()` reads the
job from the environment; elsewhere pass --coordinator_address, --num_processes and
--process_id. A single process needs none of them.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from lctx import data as data_lib
from lctx import records
from lctx import run as run_lib
from lctx import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/<name>.py[:arg]); override fields with "
    "--config.<section>.<field>=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, HF "
                               "exports (default: runs/<config file name>).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 "
                             "(multi-process runs outside SLURM).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of JAX processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")


def init_distributed() -> None:
    """Starts JAX's multi-process runtime when the job has more than one process."""
    if _COORD.value or (_NPROC.value or 1) > 1:
        if None in (_COORD.value, _NPROC.value, _PID.value):
            raise app.UsageError("multi-process runs need --coordinator_address, "
                                 "--num_processes and --process_id together")
        if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=_COORD.value,
                                   num_processes=_NPROC.value, process_id=_PID.value)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()  # SLURM cluster detection: coordinator, ranks, devices


def log_layout(cfg) -> None:
    logging.info("process %d/%d on %s; local devices %s; global devices %d (%s)",
                 jax.process_index(), jax.process_count(), os.uname().nodename,
                 [str(d) for d in jax.local_devices()], jax.device_count(),
                 jax.devices()[0].device_kind)
    logging.info("config:\n%s", cfg)


def entry_point(cfg):
    """What runs a config: `cfg.entry` ('module:function(cfg, workdir)', imported now, by
    name) when the config names one, else `lctx.trainer.train_and_evaluate`. This is how
    configs/demo.py runs the demo package without lctx importing it."""
    name = cfg.get("entry", "")
    if not name:
        return trainer.train_and_evaluate
    module, _, fn = name.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise run_lib.ConfigError(f"entry={name!r} cannot be loaded ({e}); give "
                                  "'module:function' of an importable module") from e


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    cfg = _CONFIG.value
    if cfg is None:
        raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
    workdir = _WORKDIR.value or os.path.join(
        "runs", os.path.splitext(os.path.basename(
            config_flags.get_config_filename(flags.FLAGS["config"])))[0])
    init_distributed()
    log_layout(cfg)
    try:
        results = entry_point(cfg)(cfg, workdir)
    except (run_lib.ConfigError, data_lib.DataError, records.RecordError) as e:
        # A mistake in the config or the data: the message names the field and the fix.
        logging.error("%s", e)
        sys.exit(2)
    except trainer.NonFiniteLoss as e:
        logging.error("%s", e)
        sys.exit(3)
    logging.info("done: %s", json.dumps(results))


if __name__ == "__main__":
    app.run(main)
