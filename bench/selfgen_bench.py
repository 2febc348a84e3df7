r"""Li et al. samples at 1M and 4M tokens: time and memory of building one token-exact sample.

    python3 bench/selfgen_bench.py                      # 1M and 4M tokens (~3 min)
    python3 bench/selfgen_bench.py --sizes=10m          # the largest release bucket
    python3 bench/selfgen_bench.py --tokenizer=sp       # SentencePiece instead
    python3 bench/selfgen_bench.py --sizes=64k          # smoke size (tests/ runs this)

Each size builds ONE single-doc-QA sample of exactly that many tokens (offline WordNet
backend; by default a byte-level BPE with Llama-3's pre-tokenizer trained on the KJV, 4K
pieces, with the Llama-3 chat tokens; `--tokenizer=sp` a KJV SentencePiece) in a fresh
process, and
reports wall time, peak RSS and the RSS before the build (imports + corpus index), so
"peak - before" is what the sample cost. The passage corpus is read from disk on demand:
the build holds one sample's text, never the corpus.

Baseline, measured side by side in the same run: counting the same sample the obvious way,
by tokenizing its whole text at once (also a fresh process). The ratios say what the
windowed per-passage count (datagen/selfgen/assemble.py) saves; both count the same number.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# Llama-3's pre-tokenizer split (the tiktoken cl100k pattern of Meta's tokenizer.json).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_style_tokenizer(text: str, out_dir: str, vocab_size: int = 4096) -> str:
    """A byte-level BPE with Llama-3's pre-tokenizer and chat tokens, trained on paragraphs
    (so it has Llama-3-like merges such as ".\\n\\n")."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from lctx.tokenizer import LLAMA3_SPECIALS
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    lines = [x for x in text.splitlines() if x.strip()]
    tok.train_from_iterator(
        ["\n\n".join(lines[i:i + 4]) for i in range(0, len(lines), 4)],
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(LLAMA3_SPECIALS),
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                            show_progress=False))
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return os.path.join(out_dir, "tokenizer.json")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_build(out: str, tok: str, size: int, nouns: int) -> dict:
    from datagen.selfgen import build, config, offline, passages
    cfg = config.SelfGenConfig(num_nouns=nouns, batch_nouns=2048)
    spec = config.Spec(f"bench{size}", size, size + 1, 1, ("single_qa",))
    passages.Corpus(out).close()  # the corpus exists (built by the parent)
    before = _rss_mb()
    t0 = time.perf_counter()
    man = build.build(out, tok, offline.OfflineGenerator(), spec, cfg, progress=False)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "rss_before_mb": before, "peak_mb": _peak_mb(),
            "tokens": man["lengths"]["single_qa"]["max"], "file": man["files"][0]}


def child_count(path: str, tok: str) -> dict:
    from lctx import records
    from lctx.tokenizer import load_tokenizer
    t = load_tokenizer(tok)
    rec = next(records.read_array_record(path))
    text = rec["messages"][0]["content"]
    del rec
    before = _rss_mb()
    t0 = time.perf_counter()
    n = len(t.encode(text))
    return {"seconds": time.perf_counter() - t0, "rss_before_mb": before,
            "peak_mb": _peak_mb(), "content_tokens": n, "chars": len(text)}


def _child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, __file__, "--child", *args], env=env,
                       capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,4m", help="sample lengths (tokens; k/m = 1024)")
    ap.add_argument("--out", default="", help="work directory (default: a temp dir)")
    ap.add_argument("--tokenizer", default="llama3", choices=["llama3", "sp"],
                    help="llama3: byte-level BPE, Llama-3 pre-tokenizer; sp: SentencePiece")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        res = (child_build(rest[0], rest[1], int(rest[2]), int(rest[3])) if kind == "build"
               else child_count(rest[0], rest[1]))
        print(json.dumps(res))
        return
    from datagen.selfgen import config, offline, passages
    from lctx.corpora import kjv_text
    from lctx.tokenizer import train_sentencepiece
    sizes = [config.parse_tokens(s) for s in args.sizes.split(",")]
    work = args.out or tempfile.mkdtemp(prefix="selfgen_bench_")
    tok = os.path.join(work, "tok", "kjv1k.model" if args.tokenizer == "sp" else
                       "tokenizer.json")
    if not os.path.exists(tok):
        if args.tokenizer == "sp":
            train_sentencepiece(kjv_text()[:1_500_000], 1024, tok[:-len(".model")])
        else:
            llama3_style_tokenizer(kjv_text()[:2_000_000], os.path.dirname(tok))
    # Offline passages average ~110 words, 120-150 tokens with these tokenizers: nouns
    # enough for the largest sample, + 30%.
    nouns = min(119_034, max(500, int(max(sizes) / 120 * 1.3)))
    cfg = config.SelfGenConfig(num_nouns=nouns, batch_nouns=2048)
    corpus = os.path.join(work, f"nouns{nouns}")  # one corpus per noun count
    t0 = time.perf_counter()
    man = passages.build_passages(corpus, offline.OfflineGenerator(), cfg, progress=False)
    print(f"corpus: {man['passages']} passages ({man['words']:,} words) in "
          f"{time.perf_counter() - t0:.1f} s (offline backend; cached on rerun)")
    print(f"{'tokens':>10} {'build s':>8} {'tok/s':>9} {'sample MB':>9} "
          f"{'build MB':>9} {'whole s':>8} {'whole MB':>9} {'time x':>7} {'mem x':>6}")
    for size in sizes:
        b = _child("build", corpus, tok, str(size), str(nouns))
        path = os.path.join(corpus, f"bench{size}", b["file"])
        w = _child("count", path, tok)
        build_mb = b["peak_mb"] - b["rss_before_mb"]
        whole_mb = w["peak_mb"] - w["rss_before_mb"]
        assert b["tokens"] == size, b
        print(f"{size:>10,} {b['seconds']:>8.1f} {size / b['seconds']:>9,.0f} "
              f"{w['chars'] / 2**20:>9.1f} {build_mb:>9.0f} {w['seconds']:>8.1f} "
              f"{whole_mb:>9.0f} {b['seconds'] / w['seconds']:>7.2f} "
              f"{build_mb / max(whole_mb, 1):>6.2f}")
    print("build = one exact sample end to end (draws, per-passage counts, boundary checks, "
          "filler fit, records written); whole = tokenizing the finished sample's text at "
          "once (count only). x = build / whole. MB = peak RSS above the process's RSS "
          "before the step.")


if __name__ == "__main__":
    main()
