"""lctx.data: packing, loss masks, process sharding, zigzag, state round-trip, bad input."""
import numpy as np
import pytest

from lctx import data, layout, records


def _render(messages):
    """Byte-level chat render: loss only on assistant content bytes (and their end byte)."""
    ids, mask = [1], [0]
    for m in messages:
        body = list(m["content"].encode()) + [2]
        ids += [3 + ("system", "user", "assistant").index(m["role"])] + body
        mask += [0] + [int(m["role"] == "assistant")] * len(body)
    return ids, mask


def _write(tmp_path, n=40, name="a", bad=None):
    recs = []
    for i in range(n):
        msgs = [{"role": "user", "content": "q" * (5 + i % 7)},
                {"role": "assistant", "content": f"answer {i}"}]
        if bad == i:
            msgs = msgs[:1]
        recs.append(records.make_record(f"{name}{i}", msgs))
    p = tmp_path / f"{name}.arrayrecord"
    records.write_array_record(str(p), recs)
    return [str(p)]


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_packed_batches_static_and_consistent(tmp_path):
    paths = _write(tmp_path)
    b = _take(data.make_dataset(paths, _render, seq_len=64, batch_size=4), 3)[-1]
    assert set(b) == set(data.KEYS)
    assert all(v.shape == (4, 64) for v in b.values())
    seg, pos = b["segment_ids"], b["positions"]
    assert (seg > 0).mean() > 0.6  # packing fills rows
    for r in range(4):
        for s in np.unique(seg[r][seg[r] > 0]):
            idx = np.nonzero(seg[r] == s)[0]
            assert np.array_equal(pos[r, idx], np.arange(len(idx)))  # per-document positions
            # targets are the next inputs within a document
            assert np.array_equal(b["targets"][r, idx[:-1]], b["inputs"][r, idx[1:]])
    assert np.all(b["weights"][seg == 0] == 0)


def test_weights_only_on_assistant_answers(tmp_path):
    paths = _write(tmp_path, n=4)
    b = _take(data.make_dataset(paths, _render, seq_len=64, batch_size=1, pack=False), 1)[0]
    n = int((b["segment_ids"] > 0).sum())
    text = bytes(t for t, w in zip(b["targets"][0, :n], b["weights"][0, :n]) if w and t > 2)
    assert text.startswith(b"answer ") and b"q" not in text


def test_process_shards_are_disjoint_and_cover(tmp_path):
    paths = _write(tmp_path, n=8)
    seen = []
    for p in range(2):
        ds = data.make_dataset(paths, _render, seq_len=32, batch_size=2, pack=False,
                               process_index=p, process_count=2)
        rows = np.concatenate([b["inputs"] for b in _take(ds, 4)])  # one epoch each
        seen.append({bytes(r[r > 2].astype(np.uint8)) for r in rows})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8


def test_iterator_state_round_trip(tmp_path):
    paths = _write(tmp_path)
    it = iter(data.make_dataset(paths, _render, seq_len=64, batch_size=2, seed=3))
    for _ in range(5):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    it2 = iter(data.make_dataset(paths, _render, seq_len=64, batch_size=2, seed=3))
    it2.set_state(state)
    for w in want:
        g = next(it2)
        assert all(np.array_equal(w[k], g[k]) for k in data.KEYS)


def test_zigzag_layout(tmp_path):
    perm = layout.zigzag_indices(16, 2)
    assert perm.tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11]
    paths = _write(tmp_path)
    plain = _take(data.make_dataset(paths, _render, seq_len=64, batch_size=2), 2)[1]
    zz = _take(data.make_dataset(paths, _render, seq_len=64, batch_size=2,
                                 context_shards=4), 2)[1]
    perm = layout.zigzag_indices(64, 4)
    for k in data.KEYS:  # positions, segments and masks travel with their tokens
        assert np.array_equal(zz[k], plain[k][:, perm])
    bal = _take(data.make_dataset(paths, _render, seq_len=64, batch_size=2, context_shards=4,
                                  ring_layout="balanced", ring_blocks=(4, 4)), 2)[1]
    want = layout.balance_batch({k: plain[k] for k in data.KEYS}, 4, 4)
    for k in data.KEYS:
        assert np.array_equal(bal[k], want[k])
    with pytest.raises(data.DataError, match="must divide one another"):
        data.make_dataset(paths, _render, seq_len=48, batch_size=2, context_shards=4,
                          ring_layout="balanced", ring_blocks=(2, 3))


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_overlong_documents_counted(tmp_path, overlong):
    paths = _write(tmp_path, n=10)
    stats = data.Stats()
    # Rendered records are 19-25 tokens: seq_len 20 keeps a few and cuts or drops the rest.
    _take(data.make_dataset(paths, _render, seq_len=20, batch_size=2, pack=False,
                            overlong=overlong, stats=stats), 2)
    assert getattr(stats, {"truncate": "truncated", "drop": "dropped"}[overlong]) > 0


