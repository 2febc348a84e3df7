"""The self-bootstrap config end to end on CPU (smoke size): a seed stage, then two stages
whose data the previous stage's lctx export generated through vLLM; every record names the
model that wrote it; a rerun redoes nothing.

One well-chosen end-to-end test: it starts two vLLM engines (one per generating export),
which is what a self-bootstrap is, and three short `python3 -m lctx.train` runs.
"""
import glob
import json
import os
import subprocess
import sys
import time

import pytest

from vllm_helpers import vllm_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-m", "datagen.selfgen.bootstrap",
       "--config=configs/self_bootstrap.py:smoke"]


def _run(workdir):
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)  # training runs on the one real CPU device
    t0 = time.time()
    p = subprocess.run(CMD + [f"--workdir={workdir}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-6000:]
    return time.time() - t0, p.stderr


def _records(path_glob):
    from lctx import records
    return [r for p in sorted(glob.glob(path_glob)) for r in records.read_array_record(p)]


@pytest.mark.slow
@pytest.mark.vllm
def test_self_bootstrap_stages_generate_each_others_data(tmp_path):
    from datagen.selfgen import bootstrap, store
    vllm_python()  # fail (never skip) with the build command when the venv is missing
    w = str(tmp_path / "boot")
    secs, _ = _run(w)
    prov = json.load(open(os.path.join(w, "provenance.json")))
    stages = prov["stages"]
    assert [s["stage"] for s in stages] == ["s0_seed", "s1_1536", "s2_2048"]
    hf = os.path.join(w, "train", "hf")
    assert stages[0]["generated_by"].startswith("selfgen-offline")
    assert stages[1]["generated_by"] == os.path.join(hf, "s0_seed")
    assert stages[2]["generated_by"] == os.path.join(hf, "s1_1536")
    assert [s["trained_from"] for s in stages] == ["scratch", "s0_seed", "s1_1536"]
    for i, st in enumerate(stages):
        assert st["export"] == os.path.join(hf, st["stage"])
        assert st["export_fingerprint"] == bootstrap.model_fingerprint(st["export"])
        if i:  # the generator was exactly the previous stage's export
            assert st["generator_fingerprint"] == stages[i - 1]["export_fingerprint"]
        lo, hi = st["bucket"]
        convs = _records(os.path.join(st["data"], f"{lo}-{hi}", "conversations-*"))
        ios = list(store.Reader(sorted(glob.glob(os.path.join(st["data"], f"{lo}-{hi}",
                                                               "io-*")))))
        assert len(convs) == len(ios) == st["records"] >= (24 if i == 0 else 3)
        for c, io in zip(convs, ios):
            m = c["meta"]
            assert m["generator"] == st["generated_by"] == io["meta"]["generator"]
            assert m["passages_generator"] == st["generated_by"]
            assert lo <= m["num_tokens"] == m["length_target"] < hi
        if i:  # the export, served by vLLM, wrote the passages of its successor's data
            man = json.load(open(glob.glob(os.path.join(st["data"], "passages",
                                                        "manifest-*"))[0]))
            assert man["fingerprint"]["generator_model"] == st["generated_by"]
            assert man["generator"]["backend"] == "vllm" and man["passages"] > 0
    # A rerun finds every phase done and changes nothing.
    before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(w, "data", "*", "*",
                                                                       "*.arrayrecord"))}
    again, log = _run(w)
    assert "phases run now: none" in log
    assert json.load(open(os.path.join(w, "provenance.json"))) == prov
    assert all(open(p, "rb").read() == b for p, b in before.items())
    print(f"\nbootstrap smoke: {secs:.0f} s; rerun {again:.0f} s; records per stage "
          f"{[s['records'] for s in stages]}")
