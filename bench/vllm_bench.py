"""Batched vLLM datagen backend vs one request at a time, same engine, same prompts.

    python bench/vllm_bench.py [--n 24] [--model DIR] [--max-tokens 64]

Runs in `.venv-vllm` (re-executes itself there when started from another python). Without
--model it builds the tiny random Llama of `tests/vllm_helpers.py` (CPU-friendly). The
prompts look like datagen's: a shared document chunk followed by one of several questions,
with the QA JSON schema, so prefix caching and structured output are both on the path.
Prints seconds, requests/s and the batched/sequential speed ratio measured side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_vllm_env() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        py = os.path.join(REPO, ".venv-vllm", "bin", "python")
        if not os.path.exists(py):
            sys.exit(f"vLLM is not importable and {py} is missing: "
                     f"run `bash datagen/vllm_env.sh` first")
        env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1")
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


def _requests(n: int, max_tokens: int):
    from datagen.backends.base import Request
    from lctx.corpora import kjv_books
    schema = json.dumps({"type": "object", "additionalProperties": False,
                         "required": ["question", "answer"],
                         "properties": {"question": {"type": "string"},
                                        "answer": {"type": "string"}}}, sort_keys=True)
    books = kjv_books()
    reqs = []
    for i in range(n):
        chunk = books[i % 4][1][:2500]  # 4 documents, n/4 questions each (shared prefixes)
        reqs.append(Request(messages=(("user", f"{chunk}\n\nAsk question number {i} about "
                                               f"this text and answer it as JSON."),),
                            max_tokens=max_tokens, temperature=0.7, seed=i,
                            json_schema=schema))
    return reqs


def main() -> None:
    _ensure_vllm_env()
    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=24, help="requests")
    p.add_argument("--model", help="HF model dir (default: build the tiny test Llama)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=2048)
    args = p.parse_args()
    from tqdm import tqdm

    from datagen.backends.vllm_backend import VLLMGenerator
    model = args.model
    if model is None:
        import vllm_helpers
        model = vllm_helpers.build_tiny_llama(os.path.join(tempfile.mkdtemp(), "tiny"))
    kw = {"llm_kwargs": {"kv_cache_memory_bytes": 512 << 20}} if args.model is None else {}
    gen = VLLMGenerator(model, max_model_len=args.max_model_len, enforce_eager=True,
                        progress=False, **kw)
    reqs = _requests(args.n, args.max_tokens)
    gen.generate(reqs[:4])  # warm-up: compile paths, grammar cache, the 4 document prefixes
    t0 = time.perf_counter()
    seq = [gen.generate([r])[0] for r in tqdm(reqs, desc="one at a time", unit="req")]
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    bat = gen.generate(reqs)
    t_bat = time.perf_counter() - t0
    ok = lambda outs: sum(c.finish_reason == "stop" for c in outs)  # noqa: E731
    same = sum(a.text == b.text for a, b in zip(seq, bat))
    print(json.dumps({
        "requests": args.n, "max_tokens": args.max_tokens, "model": model,
        "sequential_s": round(t_seq, 3), "batched_s": round(t_bat, 3),
        "sequential_req_per_s": round(args.n / t_seq, 2),
        "batched_req_per_s": round(args.n / t_bat, 2),
        "speedup_batched_vs_sequential": round(t_seq / t_bat, 2),
        "finished_stop": {"sequential": ok(seq), "batched": ok(bat)},
        "identical_outputs": same}, indent=1))


if __name__ == "__main__":
    main()
