"""Trainer: kill -9 / resume bit-identity, stages and their RoPE, loss masking, multi-process
and sequence-sharded parity, bad input. Tiny shapes (d_model 32, 2 layers, T 256-512)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny_runs
from configs import common
from lctx import data, layout, records, trainer
from lctx import run as run_lib
from lctx import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory, sp_model_path):
    d = tmp_path_factory.mktemp("recs")
    recs = tiny_runs.qa_records(120, seed=0)
    return tiny_runs.write_shards(str(d), recs), sp_model_path


def tiny_config(qa_data, s1=4, s2=0, every=2):
    path, tok = qa_data
    c = common.base_config()
    c.model.update(vocab_size=1024, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=8, mlp_dim=64, max_seq_len=512)
    c.mesh.update(data=-1, fsdp=1)
    c.data.update(path=path, tokenizer=tok, batch_size=8)
    c.opt.update(lr=3e-3, warmup_steps=2, loss_chunk=128)
    c.ckpt.update(every_steps=every, keep=3, async_save=False)
    c.log.progress = False
    c.stages.s1 = common.stage(seq_len=256, steps=s1, rope_cfg=common.rope(theta=1e4),
                               export_hf=False)
    if s2:
        c.stages.s2 = common.stage(seq_len=512, steps=s2, rope_cfg=common.rope(theta=4e4),
                                   carry_opt_state=True, export_hf=False)
    return c


def eval_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {(r["stage"], r["step"]): r["eval/loss"] for r in rows if "eval/loss" in r}


def losses(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "train/loss" in r:  # a rerun's line replaces the old one
                out[(r["stage"], r["step"])] = r["train/loss"]
    return out


CLI_CONFIG = """
from configs import common


def get_config(arg=None):
    c = common.base_config()
    c.model.update(vocab_size=1024, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=8, mlp_dim=64, max_seq_len=512)
    c.mesh.update(data=-1, fsdp=1)
    c.data.update(path={path!r}, tokenizer={tok!r}, batch_size=8)
    c.opt.update(lr=3e-3, warmup_steps=2, loss_chunk=128)
    c.ckpt.update(every_steps=2, keep=3, async_save=False)
    c.log.progress = False
    c.stages.s1 = common.stage(seq_len=256, steps=6, rope_cfg=common.rope(theta=1e4),
                               export_hf=False)
    c.stages.s2 = common.stage(seq_len=512, steps=3, rope_cfg=common.rope(theta=4e4),
                               carry_opt_state=True, export_hf=False)
    return c
