r"""The end-to-end demo: He et al. 2025 in miniature on a CPU, resumable phase by phase.

    python3 -m lctx.train --config=configs/demo.py --workdir=runs/demo

(configs/demo.py names `demo.pipeline:run` as its entry point, so `lctx.train` runs this
module without knowing it.)

Phases (each ends by writing `<workdir>/phases/<phase>.json` atomically; a rerun, also after
kill -9, skips every phase whose marker exists and resumes the one that was cut):
  corpus      KJV passages (or demo.corpus) -> corpus/docs.jsonl
  tokenizer   SentencePiece trained on the corpus -> tokenizer/sp.model
  data        the first `demo.copy_stages` stages (the pretraining stand-in): copy
              conversations only; every later stage: datagen conversations at the stage
              length + RULER-format retrieval + a share of copy conversations
  train-<s>   stage s (the first from scratch at the base length, each later one from the
              previous stage's final checkpoint with its own length and RoPE); the base
              model is the first stage after the copy stages
  eval-<m>    RULER NIAH at demo.eval_lengths (evals.ruler, the short-length options of
              demo.data.ruler_options) and the held-out NIAH
              answer loss at the base length and 4x, for: base, base + zero-shot RoPE
              scaling (the last stage's RoPE on the base weights) and every later stage
  report      results/*.json, ruler_curves.png, summary.txt/json, stage_metrics.json
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import ml_collections as mc
import numpy as np
from flax import nnx

from demo import data as demo_data
from demo.report import report
from evals.ruler import run as ruler_run
from evals.ruler import scoring
from evals.ruler.text import load_tokenizer as ruler_tokenizer
from evals.runners.lctx_runner import LctxRunner
from lctx import data as data_lib
from lctx import files
from lctx import rope as rope_lib
from lctx import run as run_lib
from lctx import step as step_lib
from lctx import trainer
from lctx.tokenizer import ChatFormat, load_tokenizer

log = logging.getLogger("demo")


# ---- phase markers ------------------------------------------------------------------------

class Phases:
    """Runs named phases once per workdir; a marker (JSON, written atomically) records each."""

    def __init__(self, workdir: str, fingerprint: str = ""):
        self.dir = os.path.join(workdir, "phases")
        os.makedirs(self.dir, exist_ok=True)
        self.fingerprint = fingerprint  # of the config: a cached phase from another warns
        self.ran: list[str] = []

    def path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.json")

    def done(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def get(self, name: str) -> dict[str, Any]:
        with open(self.path(name), encoding="utf-8") as f:
            return json.load(f)

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if self.done(name):
            log.info("phase %-16s cached (%s)", name, self.path(name))
            got = self.get(name)
            if got.get("config") != self.fingerprint:
                log.warning("phase %s was run with another config; its cached output is "
                            "used as is (delete %s, or use a new --workdir, to redo it)",
                            name, self.path(name))
            return got["result"]
        log.info("phase %-16s start", name)
        t0 = time.time()
        result = fn()
        secs = time.time() - t0
        done_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        files.atomic_write(self.path(name), json.dumps(
            {"phase": name, "config": self.fingerprint, "seconds": round(secs, 2),
             "finished": done_at, "result": result}, indent=1))
        self.ran.append(name)
        log.info("phase %-16s done in %.1f s", name, secs)
        return result


def _ints(s: str) -> list[int]:
    return [int(x) for x in str(s).split(",") if x.strip()]


def _names(s: str) -> list[str]:
    return [x.strip() for x in str(s).split(",") if x.strip()]


# ---- the run -------------------------------------------------------------------------------

def phases(cfg, workdir: str) -> Phases:
    """The demo's phase markers in `workdir`, fingerprinted by the config."""
    os.makedirs(workdir, exist_ok=True)
    return Phases(workdir, hashlib.sha256(cfg.to_json(sort_keys=True).encode()).hexdigest()[:16])


