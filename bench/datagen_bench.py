"""datagen's own overhead and its durability under kill -9, measured side by side in one run.

    python3 bench/datagen_bench.py [--docs=24] [--length=16384] [--samples=16]
                                   [--small-tokens=1024] [--kills=6] [--kill-docs=10]

Throughput, with the offline extractive backend (not an LLM: these numbers bound the
pipeline's own cost) on the shortest KJV books and a KJV-trained 1K SentencePiece tokenizer:
  cold      every call reaches the backend: QA/s, calls/s, conversation tokens/s;
  overhead  the same run without the backend's own seconds (what datagen itself costs per
            QA; the goal is >= 2,000 QA/s on 2 cores);
  warm      the build rerun over the on-disk cache (all calls cached: a resume's cost).
Durability: a worker builds --kill-docs documents as ONE batch (75 QA calls each), is
SIGKILLed at --kills random moments and rerun to the end. "calls lost per kill" are finished
calls the rerun had to send again; side by side for a backend that answers its batch at the
end (how every backend worked before streaming, and how a batch-only backend still works)
and for a streaming one. Both must end byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from datagen.backends.extractive import ExtractiveGenerator  # noqa: E402
from datagen.config import Config  # noqa: E402
from datagen.corpus import load_corpus  # noqa: E402
from datagen.pipeline import build_dataset  # noqa: E402
from lctx.corpora import kjv_text  # noqa: E402
from lctx.tokenizer import train_sentencepiece  # noqa: E402

WORKER = r'''
import os, sys, time
from datagen.backends.extractive import ExtractiveGenerator
from datagen.config import Config
from datagen.corpus import load_corpus
from datagen.pipeline import build_dataset

tok, out, log, mode, n_docs, small = sys.argv[1:7]


class Logged(ExtractiveGenerator):
    """Logs each call when it is done (before handing it over)."""

    def _one(self, req):
        time.sleep(0.001)  # a backend's latency, so kills land at many moments
        c = super()._one(req)
        with open(log, "a") as f:
            f.write(req.cache_key(self.model) + "\n")
        return c


class BatchOnly(Logged):
    """Answers the whole batch at the end, as generate() did before streaming."""

    def generate(self, reqs):
        return [self._one(r) for r in reqs]


docs, _ = load_corpus("kjv")
docs = sorted(docs, key=lambda d: len(d.text))[:int(n_docs)]
cfg = Config(small_tokens=int(small), words_global=80, batch_docs=len(docs),
             samples_per_length=4)
backend = BatchOnly() if mode == "batch" else Logged()
build_dataset(docs, tok, backend, [8192], out, cfg, progress=False)
'''


def _lines(path: str) -> list[str]:
    return open(path).read().split() if os.path.exists(path) else []


def _outputs(out: str) -> dict[str, bytes]:
    return {os.path.relpath(p, out): open(p, "rb").read()
            for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)
            if os.path.isfile(p) and "runlog" not in p and os.sep + "cache" + os.sep not in p}


def _cached(out: str) -> set[str]:
    keys = set()
    for path in glob.glob(os.path.join(out, "cache", "calls-*.jsonl")):
        for line in open(path, "rb"):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("finish_reason") != "error":
                keys.add(e["key"])
    return keys


def throughput(work: str, tok: str, args) -> dict[str, dict[str, float]]:
    docs, _ = load_corpus("kjv")
    docs = sorted(docs, key=lambda d: len(d.text))[:args.docs]
    cfg = Config(small_tokens=args.small_tokens, samples_per_length=args.samples)
    out, rows = os.path.join(work, "throughput"), {}
    for phase in ("cold", "warm"):
        t0, c0 = time.perf_counter(), time.process_time()
        man = build_dataset(docs, tok, ExtractiveGenerator(), [args.length], out, cfg,
                            progress=False)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        run = json.load(open(os.path.join(out, "runlog-00000-of-00001.json")))
        qas = man["qa_pairs"]["hierarchical"] + man["qa_pairs"]["diverse"]
        # CPU seconds too: on a shared machine wall time is mostly other people's load.
        rows[phase] = {"seconds": dt, "cpu_seconds": cpu, "QA/s": qas / dt,
                       "QA/cpu_s": qas / cpu, "calls/s": man["calls"]["calls"] / dt,
                       "overhead QA/s": qas / max(1e-9, dt - run["backend_seconds"]),
                       "backend_calls": run["backend_calls"],
                       "conv_tokens/s": man["lengths"][str(args.length)]["tokens"]["total"] / dt}
    rows["per_document"] = {"calls": rows["cold"]["backend_calls"] / len(docs),
                            "QAs": qas / len(docs)}
    return rows


def kills(work: str, tok: str, mode: str, args, rng: random.Random) -> dict[str, object]:
    """Kills a worker at `args.kills` random moments, then lets it finish."""
    env = {**os.environ, "PYTHONPATH": REPO}

    def cmd(out, log):
        return [sys.executable, "-c", WORKER, tok, out, log, mode, str(args.kill_docs),
                str(args.small_tokens)]
    ref, ref_log = os.path.join(work, f"ref-{mode}"), os.path.join(work, f"ref-{mode}.log")
    subprocess.run(cmd(ref, ref_log), env=env, check=True, capture_output=True)
    total = len(_lines(ref_log))
    out, log = os.path.join(work, f"killed-{mode}"), os.path.join(work, f"killed-{mode}.log")
    lost = []
    for _ in range(args.kills):
        before_log, before_cache = len(_lines(log)), _cached(out)
        # A moment anywhere in what is left of the run, counted in finished calls.
        at = before_log + rng.randint(1, max(1, total - len(before_cache) - 1))
        p = subprocess.Popen(cmd(out, log), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        while p.poll() is None and len(_lines(log)) < at:
            time.sleep(0.002)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        # Calls finished before this kill; later runs show which had to be sent again.
        lost.append(set(_lines(log)[before_log:]))
    before_log, before_cache = len(_lines(log)), _cached(out)
    subprocess.run(cmd(out, log), env=env, check=True, capture_output=True)
    calls = _lines(log)
    # A finished call is lost if it was sent again after the kill that followed it.
    per_kill, seen_at = [], {}
    for i, k in enumerate(calls):
        seen_at.setdefault(k, []).append(i)
    starts, pos = [], 0
    for done in lost:
        starts.append(pos)
        pos += len(done)
    for j, done in enumerate(lost):
        after = starts[j] + len(done)
        per_kill.append(sum(1 for k in done if any(i >= after for i in seen_at[k])))
    resent_cached = len(set(calls[before_log:]) & before_cache)
    return {"calls_per_run": total, "kills": args.kills,
            "lost_per_kill_mean": statistics.mean(per_kill) if per_kill else 0.0,
            "lost_per_kill_max": max(per_kill, default=0),
            "cached_calls_resent": resent_cached,
            "byte_identical": _outputs(out) == _outputs(ref)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--small-tokens", type=int, default=1024)
    ap.add_argument("--kills", type=int, default=6, help="kill -9 moments per backend kind")
    ap.add_argument("--kill-docs", type=int, default=10, help="documents in the killed batch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="datagen_bench_")
    tok = train_sentencepiece(kjv_text()[:1_500_000], 1024, os.path.join(work, "kjv1k"))
    rows = throughput(work, tok, args)
    print(f"throughput: {args.docs} documents, target {args.length} tokens x {args.samples} "
          f"conversations, {rows['per_document']['QAs']:.0f} QAs and "
          f"{rows['per_document']['calls']:.1f} calls per document")
    for phase in ("cold", "warm"):
        print(f"  {phase:5s} " + "  ".join(f"{k}={v:,.1f}" for k, v in rows[phase].items()))
    ratio = rows["warm"]["QA/s"] / rows["cold"]["QA/s"]
    print(f"  overhead (cold minus the backend's seconds): "
          f"{rows['cold']['overhead QA/s']:,.0f} QA/s (goal >= 2,000); all-cached "
          f"{rows['warm']['QA/s']:,.0f} QA/s ({rows['warm']['QA/cpu_s']:,.0f} per CPU second); "
          f"warm/cold {ratio:.2f}x; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    if args.kills:
        rng = random.Random(args.seed)
        res = {mode: kills(work, tok, mode, args, rng) for mode in ("batch", "stream")}
        print(f"kill -9 at {args.kills} random moments, {args.kill_docs} documents in one "
              f"batch ({res['stream']['calls_per_run']} calls per run):")
        for mode, r in res.items():
            print(f"  {mode:6s} finished calls lost per kill: mean {r['lost_per_kill_mean']:.1f}"
                  f", max {r['lost_per_kill_max']}; cached calls re-sent: "
                  f"{r['cached_calls_resent']}; byte-identical to an uninterrupted run: "
                  f"{r['byte_identical']}")
        b, s = res["batch"]["lost_per_kill_mean"], res["stream"]["lost_per_kill_mean"]
        print(f"  lost per kill, batch-at-the-end / streaming: {b:.1f} / {s:.1f}")


if __name__ == "__main__":
    main()
