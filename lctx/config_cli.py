"""A run config loaded exactly as `lctx.train` loads it, for the other command-line tools.

    cfg = load(["--config=configs/1m.py:rope=llama3", "--config.data.batch_size=16"])

`--config=FILE[:arg]` names a config file (its `get_config(arg)`), `--config.a.b=v`
overrides a field; the config is locked, so a field that does not exist is an error
(ml_collections `config_flags`, as in `lctx.train`). Each call parses into its own absl
`FlagValues`, so tools and tests can load many configs in one process.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from absl import flags
from ml_collections import config_flags

HELP = ("Config file (configs/<name>.py[:arg]); override fields with "
        "--config.<section>.<field>=value.")


class ConfigError(ValueError):
    """A config that does not load or an override that does not apply (message says which)."""


def define(flag_values: flags.FlagValues, argv: Sequence[str]) -> flags.FlagHolder:
    """Defines `--config` (locked) on `flag_values`; `argv` must hold any overrides, since
    config_flags registers `--config.*` flags from the command line it is given."""
    return config_flags.DEFINE_config_file("config", None, HELP, flag_values=flag_values,
                                           lock_config=True, sys_argv=list(argv))


def is_config_arg(arg: str) -> bool:
    return arg.startswith("--config=") or arg.startswith("--config.")


def parse(argv: Sequence[str], more: Callable[[flags.FlagValues], None] | None = None
          ) -> tuple[Any, flags.FlagValues]:
    """Parses a command line (without the program name) holding `--config` and its
    overrides, plus the flags `more(flag_values)` defines; returns (config, flag values).

    Raises:
      ConfigError: no --config, a file that fails to load, or a bad override or flag.
    """
    argv = ["lctx", *argv]
    if not any(a.startswith("--config=") for a in argv):
        raise ConfigError("--config=configs/<name>.py[:arg] is required")
    fv = flags.FlagValues()
    holder = define(fv, argv)
    if more is not None:
        more(fv)
    try:
        fv(argv)
        cfg = holder.value
    except Exception as e:  # noqa: BLE001 - absl, the config file or ml_collections raised
        raise ConfigError(f"{' '.join(argv[1:])}: {_last_line(e)}") from None
    error = getattr(cfg, "_error", None)  # config_flags defers a file that failed to load
    if error is not None:
        raise ConfigError(f"{' '.join(argv[1:])}: {_last_line(error)}")
    return cfg, fv


def load(args: Sequence[str]) -> Any:
    """The ConfigDict that `python3 -m lctx.train <args>` would train with; arguments other
    than `--config=...` and `--config.x=y` are ignored. Raises ConfigError."""
    return parse([a for a in args if is_config_arg(a)])[0]


def _last_line(e: BaseException) -> str:
    """The message without the traceback config_flags embeds in it."""
    text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = (lines[-1] if "Traceback" in text else " ".join(lines)) or type(e).__name__
    return msg if ":" in msg else f"{type(e).__name__}: {msg}"
