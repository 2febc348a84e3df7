"""Li et al.'s six tasks (datagen.selfgen) on the offline WordNet backend: the noun list,
each task's sample structure, exact lengths per bucket, the paper's 6K preset, bad input."""
import ast
import json
import os
import random

import pytest

from datagen.selfgen import (assemble, build, calls, code, config, offline, passages, prompts,
                             store, tasks, wordnet)
from lctx import records
from lctx.tokenizer import ChatFormat, load_tokenizer

CFG = config.SelfGenConfig(num_nouns=160, batch_nouns=64)


def _build(out, tok, spec, cfg=CFG, gen=None):
    man = build.build(str(out), tok, gen or offline.OfflineGenerator(), spec, cfg,
                      progress=False)
    d = os.path.join(str(out), spec.name)
    convs = list(records.read_array_record(os.path.join(d, man["files"][0])))
    ios = list(store.Reader([os.path.join(d, man["files"][1])]))
    return man, convs, ios


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sp_model_path):
    out = tmp_path_factory.mktemp("selfgen")
    return (out,) + _build(out, sp_model_path, config.make_spec(bucket="0-8k", per_task=3))


def _blocks(content):
    """{passage number: text} and the Code block of a sample's user turn."""
    parts = content.split("\n\n")
    nums, code_block = {}, None
    for i, p in enumerate(parts):
        if p.startswith("Passage ") and ":\n" in p:
            k, text = p.split(":\n", 1)
            nums[int(k.split()[1])] = text
        if p.startswith("Code:\n```python"):
            j = next(j for j in range(i, len(parts)) if parts[j].endswith("```"))
            code_block = "\n\n".join(parts[i:j + 1])
    return nums, code_block


def test_wordnet_nouns_count_and_hash():
    nouns = wordnet.load_nouns()
    assert len(nouns) == wordnet.NOUNS_COUNT == 119_034
    assert wordnet.nouns_sha256(nouns) == wordnet.NOUNS_SHA256
    assert nouns[:5] == ("'hood", "'s_Gravenhage", ".22", "0", "1")
    assert wordnet.display("Abbe_condenser") == "Abbe condenser"


def test_missing_wordnet_names_the_debian_package(tmp_path):
    with pytest.raises(wordnet.WordNetError, match="apt-get install wordnet-base"):
        wordnet.read_synsets(str(tmp_path / "data.noun"))
    bad = tmp_path / "bad.noun"
    bad.write_text("not a wordnet line\n")
    with pytest.raises(wordnet.WordNetError, match="wordnet-base"):
        wordnet.read_synsets(str(bad))


def test_every_sample_is_exact_inside_its_bucket_in_both_forms(dataset, sp_model_path):
    _, man, convs, ios = dataset
    assert man["samples"]["per_task"] == {t: 3 for t in config.TASKS}
    assert man["skipped"] == {} and man["render_verified"] == 18
    fmt = ChatFormat(load_tokenizer(sp_model_path))
    for c, io in zip(convs, ios):
        m = c["meta"]
        assert m["num_tokens"] == m["length_target"] == fmt.count(c["messages"])
        assert 0 <= m["num_tokens"] < 8192 and m["bucket"] == [0, 8192]
        assert io["id"] == c["id"] and io["meta"]["num_tokens"] == m["num_tokens"]
        assert io["input"] == c["messages"][0]["content"]
        assert io["output"] == c["messages"][1]["content"]
        assert io["meta"]["input_tokens"] == len(fmt.tok.encode(io["input"]))
        assert m["generator"] == offline.MODEL_NAME and m["nouns"]
        records.validate_io(io)


def _by_task(convs, task):
    return [c for c in convs if c["meta"]["task"] == task]