def prepare(cfg, workdir: str, ph: Phases | None = None):
    """The inputs phases (corpus, tokenizer, every stage's data; cached in `workdir`) and
    the trainer's config that reads them (bench/data_bench.py uses this too)."""
    d = cfg.demo
    n_copy = copy_stage_count(cfg)
    stages = sorted(cfg.stages.keys())
    if len(stages) - n_copy < 2:
        raise ValueError(f"the demo needs a base stage and at least one extension stage after "
                         f"the demo.copy_stages={n_copy} copy stage(s); cfg.stages has "
                         f"{stages}")
    demo_data.check_tasks(_names(d.eval_tasks), "demo.eval_tasks")
    demo_data.check_tasks(_names(d.train_tasks), "demo.train_tasks")
    ph = ph or phases(cfg, workdir)
    corpus = ph.run("corpus", lambda: demo_data.build_corpus(
        d.corpus, int(d.doc_words), int(d.max_docs), os.path.join(workdir, "corpus",
                                                                   "docs.jsonl")))
    tok = ph.run("tokenizer", lambda: {"path": demo_data.train_tokenizer(
        os.path.splitext(corpus["path"])[0] + ".txt", int(cfg.model.vocab_size),
        os.path.join(workdir, "tokenizer", "sp"))})["path"]
    data = ph.run("data", lambda: build_data(cfg, workdir, corpus["path"], tok))
    return training_config(cfg, data, tok)


