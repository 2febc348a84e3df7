"""RULER data: benchmark facts, length targeting, fast search == the reference's loop,
golden samples pinned byte for byte (KJV SentencePiece fixture, seed 42)."""
import hashlib
import json
import random

import pytest

import tiny_runs
from evals.ruler import Options, Resources, TaskNotRunnable, build_task, constants, fit, prepare
from evals.ruler.base import Rng
from evals.ruler.niah import AdjNounWords
from evals.ruler.registry import settings, write_jsonl
from evals.ruler.text import PieceCounter, load_tokenizer, split_sentences


@pytest.fixture(scope="module")
def tok(sp_model_path):
    return load_tokenizer(sp_model_path)


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    squad, hotpot = tiny_runs.ruler_qa_files(str(tmp_path_factory.mktemp("qa")))
    return Resources(squad=squad, hotpotqa=hotpot)


def test_thirteen_tasks_with_reference_parameters():
    assert list(constants.TASKS) == [
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
        "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1",
        "qa_2"]
    assert constants.TASKS["niah_multikey_3"].kwargs()["type_needle_k"] == "uuids"
    assert constants.TASKS["niah_multiquery"].kwargs()["num_needle_q"] == 4
    assert {f: v["tokens_to_generate"] for f, v in constants.FAMILIES.items()} == {
        "niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
        "freq_words_extraction": 50, "qa": 32}
    assert "assgined" in constants.full_template("variable_tracking", "base")
    assert "assigned the value {query}, they" in constants.full_template(
        "variable_tracking", "base", fix_typos=True)
    t = constants.full_template("qa", "llama3")
    assert t.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nAnswer")
    assert t.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n Answer:")
    assert constants.full_template("qa", "llama2").startswith("[INST] Answer the question")


def test_bad_task_names_and_templates():
    with pytest.raises(ValueError, match="known tasks: niah_single_1"):
        constants.resolve_tasks("niah_single_1,nope")
    with pytest.raises(ValueError, match="unknown chat template"):
        constants.model_template("chatml")


def test_adj_noun_words_equal_the_materialised_sorted_set():
    adjs = ["big", "big-hearted", "bigger", "ad hoc", "ad", "red", "a", "b'c", "zany", "red-"]
    nouns = ["cat", "hoc-x", "-dog", "apple", "zebra", "a b", "red"]
    lazy = AdjNounWords(adjs, nouns)
    full = sorted({f"{a}-{n}" for a in adjs for n in nouns})
    assert len(lazy) == len(full) and [lazy[i] for i in range(len(lazy))] == full


def test_split_sentences_keeps_text():
    text = "Mr. Smith went. He said \"Hi.\" Then 3 cats came! Did they? yes. End"
    sents = split_sentences(text)
    assert " ".join(sents) == text and len(sents) == 5


def test_singular_template_rewrite(tok):
    fam = build_task("niah_single_1", 4096, Options(), Resources())
    text, answers = fam.render(10, Rng.from_seed(1))
    assert text.startswith("A special magic number is hidden within the following text.")
    assert text.endswith(" The special magic number for " + text.split(" for ")[-1])
    assert "What is the special magic number for" in text and len(answers) == 1
    multi = build_task("niah_multivalue", 4096, Options(), Resources())
    text, answers = multi.render(500, Rng.from_seed(1))
    assert text.startswith("Some special magic numbers are hidden") and len(answers) == 4
    assert all(f"is: {a}." in text for a in answers)


@pytest.mark.parametrize("task,length", [("niah_single_1", 4096), ("niah_single_2", 4096),
                                         ("niah_multikey_2", 8192), ("vt", 8192),
                                         ("cwe", 8192), ("fwe", 8192), ("qa_1", 4096),
                                         ("qa_2", 8192)])
