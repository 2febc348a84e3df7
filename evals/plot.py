"""RULER curves and effective-length tables from results JSONs (lctx.ruler_results/v1).

  python -m evals.plot --results=a/results.json,b/results.json --out=curves.png

First panel: per-length mean over tasks per model (He et al. Fig. 4 style) with the 85.6
threshold; then one per-task panel per model (Fig. 5 style). Lengths are the runs' own, on a
log axis labelled as people write them (4K, 128K, 1M; 384 for a short run).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Sequence

from evals.ruler import scoring


def length_label(n: int) -> str:
    """4096 -> '4K', 131072 -> '128K', 1048576 -> '1M', 1000000 -> '1M', 1536 -> '1536'."""
    for unit, suffix in ((1 << 20, "M"), (1 << 10, "K"), (10**6, "M"), (10**3, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


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
    head = ["model"] + [length_label(L) for L in lengths] + \
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


def _length_axis(ax, lengths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [length_label(L) for L in lengths])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)


def plot(docs: Sequence[dict], out: str | None = None,
         threshold: float = scoring.EFFECTIVE_THRESHOLD):
    """The mean-curve panel and a per-task panel for every model; written to `out` (PNG,
    atomically) when given. Returns the figure (shown inline in a notebook)."""
    import matplotlib.pyplot as plt
    if not docs:
        raise ValueError("no results to plot")
    lengths = sorted({int(k) for d in docs for k in d["summary"]["length_means"]})
    n = 1 + len(docs)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    axes = axes.ravel()
    ax = axes[0]
    for model, pts in curves(docs).items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=model)
    ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold}")
    ax.set_ylabel("RULER score (mean over tasks)")
    ax.set_title("RULER vs context length")
    ax.legend(fontsize=8, loc="lower left")
    _length_axis(ax, lengths)
    tasks = sorted({t for d in docs for t in task_curves(d)})
    cmap = plt.get_cmap("tab20")
    colors = {t: cmap(i % 20) for i, t in enumerate(tasks)}  # one color per task everywhere
    for ax, d in zip(axes[1:], docs):
        for task, pts in task_curves(d).items():
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], marker=".", color=colors[task], label=task)
        ax.set_title(f"per task: {d['model']}")
        _length_axis(ax, lengths)
    for ax in axes[n:]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colors[t], marker=".", label=t) for t in tasks]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(tasks), 7), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(tasks) / 7), 1, 1))
    if out:
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
    import matplotlib
    matplotlib.use("Agg")  # a command line writes the PNG; no window
    plot(docs, args.out)
    print(effective_table(docs))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
