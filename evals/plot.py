"""RULER curves and effective-length tables from results JSONs (lctx.ruler_results/v1).

  python -m evals.plot --results=a/results.json,b/results.json --out=curves.png

Left panel: per-length mean over tasks per model (He et al. Fig. 4 style) with the 85.6
threshold; right panel: per-task accuracy vs length for the first model (Fig. 5 style).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from evals.ruler import scoring


def curves(docs: Sequence[dict]) -> dict[str, dict[int, float]]:
    """{model: {length: mean score over tasks}}."""
    return {d["model"]: {int(k): v for k, v in d["summary"]["length_means"].items()}
            for d in docs}


def task_curves(doc: dict) -> dict[str, dict[int, float]]:
    """{task: {length: score}} for one results document."""
    out: dict[str, dict[int, float]] = {}
    for length, per_task in doc["scores"].items():
        for task, score in per_task.items():
            out.setdefault(task, {})[int(length)] = score
    return {t: dict(sorted(v.items())) for t, v in out.items()}


def effective_table(docs: Sequence[dict]) -> str:
    """Markdown table: model, score per length, weighted averages, effective length."""
    lengths = sorted({int(k) for d in docs for k in d["summary"]["length_means"]})
    head = ["model"] + [f"{L // 1024}K" if L % 1024 == 0 else str(L) for L in lengths] + \
        ["avg", "wAvg inc", "wAvg dec", "effective"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in docs:
        s = d["summary"]
        cells = [d["model"]] + [f"{s['length_means'].get(str(L), float('nan')):.2f}"
                                for L in lengths]
        cells += [f"{s['avg']:.2f}", f"{s['wavg_inc']:.2f}", f"{s['wavg_dec']:.2f}",
                  str(s["effective_length"])]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(docs: Sequence[dict], out: str, threshold: float = scoring.EFFECTIVE_THRESHOLD):
    """Draws both panels to `out` (PNG, written atomically); returns the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, pts in curves(docs).items():
        xs = sorted(pts)
        ax1.plot(xs, [pts[x] for x in xs], marker="o", label=model)
    ax1.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylim(-2, 102)
    ax1.set_ylabel("RULER score (mean over tasks)")
    ax1.set_title("RULER vs context length")
    ax1.legend(fontsize=8)
    for task, pts in task_curves(docs[0]).items():
        xs = sorted(pts)
        ax2.plot(xs, [pts[x] for x in xs], marker=".", label=task)
    ax2.set_title(f"per task: {docs[0]['model']}")
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, out)
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="comma list of results.json files")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    paths = [x for x in args.results.split(",") if x]
    missing = [x for x in paths if not os.path.exists(x)]
    if missing:
        p.error(f"--results: not found: {missing}")
    docs = [scoring.load_results(x) for x in paths]
    plot(docs, args.out)
    print(effective_table(docs))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
