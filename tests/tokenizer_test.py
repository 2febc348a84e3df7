"""Tokenizer interface and the chat format, checked token for token against HF's
`apply_chat_template` with Llama-3's and Llama-3.1-8B-Instruct's own templates."""
import importlib.util
import json
import os
import shutil

import pytest

from lctx.tokenizer import (LLAMA3_CHAT_TEMPLATE, LLAMA3_SPECIALS, ChatFormat, HFTokenizer, SentencePieceTokenizer,
                            TokenizerError, load_tokenizer)

# Llama-3's pre-tokeniser split (tiktoken cl100k-style pattern used by Meta's tokenizer.json).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CONVERSATIONS = [
    [{"role": "user", "content": "Who begat Enos?"},
     {"role": "assistant", "content": "Seth begat Enos."}],
    [{"role": "system", "content": "You answer from the text.\nBe brief."},
     {"role": "user", "content": "  In the beginning God created  the heaven.\n\n"},
     {"role": "assistant", "content": "\nGenesis 1:1 -- «créa» 天 ✓\n"},
     {"role": "user", "content": "And then? 1234567 'll 's"},
     {"role": "assistant", "content": "And the earth was without form, and void."}],
    [{"role": "user", "content": "Empty answer next."}, {"role": "assistant", "content": ""}],
]


def build_llama3_style_tokenizer_json(text: str, out_dir: str, vocab_size: int = 2000) -> str:
    """A byte-level BPE with Llama-3's pre-tokeniser, decoder, BOS post-processor and special
    tokens, saved as `out_dir/tokenizer.json` (plus a tokenizer_config.json)."""
    from tokenizers import (Regex, Tokenizer, decoders, models, pre_tokenizers, processors,
                            trainers)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(LLAMA3_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.splitlines(), trainer)
    # Like Llama-3: a post-processor that prepends BOS when special tokens are requested.
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                   "chat_template": LLAMA3_CHAT_TEMPLATE}, f)
    return os.path.join(out_dir, "tokenizer.json")


@pytest.fixture(scope="module")
def hf_tok_dir(tmp_path_factory, kjv_text):
    out = tmp_path_factory.mktemp("hftok")
    build_llama3_style_tokenizer_json(kjv_text[:1_000_000], str(out))
    return str(out)


# Llama-3.1-8B-Instruct's `chat_template` (its tokenizer_config.json), verbatim.
LLAMA31_TEMPLATE_PATH = os.path.join(os.path.dirname(__file__), "fixtures",
                                     "llama31_instruct_chat_template.jinja")


def llama31_template() -> str:
    with open(LLAMA31_TEMPLATE_PATH) as f:
        return f.read()


@pytest.fixture(scope="module")
def hf_tok31_dir(hf_tok_dir, tmp_path_factory):
    """The same tokenizer with Llama-3.1-8B-Instruct's template in tokenizer_config.json."""
    out = tmp_path_factory.mktemp("hftok31")
    shutil.copy(os.path.join(hf_tok_dir, "tokenizer.json"), out)
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                   "tokenizer_class": "PreTrainedTokenizerFast",
                   "chat_template": llama31_template()}, f)
    return str(out)


@pytest.fixture(scope="module")
def hf_reference31(hf_tok31_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(hf_tok31_dir)


@pytest.fixture(scope="module")
def hf_reference(hf_tok_dir):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(hf_tok_dir, "tokenizer.json"),
                                   bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   chat_template=LLAMA3_CHAT_TEMPLATE)


def _template_ids(ref, messages, **kw):
    out = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)
    return list(out)


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_render_matches_llama3_chat_template(hf_tok_dir, hf_reference, conv):
    fmt = ChatFormat(load_tokenizer(hf_tok_dir))
    msgs = CONVERSATIONS[conv]
    ids, mask = fmt.render(msgs)
    assert ids == _template_ids(hf_reference, msgs)
    assert len(mask) == len(ids) and fmt.count(msgs) == len(ids)
    prompt = fmt.render_prompt(msgs[:-1])
    assert prompt == _template_ids(hf_reference, msgs[:-1], add_generation_prompt=True)


