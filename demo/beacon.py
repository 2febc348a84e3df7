r"""The beacon miniature (Li et al. 2025 on a CPU), resumable phase by phase.

    python3 -m lctx.train --config=configs/beacon_demo.py --workdir=runs/beacon_demo

(configs/beacon_demo.py names `demo.beacon:run` as its entry point.)

Phases (each writes `<workdir>/phases/<phase>.json` atomically; a rerun skips finished ones):
  corpus, tokenizer  KJV passages and a SentencePiece tokenizer (as the demo)
  data               copy rows (s0_copy); NIAH-format retrieval + copy rows at the native
                     window (s1_base); retrieval at `train_lengths` and KJV text rows (one
                     assistant turn, loss on every token) for the adapters
  train-base         `lctx.trainer` on the base stages          -> <workdir>/base
  train-<adapter>    `lctx.trainer` with a `beacon` section, the base frozen (resume_from)
                     -> <workdir>/<adapter>; every adapter run sees the same batches and the
                     same per-step ratio draws
  eval-<model>       RULER NIAH (`evals.ruler` with the demo's short-length options)
                     through `evals.runners.beacon_runner.BeaconRunner`: 'native' (the base
                     at its own window), 'truncation' (middle cut to the window, ratio 0),
                     and every adapter at `eval_lengths`
  report             summary.json / summary.txt: score per model and length, ratios used
"""
from __future__ import annotations

import json
import logging
import os
import time

from demo import data as demo_data
from demo import pipeline
from lctx import files

log = logging.getLogger("demo.beacon")


_ints, _names = pipeline._ints, pipeline._names


def text_records(tok_path: str, n: int, seq_len: int, seed: int, out_path: str) -> int:
    """`n` plain-text rows of about `seq_len` tokens: consecutive KJV verses as one assistant
    turn (the chat render adds a header; the loss covers every text token)."""
    import numpy as np

    from lctx import records
    from lctx.corpora import kjv_verses
    from lctx.tokenizer import load_tokenizer
    tok = load_tokenizer(tok_path)
    verses = [v[3] for v in kjv_verses()]
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        j, parts, used = int(rng.integers(0, len(verses) - 2000)), [], 0
        while used < seq_len - 16:
            parts.append(verses[j])
            used += len(tok.encode(verses[j])) + 1
            j += 1
        recs.append(records.make_record(f"kjv-text/{i:05d}", [
            {"role": "assistant", "content": " ".join(parts)}], {"source": "kjv"}))
    records.write_array_record(out_path, recs)
    return len(recs)