def test_single_qa_answer_sits_in_the_named_passage(dataset):
    out, _, convs, _ = dataset
    corpus = passages.Corpus(str(out))
    for c in _by_task(convs, "single_qa"):
        m, (user, answer) = c["meta"], [x["content"] for x in c["messages"]]
        nums, _ = _blocks(user)
        src = corpus.get([m["corpus_index"]])[0]
        assert nums[m["answer_passage"]] == src["text"]
        assert src["noun"] == m["nouns"][0]
        assert answer in src["text"]  # the offline QA is a cloze on that passage
        assert user.endswith(prompts.QA_PROMPT + "\n\n" + m["question"])
        assert m["corpus_index"] not in m["distractor_corpus_indices"]


def test_summarization_prompt_names_each_index_and_noun(dataset):
    out, _, convs, _ = dataset
    for c in _by_task(convs, "summarization"):
        m, (user, answer) = c["meta"], [x["content"] for x in c["messages"]]
        nums, _ = _blocks(user)
        items = [(s["passage"], s["noun"]) for s in m["summarized"]]
        assert [k for k, _ in items] == sorted(k for k, _ in items)
        assert user.endswith(prompts.summary_request(
            [(k, wordnet.display(n)) for k, n in items]))
        expect = [offline.summarize(nums[k], CFG.summary_words) for k, _ in items]
        assert answer == "\n\n".join(expect)
        for k, noun in items:
            assert wordnet.display(noun) in nums[k]


def test_simdiff_and_multi_qa_pairs(dataset):
    out, _, convs, _ = dataset
    corpus = passages.Corpus(str(out))
    for c in _by_task(convs, "simdiff") + _by_task(convs, "multi_qa"):
        m, (user, answer) = c["meta"], [x["content"] for x in c["messages"]]
        nums, _ = _blocks(user)
        a, b = m["passages"]
        assert a < b and nums[a] == corpus.get([m["corpus_index"]])[0]["text"]
        if m["task"] == "simdiff":
            wa, wb = nums[a].split(), nums[b].split()
            assert len(wa) == len(wb) and 1 <= sum(x != y for x, y in zip(wa, wb)) <= 3
            assert user.endswith(prompts.render(prompts.SIMDIFF_PROMPT,
                                                noun=wordnet.display(m["nouns"][0])))
        else:  # the answer (a word both passages share) needs both
            assert answer in nums[a] and answer in nums[b]


def test_logic_facts_chain(dataset):
    _, _, convs, _ = dataset
    for c in _by_task(convs, "logic"):
        m = c["meta"]
        nums, _ = _blocks(c["messages"][0]["content"])
        f1, f2 = (nums[k] for k in m["fact_passages"])
        assert m["fact_passages"][0] < m["fact_passages"][1]
        assert f1 == f"If {m['a']}, then {m['b']}." and f2.startswith(f"If something is a")
        assert m["c"].split(" a ", 1)[1] in f2


def _rederive(step_codes):
    """Producer function and participants of every variable, from the code text alone."""
    funcs, made, inputs, order = set(), {}, {}, []
    for src in step_codes:
        for node in ast.parse(src).body:
            if isinstance(node, ast.FunctionDef):
                funcs.add(node.name)
            else:
                v, val = node.targets[0].id, node.value
                if (isinstance(val, ast.Call) and isinstance(val.func, ast.Name)
                        and val.func.id in funcs):
                    made[v], inputs[v] = val.func.id, [a.id for a in val.args]
                else:
                    made[v] = None
                    inputs[v] = [x.id for x in ast.walk(val) if isinstance(x, ast.Name)
                                 and x.id in order]
                order.append(v)
    out = {}
    for v in order:
        seen, todo = set(), list(inputs[v])
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo += inputs[x]
        out[v] = (made[v], [x for x in order if x in seen])
    return out


