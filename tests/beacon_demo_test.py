"""The beacon miniature (configs/beacon_demo.py:smoke) end to end through `lctx.train`:
base, two adapters, RULER NIAH through the beacon runner, the summary; a rerun redoes
nothing."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, config="configs/beacon_demo.py:smoke"):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as users
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "lctx.train",
                           f"--config={config}", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_beacon_miniature_smoke(tmp_path):
    wd = str(tmp_path / "mini")
    out = _run(wd)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.load(open(os.path.join(wd, "summary.json")))
    assert set(s["eval"]) == {"native", "truncation", "shared", "experts"}
    for m in ("truncation", "shared", "experts"):
        assert set(s["eval"][m]["length_means"]) == {"640"}
    # The adapters read 640 tokens at ratio 5 (the smallest that covers 640 + headroom).
    assert s["eval"]["experts"]["ratios_used"] == {"5": 2}
    assert s["eval"]["truncation"]["ratios_used"] == {"0": 2}
    assert "truncation" in open(os.path.join(wd, "summary.txt")).read()
    again = _run(wd)  # every phase cached: nothing trains or evaluates again
    assert again.returncode == 0 and not re.search(r"phase \S+ +start", again.stderr)
    assert re.search(r"phase train-experts +cached", again.stderr)
    # The docstring's second command: one adapter run alone on the finished miniature.
    one = _run(str(tmp_path / "experts"), f"configs/beacon_demo.py:smoke,adapter=experts,base={wd}")
    assert one.returncode == 0, one.stderr[-3000:]
    assert os.path.isdir(tmp_path / "experts" / "ckpt" / "s2_adapter" / "2")
