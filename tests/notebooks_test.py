"""notebooks/ruler_curves.ipynb runs on the demo's results by default and shows its figure inline;
the plot CLI writes the PNG; tick labels, one per-task panel per model."""
import os

import pytest

from evals import plot
from evals.ruler import scoring
from evals.ruler import Options, Resources
from evals.ruler.run import run
from evals.ruler.text import load_tokenizer

from deps import require
from evals_ruler_run_test import RegexRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(sp_model_path, tmp_path_factory):
    tok = load_tokenizer(sp_model_path)
    paths = []
    for name, max_ctx in (("regex-short", 8_000), ("regex-long", 10**9)):
        out = tmp_path_factory.mktemp(name)
        run(RegexRunner(name, max_ctx=max_ctx), model=name, tokenizer=tok,
            tokenizer_name="kjv1k", lengths=[4096, 8192],
            tasks=["niah_single_1", "niah_multikey_3"], num_samples=2, out=str(out),
            opts=Options(), res=Resources())
        paths.append(str(out / "results.json"))
    return paths


def test_plot_cli_and_table(results, tmp_path, capsys):
    png = tmp_path / "c.png"
    assert plot.main([f"--results={','.join(results)}", f"--out={png}"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| model | 4K | 8K |" in table
    assert "| regex-short | 100.00 | 0.00 |" in table and "| 8192 |" in table
    docs = [scoring.load_results(p) for p in results]
    assert plot.curves(docs)["regex-long"] == {4096: 100.0, 8192: 100.0}
    assert set(plot.task_curves(docs[0])) == {"niah_single_1", "niah_multikey_3"}
    fig = plot.plot(docs)  # one mean panel, then a per-task panel for every model
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["RULER vs context length", "per task: regex-short",
                      "per task: regex-long"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["4K", "8K"]


@pytest.mark.parametrize("n,label", [(4096, "4K"), (131072, "128K"), (524288, "512K"),
                                     (1048576, "1M"), (1000000, "1M"), (384, "384"),
                                     (1536, "1536"), (3072, "3K"), (350000, "350K")])
def test_length_labels(n, label):
    assert plot.length_label(n) == label


def test_notebook_executes_on_the_demo_results_inline(results, tmp_path):
    """Without environment variables the notebook reads runs/demo/results/*.json under the
    repository root (here a copy of the tree's layout) and shows its figure inline."""
    nbformat = require("nbformat")
    nbclient = require("nbclient")
    import shutil
    demo = tmp_path / "runs" / "demo" / "results"
    demo.mkdir(parents=True)
    for p, name in zip(results, ("base", "s1")):
        shutil.copy(p, demo / f"{name}.json")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "ruler_curves.ipynb"), as_version=4)
    env = {k: os.environ.pop(k) for k in ("RULER_RESULTS", "RULER_PLOT_OUT") if k in os.environ}
    try:
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={
            "metadata": {"path": str(tmp_path / "notebooks")}}).execute()
    finally:
        os.environ.update(env)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "regex-short effective length: 4096" in text
    assert "regex-long effective length: 8192" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no inline figure"
