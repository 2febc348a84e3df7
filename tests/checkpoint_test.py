"""lctx.checkpoint: state + iterator round trip, stage resume lookup, resume_from, optim."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lctx import checkpoint as ckpt_lib, data, optim, records


def _iter(tmp_path):
    recs = [records.make_record(f"r{i}", [{"role": "user", "content": "q" * i},
                                          {"role": "assistant", "content": "a" * (i + 1)}])
            for i in range(20)]
    p = tmp_path / "r.arrayrecord"
    records.write_array_record(str(p), recs)
    render = lambda m: ([1] + [ord(c) for x in m for c in x["content"]],
                        [0] + [int(x["role"] == "assistant") for x in m for c in x["content"]])
    return iter(data.make_dataset([str(p)], render, seq_len=32, batch_size=2, seed=1))


def _state(v):
    return {"params": {"w": jnp.full((4, 3), v, jnp.float32)}, "opt": {"mu": jnp.arange(3.0)},
            "step": jnp.asarray(7, jnp.int32), "rng": jax.random.key_data(jax.random.key(v))}


@pytest.mark.parametrize("async_save", [False, True])
def test_state_and_iterator_round_trip(tmp_path, async_save):
    it = _iter(tmp_path)
    for _ in range(3):
        next(it)
    mgr = ckpt_lib.StageCheckpoints(str(tmp_path / "ckpt"), "s1", async_save=async_save)
    mgr.save(3, _state(2), it, {"stage": "s1", "step": 3, "finished": False})
    want = [next(it) for _ in range(2)]
    mgr.close()
    it2 = _iter(tmp_path)
    mgr = ckpt_lib.StageCheckpoints(str(tmp_path / "ckpt"), "s1", async_save=False)
    st, meta = mgr.restore(mgr.latest_step(), ckpt_lib.abstract(_state(0)), it2)
    assert meta == {"stage": "s1", "step": 3, "finished": False}
    for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(_state(2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for w in want:
        g = next(it2)
        assert all(np.array_equal(w[k], g[k]) for k in data.KEYS)


def test_find_resume_prefers_latest_stage(tmp_path):
    root = str(tmp_path / "ckpt")
    assert ckpt_lib.find_resume(root, ["s1", "s2"]) is None
    m = ckpt_lib.StageCheckpoints(root, "s1", async_save=False)
    m.save(2, _state(1), None, {"finished": False})
    m.save(4, _state(1), None, {"finished": True})
    m.close()
    f = ckpt_lib.find_resume(root, ["s1", "s2"])
    assert (f.stage, f.step, f.finished) == ("s1", 4, True)
    m = ckpt_lib.StageCheckpoints(root, "s2", async_save=False)
    m.save(1, _state(3), None, {"finished": False})
    m.close()
    f = ckpt_lib.find_resume(root, ["s1", "s2"])
    assert (f.stage, f.step, f.finished) == ("s2", 1, False)
    st, meta = ckpt_lib.load_external(str(tmp_path), ckpt_lib.abstract(_state(0)))
    assert float(st["params"]["w"][0, 0]) == 3.0  # resume_from a workdir: its last stage
    with pytest.raises(FileNotFoundError, match="resume_from"):
        ckpt_lib.load_external(str(tmp_path / "nowhere"), ckpt_lib.abstract(_state(0)))


def test_schedule_shape():
    s = optim.make_schedule(lr=1.0, warmup_steps=4, total_steps=12, kind="cosine",
                            end_lr_frac=0.1)
    lrs = [float(s(i)) for i in range(12)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and abs(lrs[-1] - 0.1) < 1e-6
    with pytest.raises(ValueError, match="opt.schedule"):
        optim.make_schedule(lr=1.0, warmup_steps=1, total_steps=2, kind="exp", end_lr_frac=0)
