"""datagen building blocks: JAX-free import, verbatim prompts, corpus readers, split, JSON
repair, call cache, extractive backend, Algorithm 1 walk."""
import collections
import json
import os
import random
import re
import subprocess
import sys

import pytest

from datagen import chunking, jsonfix, prompts, qa
from datagen.backends.base import Completion, Request
from datagen.backends.extractive import ExtractiveGenerator
from datagen.cache import CachedGenerator
from datagen.config import Config
from datagen.corpus import CorpusError, Document, Skip, load_corpus
from datagen.tokens import TokenizerError, load

PAPER = "/work/shared/papers/he2025-hierarchical-synthetic-data-1m-context.txt"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_is_jax_free():
    code = ("import sys, datagen, datagen.pipeline, datagen.backends.extractive, "
            "datagen.__main__; print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    assert out.stdout.strip() == "False"


def _alnum(s):
    return re.sub(r"[^a-z0-9]", "", s.lower())


@pytest.mark.skipif(not os.path.exists(PAPER), reason="paper text not on this machine")
def test_prompts_are_verbatim_from_appendix_b():
    paper = _alnum(open(PAPER).read())
    for name, tmpl in prompts.TEMPLATES.items():
        if name == "general":  # ours: Algorithm 1 prints no prompt for it
            continue
        body = tmpl.replace("${n_word}", "three")
        for piece in re.split(r"\$\{\w+\}", body):
            # The JSON tail is printed with spaces/quotes the PDF mangles; letters must match.
            assert _alnum(piece) in paper, (name, piece[:80])
    assert len(prompts.DIVERSE) == 10


def test_prompt_round_trip_through_parse():
    ctx = "Ruth said, Whither thou goest, I will go. ${not_a_field} {json}"
    for name, tmpl in prompts.TEMPLATES.items():
        fields = {f: ctx for f in re.findall(r"\$\{(\w+)\}", tmpl)}
        got = prompts.parse_prompt(prompts.render(tmpl, **fields))
        assert got is not None and got[0] == name, name
    assert prompts.parse_prompt("Tell me a joke") is None
    with pytest.raises(ValueError, match="2-4 chunks"):
        prompts.multi_hop_prompt(["a"])


def test_corpus_readers_and_skips(tmp_path):
    good = "In the beginning was the word. " * 20
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text(good)
    (tmp_path / "d" / "bin.txt").write_bytes(b"\x00\x01\x02" * 200)
    (tmp_path / "d" / "latin1.txt").write_bytes(("caf\xe9 " * 100).encode("latin-1"))
    (tmp_path / "d" / "empty.txt").write_text("   \n")
    (tmp_path / "d" / "c.jsonl").write_text(
        json.dumps({"id": "x1", "text": good}) + "\n" + json.dumps({"body": good}) + "\n" +
        "{not json\n" + json.dumps({"text": "short"}) + "\n")
    docs, skips = load_corpus(str(tmp_path / "d"))
    assert [d.doc_id for d in docs] == ["a.txt", "x1"]
    why = {s.doc_id: s.reason for s in skips}
    assert why["bin.txt"].startswith("binary") and why["latin1.txt"].startswith("not UTF-8")
    assert why["empty.txt"] == "empty" and "too short" in why["c.jsonl:4"]
    assert "'text'" in why["c.jsonl:2"] and "JSON" in why["c.jsonl:3"]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": [good, ""]}), tmp_path / "p.parquet")
    docs, skips = load_corpus(str(tmp_path / "p.parquet"))
    assert len(docs) == 1 and skips[0].reason == "empty"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "dataset_info.json").write_text("{}")
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as f:
        w = pa.ipc.new_stream(f, pa.schema([("text", pa.string())]))
        w.write_table(pa.table({"text": [good, good + "!"]}))
        w.close()
    try:
        import datasets  # noqa: F401
    except ImportError:  # the fallback reader is the path under test
        assert len(load_corpus(str(hf))[0]) == 2
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match="no column 'body'"):
        load_corpus(str(tmp_path / "p.parquet"), text_field="body")