def test_fast_search_equals_reference_loop(tok, qa_files, task, length):
    fam = build_task(task, length, Options(), qa_files)
    counter = PieceCounter(tok)
    if task == "fwe":  # its own search: same answer as the reference's on exact counts
        assert fam.find_size(counter) == fam.find_size(PieceCounter(tok), "reference")
        return
    fam.find_size(counter)  # VT: builds its one-shot example first
    probe = lambda n: fam.search_text(*fam.render(n, Rng.probe(42)))  # noqa: E731
    ref = fit.reference_size_search(lambda n: counter.exact(probe(n)), fam.search)
    before = counter.exact_calls
    assert fit.fast_size_search(probe, counter, fam.search) == ref
    assert counter.exact_calls - before <= 4


def test_binary_search_equals_reference_binary(tok):
    fam = build_task("niah_multikey_2", 8192, Options(search="binary"), Resources())
    counter = PieceCounter(tok)
    probe = lambda n: fam.search_text(*fam.render(n, Rng.probe(42)))  # noqa: E731
    upper = fam.binary_upper(counter)
    ref = fit.reference_binary_search(lambda n: counter.exact(probe(n)), fam.search, upper)
    assert fit.fast_binary_search(probe, counter, fam.search, upper) == ref
    assert ref % fam.search.incremental != 0 or ref > 0  # any size, not a multiple


def test_reference_loop_quirks():
    s = fit.SizeSearch(10, 100, 0)
    assert fit.reference_size_search(lambda n: n + 5, s) == 90  # 95 < 100, 105 > 100
    assert fit.reference_size_search(lambda n: n, s) == 110  # == max stops one step late
    capped = fit.SizeSearch(10, 100, 0, cap=35, cap_mode="after_check")
    assert fit.reference_size_search(lambda n: n, capped) == 35
    grown = fit.SizeSearch(10, 100, 0, cap=35, cap_mode="after_increment")
    assert fit.reference_size_search(lambda n: n, grown) == 35
    for s in (fit.SizeSearch(10, 100, 0), capped, grown):
        for f in (lambda n: n + 5, lambda n: n, lambda n: 2 * n + 1):
            texts = lambda n: "x " * f(n)  # noqa: E731

            class C:  # counts = number of 'x' pieces (estimate == exact)
                exact_calls = 0
                estimate = exact = staticmethod(lambda t: t.count("x"))
            assert fit.fast_size_search(texts, C, s) == fit.reference_size_search(f, s)


@pytest.mark.parametrize("task,length", [("niah_single_1", 4096), ("niah_single_3", 8192),
                                         ("niah_multikey_3", 4096), ("niah_multiquery", 8192),
                                         ("vt", 4096), ("cwe", 8192), ("fwe", 4096),
                                         ("qa_2", 8192)])
def test_samples_fit_the_budget_and_fill_it(tok, qa_files, task, length):
    fam = build_task(task, length, Options(), qa_files)
    counter = PieceCounter(tok)
    samples = fam.samples(counter, 3)
    inc = fam.search.incremental
    if task == "fwe":
        step = counter.exact(fam.text(fam.vocab(Rng.from_seed(1)), 2 * inc)[0]) - \
            counter.exact(fam.text(fam.vocab(Rng.from_seed(1)), inc)[0])
    else:
        step = counter.exact(fam.render(2 * inc, Rng.from_seed(1))[0]) - \
            counter.exact(fam.render(inc, Rng.from_seed(1))[0])
    for s in samples:
        true_len = len(tok.encode(s["input"])) + fam.tokens_to_generate
        assert true_len <= length if task != "fwe" else true_len - 50 <= length
        assert s["length"] >= length - 2 * step - 64, (s["length"], step)
        assert s["outputs"] and all(isinstance(o, str) for o in s["outputs"])


def test_too_small_length_and_missing_qa_files(tok):
    with pytest.raises(fit.LengthTooSmallError, match="use a larger"):
        prepare("niah_multikey_3", 256, 1, tok, Options(), Resources())
    with pytest.raises(TaskNotRunnable, match="qa_1 not run: pass the squad dev file"):
        prepare("qa_1", 4096, 1, tok, Options(), Resources())
    with pytest.raises(TaskNotRunnable, match="--hotpotqa=/nonexistent.json: no such file"):
        prepare("qa_2", 4096, 1, tok, Options(), Resources(hotpotqa="/nonexistent.json"))