def test_code_provenance_answers_equal_a_rederivation(tmp_path, sp_model_path):
    spec = config.make_spec(bucket="0-8k", per_task=12, tasks="code")
    man, convs, _ = _build(tmp_path, sp_model_path, spec)
    kinds = set()
    for c in convs:
        m, (user, answer) = c["meta"], [x["content"] for x in c["messages"]]
        codes = [s["code"] for s in m["steps"]]
        _, block = _blocks(user)
        assert block == "Code:\n```python\n" + "\n\n".join(codes) + "\n```"
        truth = _rederive(codes)
        assert {v: (p["function"], p["participants"]) for v, p in m["provenance"].items()} \
            == truth
        kind, v = m["question_kind"], m.get("variable")
        kinds.add(kind)
        if kind == "which_function":
            assert user.endswith(f"Which function produced the variable {v}?")
            assert answer == truth[v][0] is not None
        elif kind == "list_variables":
            assert answer == ", ".join(truth[v][1]) and truth[v][1]
        assert {s["kind"] for s in m["steps"]} == {"vars", "func", "call"}
        assert all(s["source"] == "generator" for s in m["steps"])
    assert {"which_function", "list_variables"} <= kinds and len(kinds) >= 4


class _BadCoder(offline.OfflineGenerator):
    """Every function and call step, and the first attempt at a variables step: a
    SyntaxError. The second variables attempt: code that would create a file if anything
    ever ran it."""

    def __init__(self, marker):
        super().__init__()
        self.marker, self.seen = marker, set()

    def _one(self, req):
        prompt = req.messages[-1][1]
        name = (prompts.parse_prompt(prompt) or ("",))[0]
        if name in ("code_vars", "code_func", "code_call"):
            if prompt not in self.seen or name != "code_vars":
                self.seen.add(prompt)
                return offline.Completion("def broken(:\n    return = 1", "stop")
            else:
                n = int(prompts.parse_prompt(prompt)[1]["n"])
                lines = [f"touch_{len(self.seen)}_{i} = open({self.marker!r}, 'w')"
                         for i in range(n)]
                return offline.Completion("```python\n" + "\n".join(lines) + "\n```", "stop")
        return super()._one(req)


def test_code_with_syntax_errors_is_recorded_never_executed(tmp_path, sp_model_path):
    marker = str(tmp_path / "executed")
    spec = config.make_spec(bucket="0-8k", per_task=2, tasks="code")
    man, convs, _ = _build(tmp_path, sp_model_path, spec, gen=_BadCoder(marker))
    steps = [s for c in convs for s in c["meta"]["steps"]]
    assert steps and all(s["errors"][0].startswith("SyntaxError") for s in steps)
    opened = [s for s in steps if "open(" in s["code"]]
    assert opened and all(s["source"] == "generator" and s["attempts"] == 2 for s in opened)
    failed = [s for s in steps if s["kind"] != "vars"]
    assert failed and all(s["source"] == "template" and s["attempts"] == CFG.max_attempts
                          and len(s["errors"]) == CFG.max_attempts for s in failed)
    assert not os.path.exists(marker)