"""


def cli(workdir, qa_data, *extra):
    """The real entry point on a tiny two-stage config file (written next to the workdir)."""
    path, tok = qa_data
    cfg_file = os.path.join(os.path.dirname(workdir), "tiny_cfg.py")
    with open(cfg_file, "w") as f:
        f.write(CLI_CONFIG.format(path=path, tok=tok))
    return [sys.executable, "-m", "lctx.train", f"--config={cfg_file}",
            f"--workdir={workdir}", *extra]


def _env(n_devices=1, **kw):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **kw)
    return env


@pytest.mark.slow
def test_kill9_then_resume_is_bit_identical(tmp_path, qa_data):
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(cli(ref, qa_data), cwd=ROOT, env=_env(), check=True, capture_output=True)
    p = subprocess.Popen(cli(run, qa_data), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once step 4 of s1 is saved and s1 goes on
        if os.path.isdir(run / "ckpt" / "s1" / "4") and len(losses(run)) >= 5:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.isdir(run / "ckpt" / "s2"), "killed too late to test a mid-stage resume"
    subprocess.run(cli(run, qa_data), cwd=ROOT, env=_env(), check=True, capture_output=True)
    want, got = losses(ref), losses(run)
    assert sorted(want) == sorted(got) and len(want) == 9
    assert got == want  # exact: same bits after kill -9 and resume
    with open(run / "metrics.jsonl") as f:  # the redone steps replaced their old lines
        steps = [(r["stage"], r["step"]) for r in map(json.loads, f) if "train/loss" in r]
    assert sorted(steps) == sorted(want)


def test_two_stages_checkpoint_and_use_their_rope(tmp_path, qa_data, monkeypatch):
    from lctx import checkpoint as ckpt_lib, rope as rope_lib
    used = []
    real = rope_lib.cos_sin

    def spy(rope, positions_BT, head_dim, seq_len=None):
        used.append((rope, positions_BT.shape[-1]))
        return real(rope, positions_BT, head_dim, seq_len)

    monkeypatch.setattr(rope_lib, "cos_sin", spy)
    cfg = tiny_config(qa_data, s1=3, s2=2)
    cfg.stages.s1.export_hf = cfg.stages.s2.export_hf = True
    cfg.eval.update(every_steps=2, batches=1)
    trainer.train_and_evaluate(cfg, str(tmp_path))
    for name, theta in (("s1", 1e4), ("s2", 4e4)):  # each stage's HF export has its RoPE
        with open(tmp_path / "hf" / name / "config.json") as f:
            hf_cfg = json.load(f)
        assert rope_lib.rope_from_hf(hf_cfg).theta == theta
    assert {(type(r).__name__, r.theta, t) for r, t in used} == {
        ("DefaultRope", 1e4, 256), ("DefaultRope", 4e4, 512)}
    with open(tmp_path / "metrics.jsonl") as f:
        evals = [json.loads(x) for x in f if "eval/loss" in x]
    assert [(e["stage"], e["step"]) for e in evals] == [("s1", 1), ("s1", 2), ("s2", 1)]
    assert all(np.isfinite(e["eval/loss"]) for e in evals)
    root = str(tmp_path / "ckpt")
    for name, steps, theta in (("s1", 3, 1e4), ("s2", 2, 4e4)):
        mgr = ckpt_lib.StageCheckpoints(root, name, async_save=False)
        meta = mgr.read_meta(mgr.latest_step())
        assert (meta["step"], meta["finished"], meta["rope"]["theta"]) == (steps, True, theta)
        mgr.close()
    # Stage 2 starts from stage 1's final parameters (and, by config, its Adam moments).
    run = run_lib.Run(cfg, str(tmp_path))
    mesh = trainer.make_mesh(run)
    built = step_lib.build_stage(run, run.stage("s2"), mesh)
    state, source = trainer.restore(run, built, None, found=None)
    assert source == "s1 step 3 (optimizer state carried)"
    with run.checkpoints("s1", async_save=False) as s1:
        st1, _ = s1.restore(3, built.abstract)
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(st1["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(state["opt"]), jax.tree.leaves(st1["opt"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(state["step"]) == 0  # the new stage's own schedule starts at 0
    # Metrics: compile time apart, step 0 not timed, no step time repeated (checkpoint
    # steps included), TensorBoard events beside metrics.jsonl.
    with open(tmp_path / "metrics.jsonl") as f:
        lines = [json.loads(x) for x in f]
    for name in ("s1", "s2"):
        rows = [r for r in lines if r["stage"] == name]
        assert [r["step"] for r in rows if "perf/compile_s" in r] == [0]
        train = [r for r in rows if "train/loss" in r]
        assert "perf/step_time_s" not in train[0]
        times = [r["perf/step_time_s"] for r in train[1:]]
        assert len(times) == len(train) - 1 and len(set(times)) == len(times)
        assert os.listdir(tmp_path / "tb" / name)[0].startswith("events.out.tfevents")


def test_loss_ignores_non_answer_targets(qa_data):
    cfg = tiny_config(qa_data)
    mcfg = trainer.model_config(cfg, cfg.stages.s1.rope)
    from lctx import model as model_lib
    model = model_lib.Llama(mcfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    path, tok = qa_data
    ds = data.make_dataset(data.resolve_paths(path), data.render_fn_from_tokenizer(tok),
                           seq_len=256, batch_size=2)
    b = {k: jnp.asarray(v) for k, v in next(iter(ds)).items()}
    assert 0 < float(b["weights"].mean()) < 1

    def grads(batch):
        return jax.value_and_grad(step_lib._micro_loss)(params, graphdef, batch, 128)

    l0, g0 = grads(b)
    other = (b["targets"] + 7) % 1024
    off = dict(b, targets=jnp.where(b["weights"] > 0, b["targets"], other))
    on = dict(b, targets=jnp.where(b["weights"] > 0, other, b["targets"]))
    l_off, g_off = grads(off)
    l_on, g_on = grads(on)
    assert float(l_off) == float(l0)  # non-answer targets: no effect on loss ...
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g_off)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))  # ... nor on gradients
    assert float(l_on) != float(l0)  # answer targets matter
    diff = max(float(jnp.abs(a - c).max()) for a, c in zip(jax.tree.leaves(g0),
                                                           jax.tree.leaves(g_on)))
    assert diff > 1e-3


def test_ring_layout_orders_the_batches(tmp_path, qa_data):
    """attn.ring_layout picks the token order of every batch on a context-sharded mesh:
    'balanced' is `lctx.layout.balance_batch` of the plain row (units of the ring's blocks),
    'zigzag' its chunk swap; every [B, T] array moves together."""
    got = {}
    for name, context in (("plain", 1), ("zigzag", 8), ("balanced", 8)):
        cfg = tiny_config(qa_data, s1=2)
        cfg.stages.s1.seq_len = 512
        cfg.mesh.update(data=1, fsdp=1 if context > 1 else -1, context=context)
        cfg.attn.update(impl="ring", ring_layout="balanced" if name == "plain" else name)
        run = run_lib.Run(cfg, str(tmp_path / name))
        mesh = trainer.make_mesh(run)
        got[name] = next(iter(trainer.stage_dataset(run, run.stage("s1"), mesh)))
    plain = got["plain"]
    assert max(len(np.unique(r[r > 0])) for r in plain["segment_ids"]) > 1  # packed rows
    unit = layout.layout_unit(512, 8, 512, 512)
    want = {"zigzag": {k: v[:, layout.zigzag_indices(512, 8)] for k, v in plain.items()},
            "balanced": layout.balance_batch(plain, 8, unit)}
    for name in ("zigzag", "balanced"):
        assert sorted(got[name]) == sorted(plain)
        for k in plain:
            np.testing.assert_array_equal(got[name][k], want[name][k], err_msg=(name, k))
    assert not np.array_equal(got["balanced"]["positions"], got["zigzag"]["positions"])


def test_sequence_sharded_ring_matches_unsharded(tmp_path, qa_data):
    """8 simulated devices on the context axis (ring attention on zigzag and on balanced
    data, packed rows) vs 8-way FSDP.

    Step 0's loss is the forward alone; step 1's follows one identical-up-to-rounding update.
    Later steps are not compared: Adam turns ulp-level gradient differences on near-zero
    coordinates into lr-sized steps, so runs drift apart chaotically.
    """
    held_out = tiny_runs.write_shards(str(tmp_path / "held_out"),
                                      tiny_runs.qa_records(16, seed=7), shards=1)

    def run(name, **mesh):
        cfg = tiny_config(qa_data, s1=2)
        cfg.mesh.update(data=1, **mesh)
        cfg.eval.update(path=held_out, every_steps=1, batches=1)  # the eval.path batches too
        if name != "dense":
            cfg.attn.update(impl="ring", ring_layout=name)
        out = trainer.train_and_evaluate(cfg, str(tmp_path / name))
        return out, losses(tmp_path / name), eval_losses(tmp_path / name)

    a, la, ea = run("dense", fsdp=-1)
    for ring_layout in ("zigzag", "balanced"):
        b, lb, eb = run(ring_layout, fsdp=1, context=8)
        assert sorted(la) == sorted(lb) == [("s1", 0), ("s1", 1)]
        for k in la:
            assert abs(la[k] - lb[k]) < 1e-5, (ring_layout, k, la[k], lb[k])
        # eval after step 0 (one identical-up-to-rounding update), like train step 1
        assert abs(ea[("s1", 0)] - eb[("s1", 0)]) < 1e-5, (ring_layout, ea, eb)
        assert a["s1"]["train/loss_tokens"] == b["s1"]["train/loss_tokens"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one(tmp_path, qa_data):
    extra = ["--config.data.pack=False", "--config.stages.s1.steps=3",
             "--config.stages.s2.steps=1", "--config.mesh.data=-1"]
    subprocess.run(cli(tmp_path / "one", qa_data, *extra), cwd=ROOT, env=_env(2),
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(cli(tmp_path / "two", qa_data, *extra,
                                  f"--coordinator_address=localhost:{port}",
                                  "--num_processes=2", f"--process_id={i}"),
                              cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 4
    for k in one:
        assert abs(one[k] - two[k]) < 1e-6, (k, one[k], two[k])


def test_bad_inputs(tmp_path, qa_data):
    cfg = tiny_config(qa_data)
    cfg.data.path = str(tmp_path / "nothing-*.arrayrecord")
    with pytest.raises(run_lib.ConfigError, match="data.path=.* matches no files"):
        trainer.train_and_evaluate(cfg, str(tmp_path / "w1"))
    cfg = tiny_config(qa_data)
    cfg.stages.s1.seq_len = 1024
    with pytest.raises(run_lib.ConfigError,
                       match=r"stages.s1.seq_len=1024 exceeds model.max_seq_len"):
        trainer.train_and_evaluate(cfg, str(tmp_path / "w2"))
    assert not os.path.exists(tmp_path / "w1") and not os.path.exists(tmp_path / "w2")
    bad = records.make_record("ok", [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "a"}])
    bad["messages"] = bad["messages"][:1]
    records.write_array_record(str(tmp_path / "bad.arrayrecord"), [bad] * 8)
    cfg = tiny_config(qa_data, s1=1)  # one batch of the 8 bad records
    cfg.data.path = str(tmp_path / "bad.arrayrecord")
    with pytest.raises(records.RecordError, match="no non-empty assistant turn"):
        trainer.train_and_evaluate(cfg, str(tmp_path / "w3"))
    assert not os.path.exists(tmp_path / "w3" / "ckpt")
    assert not os.path.exists(tmp_path / "w3" / "metrics.jsonl")


def test_config_typo_is_an_error(tmp_path, qa_data):
    r = subprocess.run(cli(tmp_path / "w", qa_data, "--config.opt.lrr=1e-3"), cwd=ROOT,
                       env=_env(), capture_output=True, text=True)
    assert r.returncode != 0 and "lrr" in r.stderr
    assert not os.path.exists(tmp_path / "w")


def test_config_error_is_a_message_not_a_traceback(tmp_path, qa_data):
    r = subprocess.run(cli(tmp_path / "w", qa_data, "--config.ckpt.every_steps=0"), cwd=ROOT,
                       env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "ckpt.every_steps=0 must be >= 1" in r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "w")


def test_init_from_loads_hf_weights_into_shardings_without_random_init(
        tmp_path, qa_data, monkeypatch):
    from flax import nnx

    from lctx import hf
    from lctx.model import Llama, ModelConfig
    hf_dir = hf.export_hf(Llama(ModelConfig(**tiny_runs.TINY_MODEL), rngs=nnx.Rngs(7)),
                          str(tmp_path / "hf"), tokenizer=qa_data[1])
    cfg = tiny_config(qa_data)
    cfg.model.update(tiny_runs.TINY_MODEL)
    cfg.mesh.update(data=1, fsdp=-1)
    cfg.ckpt.init_from, cfg.data.tokenizer = hf_dir, ""  # the tokenizer comes from there too

    def no_random_init(*a, **k):
        raise AssertionError("the model was initialised randomly before loading")

    monkeypatch.setattr(trainer, "fresh_state", no_random_init)
    run = run_lib.Run(cfg, str(tmp_path / "w"))
    built = step_lib.build_stage(run, run.stage("s1"), trainer.make_mesh(run))
    state, source = trainer.restore(run, built, None, found=None)
    assert source == f"HF weights ckpt.init_from={hf_dir}" and run.tokenizer == hf_dir
    _, want = hf.load_hf(hf_dir)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state["params"]),
                            jax.tree.leaves(nnx.state(want, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))
    assert jax.tree.map(lambda x: x.sharding, state) == built.shardings
    assert max(len(x.sharding.device_set) for x in jax.tree.leaves(state["params"])) == 8


def test_rerun_exports_a_finished_stage_and_refuses_more_steps(tmp_path, qa_data):
    """Killed between the final checkpoint and the export: the rerun exports and trains
    nothing; asking a finished stage for more steps is an error naming the field."""
    cfg = tiny_config(qa_data, s1=1)
    cfg.stages.s1.export_hf = True
    trainer.train_and_evaluate(cfg, str(tmp_path))
    exported = (tmp_path / "hf" / "s1" / "model.safetensors").read_bytes()
    import shutil
    shutil.rmtree(tmp_path / "hf")  # as if killed just before the export
    assert trainer.train_and_evaluate(cfg, str(tmp_path)) == {}
    assert (tmp_path / "hf" / "s1" / "model.safetensors").read_bytes() == exported
    cfg.stages.s1.steps = 2
    with pytest.raises(run_lib.ConfigError, match=r"stages.s1.steps=2 but the stage already "
                                                  r"finished at 1 steps"):
        trainer.train_and_evaluate(cfg, str(tmp_path))
