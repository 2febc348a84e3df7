r"""The self-bootstrapped extension loop: every stage trains on long-context data that the
previous stage's own export generated.

    python3 -m datagen.selfgen.bootstrap --config=configs/self_bootstrap.py --workdir=runs/boot

He et al. 2025 leave as future work a short-context model that generates its own long-context
data and evolves; Li et al. 2025 show the self-generation (Section 2.1). Here stage k's HF
export, served by vLLM, writes stage k+1's samples (the six tasks of `datagen.selfgen`, at
lengths up to stage k+1's sequence length), and stage k+1 trains on them from stage k's
checkpoint (`python3 -m lctx.train`, which also exports it). The first generator is
`bootstrap.init_from` (an instruction-tuned HF model, e.g. Llama-3.1-8B-Instruct on GPUs);
without one (the CPU default) a seed stage is trained first on data from the offline WordNet
backend (not an LLM), with a tokenizer trained here.

Phases run as subprocesses (datagen in the vLLM venv, training in this python), so a kill -9
anywhere loses only the phase in flight, and that phase resumes itself: datagen from its call
cache (no finished call re-sent, same bytes), training from its checkpoints. Each finished
phase leaves `<workdir>/phases/<phase>.json`; a rerun skips those. `<workdir>/provenance.json`
says which model generated which records and what each stage trained from; every record's
`meta.generator` names its generator too.

This module sits above `lctx` and `datagen` and imports neither's JAX side: it loads the
config (ml_collections) and starts processes.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from datagen.selfgen import config as sg_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bootstrap")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/self_bootstrap.py[:arg]; override fields with "
    "--config.<section>.<field>=value (bootstrap.* here, the rest also in training).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/self_bootstrap).")


class BootstrapError(RuntimeError):
    """A phase failed or the settings cannot work; the message names the phase and the fix."""


def _atomic_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def vllm_python() -> str:
    """`$LCTX_VLLM_PYTHON`, else `<repo>/.venv-vllm/bin/python` (as evals' VLLMRunner)."""
    return os.environ.get("LCTX_VLLM_PYTHON") or os.path.join(REPO, ".venv-vllm", "bin",
                                                              "python")


def seed_tokenizer(out_dir: str, vocab_size: int) -> str:
    """A byte-level BPE with Llama-3's pre-tokenizer and chat tokens, trained on the KJV, with
    the Llama-3 chat template beside it (vLLM and lctx both render prompts with it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from lctx.corpora import kjv_text
    from lctx.tokenizer import LLAMA3_CHAT_TEMPLATE, LLAMA3_SPECIALS
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
             r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama-3's tokenizer.json split
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    lines = [x for x in kjv_text()[:1_500_000].splitlines() if x.strip()]
    tok.train_from_iterator(["\n\n".join(lines[i:i + 4]) for i in range(0, len(lines), 4)],
                            trainers.BpeTrainer(vocab_size=vocab_size,
                                                special_tokens=list(LLAMA3_SPECIALS),
                                                initial_alphabet=pre_tokenizers.ByteLevel
                                                .alphabet(), show_progress=False))
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    tok.save(os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast",
                   "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                   "pad_token": "<|end_of_text|>", "model_max_length": 1 << 24,
                   "clean_up_tokenization_spaces": False,
                   "chat_template": LLAMA3_CHAT_TEMPLATE}, f, indent=1)
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def model_fingerprint(model_dir: str) -> str:
    """sha256 over an HF directory's config and weight files (what generated the data)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        if name == "config.json" or name.endswith(".safetensors"):
            h.update(name.encode())
            with open(os.path.join(model_dir, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
    return h.hexdigest()


class Phases:
    """Named phases run once per workdir; `<workdir>/phases/<name>.json` marks each done."""

    def __init__(self, workdir: str):
        self.dir = os.path.join(workdir, "phases")
        self.ran: list[str] = []

    def run(self, name: str, fn) -> dict[str, Any]:
        path = os.path.join(self.dir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                log.info("phase %-22s done before (%s)", name, path)
                return json.load(f)["result"]
        log.info("phase %-22s start", name)
        t0 = time.time()
        result = fn()
        _atomic_json(path, {"phase": name, "seconds": round(time.time() - t0, 2),
                            "result": result})
        self.ran.append(name)
        log.info("phase %-22s done in %.1f s", name, time.time() - t0)
        return result


def _sh(cmd: list[str], phase: str, python_env: dict[str, str] | None = None) -> None:
    """Runs a phase's process with live output; a failure names the phase and the command."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **(python_env or {})}
    log.info("%s: %s", phase, " ".join(cmd))
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    if rc != 0:
        raise BootstrapError(f"phase {phase} failed (exit {rc}); its output is above. The "
                             f"command was: {' '.join(cmd)}. Fix the cause and rerun: "
                             f"finished phases are skipped, this one resumes")


def plan(cfg) -> list[dict[str, Any]]:
    """Every stage's generator, data spec and training source, checked before anything runs."""
    b = cfg.bootstrap
    stages = sorted(cfg.stages.keys())
    if b.seed == bool(b.init_from):
        raise BootstrapError(
            "set exactly one start: bootstrap.seed=True (train a seed model from scratch on "
            "offline data) or --config.bootstrap.init_from=<HF model dir> (it generates the "
            f"first stage's data); got seed={b.seed}, init_from={b.init_from!r}")
    if len(stages) < (2 if b.seed else 1):
        raise BootstrapError(f"cfg.stages has {stages}: need a seed stage and one stage "
                             f"generated by it (or bootstrap.init_from and one stage)")
    if b.init_from and not os.path.isfile(os.path.join(b.init_from, "config.json")):
        raise BootstrapError(f"bootstrap.init_from={b.init_from!r} is not an HF model "
                             f"directory (no config.json)")
    out = []
    for i, s in enumerate(stages):
        seq = int(cfg.stages[s].seq_len)
        spec = sg_config.make_spec(bucket=f"{int(seq * b.min_len_frac)}-{seq}",
                                   per_task=int(b.seed_per_task if i == 0 and not b.init_from
                                                else b.per_task), tasks=b.tasks)
        seed = i == 0 and not b.init_from
        out.append({"stage": s, "spec": spec, "seed": seed,
                    "generator": "offline" if seed else (b.init_from if i == 0 else
                                                         f"hf/{stages[i - 1]}")})
    sg_config.SelfGenConfig.from_overrides(dict(b.selfgen))  # bad settings fail now
    if any(not p["seed"] for p in out) and b.backend == "vllm" and not os.path.exists(
            vllm_python()):
        raise BootstrapError(f"{vllm_python()} does not exist: generation by the stages' "
                             f"exports needs the vLLM venv (bash datagen/vllm_env.sh) or "
                             f"LCTX_VLLM_PYTHON")
    return out


def run(cfg, workdir: str, config_spec: str, overrides: list[str]) -> dict[str, Any]:
    """Runs (or resumes) every phase; returns the provenance record."""
    b = cfg.bootstrap
    stages = plan(cfg)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    ph = Phases(workdir)
    tok = os.path.abspath(b.init_from) if b.init_from else ph.run(
        "tokenizer", lambda: {"path": seed_tokenizer(os.path.join(workdir, "tokenizer"),
                                                     int(cfg.model.vocab_size))})["path"]
    train_dir = os.path.join(workdir, "train")
    sets = [f"--set={k}={v}" for k, v in sorted(dict(b.selfgen).items())]
    prov: dict[str, Any] = {"workdir": workdir, "config": config_spec, "tokenizer": tok,
                            "init_from": b.init_from or None, "stages": []}
    data_paths: dict[str, str] = {}
    for i, st in enumerate(stages):
        s, spec = st["stage"], st["spec"]
        gen_model = None if st["seed"] else (
            os.path.abspath(b.init_from) if i == 0 else os.path.join(train_dir, "hf",
                                                                     stages[i - 1]["stage"]))
        data_dir = os.path.join(workdir, "data", s)

        def gen_data(st=st, spec=spec, gen_model=gen_model, data_dir=data_dir) -> dict:
            cmd = ["-m", "datagen.selfgen", "build", f"--out={data_dir}", f"--tokenizer={tok}",
                   f"--bucket={spec.name}", f"--per-task={spec.per_task}",
                   f"--tasks={','.join(spec.tasks)}", "--no-progress", *sets]
            if b.allow_short:
                cmd.append("--allow-short")
            if st["seed"]:
                _sh([sys.executable, *cmd, "--backend=offline"], f"data-{s}")
            else:
                args = {**json.loads(b.backend_args), "model": gen_model}
                if b.backend == "openai":
                    raise BootstrapError("bootstrap.backend=openai needs a server serving "
                                         "each stage's export; use vllm (offline engine)")
                _sh([vllm_python(), *cmd, f"--backend={b.backend}",
                     f"--backend-args={json.dumps(args)}"], f"data-{s}",
                    {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false",
                     "XLA_FLAGS": ""})
            with open(os.path.join(data_dir, spec.name,
                                   "manifest-00000-of-00001.json")) as f:
                man = json.load(f)
            if man["samples"]["written"] == 0:
                raise BootstrapError(f"stage {s}: its generator wrote no sample "
                                     f"({man['skipped']}); see {data_dir}")
            return {"dir": data_dir, "records": man["samples"]["written"],
                    "generator": man["generator_model"],
                    "generator_fingerprint": (model_fingerprint(gen_model) if gen_model
                                              else None),
                    "files": glob.glob(os.path.join(data_dir, spec.name, "*.arrayrecord"))}
        data = ph.run(f"data-{s}", gen_data)
        data_paths[s] = os.path.join(data["dir"], spec.name, "conversations-*.arrayrecord")

        def train(s=s) -> dict:
            cmd = [sys.executable, "-m", "lctx.train",
                   f"--config={config_spec}{',' if ':' in config_spec else ':'}upto={s}",
                   f"--workdir={train_dir}", f"--config.data.tokenizer={tok}",
                   f"--config.data.path={next(iter(data_paths.values()))}",
                   *[f"--config.stages.{k}.data_path={v}" for k, v in data_paths.items()],
                   *overrides]
            if b.init_from:
                cmd.append(f"--config.ckpt.init_from={os.path.abspath(b.init_from)}")
            _sh(cmd, f"train-{s}")
            export = os.path.join(train_dir, "hf", s)
            if not os.path.isfile(os.path.join(export, "config.json")):
                raise BootstrapError(f"stage {s} trained but has no HF export in {export}; "
                                     f"rerun (the trainer exports a finished stage)")
            return {"export": export, "fingerprint": model_fingerprint(export)}
        trained = ph.run(f"train-{s}", train)
        prov["stages"].append({
            "stage": s, "data": data["dir"], "records": data["records"],
            "bucket": [spec.lo, spec.hi], "generated_by": data["generator"],
            "generator_fingerprint": data["generator_fingerprint"],
            "trained_from": (stages[i - 1]["stage"] if i else b.init_from or "scratch"),
            "export": trained["export"], "export_fingerprint": trained["fingerprint"]})
        _atomic_json(os.path.join(workdir, "provenance.json"), prov)
    log.info("bootstrap done; phases run now: %s", ph.ran or "none (all done before)")
    return prov


def _config_spec(argv: list[str]) -> str:
    """The --config value with its file made absolute (phases run from the repo root)."""
    for i, a in enumerate(argv):
        if a.startswith("--config=") or (a == "--config" and i + 1 < len(argv)):
            spec = a.split("=", 1)[1] if "=" in a else argv[i + 1]
            path, sep, arg = spec.partition(":")
            return os.path.abspath(path) + sep + arg
    raise app.UsageError("--config is required, e.g. --config=configs/self_bootstrap.py")


def main(argv) -> None:
    logging.getLogger().setLevel(logging.INFO)
    cfg = _CONFIG.value
    raw = sys.argv[1:]
    overrides = [a for a in raw if a.startswith("--config.")
                 and not a.startswith("--config.bootstrap.")]
    workdir = _WORKDIR.value or os.path.join("runs", "self_bootstrap")
    try:
        prov = run(cfg, workdir, _config_spec(raw), overrides)
    except (BootstrapError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(2)
    print(json.dumps(prov, indent=1))


if __name__ == "__main__":
    app.run(main)