GOLDEN = {  # sha256 of the JSONL (settings line + 2 samples), KJV 1K SentencePiece, seed 42
    ("cwe", 8192): "0f6232bcf1819ab697ae4a54285a5cca09ba54a842012ab2c2063dcc2728e494",
    ("fwe", 4096): "1a85a95d45ab2da7674992d8a73e52862869e3f203b35617c55699ad6da71d55",
    ("niah_multikey_3", 4096): "fe75a1492985bb68c685ac966f4c51fef0797ef2f59b1e290d6002373b86042c",
    ("niah_multivalue", 8192): "15b5d0b5f2a761ef1ef78e05f6d8d27fc29c0a403beddcf96276b117a0abd640",
    ("niah_single_1", 4096): "bae224b33c192dd8ba1d31874921184244c139a49900dcb587bbc62d713d2796",
    ("niah_single_2", 4096): "aba81407de1f402d5aeb409290de559e5ca085ffd8c58adac62eaf6e0c64c210",
    ("qa_1", 4096): "c6f774c08b56334170de993b9e00e08a511c2c298e0daab82b5306d7ce1dc84c",
    ("vt", 4096): "dd0c59dc1dbaa2e8cf207f140470f721826e1a28cf3dfb502432d2e272e7701a",
}


@pytest.mark.parametrize("task,length", sorted(GOLDEN))
def test_golden_samples(tok, qa_files, tmp_path, task, length):
    samples = prepare(task, length, 2, tok, Options(), qa_files)
    header = settings(task, length, 2, Options(), Resources(), "kjv1k")
    digest = write_jsonl(str(tmp_path / "s.jsonl"), header, samples)
    assert digest == hashlib.sha256((tmp_path / "s.jsonl").read_bytes()).hexdigest()
    again = prepare(task, length, 2, tok, Options(), qa_files)
    assert again == samples  # deterministic by seed
    assert digest == GOLDEN[(task, length)], digest


def test_vt_one_shot_example_follows_the_reference_string_surgery(tok):
    s = prepare("vt", 8192, 1, tok, Options(chat_template="llama3"), Resources())[0]
    head = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assert s["input"].startswith(head + "Memorize and track the chain(s) of variable "
                                        "assignment hidden in the following text. ")
    # The example loses the model template and the word before its answer prefix ('above.'
    # glued to the template), and its answer names are re-randomised.
    example = s["input"][len(head):s["input"].index("\n\nMemorize and track", len(head))]
    assert " in the text Answer: According to the chain(s) of variable assignment in the text " \
           "above, 5 variables are assgined the value " in example
    names = example.split("they are: ")[1].split()
    assert len(names) == 5 and all(len(n) == 3 and f"VAR {n} " in example for n in names)
    assert s["input"].count("<|begin_of_text|>") == 1
    assert s["input"].endswith("<|end_header_id|>\n\n Answer: According to the chain(s) of "
                               "variable assignment in the text above, 5 variables are "
                               "assgined the value " + s["input"].split("assgined the value ")
                               [-1])


def test_fast_search_never_renders_past_the_cap():
    for mode in ("after_check", "after_increment"):
        s = fit.SizeSearch(10, 10_000, 0, cap=95, cap_mode=mode)
        seen = []

        def texts(n):
            assert n <= 95, n
            seen.append(n)
            return "x " * n

        class C:
            exact_calls = 0
            estimate = exact = staticmethod(lambda t: t.count("x"))
        assert fit.fast_size_search(texts, C, s) == 95 == fit.reference_size_search(
            lambda n: n, s)


def test_special_strings_count_as_one_token_and_match_chatformat(tok, sp_model_path):
    from lctx.tokenizer import ChatFormat
    from lctx.tokenizer import load_tokenizer as lctx_load
    assert tok.encode("<|begin_of_text|>") == [tok.ids["<|begin_of_text|>"]]
    template = constants.full_template("niah", "chatformat")
    user = constants.FAMILIES["niah"]["template"].format(type_needle_v="numbers",
                                                         context="hay", query="k")
    prefix = constants.FAMILIES["niah"]["answer_prefix"].format(type_needle_v="numbers",
                                                                query="k")
    text = template.format(type_needle_v="numbers", context="hay", query="k")
    cf = ChatFormat(lctx_load(sp_model_path))
    ours = tok.encode(text)
    theirs = cf.render_prompt([{"role": "user", "content": user}], prefix)
    assert [i for i in ours if i in tok.ids.values()] == \
        [i for i in theirs if i in tok.ids.values()]
    assert tok.decode(ours) == tok.decode(theirs) == text


