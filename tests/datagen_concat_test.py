"""Algorithm 2 structure (statistically), Table 7 switches, and exact token lengths."""
import collections
import dataclasses

import pytest

from datagen import concat
from datagen.backends.extractive import ExtractiveGenerator
from datagen.config import Config
from datagen.corpus import load_corpus
from datagen.pipeline import build_dataset
from datagen.tokens import Counter, load
from lctx import records


def _banks(k, n_h=25, n_s=50):
    return [{"doc_id": f"d{j}", "text": f"Document {j} text.", "global_summary": f"sum {j}",
             "hierarchical": [{"question": f"d{j} h{i}", "answer": "a"} for i in range(n_h)],
             "diverse": [{"question": f"d{j} s{i}", "answer": "a"} for i in range(n_s)]}
            for j in range(k)]


def _blocks(msgs, labels):
    """Splits labelled turns into per-document blocks starting at each summary turn."""
    out = []
    for (kind, d), q in zip(labels, msgs[0::2]):
        if kind == "summary":
            out.append([])
        out[-1].append((kind, d, q["content"]))
    return out


def test_algorithm2_structure_statistics():
    cfg, k, runs = Config(), 5, 300
    revisits, chances = 0, 0
    for seed in range(runs):
        msgs, labels, _ = concat.assemble(_banks(k), cfg, seed)
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        qs = [m["content"] for m in msgs[0::2]]
        div = [q for q in qs if " s" in q]
        assert len(div) == len(set(div))  # no diverse QA used twice
        for j in range(k):  # hierarchical QAs of each document in walk order, no repeats
            hs = [int(q.split(" h")[1]) for q in qs if q.startswith(f"d{j} h")]
            assert hs == list(range(len(hs)))
        for i, block in enumerate(_blocks(msgs, labels)):
            kinds = [b[0] for b in block]
            assert block[0][:2] == ("summary", i)
            assert kinds[1:11] == ["h"] * 5 + ["s"] * 5  # N1 = 5 and N1 = 5
            assert all(b[1] == i for b in block[1:11])
            rs = [b for b in block if b[0] == "revisit_s"]
            rh = [b for b in block if b[0] == "revisit_h"]
            assert len(rs) == (0 if i == 0 else 9)  # N2 = 9 from earlier documents
            assert all(b[1] < i for b in rs + rh)
            per_doc = collections.Counter(b[1] for b in rh)
            assert set(per_doc.values()) <= {3}  # N3 = 3 per revisited document
            revisits += len(per_doc)
            chances += i
            assert kinds == sorted(kinds, key=["summary", "h", "s", "revisit_s",
                                               "revisit_h"].index)
    rate = revisits / chances  # 3000 Bernoulli(0.6) trials: sd ~0.009
    assert abs(rate - 0.6) < 0.04, rate


def test_revisit_pool_exhaustion_and_hierarchical_running_out():
    msgs, labels, state = concat.assemble(_banks(6, n_h=4, n_s=7), Config(), 1)
    qs = [m["content"] for m in msgs[0::2]]
    assert len([q for q in qs if " s" in q]) == len(set(q for q in qs if " s" in q))
    assert all(p <= 4 for p in state["h_ptr"])


@pytest.mark.parametrize("comp", ["h-h-s", "h-h-h", "h-h", "s-hs-h"])
def test_table7_compositions(comp):
    cfg = Config(composition=comp)
    parts = comp.split("-")
    for seed in range(20):
        msgs, labels, _ = concat.assemble(_banks(3), cfg, seed)
        for i, block in enumerate(_blocks(msgs, labels)):
            kinds = {b[0] for b in block[1:]}
            own = parts[0] if i == 0 else parts[1]
            assert ("h" in kinds) == ("h" in own) and ("s" in kinds) == ("s" in own)
            rev = parts[2] if len(parts) > 2 else ""
            assert "revisit_s" not in kinds or "s" in rev
            assert "revisit_h" not in kinds or "h" in rev
            if i > 0 and "s" in rev:
                assert "revisit_s" in kinds


