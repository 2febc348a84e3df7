"""RULER data preparation: our token-count search vs the reference's linear re-tokenising loop.

  python bench/ruler_bench.py [--tokenizer=PATH] [--lengths=131072,1048576] [--cap_s=60]

For each task and length, prepares one sample twice with the same tokenizer: 'ours' (sizes
searched on cached piece counts, a few exact tokenisations) and 'reference' (a faithful
re-creation of RULER 2024's loop: grow by the increment, re-tokenise the whole prompt each
step). The reference run is stopped after --cap_s seconds and reported as a lower bound.
Without --tokenizer a KJV SentencePiece BPE (--vocab pieces) is trained once into /tmp.
At 1M only tasks whose haystack reaches 1M under the 2024 rules run (the essay tasks are
capped at the corpus and cwe at its word list; qa needs the user's files).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evals.ruler import Options, Resources, build_task  # noqa: E402
from evals.ruler.base import Rng  # noqa: E402
from evals.ruler.text import PieceCounter, load_tokenizer  # noqa: E402

TASKS_128K = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
              "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt",
              "cwe", "fwe"]
TASKS_1M = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "fwe"]


class Capped(Exception):
    pass


class CappedCounter(PieceCounter):
    """Exact counts that stop the run once `cap_s` seconds have passed."""

    def __init__(self, tok, cap_s: float):
        super().__init__(tok)
        self.deadline = time.perf_counter() + cap_s

    def exact(self, text: str) -> int:
        if time.perf_counter() > self.deadline:
            raise Capped
        return super().exact(text)


def default_tokenizer(vocab: int) -> str:
    path = f"/tmp/lctx_bench_tok/kjv{vocab}.model"
    if not os.path.exists(path):
        from lctx.corpora import kjv_text
        from lctx.tokenizer import train_sentencepiece
        print(f"training a {vocab}-piece KJV SentencePiece tokenizer ...", flush=True)
        train_sentencepiece(kjv_text(), vocab, path[:-len(".model")])
    return path


def bench_one(task: str, length: int, tok, cap_s: float) -> dict:
    fam = build_task(task, length, Options(), Resources())  # loads haystack and word lists
    fam.render(fam.search.incremental, Rng.from_seed(0))  # builds the needle word index
    counter = PieceCounter(tok)
    t0 = time.perf_counter()
    ours = fam.samples(counter, 1)
    t_ours = time.perf_counter() - t0
    fam = build_task(task, length, Options(), Resources())
    ref_counter = CappedCounter(tok, cap_s)
    t0 = time.perf_counter()
    try:
        ref = fam.samples(ref_counter, 1, method="reference")
        capped, ref_len = False, ref[0]["length"]
    except Capped:
        capped, ref_len = True, None
    t_ref = time.perf_counter() - t0
    # A capped reference run is extrapolated: its steps re-tokenise prompts growing linearly,
    # so the time to reach step k grows as k^2 (k = the steps the full run needs).
    steps_needed = max(ours[0]["size"] // fam.search.incremental, 1)
    full = t_ref * (steps_needed / max(ref_counter.exact_calls, 1)) ** 2 if capped else t_ref
    return {"task": task, "length": length, "ours_s": t_ours, "ref_s": t_ref, "capped": capped,
            "ref_full_est_s": full,
            "ours_len": ours[0]["length"], "ref_len": ref_len,
            "ours_exact": counter.exact_calls, "ref_exact": ref_counter.exact_calls}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--lengths", default="131072,1048576")
    p.add_argument("--tasks", default=None, help="comma list (default: all that reach L)")
    p.add_argument("--cap_s", type=float, default=60.0)
    args = p.parse_args(argv)
    tok = load_tokenizer(args.tokenizer or default_tokenizer(args.vocab))
    rows = []
    print(f"{'task':<17}{'length':>9}{'ours s':>9}{'ref s':>10}{'ratio':>9}"
          f"{'ref est s':>11}{'est ratio':>10}{'exact ours/ref':>16}{'len ours/ref':>16}",
          flush=True)
    for length in [int(x) for x in args.lengths.split(",")]:
        tasks = args.tasks.split(",") if args.tasks else (
            TASKS_1M if length > 200_000 else TASKS_128K)
        for task in tasks:
            r = bench_one(task, length, tok, args.cap_s)
            rows.append(r)
            ratio = r["ref_s"] / max(r["ours_s"], 1e-9)
            ref_s = f"{'>=' if r['capped'] else ''}{r['ref_s']:.1f}"
            print(f"{task:<17}{length:>9}{r['ours_s']:>9.2f}{ref_s:>10}"
                  f"{('>=' if r['capped'] else '') + f'{ratio:.1f}x':>9}"
                  f"{r['ref_full_est_s']:>11.1f}"
                  f"{r['ref_full_est_s'] / max(r['ours_s'], 1e-9):>9.1f}x"
                  f"{str(r['ours_exact']) + '/' + str(r['ref_exact']):>16}"
                  f"{str(r['ours_len']) + '/' + str(r['ref_len']):>16}", flush=True)
    for length in sorted({r["length"] for r in rows}):
        sel = [r for r in rows if r["length"] == length]
        tot_o, tot_r = sum(r["ours_s"] for r in sel), sum(r["ref_s"] for r in sel)
        capped = any(r["capped"] for r in sel)
        tot_e = sum(r["ref_full_est_s"] for r in sel)
        print(f"total @{length}: ours {tot_o:.1f} s, reference {'>=' if capped else ''}"
              f"{tot_r:.1f} s, ratio {'>=' if capped else ''}{tot_r / max(tot_o, 1e-9):.1f}x; "
              f"reference extrapolated to completion {tot_e:.0f} s, "
              f"ratio {tot_e / max(tot_o, 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