def test_hierarchical_split(sp_model_path, kjv_text):
    tok = load(sp_model_path)
    text = kjv_text[:60_000]
    ch = chunking.split(text, tok, small_tokens=1000, small_per_medium=3)
    assert len(ch.small) >= 6
    assert max(ch.small_tokens) <= 1000 * 1.02  # joining spaces are estimated, then recounted
    assert " ".join(ch.small).split() == text.split()  # nothing lost or reordered
    flat = [i for grp in ch.medium for i in grp]
    assert flat == list(range(len(ch.small)))
    assert all(len(g) == 3 for g in ch.medium[:-1])
    for s in ch.small:  # cut at sentence ends
        assert s.rstrip()[-1] in ".!?:;,'\")" or s is ch.small[-1]


@pytest.mark.parametrize("text,finish,want", [
    ('{"question": "Who?", "answer": "Ruth"}', "stop", ("Who?", "Ruth", False)),
    ("Here you go:\n{'question': \"Who is Naomi's kin?\", 'answer': 'Boaz'}\nThanks",
     "stop", ("Who is Naomi's kin?", "Boaz", True)),
    ('```json\n{"Question": "Q", "Answer": "A"}\n```', "stop", ("Q", "A", True)),
    ('{"question": "Q", "answer": "A long answer that was cu', "length", None),
    ('{"question": "Q"}', "stop", None),
    ('{"question": "", "answer": "x"}', "stop", None),
    ("", "stop", None),
    ("no json here", "stop", None),
    ('{"question": "Q", "answer": ["a", "b"]}', "stop", None),
])
def test_parse_qa(text, finish, want):
    if want is None:
        with pytest.raises(jsonfix.BadOutput):
            jsonfix.parse_qa(text, finish)
    else:
        got, fixed = jsonfix.parse_qa(text, finish)
        assert (got["question"], got["answer"], fixed) == want


def test_parse_summary_truncation_and_limit():
    assert jsonfix.parse_summary("A b c. D e f g", "length", 50) == ("A b c.", True)
    assert jsonfix.parse_summary("One two three. Four five.", "stop", 3) == ("One two three.",
                                                                               True)
    with pytest.raises(jsonfix.BadOutput):
        jsonfix.parse_summary("no sentence end at all here", "length", 50)
    with pytest.raises(jsonfix.BadOutput):
        jsonfix.parse_summary("  ", "stop", 50)


def test_extractive_backend_answers_are_spans(kjv_text):
    gen, ctx = ExtractiveGenerator(), kjv_text[200_000:206_000]
    norm = " ".join(ctx.split())
    reqs = [Request((("user", prompts.render(t, context=ctx)),), seed=s)
            for t in list(prompts.DIVERSE.values()) + [prompts.SPECIFIC] for s in range(5)]
    outs = gen.generate(reqs)
    assert outs == gen.generate(reqs)  # deterministic
    for c in outs:
        obj = json.loads(c.text)
        ans = obj["answer"].split(") ", 1)[-1] if obj["answer"][1:3] == ") " else obj["answer"]
        assert ans in norm, obj
    s = gen.generate([Request((("user", prompts.summary_prompt(ctx, 60)),))])[0].text
    assert 0 < len(s.split()) <= 60 and s.split(".")[0] in norm
    assert gen.generate([Request((("user", "hello"),))])[0].finish_reason == "error"


class _Counting:
    model = "counting"

    def __init__(self):
        self.calls = 0

    def generate(self, reqs):
        self.calls += len(reqs)
        return [Completion("x" if "ok" in r.messages[0][1] else "", "stop" if "ok" in
                           r.messages[0][1] else "error", None) for r in reqs]

    def describe(self):
        return {}


def test_cache_survives_torn_lines_and_skips_errors(tmp_path):
    be = _Counting()
    g = CachedGenerator(be, str(tmp_path), "0")
    reqs = [Request((("user", f"ok {i}"),)) for i in range(3)] + [Request((("user", "bad"),))]
    g.generate(reqs + reqs[:1])
    assert be.calls == 4  # a duplicate inside one batch is sent once
    g.close()
    with open(tmp_path / "calls-0.jsonl", "ab") as f:
        f.write(b'{"key": "abc", "te')  # a write torn by kill -9
    be2 = _Counting()
    g2 = CachedGenerator(be2, str(tmp_path), "1")
    out = g2.generate(reqs)
    assert be2.calls == 1 and out[3].finish_reason == "error"  # only the error is re-issued
    assert [c.text for c in out[:3]] == ["x"] * 3


