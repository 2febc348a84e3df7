"""Every bench/ script runs as documented (its defaults, shrunk by its own size flags only).

A script's smoke run lives here or in its module's test file; `test_every_bench_script_runs`
checks that each bench/*.py is run by some test. Benchmarks print ratios; nothing here
asserts a speed.
"""
import glob
import os
import subprocess
import sys

import pytest

from deps import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def bench(script, *args, timeout=900, venv_python=None, **env):
    """Runs `python3 bench/<script> args...` from the repository root; returns stdout."""
    run_env = dict(os.environ, PYTHONPATH=ROOT, **env)
    run_env.pop("XLA_FLAGS", None)  # each script sets up its own devices
    p = subprocess.run([venv_python or sys.executable, f"bench/{script}", *args], cwd=ROOT,
                       env=run_env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout


def test_every_bench_script_runs():
    """Each bench/*.py is started by a test (here or in its module's test file)."""
    sources = "".join(open(p, encoding="utf-8").read()
                      for p in glob.glob(os.path.join(TESTS, "*_test.py")))
    missing = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(ROOT, "bench/*.py")))
               if f'"{os.path.basename(p)}"' not in sources
               and f"bench/{os.path.basename(p)}" not in sources]
    assert missing == [], f"bench scripts no test runs: {missing} (add one entry here)"


@pytest.mark.slow
def test_data_bench(tmp_path):
    out = bench("data_bench.py", "--config=configs/demo.py:smoke",
                f"--workdir={tmp_path / 'w'}", "--batches=2", "--steps=1")
    assert "ratio pipeline/step (packed)" in out and "stage s0_copy" in out


@pytest.mark.slow
def test_demo_attn_bench():
    out = bench("demo_attn_bench.py", "--lengths=128", "--blocks=64", "--steps=1")
    assert "blockwise 64" in out and "dense" in out


@pytest.mark.slow
def test_beacon_bench():
    assert "beacon" in bench("beacon_bench.py", "--smoke")


@pytest.mark.slow
def test_ring_bench():
    out = bench("ring_bench.py", "--seqs=512", "--time_seq=256", "--block=32", "--repeats=1",
                "--packed=1K:4:5:64")
    assert "ring" in out and "ring balanced" in out


@pytest.mark.slow
def test_model_bench():
    require("torch")  # its baseline is HF transformers
    out = bench("model_bench.py", "--steps=1", "--batch=1", "--seq=64", "--mem_max=256")
    assert "lctx" in out


@pytest.mark.slow
def test_ruler_bench(sp_model_path):
    out = bench("ruler_bench.py", f"--tokenizer={sp_model_path}", "--lengths=4096",
                "--tasks=niah_single_1", "--cap_s=2")
    assert "niah_single_1" in out


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_bench():
    out = bench("vllm_bench.py", "--n=2", "--repeats=1", "--max-tokens=8")
    assert "batched" in out
