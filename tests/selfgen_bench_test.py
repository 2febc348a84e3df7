"""bench/selfgen_bench.py runs with its documented smoke size (until tests/bench_test.py
collects every bench): one exact 64K-token sample, built and counted side by side."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_selfgen_bench_smoke(tmp_path):
    p = subprocess.run([sys.executable, "bench/selfgen_bench.py", "--sizes=64k",
                        f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    row = next(line for line in p.stdout.splitlines() if line.strip().startswith("65,536"))
    build_s, whole_s = float(row.split()[1]), float(row.split()[5])
    assert build_s > 0 and whole_s > 0 and re.search(r"\d+\.\d\d\s+\d+\.\d\d$", row)
