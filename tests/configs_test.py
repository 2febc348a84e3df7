"""Every shipped config loads, and every paper and ablation config trains a step.

The training runs differ from the shipped configs only in size overrides (model shape,
stage length and steps, block sizes, a local data root): a tiny random HF Llama directory
as ckpt.init_from (its tokenizer too), ArrayRecord data written here, and ring attention
over the 8 simulated devices, as the configs ask. The paper configs run in one workdir, each
continuing with its new stage, as the README's paper path does.
"""
import glob
import importlib
import json
import os

import pytest

import tiny_runs
from configs import common
from lctx import rope as rope_lib
from lctx import run as run_lib
from lctx import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs/*.py"))
               if not os.path.basename(p).startswith("_")
               and os.path.basename(p) not in ("common.py", "paper.py"))
VARIANTS = {"ablation_180k": ["h-h-s-fixed-no-sum", "hs-hs-hs-randomized"],
            "ablation_100k": ["4-hierarchies-multihop"], "1m": ["rope=llama3"],
            "demo": ["quick"], "beacon_demo": ["smoke,adapter=experts"]}
CASES = [(n, None) for n in NAMES] + [(n, a) for n, vs in VARIANTS.items() for a in vs]
SECTIONS = {"model", "attn", "mesh", "data", "opt", "ckpt", "eval", "log", "stages"}
T = 256  # stage length of the tiny runs: 16 tokens a device in 16 zigzag chunks over 8


def load(name, arg):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def test_all_configs_listed():
    assert {"demo", "180k", "350k", "650k", "1m", "ablation_180k", "ablation_100k"} <= set(NAMES)


@pytest.mark.parametrize("name,arg", CASES)
def test_config_loads_and_resolves_every_stage(name, arg):
    cfg = load(name, arg)
    assert SECTIONS <= set(cfg.keys()) and "rope" not in cfg  # RoPE is per stage only
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert "python3 -m lctx.train --config=configs/" in doc and "Expected" in doc
    run = run_lib.Run(cfg, "/nonexistent")
    assert run.stages
    for s in run.stages:  # RoPE, length and model of every stage, without touching data
        st = run.stage(s)
        assert st.model.rope == rope_lib.make_rope(**cfg.stages[s].rope.to_dict())
        # steps=-1: one epoch of the records present (configs/self_bootstrap.py's generated
        # stages, whose record count is known only once their generator ran).
        assert (st.configured_steps >= 1 or st.configured_steps == -1)
        assert st.seq_len <= cfg.model.max_seq_len


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, kjv_text):
    """One tiny HF directory and one small data set, laid out where each config reads."""
    root = tmp_path_factory.mktemp("configs")
    hf_dir = tiny_runs.tiny_hf_dir(str(root / "llama"), kjv_text[:150_000])
    recs = tiny_runs.qa_records(16, seed=1)
    dirs = ([f"paper/{s}" for s in ("s1_180k", "s2_350k", "s3_650k", "s4_1m")]
            + ["abl180/hs-hs-hs-fixed", "abl100/4-hierarchies"])
    for d in dirs:
        tiny_runs.write_shards(str(root / "data" / d), recs)
    return str(root / "data"), hf_dir


def shrink(cfg, hf_dir):
    """The size overrides (what `--config.x=y` would set on the command line)."""
    cfg.model.update(tiny_runs.TINY_MODEL, max_seq_len=T)
    cfg.attn.update(block_q=16, block_k=16)
    cfg.ckpt.init_from = hf_dir
    cfg.log.progress = False
    for s in cfg.stages:
        cfg.stages[s].update(seq_len=T, steps=1)
    return cfg


def trained(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["stage"], r["step"], r["train/loss"]) for r in map(json.loads, f)
                if "train/loss" in r]


@pytest.mark.slow
def test_paper_configs_train_in_one_workdir(inputs, tmp_path):
    """180k, then 350k, 650k and 1m in the same workdir: each trains its new stage only,
    from the previous stage, with the tokenizer of the init_from directory."""
    data_root, hf_dir = inputs
    wd = str(tmp_path / "paper")
    for name, stage in (("180k", "s1_180k"), ("350k", "s2_350k"), ("650k", "s3_650k"),
                        ("1m", "s4_1m")):
        cfg = shrink(load(name, f"data_root={data_root}/paper"), hf_dir)
        assert cfg.attn.impl == "ring" and cfg.data.tokenizer == ""
        assert list(trainer.train_and_evaluate(cfg, wd)) == [stage]
        assert os.path.isfile(os.path.join(wd, "hf", stage, "config.json"))
    rows = trained(wd)
    assert [(s, i) for s, i, _ in rows] == [(s, 0) for s in ("s1_180k", "s2_350k", "s3_650k",
                                                               "s4_1m")]
    assert all(0 < loss < 10 for _, _, loss in rows)
    run = run_lib.Run.open(wd)
    assert run.tokenizer == hf_dir and run.latest().stage == "s4_1m"
    thetas = [run.stage(s).model.rope.effective_theta(8) for s in run.stages]
    assert thetas == sorted(thetas) and len(set(thetas)) == 4


@pytest.mark.slow
@pytest.mark.parametrize("name,arg,sub", [("ablation_180k", "hs-hs-hs-fixed", "abl180"),
                                          ("ablation_100k", "4-hierarchies", "abl100")])
def test_ablation_configs_train_a_step(inputs, tmp_path, name, arg, sub):
    """Each stage reads its own data_path; data.path is not needed."""
    data_root, hf_dir = inputs
    cfg = shrink(load(name, f"{arg},data_root={data_root}/{sub}"), hf_dir)
    res = trainer.train_and_evaluate(cfg, str(tmp_path))
    assert len(res) == 1 and 0 < next(iter(res.values()))["train/loss"] < 10


def test_paper_schedule_facts():
    from datagen.presets import PAPER_STAGES
    c = load("1m", None)
    st = [c.stages[s] for s in sorted(c.stages.keys())]
    assert [s.seq_len for s in st] == [184320, 358400, 665600, 1048576]
    assert [s.steps * c.data.batch_size for s in st] == [2000, 1280, 600, 200]
    assert sorted(c.stages.keys()) == [s.name for s in PAPER_STAGES]
    assert c.opt.lr == 6e-5 and c.model.vocab_size == 128256
    thetas = [rope_lib.make_rope(**s.rope.to_dict()).effective_theta(128) for s in st]
    assert all(a < b for a, b in zip(thetas, thetas[1:]))  # theta grows stage by stage


def test_parse_arg_errors():
    with pytest.raises(ValueError, match="unknown"):
        common.parse_arg("nope=1", variant="x")
    with pytest.raises(ValueError, match="variant"):
        load("ablation_180k", "h-h-x")
    assert common.parse_arg("docs=300", docs=500).docs == 300