def _llama3_paragraph_tokenizer(text, out_dir):
    """A byte-level BPE with Llama-3's pre-tokenizer, trained on paragraphs, and
    Llama-3.1-8B-Instruct's chat template (a default system block in every conversation).
    Like Llama-3 it has merges such as ".\n\n", so a passage's final period and the
    separator after it are one token and per-piece counts do not add up."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from lctx.tokenizer import LLAMA3_SPECIALS
    from tokenizer_test import LLAMA3_SPLIT
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    lines = [x for x in text.splitlines() if x.strip()][:20000]
    tok.train_from_iterator(["\n\n".join(lines[i:i + 4]) for i in range(0, len(lines), 4)],
                            trainers.BpeTrainer(vocab_size=1500,
                                                special_tokens=list(LLAMA3_SPECIALS),
                                                initial_alphabet=pre_tokenizers.ByteLevel
                                                .alphabet(), show_progress=False))
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    assert tok.encode(".\n\nPassage").tokens[0] == "." + "\u010a" * 2
    fixture = os.path.join(os.path.dirname(__file__), "fixtures",
                           "llama31_instruct_chat_template.jinja")
    with open(fixture) as f, open(os.path.join(out_dir, "chat_template.jinja"), "w") as g:
        g.write(f.read())
    return os.path.join(out_dir, "tokenizer.json")


@pytest.mark.parametrize("tok_kind", ["sentencepiece", "llama3_style"])
def test_length_accuracy_per_bucket(tmp_path, sp_model_path, kjv_text, tok_kind):
    tok = (sp_model_path if tok_kind == "sentencepiece" else
           _llama3_paragraph_tokenizer(kjv_text, str(tmp_path / "l3")))
    fmt = ChatFormat(load_tokenizer(tok))
    assert (fmt.fixed_count > 20) == (tok_kind == "llama3_style")  # Llama-3.1's system block
    cfg = config.SelfGenConfig(num_nouns=900, batch_nouns=300)
    seen = {}
    for bucket in ("0-8k", "8k-16k", "16k-32k", "32k-64k"):
        spec = config.make_spec(bucket=bucket, per_task=1,
                                tasks="single_qa,summarization,code")
        man, convs, _ = _build(tmp_path, tok, spec, cfg)
        lo, hi = config.BUCKETS[bucket]
        for c in convs:
            n = c["meta"]["num_tokens"]
            assert lo <= n < hi and n == c["meta"]["length_target"] == fmt.count(
                c["messages"])
        seen[bucket] = sorted(c["meta"]["num_tokens"] for c in convs)
    print(tok_kind, seen)


def test_windowed_count_equals_whole_and_needs_its_boundary_checks(tmp_path, kjv_text,
                                                                   monkeypatch):
    """Atoms (per-piece counts + boundary checks) equal one whole encode; with the checks
    switched off a Llama-3-style tokenizer miscounts (".\\n\\n" is one token)."""
    tok = load_tokenizer(_llama3_paragraph_tokenizer(kjv_text, str(tmp_path / "l3")))
    L = assemble.Lengths(tok)
    rng = random.Random(0)
    lines = [x for x in kjv_text.splitlines() if x.strip()]
    atoms = []
    for k in range(1, 60):
        atoms += [("\n\n" if k > 1 else "") + f"Passage {k}:\n",
                  rng.choice(["", "```python\nx = 1\n```", "« ünïcode »"]) +
                  " ".join(rng.sample(lines, 2)).rstrip(".") + rng.choice([".", "", ":"])]
    atoms.append("\n\nAnswer the question based on the passages.")
    whole = len(tok.encode("".join(atoms)))
    assert assemble.Atoms(L).set(atoms) == whole
    edited = list(atoms)
    edited[41] = edited[41][:17]  # an edit in the middle is re-counted exactly
    a = assemble.Atoms(L)
    a.set(atoms)
    assert a.set(edited) == len(tok.encode("".join(edited)))
    monkeypatch.setattr(assemble.Lengths, "separable", lambda self, pairs: [True] * len(pairs))
    assert assemble.Atoms(L).set(atoms) != whole


def test_paper_6k_preset_is_1000_per_task_uniform_over_1k_8k(tmp_path, sp_model_path):
    from scipy import stats
    spec = config.make_spec(preset="paper6k")
    assert (spec.lo, spec.hi, spec.per_task, spec.tasks) == (1024, 8192, 1000, config.TASKS)
    items = build.plan(spec, config.SelfGenConfig())
    assert len(items) == 6000
    assert {t: sum(i["task"] == t for i in items) for t in config.TASKS} == {
        t: 1000 for t in config.TASKS}
    targets = [i["target"] for i in items]
    ks = stats.kstest(targets, stats.uniform(1024, 8192 - 1024).cdf)
    counts = [sum(lo <= x < lo + 1024 for x in targets) for lo in range(1024, 8192, 1024)]
    chi = stats.chisquare(counts)
    print(f"KS D={ks.statistic:.4f} p={ks.pvalue:.3f}; per-1K counts {counts} chi2 p="
          f"{chi.pvalue:.3f}")
    assert ks.pvalue > 0.01 and chi.pvalue > 0.01
    for t in config.TASKS:  # and per task
        assert stats.kstest([i["target"] for i in items if i["task"] == t],
                            stats.uniform(1024, 7168).cdf).pvalue > 0.001
    # The test can fail: lengths skewed the way a "distractors until it fits" builder
    # skews them (toward the top of the range) are rejected.
    skewed = [1024 + int(7168 * random.Random(k).random() ** 0.8) for k in range(6000)]
    assert stats.kstest(skewed, stats.uniform(1024, 7168).cdf).pvalue < 1e-6
    # Samples land exactly on their planned targets: the built lengths are the plan's.
    small = config.make_spec(preset="paper6k", per_task=3)
    man, convs, _ = _build(tmp_path, sp_model_path, small)
    plan = {(i["task"], i["index"]): i["target"] for i in items}
    assert man["retargeted"] == 0 and len(convs) == 18
    for c in convs:
        assert c["meta"]["num_tokens"] == plan[(c["meta"]["task"], c["meta"]["index"])]


def test_bad_input_is_a_clear_error(tmp_path, sp_model_path, capsys):
    from datagen.selfgen.__main__ import main
    with pytest.raises(ValueError, match="unknown task"):
        config.make_spec(bucket="0-8k", tasks="single_qa,poetry")
    with pytest.raises(ValueError, match="inverted"):
        config.make_spec(bucket="16k-8k")
    with pytest.raises(ValueError, match="below the smallest possible sample"):
        config.make_spec(bucket="0-400")
    with pytest.raises(records.RecordError, match="'output' must be a non-empty string"):
        records.make_io_record("x", "the input", "")
    with pytest.raises(records.RecordError, match="not an 'lctx.input_output/v1' record"):
        records.decode_io(records.encode(records.make_record(
            "c", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])))
    base = ["build", f"--out={tmp_path}", f"--tokenizer={sp_model_path}", "--no-progress"]
    cases = {
        "unknown task": base + ["--bucket=0-8k", "--tasks=qa"],
        "inverted": base + ["--bucket=9000-3000"],
        "smallest possible sample": base + ["--bucket=0-100"],
        "apt-get install wordnet-base": base + ["--bucket=0-8k",
                                                f"--set=nouns_path={tmp_path}/none"],
        "needs --tokenizer": ["build", f"--out={tmp_path}", "--bucket=0-8k"],
        "unknown field": base + ["--bucket=0-8k", "--set=passage_wrds=3"],
        "expected true or false": base + ["--bucket=0-8k", "--set=code_fallback=ture"],
        "needs 'vllm'": base + ["--bucket=0-8k", "--backend=vllm",
                                '--backend-args={"model": "m"}'],
    }
    for what, argv in cases.items():
        assert main(argv) == 2, what
        assert what in capsys.readouterr().err, what
    assert not os.path.exists(tmp_path / "passages")  # nothing was generated


def test_cli_shards_and_merge_equal_one_worker(tmp_path, sp_model_path, capsys):
    """`passages` and `build` split over 2 workers, then `merge`, give exactly the records
    one worker writes (every draw is seeded per sample, the corpus order is canonical)."""
    from datagen.selfgen.__main__ import main
    assert main(["nouns"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["count"], got["sha256"]) == (119_034, wordnet.NOUNS_SHA256)
    sets = ["--set=num_nouns=120", "--set=batch_samples=5", "--no-progress"]
    build = ["build", f"--tokenizer={sp_model_path}", "--bucket=0-8k", "--per-task=2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(build + [f"--out={one}"] + sets) == 0
    for shard in (0, 1):
        assert main(["passages", f"--out={two}", f"--shard={shard}", "--num-shards=2"]
                    + sets) == 0
    assert main(build + [f"--out={two}", "--shard=1", "--num-shards=2"] + sets) == 0
    assert main(["merge", f"--out={two}", "--name=0-8k"]) == 2  # shard 0 is missing
    assert "shards [0] of 2 missing" in capsys.readouterr().err
    assert main(build + [f"--out={two}", "--shard=0", "--num-shards=2"] + sets) == 0
    assert main(["merge", f"--out={two}", "--name=0-8k"]) == 0
    merged = json.load(open(os.path.join(two, "0-8k", "manifest.json")))
    assert merged["total"] == 12 and merged["num_shards"] == 2

    def recs(out, pattern):
        import glob
        return sorted((r for p in sorted(glob.glob(os.path.join(out, "0-8k", pattern)))
                       for r in records.read_array_record(p)), key=lambda r: r["id"])
    a, b = recs(one, "conversations-*"), recs(two, "conversations-*")
    assert len(a) == 12 and a == b
    assert main(["build", f"--out={one}", f"--tokenizer={sp_model_path}", "--preset=paper6k",
                 "--per-task=1", "--tasks=single_qa,code"] + sets) == 0
    man = json.load(open(os.path.join(one, "paper6k", "manifest-00000-of-00001.json")))
    assert man["samples"]["per_task"] == {"single_qa": 1, "code": 1}
    assert man["spec"]["lo"] == 1024 and man["spec"]["hi"] == 8192


class _Corpus:
    """A stand-in corpus: passages of very different lengths (long ones and one-word ones)."""

    def __init__(self, texts):
        self.texts, self.nouns = texts, [f"n{i}" for i in range(len(texts))]

    def __len__(self):
        return len(self.texts)

    def get(self, indices):
        return [{"noun": self.nouns[i], "text": self.texts[i]} for i in indices]


def test_exact_fit_with_fillers_too_short_to_bridge_a_passage(sp_model_path, kjv_text):
    """When dropping a passage leaves too little and adding one too much, the filler must
    change (seen failing: the loop alternated drop/append until it gave up)."""
    lines = [x for x in kjv_text.splitlines() if x.strip()][:4000]
    texts = [" ".join(lines[i:i + 12]) if i % 2 else "Amen." for i in range(0, 1200, 3)]
    corpus = _Corpus(texts)
    L = assemble.Lengths(load_tokenizer(sp_model_path))
    rng = random.Random(0)
    for k in range(40):
        block = tasks.Block("The relevant passage about the noun.", "n0", "answer")
        content = tasks.Content("single_qa", ["n0"], [block], True, {0},
                                lambda nums: (prompts.QA_PROMPT + "\n\nWhat?", "That.", {}),
                                {})
        target = rng.randrange(1500, 6000)
        got = assemble.assemble(content, target, corpus, L, seed=k)
        assert isinstance(got, assemble.Sample) and got.num_tokens == target
        assert L.counter.exact([{"role": "user", "content": got.content},
                                {"role": "assistant", "content": got.answer}]) == target


class _Flaky(offline.OfflineGenerator):
    """Fails the first time it sees every third prompt (a transient backend error)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def _one(self, req):
        prompt = req.messages[-1][1]
        if prompt not in self.seen and len(self.seen) % 3 == 0:
            self.seen.add(prompt)
            return offline.Completion("", "error", "HTTP 503: try later")
        self.seen.add(prompt)
        return super()._one(req)


def test_rerun_after_transient_errors_is_byte_identical(tmp_path, sp_model_path):
    """Recorded errors are replayed as their attempt's outcome, so a rerun walks the same
    retry path (seen failing when errors are sent again: attempt 0 then succeeds and the
    passage differs)."""
    spec = config.make_spec(bucket="0-8k", per_task=1)
    cfg = config.SelfGenConfig(num_nouns=120)
    first = _build(tmp_path, sp_model_path, spec, cfg, gen=_Flaky())
    assert first[0]["calls"].get("retried_ok", 0) > 0
    corpus = (tmp_path / "passages" / "passages-00000-of-00001.arrayrecord").read_bytes()
    (tmp_path / "0-8k" / "manifest-00000-of-00001.json").unlink()
    (tmp_path / "passages" / "manifest-00000-of-00001.json").unlink()
    again = _build(tmp_path, sp_model_path, spec, cfg)  # a backend that never fails
    assert again[1] == first[1] and again[2] == first[2]
    assert (tmp_path / "passages" / "passages-00000-of-00001.arrayrecord").read_bytes() == corpus