def _masked_runs(ids, mask):
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_render_matches_llama31_chat_template(hf_tok31_dir, hf_reference31, conv):
    """Llama-3.1's template adds a system block with its knowledge-cutoff and date header
    (and folds a leading system message into it); training must render exactly that."""
    tok = load_tokenizer(hf_tok31_dir)
    fmt = ChatFormat(tok)
    msgs = CONVERSATIONS[conv]
    ids, mask = fmt.render(msgs)
    assert ids == _template_ids(hf_reference31, msgs)
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024" in tok.decode(ids)
    assert len(mask) == len(ids) and fmt.count(msgs) == len(ids)
    replies = [m["content"].strip() for m in msgs if m["role"] == "assistant"]
    assert [tok.decode(r) for r in _masked_runs(ids, mask)] == [r + "<|eot_id|>" for r in replies]
    prompt = fmt.render_prompt(msgs[:-1])
    assert prompt == _template_ids(hf_reference31, msgs[:-1], add_generation_prompt=True)
    prefix = " Answer:"
    text = hf_reference31.apply_chat_template(msgs[:-1], tokenize=False,
                                              add_generation_prompt=True)
    assert fmt.render_prompt(msgs[:-1], answer_prefix=prefix) == hf_reference31(
        text + prefix, add_special_tokens=False)["input_ids"]


def test_llama31_date_string(hf_tok31_dir, hf_reference31):
    """The template's "Today Date" is a fixed default unless date_string is passed."""
    msgs = CONVERSATIONS[0]
    fmt = ChatFormat(load_tokenizer(hf_tok31_dir), date_string="02 Jan 2025")
    ids, _ = fmt.render(msgs)
    assert ids == _template_ids(hf_reference31, msgs, date_string="02 Jan 2025")
    assert ids != ChatFormat(load_tokenizer(hf_tok31_dir)).render(msgs)[0]


def test_template_from_chat_template_jinja(hf_tok_dir, tmp_path, hf_reference31):
    """transformers 5 saves the template as chat_template.jinja beside the config."""
    shutil.copy(os.path.join(hf_tok_dir, "tokenizer.json"), tmp_path)
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, f)
    (tmp_path / "chat_template.jinja").write_text(llama31_template())
    tok = load_tokenizer(tmp_path)
    assert tok.chat_template == llama31_template()
    msgs = CONVERSATIONS[1]
    assert ChatFormat(tok).render(msgs)[0] == _template_ids(hf_reference31, msgs)


def test_turn_counts_add_up(hf_tok31_dir, hf_tok_dir, sp_model_path):
    """count = fixed_count + the sum of count_turn over the messages (datagen sizes
    conversations this way), for every template, without a system message."""
    for path in (hf_tok31_dir, hf_tok_dir, sp_model_path):
        fmt = ChatFormat(load_tokenizer(path))
        for msgs in CONVERSATIONS:
            msgs = [m for m in msgs if m["role"] != "system"]
            assert fmt.count(msgs) == fmt.fixed_count + sum(
                fmt.count_turn(m["role"], m["content"]) for m in msgs), path


def test_render_prompt_answer_prefix(hf_tok_dir, hf_reference):
    fmt = ChatFormat(load_tokenizer(hf_tok_dir))
    msgs = [{"role": "user", "content": "Name the first book."}]
    prefix = "The first book is"
    text = hf_reference.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ref = hf_reference(text + prefix, add_special_tokens=False)["input_ids"]
    assert fmt.render_prompt(msgs, answer_prefix=prefix) == ref


@pytest.mark.parametrize("backend", ["hf", "sp"])
def test_loss_mask_covers_exactly_assistant_content_and_eot(backend, hf_tok_dir, sp_model_path):
    tok = load_tokenizer(hf_tok_dir if backend == "hf" else sp_model_path)
    fmt = ChatFormat(tok)
    msgs = CONVERSATIONS[1]
    ids, mask = fmt.render(msgs)
    # Walk the masked runs: each must decode to one assistant reply (trimmed) + <|eot_id|>.
    runs = _masked_runs(ids, mask)
    replies = [m["content"].strip() for m in msgs if m["role"] == "assistant"]
    assert [tok.decode(r) for r in runs] == [r + "<|eot_id|>" for r in replies]
    assert all(r[-1] == tok.eot_id for r in runs)
    # The whole conversation decodes back to the template text.
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
        for m in msgs)
    assert tok.decode(ids) == text