def run(cfg, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) every phase of the demo config `cfg` in `workdir`; returns the
    summary (also in `<workdir>/summary.json`)."""
    d = cfg.demo
    stages = sorted(cfg.stages.keys())
    n_copy = copy_stage_count(cfg)
    ph = phases(cfg, workdir)
    t_start = time.time()
    run_cfg = prepare(cfg, workdir, ph)
    tok = run_cfg.data.tokenizer
    lengths = _ints(d.eval_lengths)
    base = stages[n_copy]
    zero_rope = (json.loads(d.zero_shot_rope) if d.zero_shot_rope else
                 cfg.stages[stages[-1]].rope.to_dict())
    models = {"base": dict(stage=base), "zero-shot": dict(stage=base, rope=zero_rope)}
    models.update({s: dict(stage=s) for s in stages[n_copy + 1:]})
    for i, s in enumerate(stages):
        ph.run(f"train-{s}", lambda i=i: train_stages(run_cfg, workdir, stages[:i + 1]))
        for m, spec in models.items():
            if spec["stage"] == s:
                ph.run(f"eval-{m}", lambda m=m, spec=spec: evaluate(
                    workdir, m, spec, tok, lengths, d, cfg.attn))
    summary = ph.run("report", lambda: report(workdir, cfg, list(models), lengths, base))
    log.info("demo finished in %.1f s (phases run now: %s)", time.time() - t_start,
             ph.ran or "none, all cached")
    print(open(os.path.join(workdir, "summary.txt"), encoding="utf-8").read())
    return summary


def copy_stage_count(cfg) -> int:
    """demo.copy_stages, validated against the stages and the data shares."""
    d = cfg.demo
    n = int(d.copy_stages)
    if not 0 <= n <= len(cfg.stages) - 2:
        raise ValueError(f"demo.copy_stages={n} must leave a base and an extension stage "
                         f"among the {len(cfg.stages)} stages; use 0..{len(cfg.stages) - 2}")
    shares = float(d.retrieval_share) + float(d.copy_share)
    if not (0 <= float(d.retrieval_share) and 0 <= float(d.copy_share) and shares < 1):
        raise ValueError(f"demo.retrieval_share={d.retrieval_share} + demo.copy_share="
                         f"{d.copy_share} must be >= 0 each and < 1 together (the rest of "
                         "the rows are datagen conversations)")
    return n


# Copy conversations are short (~60 tokens) and packed: about this many tokens each.
COPY_TOKENS = 60


def build_data(cfg, workdir: str, docs_path: str, tok: str) -> dict[str, Any]:
    """Every stage's shards: copy conversations for the copy stages; datagen conversations,
    retrieval and copy records at its length for every later stage."""
    d = cfg.demo
    stages = sorted(cfg.stages.keys())
    n_copy_stages = copy_stage_count(cfg)
    bs = int(cfg.data.batch_size)
    lengths, samples, plan = {}, {}, {}
    for i, s in enumerate(stages):
        st = cfg.stages[s]
        L = int(st.seq_len)
        rows = int(st.steps) * bs  # rows one epoch of the stage needs
        if i < n_copy_stages:
            plan[s] = (L, 0, rows * max(1, L // COPY_TOKENS))
            continue
        n_ret = int(round(rows * float(d.retrieval_share)))
        n_cp = int(round(rows * float(d.copy_share))) * max(1, L // COPY_TOKENS)
        rest = 1 - float(d.retrieval_share) - float(d.copy_share)
        n_conv = max(8, int(round(rows * rest / float(d.epochs))))
        if L in lengths:
            raise ValueError(f"demo stages {lengths[L]} and {s} have the same seq_len {L}; "
                             "the stages after the copy stages need distinct lengths")
        lengths[L], samples[L] = s, n_conv
        plan[s] = (L, n_ret, n_cp)
    out_dir = os.path.join(workdir, "data")
    conv = demo_data.build_conversations(docs_path, tok, lengths, samples, out_dir, d)
    out: dict[str, Any] = {"paths": {}, "counts": conv["counts"]}
    tasks = _names(d.train_tasks)
    for i, s in enumerate(stages):
        paths = list(conv["paths"].get(s, []))
        L, n_ret, n_cp = plan[s]
        if n_cp:
            p = os.path.join(out_dir, s, "copy.arrayrecord")
            n = demo_data.copy_records(tok, n_cp, int(d.seed) + 2000 + i, p,
                                       int(d.copy_max_items), float(d.copy_digit_share))
            out["counts"].setdefault(s, {})["copy"] = {"records": n}
            paths.append(p)
        if n_ret and tasks:
            p = os.path.join(out_dir, s, "retrieval.arrayrecord")
            # Retrieval at this length and at half of it: both RULER budgets are seen.
            ls = sorted({max(int(d.min_retrieval_len), L // 2), L})
            n = demo_data.retrieval_records(tasks, ls, n_ret, tok, int(d.seed) + 1000, p)
            out["counts"][s]["retrieval"] = {"records": n, "lengths": ls, "tasks": tasks}
            paths.append(p)
        out["paths"][s] = paths
    return out


def training_config(cfg, data: dict[str, Any], tok: str):
    """The trainer's config: demo section and entry point dropped, data paths and tokenizer
    filled in."""
    c = mc.ConfigDict(cfg.to_dict())
    del c["demo"], c["entry"]
    c.data.tokenizer = tok
    stages = sorted(c.stages.keys())
    c.data.path = ",".join(data["paths"][stages[0]])
    for s in stages:
        c.stages[s].data_path = ",".join(data["paths"][s])
    return c


def train_stages(run_cfg, workdir: str, stages: list[str]) -> dict[str, Any]:
    """Trains up to the last of `stages` (the trainer resumes finished work itself)."""
    c = mc.ConfigDict(run_cfg.to_dict())
    for s in list(c.stages.keys()):
        if s not in stages:
            del c.stages[s]
    t0 = time.time()
    res = trainer.train_and_evaluate(c, workdir)
    return {"stage": stages[-1], "metrics": res.get(stages[-1], {}),
            "seconds": round(time.time() - t0, 2)}


class ChatPromptRunner:
    """Feeds RULER prompts to an lctx model in the chat format it was trained on: the task
    as the user turn, RULER's answer prefix as the assistant's prefill (token ids)."""

    def __init__(self, inner, tokenizer_path: str):
        self.inner = inner
        self.fmt = ChatFormat(load_tokenizer(tokenizer_path))
        self.max_model_len = inner.max_len

    def generate(self, prompts, max_new_tokens: int, stop=()):
        ids = []
        for p in prompts:
            user, prefix = demo_data.split_prompt(p)
            ids.append(self.fmt.render_prompt([{"role": "user", "content": user}], prefix))
        return self.inner.generate(ids, max_new_tokens, stop)


def evaluate(workdir: str, name: str, spec: dict, tok: str, lengths: list[int], d, attn
             ) -> dict[str, Any]:
    """RULER subset for one model; results in <workdir>/results/<name>.json. The runner
    prefills blockwise with the run's `attn` block sizes."""
    # Window: the longest length plus the chat headers around the prompt.
    inner = LctxRunner(os.path.join(workdir, "ckpt", spec["stage"]), tokenizer=tok,
                       rope=spec.get("rope"), max_model_len=max(lengths) + 32,
                       batch_size=int(d.eval_batch), progress=False,
                       block_q=int(attn.block_q), block_k=int(attn.block_k))
    doc = ruler_run.run(ChatPromptRunner(inner, tok), model=name,
                        tokenizer=ruler_tokenizer(tok), tokenizer_name=os.path.basename(tok),
                        lengths=lengths, tasks=_names(d.eval_tasks),
                        num_samples=int(d.eval_samples), out=os.path.join(workdir, "eval", name),
                        opts=demo_data.ruler_options(42), batch_size=int(d.eval_batch))
    inner.close()
    # The RULER score is all-or-nothing; the held-out answer loss shows the same comparison
    # on a continuous scale (same records for every model).
    losses = {str(T): answer_loss(workdir, spec, tok, T, d) for T in sorted(
        {min(lengths), 4 * min(lengths)})}
    doc["answer_loss"] = losses
    path = os.path.join(workdir, "results", f"{name}.json")
    scoring.write_json(path, doc)
    s = doc["summary"]
    log.info("eval %s: per-length %s, effective length %s", name,
             {k: round(v, 1) for k, v in s["length_means"].items()}, s["effective_length"])
    log.info("eval %s: held-out answer loss %s", name, losses)
    return {"results": path, "length_means": s["length_means"], "answer_loss": losses,
            "effective_length": s["effective_length"], "rope": spec.get("rope")}


