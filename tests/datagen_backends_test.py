"""OpenAI-compatible backend against a local misbehaving server (no network, seconds)."""
import json
import logging

import pytest

from datagen.backends import make_backend
from datagen.backends.base import Request
from datagen.backends.openai_backend import JSONClient, OpenAIGenerator
from vllm_helpers import FakeOpenAIServer

SECRET = "sk-test-DO-NOT-LEAK-0123456789"
SCHEMA = '{"properties": {"answer": {"type": "string"}}, "type": "object"}'


def _req(prompt: str, **kw) -> Request:
    return Request(messages=(("system", "sys"), ("user", prompt)), **kw)


def _gen(url: str, **kw) -> OpenAIGenerator:
    kw = {"timeout_s": 0.3, "max_retries": 3, "backoff_s": 0.01, "backoff_cap_s": 0.05,
          "progress": False, **kw}
    return OpenAIGenerator("fake-model", url, **kw)


def test_retries_keep_order_and_isolate_failures(monkeypatch, caplog):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    prompts = ["plain 0", "#429x2 one", "#500x3 two", "#slowx1 three", "#garbagex2 four",
               "#400 five", "#500always six", "#length seven"] + [f"p{i}" for i in range(12)]
    caplog.set_level(logging.DEBUG)
    # The timeout is generous so that only the deliberately slow prompt times out, even on a
    # loaded 2-core CI machine (a 0.3 s timeout once retried a plain prompt there: 12 != 11).
    with FakeOpenAIServer(slow_s=3.0) as srv:
        gen = _gen(srv.url, api_key_env="FAKE_KEY", concurrency=8, timeout_s=2.0)
        outs = gen.generate([_req(p) for p in prompts])
    ok = [i for i in range(len(prompts)) if i not in (5, 6)]
    for i in ok:
        assert outs[i].text == f"echo: {prompts[i]}", (i, outs[i])
    assert outs[7].finish_reason == "length"
    assert all(outs[i].finish_reason == "stop" for i in ok if i != 7)
    # 400 is not retried; an always-500 prompt stops after max_retries + 1 attempts.
    assert outs[5].finish_reason == "error" and "HTTP 400" in outs[5].error
    assert outs[6].finish_reason == "error" and "gave up after 4" in outs[6].error
    assert srv.attempts["/v1/chat/completions|#400 five"] == 1
    assert srv.attempts["/v1/chat/completions|#500always six"] == 4
    assert srv.attempts["/v1/chat/completions|#429x2 one"] == 3
    assert srv.attempts["/v1/chat/completions|#500x3 two"] == 4
    assert srv.attempts["/v1/chat/completions|#slowx1 three"] == 2
    assert srv.attempts["/v1/chat/completions|#garbagex2 four"] == 3
    assert gen.client.retries == 2 + 3 + 1 + 2 + 3
    # The key went to the server, and nowhere else.
    assert set(srv.auth) == {f"Bearer {SECRET}"}
    assert SECRET not in caplog.text and "retrying" in caplog.text
    assert SECRET not in json.dumps(gen.describe()) + repr(gen) + repr(outs)
    assert gen.describe()["api_key_env"] == "FAKE_KEY"


def test_concurrency_is_bounded_and_used():
    with FakeOpenAIServer(delay_s=0.05) as srv:
        outs = _gen(srv.url, concurrency=4).generate([_req(f"q{i}") for i in range(16)])
    assert [o.text for o in outs] == [f"echo: q{i}" for i in range(16)]
    assert 2 <= srv.max_in_flight <= 4


def test_request_body_sampling_and_json_schema():
    with FakeOpenAIServer() as srv:
        gen = _gen(srv.url, extra_body={"top_k": 20})
        gen.generate([_req("a", json_schema=SCHEMA, seed=5, temperature=0.3, max_tokens=77),
                      _req("b")])
    by_prompt = {b["messages"][-1]["content"]: b for b in srv.bodies}
    a, b = by_prompt["a"], by_prompt["b"]
    assert a["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": json.loads(SCHEMA), "strict": True}}
    assert (a["seed"], a["temperature"], a["max_tokens"], a["top_k"]) == (5, 0.3, 77, 20)
    assert a["model"] == "fake-model" and a["messages"][0] == {"role": "system",
                                                               "content": "sys"}
    assert "response_format" not in b
    assert srv.auth == [None, None]  # no api_key_env: no Authorization header


def test_bad_schema_fails_only_its_request():
    with FakeOpenAIServer() as srv:
        outs = _gen(srv.url).generate([_req("x", json_schema="{nope"), _req("y")])
    assert outs[0].finish_reason == "error" and "json_schema" in outs[0].error
    assert outs[1].text == "echo: y"


def test_unreachable_server_is_bounded_error():
    gen = _gen("http://127.0.0.1:9/v1", max_retries=2)  # port 9: nothing listens
    outs = gen.generate([_req("z")])
    assert outs[0].finish_reason == "error" and "gave up after 3" in outs[0].error


def test_bad_config_is_named(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ValueError, match="NOPE_KEY"):
        OpenAIGenerator("m", "http://127.0.0.1:1/v1", api_key_env="NOPE_KEY")
    with pytest.raises(ValueError, match="base_url"):
        OpenAIGenerator("m", "127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIGenerator("m", concurrency=0)


def test_backoff_is_exponential_capped_and_jittered():
    c = JSONClient("http://127.0.0.1:9/v1", backoff_s=1.0, backoff_cap_s=8.0)
    waits = [c.backoff(retry, None) for retry in range(6)]
    caps = [1, 2, 4, 8, 8, 8]
    assert all(0 <= w <= cap for w, cap in zip(waits, caps)), waits
    assert len(set(waits)) == len(waits)  # jitter: no two equal waits
    assert c.backoff(0, "5") >= 5  # Retry-After honoured (under the cap)
    assert c.backoff(0, "500") <= 8  # ... and capped


def test_retry_sleeps_go_through_the_injected_sleep():
    waits = []
    with FakeOpenAIServer() as srv:
        gen = _gen(srv.url, sleep=waits.append, backoff_s=0.5, backoff_cap_s=4.0)
        out = gen.generate([_req("#500x3 r")])[0]
    assert out.text == "echo: #500x3 r" and len(waits) == 3 and gen.client.retries == 3
    assert all(0 <= w <= cap for w, cap in zip(waits, [0.5, 1.0, 2.0])), waits


def test_factory_builds_openai_backend():
    gen = make_backend("openai", model="m", base_url="http://127.0.0.1:1/v1")
    assert isinstance(gen, OpenAIGenerator) and gen.describe()["concurrency"] == 32