def build_data(cfg, workdir: str, tok: str) -> dict:
    d = cfg.beacon_demo
    out = os.path.join(workdir, "data")
    stages = sorted(cfg.stages.keys())
    copy_stage, base_stage = stages[0], stages[1]
    st0, st1 = cfg.stages[copy_stage], cfg.stages[base_stage]
    bs, seed = int(cfg.data.batch_size), int(d.seed)
    paths = {}
    # Copy rows are short and packed: twice what the stage's packed rows hold at most.
    rows = 2 * int(st0.steps) * bs * max(1, int(st0.seq_len) // pipeline.COPY_TOKENS)
    paths[copy_stage] = [os.path.join(out, "copy0.arrayrecord")]
    demo_data.copy_records(tok, rows, seed + 1, paths[copy_stage][0], int(d.copy_max_items),
                           float(d.copy_digit_share))
    base_rows = int(st1.steps) * bs
    native = int(d.beacon.native_len)
    ret = os.path.join(out, "base_retrieval.arrayrecord")
    n_ret = int(base_rows * (1 - float(d.copy_share)))
    demo_data.retrieval_records(_names(d.base_tasks), [native - 32], n_ret, tok, seed + 2, ret)
    cp = os.path.join(out, "base_copy.arrayrecord")
    demo_data.copy_records(tok, int(base_rows * float(d.copy_share)) * max(
        1, native // pipeline.COPY_TOKENS), seed + 3, cp, int(d.copy_max_items),
        float(d.copy_digit_share))
    paths[base_stage] = [ret, cp]
    rows = int(d.steps) * int(d.batch_size)
    adapter_ret = os.path.join(out, "adapter_retrieval.arrayrecord")
    demo_data.retrieval_records(_names(d.base_tasks), _ints(d.train_lengths),
                                max(8, int(rows * (1 - float(d.text_share)))), tok, seed + 4,
                                adapter_ret)
    adapter_text = None  # KJV text rows only when the mix uses them
    if float(d.text_share) > 0:
        adapter_text = os.path.join(out, "adapter_text.arrayrecord")
        text_records(tok, max(8, int(rows * float(d.text_share))), int(d.seq_len), seed + 5,
                     adapter_text)
    return {"paths": paths, "adapter": {"retrieval": adapter_ret, "text": adapter_text}}


def base_config(cfg, data: dict, tok: str):
    import ml_collections as mc
    c = mc.ConfigDict(cfg.to_dict())
    del c["beacon_demo"], c["entry"]
    c.data.tokenizer = tok
    for s in c.stages.keys():
        c.stages[s].data_path = ",".join(data["paths"][s])
    c.data.path = c.stages[sorted(c.stages.keys())[0]].data_path
    return c


def adapter_config(cfg, data: dict, tok: str, adapter: str, base_dir: str):
    from configs import common
    import ml_collections as mc
    d = cfg.beacon_demo
    c = mc.ConfigDict(cfg.to_dict())
    del c["beacon_demo"], c["entry"]
    c.beacon = mc.ConfigDict(d.beacon.to_dict())
    c.beacon.adapter = adapter
    share = float(d.text_share)
    mix = [(data["adapter"]["retrieval"], 1 - share), (data["adapter"]["text"], share)]
    c.beacon.data_mix = ";".join(f"{p}={w}" for p, w in mix if w > 0)
    c.stages = mc.ConfigDict()
    c.stages["s2_adapter"] = common.stage(
        seq_len=int(d.seq_len), steps=int(d.steps), rope_cfg=cfg.stages["s1_base"].rope,
        lr=float(d.lr), warmup_steps=max(1, int(d.steps) // 10), export_hf=False,
        data_path=",".join(p for p, w in mix if w > 0))
    c.data.update(tokenizer=tok, path=data["adapter"]["retrieval"],
                  batch_size=int(d.batch_size), pack=False)
    c.ckpt.resume_from = os.path.join(base_dir, "ckpt", "s1_base")
    return c


def train(run_cfg, workdir: str) -> dict:
    from lctx import trainer
    t0 = time.time()
    res = trainer.train_and_evaluate(run_cfg, workdir)
    return {"metrics": {k: {m: float(v) for m, v in r.items()} for k, r in res.items()},
            "seconds": round(time.time() - t0, 1)}


def evaluate(cfg, workdir: str, name: str, model_dir: str, tok: str, lengths: list[int],
             **runner_kw) -> dict:
    """RULER NIAH at `lengths` through the beacon runner, in the chat format of training."""
    from evals.ruler import run as ruler_run
    from evals.ruler.text import load_tokenizer
    from evals.runners.beacon_runner import BeaconRunner
    d = cfg.beacon_demo
    t0 = time.time()
    inner = BeaconRunner(model_dir, tokenizer=tok, progress=False, attn_impl="blockwise",
                         block=64, **runner_kw)
    doc = ruler_run.run(pipeline.ChatPromptRunner(inner, tok), model=name,
                        tokenizer=load_tokenizer(tok), tokenizer_name=os.path.basename(tok),
                        lengths=lengths, tasks=_names(d.eval_tasks),
                        num_samples=int(d.eval_samples), out=os.path.join(workdir, "eval", name),
                        opts=demo_data.ruler_options(42), batch_size=8)
    means = {str(k): round(float(v), 1) for k, v in doc["summary"]["length_means"].items()}
    # The RULER score is all-or-nothing on a 7-digit number; the teacher-forced loss of the
    # number's tokens on the same samples, through the same streaming path, is continuous.
    nll = {str(L): answer_nll(inner, tok, os.path.join(workdir, "eval", name, "data", t,
                                                       f"{L}.jsonl"))
           for L in lengths for t in _names(d.eval_tasks)[:1]}
    log.info("eval %s: %s, answer nll %s (ratios used %s)", name, means, nll, inner.used)
    return {"length_means": means, "answer_nll": nll,
            "ratios_used": {str(k): v for k, v in inner.used.items()},
            "seconds": round(time.time() - t0, 1)}


def _nll_fn():
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lctx import beacon_generate as bgen

    @functools.partial(jax.jit, static_argnames=("graphdef", "ratio", "capacity"))
    def nll(graphdef, state, buf_1T, n_full, rest_1R, tgt_1R, wt_1R, expert, *, ratio,
            capacity):
        model = nnx.merge(graphdef, state)
        mem, _ = bgen.prefill(model, buf_1T, n_full, ratio=ratio, expert=expert,
                              capacity=capacity)
        cache = bgen.memory_to_cache(model, mem, rest_1R.shape[1])
        idx_1R = jnp.arange(rest_1R.shape[1], dtype=jnp.int32)[None]
        hidden, _ = model.base(rest_1R, mem.length + idx_1R, jnp.ones_like(idx_1R),
                               cache=cache)
        logp = jax.nn.log_softmax(model.base.logits(hidden).astype(jnp.float32), -1)
        got = jnp.take_along_axis(logp, tgt_1R[..., None], -1)[..., 0]
        return -(got * wt_1R).sum()

    return nll


def answer_nll(runner, tok_path: str, data_path: str) -> float:
    """Mean teacher-forced loss (nats) of the answer number's tokens after each RULER prompt
    of `data_path`, read as `runner` reads it (its ratio rule, or its middle cut at ratio 0
    for truncation): the prompt's full windows through the beacons, then the tail and the
    answer by the base from the memory (the path generation takes)."""
    import math

    import numpy as np
    from flax import nnx

    from lctx import beacon_generate as bgen
    from lctx.tokenizer import ChatFormat, load_tokenizer
    fmt, w = ChatFormat(load_tokenizer(tok_path)), runner.bcfg.window
    graphdef, state = nnx.split(runner.model)
    fn, tot, cnt = _nll_fn(), 0.0, 0
    for line in open(data_path, encoding="utf-8"):
        s = json.loads(line)
        if "input" not in s:
            continue
        user, prefix = demo_data.split_prompt(s["input"])
        prompt = fmt.render_prompt([{"role": "user", "content": user}], prefix)
        full, mask = fmt.render([{"role": "user", "content": user}, {
            "role": "assistant", "content": f"{prefix} {', '.join(s['outputs'])}"}])
        if full[:len(prompt)] != prompt:
            raise ValueError(f"{data_path}: the eval prompt is not a prefix of the training "
                             "rendering; the chat formats disagree")
        answer = [t for t, m in zip(full[len(prompt):], mask[len(prompt):]) if m][:-1]
        if runner.truncate:
            prompt = runner._cut(prompt, demo_data.RESERVE)  # as RULER calls generate
        ratio, n_full, _, cap = bgen.plan(len(prompt), runner.bcfg, 0 if runner.truncate
                                          else runner.ratio)
        if n_full * w == len(prompt):  # no tail: the last window's raw rows read as the tail
            n_full -= 1  # (the same logits, tests/beacon_model_test.py)
        seq = prompt + answer
        rest = seq[n_full * w:]
        r_len = w + 32  # tail (< W) + answer (a 7-digit number), padded: one program
        n_pad = 1 << max(0, math.ceil(math.log2(max(n_full, 1))))
        buf = np.zeros((1, (n_pad + 1) * w), np.int32)
        buf[0, :n_full * w] = seq[:n_full * w]
        r, t, wt = (np.zeros((1, r_len), np.int32), np.zeros((1, r_len), np.int32),
                    np.zeros((1, r_len), np.float32))
        r[0, :len(rest)] = rest
        t[0, :len(rest) - 1] = rest[1:]
        wt[0, len(prompt) - n_full * w - 1:len(rest) - 1] = 1.0
        tot += float(fn(graphdef, state, buf, np.int32(n_full), r, t, wt,
                        np.int32(runner.bcfg.expert(ratio) if ratio else 0), ratio=ratio,
                        capacity=cap))
        cnt += len(answer)
    return round(tot / max(cnt, 1), 3)


def run(cfg, workdir: str) -> dict:
    """Runs or resumes every phase; returns the summary (also <workdir>/summary.json)."""
    d = cfg.beacon_demo
    ph = pipeline.phases(cfg, workdir)
    t_start = time.time()
    corpus = ph.run("corpus", lambda: demo_data.build_corpus(
        "kjv", 50, 200, os.path.join(workdir, "corpus", "docs.jsonl")))
    tok = ph.run("tokenizer", lambda: {"path": demo_data.train_tokenizer(
        os.path.splitext(corpus["path"])[0] + ".txt", int(cfg.model.vocab_size),
        os.path.join(workdir, "tokenizer", "sp"))})["path"]
    data = ph.run("data", lambda: build_data(cfg, workdir, tok))
    base_dir = os.path.join(workdir, "base")
    results = {"train": {}, "eval": {}}
    results["train"]["base"] = ph.run("train-base", lambda: train(
        base_config(cfg, data, tok), base_dir))
    adapters = _names(d.adapters)
    for a in adapters:
        results["train"][a] = ph.run(f"train-{a}", lambda a=a: train(
            adapter_config(cfg, data, tok, a, base_dir), os.path.join(workdir, a)))
    native = int(d.beacon.native_len)
    lengths = _ints(d.eval_lengths)
    b = d.beacon
    plain = dict(native_len=native, window=int(b.window), headroom=int(b.headroom))
    results["eval"]["native"] = ph.run("eval-native", lambda: evaluate(
        cfg, workdir, "native", base_dir, tok, [native - 32], truncate=True, **plain))
    results["eval"]["truncation"] = ph.run("eval-truncation", lambda: evaluate(
        cfg, workdir, "truncation", base_dir, tok, lengths, truncate=True, **plain))
    for a in adapters:
        results["eval"][a] = ph.run(f"eval-{a}", lambda a=a: evaluate(
            cfg, workdir, a, os.path.join(workdir, a), tok, lengths))
    summary = ph.run("report", lambda: report(workdir, results, native, lengths,
                                              time.time() - t_start))
    print(open(os.path.join(workdir, "summary.txt"), encoding="utf-8").read())
    return summary


def report(workdir: str, results: dict, native: int, lengths: list[int], secs: float) -> dict:
    models = ["truncation"] + [m for m in results["eval"] if m not in ("native", "truncation")]
    lines = [f"beacon miniature: NIAH (RULER niah tasks, % exact) by input length "
             f"(native window {native} tokens)",
             f"base at its own window ({native - 32} tokens): "
             f"{results['eval']['native']['length_means']}",
             "model        " + "  ".join(f"{L:>6d} ({L // native}x)" for L in lengths)]
    for m in models:
        means = results["eval"][m]["length_means"]
        lines.append(f"{m:<12s} " + "  ".join(f"{means.get(str(L), float('nan')):>11.1f}"
                                             for L in lengths))
    lines.append("answer-number loss (teacher-forced, nats/token; uniform over digits = 2.30)")
    nat = results["eval"]["native"].get("answer_nll", {})
    lines.append(f"base at its own window: {nat}")
    for m in models:
        nll = results["eval"][m].get("answer_nll", {})
        lines.append(f"{m:<12s} " + "  ".join(f"{nll.get(str(L), float('nan')):>11.3f}"
                                             for L in lengths))
    lines.append("ratios used: " + json.dumps({m: results["eval"][m]["ratios_used"]
                                               for m in models[1:]}))
    lines.append("train seconds: " + json.dumps({k: v["seconds"]
                                                 for k, v in results["train"].items()}))
    summary = dict(results, native=native, lengths=lengths, table="\n".join(lines))
    files.atomic_write(os.path.join(workdir, "summary.txt"), "\n".join(lines) + "\n")
    files.atomic_write(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=1))
    return summary