def test_sentencepiece_round_trip_exact(sp_model_path):
    tok = load_tokenizer(sp_model_path)
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 1024
    for text in ["In the beginning\n\nGod  created   the heaven.\n",
                 "  leading and trailing  ", "tabs\tand\r\nCRLF", "naïve café — 天地 ✓ 🕊",
                 "", "\n"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.bos_id == tok.special_id("<|begin_of_text|>")
    assert tok.eos_ids == {tok.special_id("<|eot_id|>"), tok.special_id("<|end_of_text|>")}


@pytest.mark.parametrize("backend", ["hf", "sp"])
def test_special_strings_in_user_text_stay_text(backend, hf_tok_dir, sp_model_path):
    tok = load_tokenizer(hf_tok_dir if backend == "hf" else sp_model_path)
    specials = {tok.special_id(p) for p in LLAMA3_SPECIALS}
    text = "say <|eot_id|> then <|begin_of_text|><|start_header_id|>x"
    ids = tok.encode(text)
    assert not specials & set(ids)
    assert tok.decode(ids) == text
    batch = tok.encode_batch([text, "plain verse", ""])
    assert batch == [ids, tok.encode("plain verse"), []]
    # Encoding never adds BOS even though the HF post-processor would.
    assert tok.encode("plain verse")[0] != tok.bos_id


def test_encode_batch_matches_encode(hf_tok_dir, sp_model_path, kjv_text):
    lines = kjv_text.splitlines()[:200]
    for path in (hf_tok_dir, sp_model_path):
        tok = load_tokenizer(path)
        assert tok.encode_batch(lines) == [tok.encode(t) for t in lines]


def test_ids_and_loading_forms(hf_tok_dir):
    tok = load_tokenizer(hf_tok_dir)
    assert isinstance(tok, HFTokenizer)
    assert load_tokenizer(os.path.join(hf_tok_dir, "tokenizer.json")).vocab_size == tok.vocab_size
    assert tok.vocab_size == 2000
    assert tok.bos_id == tok.special_id("<|begin_of_text|>")
    assert tok.eot_id == tok.special_id("<|eot_id|>")
    assert tok.eot_id in tok.eos_ids and tok.pad_id == tok.special_id("<|end_of_text|>")
    with pytest.raises(TokenizerError, match="no token '<nope>'"):
        tok.special_id("<nope>")


def test_missing_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at .*missing\.model.*"
                                                r"SentencePiece \.model file"):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match=r"looked for tokenizer\.json and tokenizer"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a readable HF tokenizer.json"):
        load_tokenizer(bad)


def test_chat_format_needs_llama3_specials(tmp_path, kjv_text):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(kjv_text[:50_000].splitlines(),
                            trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                special_tokens=["<|eot_id|>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    plain = load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match=r"lacks the Llama-3 special tokens.*begin_of_text"):
        ChatFormat(plain)


def test_chat_format_rejects_bad_messages(sp_model_path):
    fmt = ChatFormat(load_tokenizer(sp_model_path))
    with pytest.raises(TokenizerError, match=r"role 'tool'"):
        fmt.render([{"role": "tool", "content": "x"}])
    with pytest.raises(TokenizerError, match=r"messages\[0\]"):
        fmt.render([{"role": "user"}])


def _mistral_data_dir():
    spec = importlib.util.find_spec("mistral_common")
    return None if spec is None else os.path.join(os.path.dirname(spec.origin), "data")


@pytest.mark.skipif(_mistral_data_dir() is None,
                    reason="optional: pip install mistral-common (real SentencePiece files)")
def test_real_mistral_sentencepiece_model():
    path = os.path.join(_mistral_data_dir(), "mistral_instruct_tokenizer_240323.model.v3")
    tok = load_tokenizer(path)
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 32768
    assert tok.bos_id == tok.special_id("<s>") == 1
    assert tok.eot_id == tok.special_id("</s>") == 2 and tok.eos_ids == {2}
    for text in ["In the beginning God created the heaven and the earth.",
                 "naïve café, 天地 and 1234567."]:
        ids = tok.encode(text)
        assert 1 not in ids and tok.decode(ids) == text
    with pytest.raises(TokenizerError, match="lacks the Llama-3 special tokens"):
        ChatFormat(tok)
