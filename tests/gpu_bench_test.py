"""bench/gpu_bench.py at smoke size on CPU: every section runs, every kernel check passes
against the fp32 reference, and launch/h100_env.sh's flags parse (the GPU run happens once,
so its code must be right before it gets there)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_bench_smoke_runs_every_section(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    p = subprocess.run([sys.executable, "bench/gpu_bench.py", "--smoke", "--quick", "--out",
                        str(tmp_path), "--budget_s", "900"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(tmp_path / "gpu_bench.json"))
    errors = {f"{s}/{n}": r for s, sec in res.items() for n, r in sec.items()
              if "error" in r or "skipped" in r and s != "flags"}
    assert not errors, errors
    checks = {n: r for n, r in res["check"].items() if not n.startswith("_")}
    assert {"cudnn_lctx@8docs+pad", "cudnn_lse@8docs+pad", "cudnn_ring_of_blocks@8docs+pad",
            "xla_blockwise@8docs+pad", "ring1_xla@8docs+pad"} <= set(checks)
    assert all(r["ok"] for r in checks.values()), checks
    assert res["kernels"]["cudnn_lctx_8docs@T=256"]["fwdbwd_tflops"] > 0
    assert res["train"]["cudnn"]["step_s_L2"] > 0
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in res["flags"]["h100_env.sh"]["flag"]
    assert "checks failing: none; errors: none" in p.stdout