def test_algorithm1_walk_statistics():
    ch = chunking.Chunks(tuple(f"s{i}" for i in range(12)),
                         tuple(tuple(range(i, i + 3)) for i in range(0, 12, 3)), (1,) * 12)
    trans, hops, steps = collections.Counter(), 0, 0
    for seed in range(300):
        plan = qa.plan_walk(ch, 25, 0.2, random.Random(seed), random.Random(-seed))
        walk = [p for p in plan if p[0] != "multi_hop"]
        hops += len(plan) - len(walk)
        steps += len(walk)
        # 25 hierarchical per book with multi-hop inside (Section 4.1: 75 = 25 + 50).
        assert len(plan) == 25 and walk[0][0] == "general"
        # The walk with multi-hop is a prefix of the walk without (shared cached calls).
        assert qa.plan_walk(ch, 25, 0.0, random.Random(seed),
                            random.Random(-seed))[:len(walk)] == walk
        for (k0, i0), (k1, i1) in zip(walk, walk[1:]):
            if k0 == "general":  # delve into the first small chunk of the medium
                assert (k1, i1) == ("specific", (ch.medium[i0[0]][0],))
                continue
            m = next(j for j, g in enumerate(ch.medium) if i0[0] in g)
            if k1 == "specific" and i1 == i0:
                trans["deeper"] += 1
            elif k1 == "specific":
                assert i1[0] == i0[0] + 1 and i1[0] in ch.medium[m]
                trans["next_small"] += 1
            else:
                assert k1 == "general" and i1[0] == (m + 1) % len(ch.medium)
                trans["next_medium"] += 1
    n = sum(trans.values())
    assert abs(trans["deeper"] / n - 1 / 3) < 0.03  # the equal-thirds RandomChoice
    assert abs(hops / steps - 0.2) < 0.02           # Appendix E multi-hop rate


def test_hf_tokenizer_json_counts_exactly(tmp_path, kjv_text):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from datagen.tokens import LLAMA3_SPECIALS, Counter
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(kjv_text[:300_000].splitlines(), trainers.BpeTrainer(
        vocab_size=800, special_tokens=list(LLAMA3_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    counter = Counter(load(str(tmp_path)))
    msgs = [{"role": "user", "content": kjv_text[:3000] + "\n\nPlease give me a summary"},
            {"role": "assistant", "content": " A summary.\n"}, {"role": "user", "content": "Who?"},
            {"role": "assistant", "content": "Ruth"}]
    assert counter.verify(msgs) == counter.messages(msgs) > 600
    plain = tmp_path / "plain"
    plain.mkdir()
    Tokenizer(models.BPE()).save(str(plain / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="Llama-3 special tokens"):
        Counter(load(str(plain)))


def test_multihop_variants_share_every_walk_call(sp_model_path, kjv_text):
    tok = load(sp_model_path)
    ch = chunking.split(kjv_text[:30_000], tok, small_tokens=512)

    class Recording(ExtractiveGenerator):
        def __init__(self):
            self.keys = set()

        def generate(self, reqs):
            self.keys |= {r.cache_key(self.model) for r in reqs}
            return super().generate(reqs)

    keys, hops = {}, {}
    for p in (0.0, 0.2):
        gen = Recording()
        bank = qa.build_banks([("doc", "text", ch)], qa.Caller(gen, Config(multihop_prob=p)),
                              Config(multihop_prob=p))[0]
        keys[p] = gen.keys
        hops[p] = [e for e in bank["hierarchical"] if e["kind"] == "multi_hop"]
        assert len(bank["hierarchical"]) == 25 and len(bank["diverse"]) == 50
    assert not hops[0.0] and hops[0.2]
    # Appendix E variants share their walk: with multi-hop inside the 25, the walk calls are
    # a prefix of the plain walk's, so every call but the multi-hop ones is shared.
    assert len(keys[0.2] - keys[0.0]) == len(hops[0.2])
