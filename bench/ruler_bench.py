"""RULER data preparation, end to end per sample: what a user waits for, three ways.

  python bench/ruler_bench.py [--tokenizer=PATH] [--lengths=131072] [--samples=3] [--cap_s=120]
  python bench/ruler_bench.py --preset=he2025 --lengths=1000000 [--workers=2]

Per task and length, the same samples are made with the same tokenizer by
  reference  RULER 2024's method: linear search re-tokenising the whole prompt at every step,
             then each sample tokenised whole (stopped after --cap_s s and extrapolated: its
             steps re-tokenise prompts that grow linearly, so step k costs ~k);
  before     our size search on cached piece counts, each sample tokenised whole (the code
             before chunked counts);
  ours       the same search, exact counts from cached token-safe chunks (evals.ruler.count);
and the seconds per sample (search included, shared over --samples) are printed with the
ratios. 'before' and 'ours' make identical samples (checked); the reference too, except where
its fresh random probe at every search step lands on another size (cwe's random words). --preset=he2025 times the whole data
preparation of He et al.'s preset at --lengths (13 tasks x 10 samples) as `python -m
evals.ruler` does it, in --workers processes. Without --tokenizer a KJV SentencePiece BPE
(--vocab pieces) is trained once into /tmp; qa tasks use SQuAD/HotpotQA-shaped files made from
KJV text (timing only).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evals.ruler import Options, Resources, build_task, constants  # noqa: E402
from evals.ruler.base import Rng  # noqa: E402
from evals.ruler.text import PieceCounter, load_tokenizer  # noqa: E402


class Capped(Exception):
    pass


class WholeCounter(PieceCounter):
    """Exact counts by tokenising the whole text (the 'before' and 'reference' columns);
    with `cap_s`, stops the run once that many seconds have passed."""

    def __init__(self, tok, cap_s: float | None = None):
        super().__init__(tok)
        self.deadline = None if cap_s is None else time.perf_counter() + cap_s

    def estimate(self, text: str) -> int:  # the piece sum, as before chunked counts
        pieces = self.pieces(text)
        missing = list(set(pieces).difference(self.cache))
        for p, ids in zip(missing, self.tok.encode_batch(missing) if missing else []):
            self.cache[p] = len(ids)
        return sum(map(self.cache.__getitem__, pieces))

    def exact(self, text: str) -> int:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise Capped
        self.exact_calls += 1
        return len(self.tok.encode(text))


def default_tokenizer(vocab: int) -> str:
    path = f"/tmp/lctx_bench_tok/kjv{vocab}.model"
    if not os.path.exists(path):
        from lctx.corpora import kjv_text
        from lctx.tokenizer import train_sentencepiece
        print(f"training a {vocab}-piece KJV SentencePiece tokenizer ...", flush=True)
        train_sentencepiece(kjv_text(), vocab, path[:-len(".model")])
    return path


def qa_resources(folder: str) -> Resources:
    """SQuAD v2 / HotpotQA-shaped files from KJV text (timing only: not the datasets)."""
    from lctx.corpora import kjv_text
    paras = [p for p in kjv_text().split("\n") if len(p) > 200][:4000]
    rng = random.Random(0)
    squad = {"data": [{"paragraphs": [{"context": p, "qas": [
        {"question": f"What is said in passage {i}?", "is_impossible": False,
         "answers": [{"text": p.split()[3]}]}]} for i, p in enumerate(paras[a:a + 40])]}
        for a in range(0, 1200, 40)]}
    hotpot = [{"question": f"Who is named in {i}?", "answer": "Moses",
               "context": [[f"T{i}-{j}", [rng.choice(paras)]] for j in range(10)]}
              for i in range(400)]
    paths = (os.path.join(folder, "squad.json"), os.path.join(folder, "hotpot.json"))
    for path, doc in zip(paths, (squad, hotpot)):
        with open(path, "w") as f:
            json.dump(doc, f)
    return Resources(squad=paths[0], hotpotqa=paths[1])


def timed(task, length, opts, res, counter, n, method="fast"):
    t0 = time.perf_counter()
    out = build_task(task, length, opts, res).samples(counter, n, method)
    return out, time.perf_counter() - t0


def bench_one(task: str, length: int, tok, opts, res, n: int, cap_s: float) -> dict:
    fam = build_task(task, length, opts, res)  # loads haystack, word lists, sentence index
    fam.render(fam.search.incremental, Rng.from_seed(0))
    ours, t_ours = timed(task, length, opts, res, PieceCounter(tok), n)
    before, t_before = timed(task, length, opts, res, WholeCounter(tok), n)
    ref_counter = WholeCounter(tok, cap_s)
    try:
        ref, t_ref = timed(task, length, opts, res, ref_counter, n, method="reference")
        capped = False
    except Capped:
        ref, t_ref, capped = None, cap_s, True
    # The reference draws a fresh random probe at every search step, ours a fixed one: for cwe
    # (random words) their sizes can differ; ours and before must agree exactly.
    same = before == ours
    if capped:  # quadratic extrapolation of the reference's search, plus its n whole counts
        steps = max(ours[0]["size"] // fam.search.incremental, 1)
        per_exact = t_before / max(n, 1)
        t_ref = t_ref * (steps / max(ref_counter.exact_calls, 1)) ** 2 + n * per_exact
    return {"task": task, "length": length, "ours": t_ours / n, "before": t_before / n,
            "ref": t_ref / n, "capped": capped, "same": same}


def preset_run(lengths, tok_path, res, workers: int, samples: int | None = None) -> float:
    """Seconds to make He et al.'s preset data at `lengths` as `python -m evals.ruler` does
    (`samples` per task instead of the preset's 10 when given)."""
    from evals.ruler.__main__ import PRESETS
    from evals.ruler.run import prepare_all
    p = dict(PRESETS["he2025"])
    p["samples"] = samples or p["samples"]
    opts = Options(chat_template=p["chat_template"], repeat_haystack=p["repeat_haystack"])
    tok = load_tokenizer(tok_path)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        failed = prepare_all(list(constants.TASKS), lengths, p["samples"], tok, tok_path, opts,
                             res, out, workers=workers, tokenizer_path=tok_path)
        secs = time.perf_counter() - t0
    if failed:
        print(f"not made: {failed}")
    return secs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--lengths", default="131072")
    p.add_argument("--tasks", default="all")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--cap_s", type=float, default=120.0)
    p.add_argument("--preset", default=None, choices=["he2025"])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--preset_samples", type=int, default=None,
                   help="samples per task in --preset mode (default: the preset's 10)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tok_path = args.tokenizer or default_tokenizer(args.vocab)
    lengths = [int(x) for x in args.lengths.split(",")]
    res = qa_resources(tempfile.mkdtemp(prefix="ruler_bench_qa_"))
    if args.preset:
        n = args.preset_samples or 10
        secs = preset_run(lengths, tok_path, res, args.workers, n)
        print(f"he2025 preset data (13 tasks x {n} samples) at {lengths}: {secs:.1f} s with "
              f"{args.workers} worker(s)")
        return 0
    tok = load_tokenizer(tok_path)
    opts = Options(chat_template="meta-llama3", repeat_haystack=True)
    print(f"seconds per sample (search shared over {args.samples} samples)")
    print(f"{'task':<17}{'length':>9}{'ours':>8}{'before':>8}{'ref':>10}{'vs before':>10}"
          f"{'vs ref':>9}  same", flush=True)
    rows = []
    for length in lengths:
        for task in constants.resolve_tasks(args.tasks):
            r = bench_one(task, length, tok, opts, res, args.samples, args.cap_s)
            rows.append(r)
            est = "~" if r["capped"] else ""
            print(f"{task:<17}{length:>9}{r['ours']:>8.2f}{r['before']:>8.2f}"
                  f"{est + format(r['ref'], '.1f'):>10}{r['before'] / r['ours']:>9.1f}x"
                  f"{est + format(r['ref'] / r['ours'], '.1f'):>8}x  {r['same']}", flush=True)
    for length in lengths:
        sel = [r for r in rows if r["length"] == length]
        o, b, rf = (sum(r[k] for r in sel) for k in ("ours", "before", "ref"))
        print(f"total per sample @{length}: ours {o:.2f} s, before {b:.2f} s ({b / o:.1f}x), "
              f"reference {'~' if any(r['capped'] for r in sel) else ''}{rf:.1f} s "
              f"({rf / o:.1f}x); identical samples: {all(r['same'] for r in sel)}")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