def test_randomized_counts_and_no_summary():
    cfg = Config(counts="randomized", global_summary=False)
    sizes = collections.Counter()
    for seed in range(100):
        msgs, labels, _ = concat.assemble(_banks(2), cfg, seed)
        assert not any(k == "summary" for k, _ in labels)
        first_qs = [i for i, (k, d) in enumerate(labels) if k == "h" and
                    (i == 0 or labels[i - 1][1] != d or labels[i - 1][0] != "h")]
        for i in first_qs:  # the document text prefixes the first question of its block
            assert msgs[2 * i]["content"].startswith(f"Document {labels[i][1]} text.\n\n")
        sizes[sum(1 for k, d in labels if k == "h" and d == 0)] += 1
    assert min(sizes) >= 2 and max(sizes) <= 10 and len(sizes) >= 6


@pytest.fixture(scope="module")
def small_books():
    docs, _ = load_corpus("kjv")
    return sorted(docs, key=lambda d: len(d.text))[:24]


def test_lengths_exact_within_one_percent(sp_model_path, small_books, tmp_path):
    cfg = Config(small_tokens=512, n_hierarchical=10, n_diverse=20, samples_per_length=6)
    targets = [8192, 16384, 32768]
    man = build_dataset(small_books, sp_model_path, ExtractiveGenerator(), targets,
                        str(tmp_path), cfg, progress=False)
    from lctx.tokenizer import ChatFormat, load_tokenizer
    fmt = ChatFormat(load_tokenizer(sp_model_path))  # what training renders, independently
    for t in targets:
        info = man["lengths"][str(t)]
        assert info["conversations"] == 6 and info["render_count_mismatches"] == 0, info
        recs = list(records.read_array_record(str(tmp_path / info["file"])))
        for r in recs:
            n = len(fmt.render(r["messages"])[0])
            assert n == r["meta"]["num_tokens"]
            assert t * 0.99 <= n <= t, (t, n)
        assert max(len(r["meta"]["docs"]) for r in recs) >= 2
        import grain  # the training side reads the shards with grain
        src = grain.sources.ArrayRecordDataSource([str(tmp_path / info["file"])])
        assert len(src) == 6 and records.decode(src[0]) == recs[0]


def test_hard_max_never_exceeded_and_short_rejected(sp_model_path, small_books):
    counter = Counter(load(sp_model_path))
    cfg = Config(fill=False)
    banks = [{"doc_id": d.doc_id, "text": d.text, "global_summary": "S.", "hierarchical": [],
              "diverse": []} for d in small_books[:3]]
    for seed in range(5):
        conv = concat.build_conversation(banks, counter, 6000, cfg, seed)
        assert conv.num_tokens <= 6000 and conv.num_tokens == counter.verify(conv.messages)
    short = concat.build_conversation(banks, counter, 10, cfg, 0)
    assert short.messages == [] and short.reason == "no document fits the target"
    assert dataclasses.replace(cfg, fill=True).fill


@pytest.mark.parametrize("recipe", ["h-h-s-fixed", "h-h-s-fixed-no-sum", "4-hierarchies-random",
                                    "diverse"])
def test_recipes(recipe):
    cfg = Config.from_recipe(recipe)
    banks = _banks(int(cfg.docs_per_sample))
    msgs, labels, _ = concat.assemble(banks, cfg, 0)
    kinds = collections.Counter(k for k, _ in labels)
    if recipe.startswith("h-h-s-fixed"):  # 6 hierarchical per document, 4 diverse follow-ups
        assert kinds["h"] == 12 and kinds["revisit_s"] == 4 and kinds["s"] == 0
        assert kinds["summary"] == (0 if recipe.endswith("no-sum") else 2)
    if recipe == "4-hierarchies-random":
        hs = [int(m["content"].split(" h")[1]) for m in msgs[2::2]]
        # The whole walk (25 QAs), its order dropped.
        assert len(hs) == len(set(hs)) == 25 and hs != list(range(25))
    if recipe == "diverse":
        assert set(kinds) == {"summary", "s"} and kinds["s"] == 50
    with pytest.raises(ValueError, match="unknown"):
        Config.from_recipe("nope")