def test_remove_newline_tab_option(tok):
    s = prepare("niah_single_1", 4096, 1, tok, Options(remove_newline_tab=True), Resources())[0]
    plain = prepare("niah_single_1", 4096, 1, tok, Options(), Resources())[0]
    assert "\n" not in s["input"] and "\n" in plain["input"]
    assert s["input"] == " ".join(plain["input"].split()) and s["length"] == plain["length"]


@pytest.mark.slow
def test_adj_noun_index_equals_the_reference_list_on_wonderwords():
    """The full 6.2M-entry list the reference builds (~12 s, ~0.8 GB), checked at 20K
    random indices and both ends."""
    from evals.ruler.niah import needle_words
    from evals.ruler.text import wonderwords_lists
    nouns, adjs, _ = wonderwords_lists()
    full = sorted({f"{a}-{n}" for a in adjs for n in nouns})
    lazy = needle_words()
    assert len(lazy) == len(full)
    rng = random.Random(0)
    for i in [0, len(full) - 1] + [rng.randrange(len(full)) for _ in range(20_000)]:
        assert lazy[i] == full[i]


def test_zeta_matches_closed_form():
    import math
    from evals.ruler import fwe
    assert fwe.zeta(2.0) == pytest.approx(math.pi ** 2 / 6, rel=1e-15)
    assert fwe.zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-12)


def test_sentence_index_equals_splitting_each_prefix(kjv_text):
    from evals.ruler.text import SentenceIndex
    words = ("  " + kjv_text[:40_000]).replace("\n", " ").split(" ")  # leading empty words
    idx = SentenceIndex(words)
    rng = random.Random(0)
    for n in [0, 1, 2, 3, len(words)] + [rng.randrange(len(words)) for _ in range(40)]:
        assert idx.sentences(n) == split_sentences(" ".join(words[:n]).strip()), n


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory, kjv_text):
    """A byte-level BPE tokenizer.json (Llama-3's kind of pre-tokeniser, its specials)."""
    from vllm_helpers import train_tokenizer
    return load_tokenizer(train_tokenizer(kjv_text[:200_000],
                                          str(tmp_path_factory.mktemp("bpe")), 2048))


@pytest.mark.parametrize("which", ["sp", "bpe"])
def test_chunked_counts_equal_whole_tokenisation(tok, bpe_tok, qa_files, which):
    from evals.ruler.count import ChunkCounter
    t = tok if which == "sp" else bpe_tok
    counter = ChunkCounter(t, target=256, min_text=2048)
    opts = Options(chat_template="meta-llama3", repeat_haystack=True)
    texts = []
    for task in constants.TASKS:
        fam = build_task(task, 12_000, opts, qa_files)
        for seed in (0, 1):
            texts.append(fam.render(fam.search.incremental * 30, Rng.from_seed(seed))[0])
    for text in texts:
        assert counter.count(text) == len(t.encode(text))
    assert sum(counter.safe.values()) > 100  # cuts were made and verified
    assert counter.encoded_bytes < 0.8 * sum(len(x.encode()) for x in texts)  # cache hits


def test_chunk_cuts_that_merge_are_dropped():
    from evals.ruler.count import ChunkCounter

    class Pairs:  # "tokenises" two characters at a time: merges across every space
        def encode_batch(self, texts):
            return [[0] * ((len(x) + 1) // 2) for x in texts]

    counter = ChunkCounter(Pairs(), target=16, min_text=64)
    text = "ab c " * 500 + "d"
    assert counter.count(text) == (len(text) + 1) // 2
    assert counter.count(text + "x") == (len(text) + 2) // 2
    # Its 24-byte windows pass (even lengths), the whole-text check does not: no more cuts.
    assert counter.trusted is False and any(counter.safe.values())
