"""datagen throughput with the offline extractive backend, side by side in one run.

    python3 bench/datagen_bench.py [--docs=24] [--length=16384] [--small-tokens=1024]

Measures, on the shortest KJV books with a KJV-trained 1K SentencePiece tokenizer:
  cold   : every call reaches the backend (documents/s, QA/s, calls/s, conversation tokens/s);
  warm   : the same build rerun over the on-disk cache (what a resume after a crash costs);
  ratio  : warm / cold speed, and backend calls per document vs the paper's call pattern
           (per book: one summary per small and medium chunk + 1 global summary, 25
           hierarchical + 50 diverse QAs, ~20% multi-hop follow-ups; retries add to it).
The extractive backend is not an LLM: these numbers bound the pipeline's own overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datagen.backends.extractive import ExtractiveGenerator  # noqa: E402
from datagen.config import Config  # noqa: E402
from datagen.corpus import load_corpus  # noqa: E402
from datagen.pipeline import build_dataset  # noqa: E402
from lctx.corpora import kjv_text  # noqa: E402
from lctx.tokenizer import train_sentencepiece  # noqa: E402


class CountingExtractive(ExtractiveGenerator):
    def __init__(self):
        self.calls = 0

    def generate(self, reqs):
        self.calls += len(reqs)
        return super().generate(reqs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--small-tokens", type=int, default=1024)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="datagen_bench_")
    tok = train_sentencepiece(kjv_text()[:1_500_000], 1024, os.path.join(work, "kjv1k"))
    docs, _ = load_corpus("kjv")
    docs = sorted(docs, key=lambda d: len(d.text))[:args.docs]
    cfg = Config(small_tokens=args.small_tokens, samples_per_length=args.samples)
    out = os.path.join(work, "out")
    rows = {}
    for phase in ("cold", "warm"):
        backend = CountingExtractive()
        t0 = time.perf_counter()
        man = build_dataset(docs, tok, backend, [args.length], out, cfg, progress=False)
        dt = time.perf_counter() - t0
        qas = man["qa_pairs"]["hierarchical"] + man["qa_pairs"]["diverse"]
        rows[phase] = {"seconds": dt, "docs/s": len(docs) / dt, "QA/s": qas / dt,
                       "calls/s": man["calls"]["calls"] / dt, "backend_calls": backend.calls,
                       "conv_tokens/s": man["lengths"][str(args.length)]["tokens"]["total"] / dt}
    n_small = n_med = 0
    for line in open(os.path.join(out, "banks-00000-of-00001.jsonl")):
        b = json.loads(line)
        n_small, n_med = n_small + b["n_small"], n_med + b["n_medium"]
    expected = (n_small + n_med + len(docs) + len(docs) * (cfg.n_hierarchical + cfg.n_diverse
                + cfg.multihop_prob * cfg.n_hierarchical)) / len(docs)
    print(f"{len(docs)} documents, {n_small} small / {n_med} medium chunks, target "
          f"{args.length} tokens x {args.samples} conversations")
    for phase, r in rows.items():
        print(f"{phase:5s} " + "  ".join(f"{k}={v:,.1f}" for k, v in r.items()))
    print(f"warm/cold speed ratio: {rows['cold']['seconds'] / rows['warm']['seconds']:.2f}x; "
          f"warm backend calls: {rows['warm']['backend_calls']} (resume repeats none)")
    print(f"backend calls per document: measured {rows['cold']['backend_calls'] / len(docs):.1f}"
          f" vs paper pattern ~{expected:.1f} (ratio "
          f"{rows['cold']['backend_calls'] / len(docs) / expected:.3f})")


if __name__ == "__main__":
    main()
