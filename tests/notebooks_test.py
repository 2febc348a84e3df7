"""notebooks/ruler_curves.ipynb runs on results from a small run and draws the PNG; the plot
CLI does the same."""
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
    assert "| regex-short | 100.00 | 0.00 |" in table and "| 8192 |" in table
    docs = [scoring.load_results(p) for p in results]
    assert plot.curves(docs)["regex-long"] == {4096: 100.0, 8192: 100.0}
    assert set(plot.task_curves(docs[0])) == {"niah_single_1", "niah_multikey_3"}


def test_notebook_executes(results, tmp_path):
    nbformat = require("nbformat")
    nbclient = require("nbclient")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "ruler_curves.ipynb"), as_version=4)
    os.environ["RULER_RESULTS"] = ",".join(results)
    os.environ["RULER_PLOT_OUT"] = str(tmp_path / "nb.png")
    try:
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": ROOT}}).execute()
    finally:
        os.environ.pop("RULER_RESULTS")
        os.environ.pop("RULER_PLOT_OUT")
    assert (tmp_path / "nb.png").exists()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "regex-short effective length: 4096" in text
    assert "regex-long effective length: 8192" in text