def answer_loss(workdir: str, spec: dict, tok: str, seq_len: int, d, n: int = 32) -> float:
    """Mean loss per answer token on `n` held-out NIAH conversations of `seq_len` tokens
    (drawn with a seed neither training nor the RULER evaluation uses), one a row. The
    model is the stage's own (`lctx.run`), with the spec's RoPE when it has one."""
    path = os.path.join(workdir, "data", f"heldout-{seq_len}.arrayrecord")
    if not os.path.exists(path):
        demo_data.retrieval_records(_names(d.train_tasks), [seq_len], n, tok, 99_991, path)
    over = {"max_seq_len": seq_len + 8}
    if spec.get("rope"):
        over["rope"] = rope_lib.make_rope(**spec["rope"])
    _, model, _ = run_lib.Run.open(workdir).load_model(spec["stage"], **over)
    graphdef, params = nnx.split(model, nnx.Param)
    it = iter(data_lib.make_dataset([path], data_lib.render_fn_from_tokenizer(tok),
                                    seq_len=seq_len, batch_size=8, seed=0, pack=False))
    step = jax.jit(lambda p, b: step_lib.eval_step(p, b, graphdef=graphdef, loss_chunk=1024))
    tot, cnt = 0.0, 0.0
    for _ in range(max(1, n // 8)):
        m = jax.device_get(step(params, {k: np.asarray(v) for k, v in next(it).items()}))
        tot, cnt = tot + float(m["eval/loss_sum"]), cnt + float(m["eval/loss_tokens"])
    return round(tot / max(cnt, 1.0), 4)
