"""Eval runners: the shared contract, OpenAIRunner on a fake server, VLLMRunner vs HF greedy."""
import pytest

from evals.runners.base import PromptTooLongError, check_lengths, check_prompts, cut_at_stop
from vllm_helpers import FakeOpenAIServer, build_tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, kjv_text):
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny")), kjv_text[:300_000],
                            unigram_bias=False, max_positions=2048, qk_scale=25.0)


def test_contract_helpers():
    assert cut_at_stop("abc\nSTOP def STOP", ["STOP", "\n"]) == "abc"
    assert cut_at_stop("abc", ["", "x"]) == "abc"
    assert check_prompts(["a", "b"], 4) == "text" and check_prompts([[1, 2]], 4) == "ids"
    with pytest.raises(TypeError, match="all strings or all lists"):
        check_prompts(["a", [1]], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        check_prompts(["a"], 0)
    with pytest.raises(PromptTooLongError, match="prompt 1 has 10 tokens"):
        check_lengths([3, 10], 12, 4)


def test_openai_runner_on_fake_server(tiny_dir):
    from evals.runners import OpenAIRunner
    with FakeOpenAIServer() as srv:
        r = OpenAIRunner("fake-model", tokenizer=tiny_dir, base_url=srv.url, concurrency=3,
                         backoff_s=0.01)
        assert r.max_len == 4096  # asked the server's /models
        texts = r.generate(["one #429x1", "two STOP three", "four"], 8, ["STOP"])
        assert texts == ["echo: one #429x1", "echo: two ", "echo: four"]
        assert r.generate([[5, 6, 7]], 3) == ["echo: 5 6 7"]
        with pytest.raises(PromptTooLongError, match="prompt 0"):
            r.generate([list(range(4095))], 8)
    first = srv.bodies[0]
    assert first["temperature"] == 0.0 and first["max_tokens"] == 8
    assert first["add_special_tokens"] is False and first["stop"] == ["STOP"]
    assert srv.bodies[-1]["prompt"] == [5, 6, 7]


def test_runner_package_exports_lazily():
    import evals.runners as runners
    from evals.runners.openai_runner import OpenAIRunner
    assert runners.OpenAIRunner is OpenAIRunner
    with pytest.raises(AttributeError):
        runners.NoSuchRunner  # noqa: B018


# ------------------------------------------------------------------ real vLLM engine
def _hf_greedy(model_dir, ids, n_new, rope_parameters=None):
    """Reference: transformers greedy decoding in fp32 (system python)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(model_dir)
    if rope_parameters is not None:
        cfg.rope_parameters = dict(rope_parameters)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=cfg,
                                                 dtype=torch.float32).eval()
    out = model.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False,
                         eos_token_id=cfg.eos_token_id, pad_token_id=cfg.eos_token_id)
    return out[0, len(ids):].tolist()


def _runner(model_dir, **kw):
    from evals.runners import VLLMRunner
    from vllm_helpers import vllm_python
    vllm_python()  # fail (never skip) with the build command when the venv is missing
    return VLLMRunner(model_dir, dtype="float32", max_model_len=1024, enforce_eager=True,
                      llm_kwargs={"kv_cache_memory_bytes": 128 << 20}, **kw)


@pytest.mark.vllm
def test_vllm_runner_matches_hf_greedy(tiny_dir, kjv_text):
    r = _runner(tiny_dir)
    try:
        tok = r.tokenizer
        assert r.max_len == 1024
        texts = [kjv_text[i * 997:i * 997 + 400] for i in range(3)]
        ids = tok.encode_batch(texts)
        n_new = 12
        got_ids = r.generate(ids, n_new)
        got_text = r.generate(texts, n_new)
        assert got_text == got_ids  # text and ids prompts mean the same
        for prompt, out in zip(ids, got_ids):
            ref = _hf_greedy(tiny_dir, prompt, n_new)
            eos = tok.eos_ids
            ref = ref[:next((i for i, t in enumerate(ref) if t in eos), len(ref))]
            assert out == tok.decode(ref), (out, tok.decode(ref))
        # Stop strings cut the continuation before the stop; order is kept.
        full = got_ids[0]
        stop = full[len(full) // 2:len(full) // 2 + 3]
        assert stop.strip(), full
        cut = r.generate([ids[0], ids[1]], n_new, [stop])
        assert cut[0] == full[:full.index(stop)] and cut[1] == got_ids[1]
        with pytest.raises(PromptTooLongError, match="prompt 1"):
            r.generate([ids[0], list(range(1, 1020))], n_new)
        assert r.generate([ids[2]], n_new) == [got_ids[2]]  # still serving after an error
    finally:
        r.close()
    assert r._proc.poll() is not None  # the worker has exited


@pytest.mark.vllm
def test_vllm_runner_rope_override_reaches_the_engine(tiny_dir, kjv_text):
    rope = {"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0}
    with _runner(tiny_dir, rope_parameters=rope) as r:
        ids = r.tokenizer.encode(kjv_text[5000:5600])
        got = r.generate([ids], 16)[0]
    want = r.tokenizer.decode(_hf_greedy(tiny_dir, ids, 16, rope))
    base = r.tokenizer.decode(_hf_greedy(tiny_dir, ids, 16))
    assert want != base, "the override must change this model's output for the test to mean"
    assert got == want


def test_vllm_runner_missing_venv_is_clear(tiny_dir, tmp_path):
    from evals.runners import VLLMRunner
    with pytest.raises(FileNotFoundError, match="vllm_env.sh"):
        VLLMRunner(tiny_dir, python=str(tmp_path / "nope" / "python"))
    with pytest.raises(FileNotFoundError, match="HF-format model directories"):
        VLLMRunner(str(tmp_path / "missing"))


def test_contract_is_documented_for_the_lctx_runner():
    import evals.runners.base as base
    doc = base.__doc__
    for needle in ("lctx_runner.LctxRunner", "max_len", "PromptTooLongError", "greedy"):
        assert needle in doc
