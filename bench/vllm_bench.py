"""Batched vLLM datagen backend vs one request at a time, same engine, same prompts, fairly.

    python bench/vllm_bench.py [--n 24] [--repeats 3] [--model DIR] [--max-tokens 64]

Runs in `.venv-vllm` (re-executes itself there when started from another python). Without
--model it builds the tiny random Llama of `tests/vllm_helpers.py` (CPU-friendly). The
prompts look like datagen's: a shared document chunk followed by one of several questions,
with the QA JSON schema, so prefix caching and structured output are both on the path.

Fairness: the prefix cache is reset before every phase (otherwise the phase that runs
second finds every document prefix cached and does almost no prefill), the phase order
alternates between repeats, and the ratios reported are medians over the repeats. Phases:
  sequential  one `generate([r])` per request;
  batched     one `generate(all)`: every request queued at once, streamed back as each ends;
  chat        one `LLM.chat(all)` (the pre-streaming path: nothing back until all are done),
              to show what streaming each finished request costs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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
    p.add_argument("--repeats", type=int, default=3, help="rounds, phase order alternating")
    p.add_argument("--model", help="HF model dir (default: build the tiny test Llama)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=2048)
    args = p.parse_args()
    from datagen.backends.vllm_backend import VLLMGenerator
    model = args.model
    if model is None:
        import vllm_helpers
        model = vllm_helpers.build_tiny_llama(os.path.join(tempfile.mkdtemp(), "tiny"))
    kw = {"llm_kwargs": {"kv_cache_memory_bytes": 512 << 20}} if args.model is None else {}
    gen = VLLMGenerator(model, max_model_len=args.max_model_len, enforce_eager=True,
                        progress=False, **kw)
    reqs = _requests(args.n, args.max_tokens)
    gen.generate(reqs[:4])  # warm-up: compile paths, grammar cache

    def chat():
        msgs = [[{"role": r, "content": c} for r, c in q.messages] for q in reqs]
        outs = gen.llm.chat(msgs, [gen._sampling_params(q) for q in reqs], use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    phases = {"sequential": lambda: [gen.generate([r])[0].text for r in reqs],
              "batched": lambda: [c.text for c in gen.generate(reqs)],
              "chat": chat}
    times: dict[str, list[float]] = {k: [] for k in phases}
    texts: dict[str, list[str]] = {}
    for rep in range(args.repeats):
        order = list(phases) if rep % 2 == 0 else list(reversed(phases))
        for name in order:
            gen.llm.reset_prefix_cache()  # every phase starts with a cold prefix cache
            t0 = time.perf_counter()
            texts[name] = phases[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [s / b for s, b in zip(times["sequential"], times["batched"])]
    print(json.dumps({
        "requests": args.n, "max_tokens": args.max_tokens, "model": model,
        "repeats": args.repeats, "seconds": {k: [round(x, 3) for x in v]
                                             for k, v in times.items()},
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "median_req_per_s": {k: round(args.n / v, 2) for k, v in med.items()},
        "speedup_batched_vs_sequential_median": round(statistics.median(ratios), 2),
        "speedup_batched_vs_sequential_each": [round(r, 2) for r in ratios],
        "streamed_batched_vs_chat_seconds": round(med["batched"] / med["chat"], 3),
        "identical_outputs": {k: sum(a == b for a, b in zip(texts["sequential"], v))
                              for k, v in texts.items()}}, indent=1))


if __name__ == "__main__":
    main()