def test_dropping_every_record_is_an_error_not_a_hang(tmp_path):
    paths = _write(tmp_path, n=10)  # every rendered record is > 17 tokens
    with pytest.raises(data.DataError, match="all 10 records are longer"):
        _take(data.make_dataset(paths, _render, seq_len=16, batch_size=2, pack=False,
                                overlong="drop"), 1)


def test_bad_inputs(tmp_path):
    with pytest.raises(data.DataError, match="matches no files"):
        data.resolve_paths(str(tmp_path / "missing-*.arrayrecord"))
    with pytest.raises(data.DataError, match="data.path is empty"):
        data.resolve_paths("")
    paths = _write(tmp_path, n=6, bad=2)
    with pytest.raises(records.RecordError, match="no non-empty assistant turn"):
        _take(data.make_dataset(paths, _render, seq_len=64, batch_size=6, pack=False), 1)
    with pytest.raises(data.DataError, match="overlong"):
        data.make_dataset(paths, _render, seq_len=64, batch_size=2, overlong="cut")
    with pytest.raises(data.DataError, match="data.read_threads=-1"):
        data.make_dataset(paths, _render, seq_len=64, batch_size=2, read_threads=-1)


@pytest.mark.parametrize("pack", [True, False])
def test_read_ahead_does_not_change_the_batches(tmp_path, pack):
    """Read threads and buffer (grain.ReadOptions) change speed only: the same batches in
    the same order, from no read-ahead to grain's own default (16 threads, 500 records)."""
    paths = _write(tmp_path, n=50)
    runs = [_take(data.make_dataset(paths, _render, seq_len=64, batch_size=4, seed=5,
                                    pack=pack, read_threads=t, read_buffer=b), 30)
            for t, b in ((0, 0), (2, 32), (16, 500))]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            for k in data.KEYS:
                np.testing.assert_array_equal(a[k], b[k])


def _answers(batches) -> list[str]:
    """The answer strings ('answer 7') in a list of batches, in row order."""
    import re
    text = "".join(bytes(r[r > 2].astype(np.uint8)).decode() + "|" for b in batches
                   for r in b["inputs"])
    return re.findall(r"answer \d+", text)


@pytest.mark.parametrize("pack", [False, True])
def test_finite_epochs_read_each_record_epochs_times(tmp_path, pack):
    """epochs=E reads every record exactly E times over all processes, then the iterator
    ends; until then it is the endless stream, batch for batch."""
    paths = _write(tmp_path, n=12)
    kw = dict(seq_len=48, batch_size=1, seed=4, pack=pack)
    seen = []
    for p in range(2):
        seen += _answers(data.make_dataset(paths, _render, epochs=2, process_index=p,
                                           process_count=2, **dict(kw, batch_size=2)))
    assert sorted(seen) == sorted([f"answer {i}" for i in range(12)] * 2)
    finite = list(data.make_dataset(paths, _render, epochs=2, **kw))
    endless = iter(data.make_dataset(paths, _render, **kw))
    for b in finite[:-1]:  # the packer flushes its last bins when the stream ends
        want = next(endless)
        for k in data.KEYS:
            np.testing.assert_array_equal(b[k], want[k])
    assert len(finite) == 24 if not pack else 2 <= len(finite) < 24
    with pytest.raises(data.DataError, match="data.epochs=0"):
        data.make_dataset(paths, _render, epochs=0, **kw)


def test_count_rows_is_one_packed_epoch(tmp_path):
    paths = _write(tmp_path, n=12)
    n = data.count_rows(paths, _render, seq_len=48)
    assert n == len(list(data.make_dataset(paths, _render, seq_len=48, batch_size=1,
                                           epochs=1)))
    assert 1 <= n < 12  # several short records share a row
