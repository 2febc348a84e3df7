"""The demo's report phase: RULER curves, effective lengths and per-stage training metrics.

Writes into the workdir: `ruler_curves.png` (mean RULER score vs length per model, like He et
al. 2025 Figure 4, plus per-task curves of the last stage), `summary.txt` / `summary.json`
(effective lengths, score at 4x the base length for zero-shot scaling vs the stepwise model,
phase timings) and `stage_metrics.json` (every stage's steps, losses and throughput from
`metrics.jsonl`). JAX-free.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from evals import plot as plot_lib
from evals.ruler import scoring
from lctx import files


def stage_metrics(workdir: str) -> dict[str, dict[str, Any]]:
    """Per stage: steps logged, first/last train loss, eval losses, median tokens/s."""
    rows: dict[str, list[dict]] = {}
    for r in files.json_lines(os.path.join(workdir, "metrics.jsonl")):
        rows.setdefault(r.get("stage", "?"), []).append(r)
    out = {}
    for stage, rs in sorted(rows.items()):
        train = [r for r in rs if "train/loss" in r]
        evals = [(r["step"], r["eval/loss"]) for r in rs if "eval/loss" in r]
        tps = sorted(r["perf/tokens_per_s"] for r in train if "perf/tokens_per_s" in r)
        out[stage] = {
            "steps_logged": len(train),
            "last_step": max((r["step"] for r in train), default=None),
            "train_loss_first": train[0]["train/loss"] if train else None,
            "train_loss_last": train[-1]["train/loss"] if train else None,
            "eval_loss": [{"step": s, "loss": v} for s, v in evals],
            "tokens_per_s_median": tps[len(tps) // 2] if tps else None,
        }
    return out


def _at(means: dict[str, float], length: int) -> float | None:
    v = means.get(str(length))
    return None if v is None else float(v)


def report(workdir: str, cfg, models: Sequence[str], lengths: Sequence[int], base: str
           ) -> dict[str, Any]:
    """Writes the plot, summary and stage metrics; returns the summary document. `base` is
    the base model's stage (4x its length is where zero-shot and stepwise are compared)."""
    stages = sorted(cfg.stages.keys())
    base_len = int(cfg.stages[base].seq_len)
    docs = [scoring.load_results(os.path.join(workdir, "results", f"{m}.json"))
            for m in models]
    # Curves: every model; per-task panel of the last stage (the model the demo builds).
    plot_lib.plot([docs[-1]] + docs[:-1], os.path.join(workdir, "ruler_curves.png"))
    metrics = stage_metrics(workdir)
    marks = []
    pdir = os.path.join(workdir, "phases")
    for f in os.listdir(pdir):
        if f.endswith(".json"):
            with open(os.path.join(pdir, f), encoding="utf-8") as fh:
                m = json.load(fh)
            marks.append((m["finished"], m["phase"], m["seconds"]))
    phases = {name: secs for _, name, secs in sorted(marks)}  # in the order they ran
    means = {d["model"]: d["summary"]["length_means"] for d in docs}
    x4 = 4 * base_len
    last = stages[-1]
    summary = {
        "base_length": base_len, "lengths": list(lengths),
        "stages": {s: {"seq_len": int(cfg.stages[s].seq_len), "steps": int(cfg.stages[s].steps),
                       "rope": cfg.stages[s].rope.to_dict()} for s in stages},
        "effective_length": {d["model"]: d["summary"]["effective_length"] for d in docs},
        "length_means": means,
        "at_4x_base": {"length": x4, "zero_shot": _at(means["zero-shot"], x4),
                       "stepwise": _at(means[last], x4), "base": _at(means["base"], x4)},
        "answer_loss": {d["model"]: d.get("answer_loss", {}) for d in docs},
        "tasks": docs[0]["settings"]["tasks"], "samples": docs[0]["settings"]["num_samples"],
        "phase_seconds": phases, "stage_metrics": metrics,
    }
    files.atomic_write(os.path.join(workdir, "stage_metrics.json"),
                            json.dumps(metrics, indent=1))
    files.atomic_write(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=1))
    files.atomic_write(os.path.join(workdir, "summary.txt"), summary_text(summary, docs))
    return summary


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def summary_text(s: dict[str, Any], docs: Sequence[dict]) -> str:
    """The human-readable summary: effective-length table and the 4x-base comparison."""
    a = s["at_4x_base"]
    lines = [f"lctx demo: RULER ({', '.join(s['tasks'])}; {s['samples']} samples per task "
             f"and length), base length {s['base_length']} tokens", "",
             plot_lib.effective_table(docs), "",
             f"At 4x the base length ({a['length']} tokens): zero-shot RoPE scaling "
             f"{_fmt(a['zero_shot'])}, stepwise-trained {_fmt(a['stepwise'])}, base as is "
             f"{_fmt(a['base'])}."]
    if a["zero_shot"] is not None and a["stepwise"] is not None:
        diff = a["stepwise"] - a["zero_shot"]
        verdict = ("the paper's direction" if diff > 0 else "no difference" if diff == 0
                   else "NOT the paper's direction")
        lines.append(f"Stepwise minus zero-shot at 4x: {diff:+.1f} points ({verdict}).")
    al = s.get("answer_loss", {})
    if any(al.values()):
        lines += ["", "Held-out NIAH answer loss (nats/token, lower is better; same records "
                  "for every model):"]
        lines += [f"  {m}: " + ", ".join(f"{T} tokens {v:.3f}" for T, v in sorted(
            ls.items(), key=lambda kv: int(kv[0]))) for m, ls in al.items()]
    lines += ["", "Stages:"]
    for name, st in s["stages"].items():
        m = s["stage_metrics"].get(name, {})
        ev = m.get("eval_loss") or [{}]
        lines.append(f"  {name}: T={st['seq_len']} steps={st['steps']} rope={st['rope']} "
                     f"train loss {_fmt(m.get('train_loss_first'))} -> "
                     f"{_fmt(m.get('train_loss_last'))}, eval loss {_fmt(ev[-1].get('loss'))}, "
                     f"{_fmt(m.get('tokens_per_s_median'))} tokens/s")
    total = sum(s["phase_seconds"].values())
    lines += ["", "Phase wall times (s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in s["phase_seconds"].items()) + f"; total {total:.0f}"]
    return "\n".join(lines) + "\n"
