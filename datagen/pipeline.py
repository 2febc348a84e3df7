"""End-to-end dataset building: corpus -> chunks -> QA banks -> conversations -> shards.

Resumable: every generator call goes through the on-disk cache, so a rerun after a crash
(even kill -9) re-issues no completed call and, because every random choice is seeded from
(config seed, document id, length, sample index), writes byte-identical output. Each worker
(`shard` of `num_shards`) owns the documents at positions shard, shard + n, ... and writes its
own files atomically; `merge` checks all shards and writes the combined manifest.
"""
from __future__ import annotations

import collections
import json
import os
import time
from typing import Any, Sequence

from lctx import records

from datagen import chunking, concat, presets, prompts, qa
from datagen.cache import CachedGenerator
from datagen.config import Config
from datagen.corpus import Document, Skip
from datagen.progress import Progress
from datagen.tokens import Counter, load

MANIFEST_SCHEMA = "datagen.manifest/v1"


def shard_name(kind: str, shard: int, num_shards: int, ext: str) -> str:
    return f"{kind}-{shard:05d}-of-{num_shards:05d}.{ext}"


# The paper's lengths and their stage directories (datagen.presets), so `--out=data/paper`
# is directly the `data_root` of configs/paper.py.
PAPER_LENGTHS = {s.alias: s.seq_len for s in presets.PAPER_STAGES}
STAGE_DIRS = {s.seq_len: s.name for s in presets.PAPER_STAGES}


parse_length = presets.parse_length


def length_dir(target: int, names: dict[int, str] | None = None) -> str:
    if names and target in names:
        return names[target]
    return STAGE_DIRS.get(target, f"len{target}")


def _tmp(path: str) -> str:
    """Hidden temp name next to `path` (same pattern as lctx.records' atomic writers)."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")


def _remove_stale_tmp(out_dir: str, shard: int, num_shards: int) -> None:
    """Deletes temp files a killed run of this shard left behind (never another shard's)."""
    tag = f"-{shard:05d}-of-{num_shards:05d}."
    for root, _, files in os.walk(out_dir):
        for f in files:
            if f.startswith(".") and ".tmp-" in f and tag in f:
                os.remove(os.path.join(root, f))


def _atomic_json(path: str, obj: Any) -> None:
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_jsonl(path: str, rows: Sequence[Any]) -> None:
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class InputError(ValueError):
    """Arguments that cannot work (shard, lengths, sample counts); the message names them."""


class OutputError(InputError):
    """An output directory that cannot be written; the message names it and the fix."""


def check_out_dir(out_dir: str) -> None:
    """Creates `out_dir` and proves it writable, or raises OutputError naming the problem
    (a file in the way, a read-only place), before any work is done."""
    path = os.path.abspath(out_dir)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        where = "is a file" if probe == path else f"is under a file ({probe})"
        raise OutputError(f"--out={out_dir} {where}; pass a directory path")
    try:
        os.makedirs(path, exist_ok=True)
        test = os.path.join(path, f".write-test-{os.getpid()}")
        with open(test, "w") as f:
            f.write("ok")
        os.remove(test)
    except OSError as e:
        raise OutputError(f"--out={out_dir} is not writable ({e.strerror}); pass a "
                          f"directory you can write to") from None


def build_dataset(corpus_docs: Sequence[Document | Skip], tokenizer_path: str, backend: Any,
                  lengths: Sequence[int], out_dir: str, config: Config | None = None,
                  shard: int = 0, num_shards: int = 1, progress: bool = True,
                  names: dict[int, str] | None = None,
                  samples: dict[int, int] | None = None) -> dict[str, Any]:
    """Builds (or resumes) this worker's shard of the dataset; returns its manifest.

    Args:
      corpus_docs: Documents (and Skips, recorded) from `datagen.corpus`, in corpus order.
      tokenizer_path: target model tokenizer (SentencePiece .model or tokenizer.json).
      backend: a `Generator` (extractive, vLLM, HTTP).
      lengths: target conversation lengths in tokens (e.g. 180000, 350000).
      out_dir: output directory (shared by all workers; cache lives in out_dir/cache).
      config: settings; defaults follow the paper.
      shard, num_shards: this worker's slice of the corpus.
      progress: show progress bars.
      names: subdirectory of out_dir per length ("." = out_dir itself); default
        `length_dir` (the configs/paper.py stage names for the paper's lengths).
      samples: conversations per length over all shards (default `config.samples_for`:
        samples_per_length, or the paper's 2000/1280/600/200 with recipe "paper").

    The manifest's `lengths[L]["asked"]` is this shard's share of the conversations asked
    for; `shortfalls(manifest)` says in one line per length why fewer were written.
    """
    cfg = config or Config()
    if not 0 <= shard < num_shards:
        raise InputError(f"--shard={shard} must be in [0, --num-shards={num_shards})")
    if not lengths or any(int(n) < 64 for n in lengths):
        raise InputError(f"--lengths={list(lengths)}: need one or more targets >= 64 tokens")
    # Every per-length setting is resolved before any call, so a bad one costs nothing.
    # A length's --names entry that is a paper stage gives recipe "paper" its counts there.
    stage_of = {int(t): (names or {}).get(int(t)) for t in lengths}
    plan = {int(t): (cfg.docs_for(int(t), stage_of[int(t)]),
                     samples[int(t)] if samples and int(t) in samples
                     else cfg.samples_for(int(t), stage_of[int(t)])) for t in lengths}
    for t, (_, n) in plan.items():
        if n < 0:
            raise InputError(f"--samples: {n} conversations at {t} tokens; must be >= 0")
    counter = Counter(load(tokenizer_path))
    check_out_dir(out_dir)
    _remove_stale_tmp(out_dir, shard, num_shards)
    gen = CachedGenerator(backend, os.path.join(out_dir, "cache"), worker=f"{shard:05d}")
    mine = [d for i, d in enumerate(corpus_docs) if i % num_shards == shard]
    skipped = {d.doc_id: d.reason for d in mine if isinstance(d, Skip)}
    docs = [d for d in mine if isinstance(d, Document)]
    prog = Progress(len(docs), "documents", enabled=progress)
    caller = qa.Caller(gen, cfg, on_calls=prog.add_calls)
    banks: list[dict[str, Any]] = []
    failed = 0
    t0 = time.perf_counter()
    for b0 in range(0, len(docs), cfg.batch_docs):
        batch = docs[b0:b0 + cfg.batch_docs]
        triples = [(d.doc_id, d.text, chunking.split(d.text, counter.tok, cfg.small_tokens,
                                                     cfg.small_per_medium)) for d in batch]
        for d, bank in zip(batch, qa.build_banks(triples, caller, cfg)):
            if isinstance(bank, str):
                skipped[d.doc_id] = bank
                failed += 1
            else:
                banks.append(bank)
                prog.add_qas(len(bank["hierarchical"]) + len(bank["diverse"]))
        prog.advance(len(batch))
    prog.close()
    _atomic_jsonl(os.path.join(out_dir, shard_name("banks", shard, num_shards, "jsonl")),
                  banks)
    per_length = {}
    for target, (k, n_samples) in plan.items():
        per_length[str(target)] = _write_length(banks, counter, cfg, target, out_dir, shard,
                                                num_shards, gen, progress, names, n_samples,
                                                k)
    manifest = {
        "schema": MANIFEST_SCHEMA, "shard": shard, "num_shards": num_shards,
        "prompt_version": prompts.PROMPT_VERSION, "generator": gen.describe(),
        "generator_model": gen.model, "config": cfg.to_dict(),
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_tokens_qa": cfg.max_tokens_qa, "max_attempts": cfg.max_attempts},
        "tokenizer": os.path.basename(tokenizer_path),
        "documents": {"in_shard": len(mine), "used": len(banks), "skipped": len(skipped),
                      "unreadable": len(mine) - len(docs), "failed_generation": failed},
        "skipped_docs": dict(sorted(skipped.items())),
        "calls": {k: v for k, v in sorted(caller.stats.items())},
        "failure_reasons": dict(sorted(caller.failure_reasons.items())),
        "qa_pairs": {"hierarchical": sum(len(b["hierarchical"]) for b in banks),
                     "diverse": sum(len(b["diverse"]) for b in banks)},
        "lengths": per_length,
    }
    _atomic_json(os.path.join(out_dir, shard_name("manifest", shard, num_shards, "json")),
                 manifest)
    # Timings vary run to run: kept out of the manifest so reruns are byte-identical.
    _atomic_json(os.path.join(out_dir, shard_name("runlog", shard, num_shards, "json")), {
        "seconds": time.perf_counter() - t0, "cache_hits": gen.hits,
        "backend_calls": gen.misses, "backend_seconds": gen.backend_seconds,
        "replayed_errors": gen.replayed_errors, "cache_repaired_bytes": gen.repaired_bytes})
    gen.close()
    return manifest


def _write_length(banks: list[dict[str, Any]], counter: Counter, cfg: Config, target: int,
                  out_dir: str, shard: int, num_shards: int, gen: CachedGenerator,
                  progress: bool, names: dict[int, str] | None, n_samples: int, k: int
                  ) -> dict[str, Any]:
    hard_max = int(target * cfg.hard_max_ratio)
    lo = target * (1 - cfg.length_tolerance)
    pool = [b for b in banks if counter.message("user", concat.doc_turn(b)) < target]
    mine = [g for g in range(n_samples) if g % num_shards == shard]
    recs, rejected, lens, mismatches = [], collections.Counter(), [], 0
    fill_pairs = qa_pairs = 0
    if not banks:
        why = "no usable document (every one was unreadable or failed generation)"
    elif not pool:
        shortest = min(counter.message("user", concat.doc_turn(b)) for b in banks)
        why = f"no document fits the target (the shortest is {shortest} tokens)"
    elif k and len(pool) < k:
        why = f"docs_per_sample={k} but only {len(pool)} usable documents fit the target"
    else:
        why = ""
    prog = Progress(len(mine), f"{target}-token conversations", enabled=progress)
    for g in mine:
        if why:
            rejected[why] += 1
            continue
        seed = qa.stable_seed(cfg.seed, "conv", target, g)
        conv = concat.build_conversation(pool, counter, target, cfg, seed, docs=k)
        n = conv.num_tokens
        if conv.reason or not conv.messages or n < lo:
            rejected[conv.reason or f"shorter than target*(1-{cfg.length_tolerance})"] += 1
            prog.advance(1, tokens=n)
            continue
        exact = counter.exact(conv.messages)  # verify: render the whole conversation once
        if exact != n:  # should never happen; the render is the truth if it does
            mismatches += 1
        if not lo <= exact <= hard_max:
            rejected["render outside [target*(1-tol), hard max]"] += 1
            prog.advance(1, tokens=n)
            continue
        pairs = sum(kind != "summary" for kind, _ in conv.labels)
        fill_pairs, qa_pairs = fill_pairs + conv.fill_pairs, qa_pairs + pairs
        lens.append(exact)
        recs.append(records.make_record(f"len{target}/{g:06d}", conv.messages, {
            "length_target": target, "num_tokens": exact, "docs": conv.doc_ids,
            "turns": conv.labels, "seed": seed, "prompt_version": prompts.PROMPT_VERSION,
            "generator": gen.model, "composition": cfg.composition,
            "counts": cfg.counts, "global_summary": cfg.global_summary,
            "qa_pairs": pairs, "fill_pairs": conv.fill_pairs,
            "fill_tokens": conv.fill_tokens}))
        prog.advance(1, tokens=n)
    prog.close()
    rel = os.path.join(length_dir(target, names), shard_name("conversations", shard,
                                                              num_shards, ""))
    base = os.path.join(out_dir, rel)
    records.write_array_record(base + "arrayrecord", recs)
    if cfg.write_jsonl:
        records.write_jsonl(base + "jsonl", recs)
    return {"asked": len(mine), "conversations": len(recs),
            "docs_per_sample": k, "rejected": dict(sorted(rejected.items())),
            "render_count_mismatches": mismatches,
            "hard_max": hard_max, "docs_in_pool": len(pool),
            "qa_pairs": qa_pairs, "fill_pairs": fill_pairs,
            "tokens": {"total": sum(lens), "min": min(lens, default=0),
                       "max": max(lens, default=0)},
            "file": os.path.normpath(rel + "arrayrecord")}


def shortfalls(manifest: dict[str, Any]) -> list[str]:
    """One line per length where fewer conversations were written than asked: how many and
    the main reason (the most frequent rejection)."""
    out = []
    for length, info in sorted(manifest["lengths"].items(), key=lambda kv: int(kv[0])):
        asked, got = info.get("asked", info["conversations"]), info["conversations"]
        if got >= asked:
            continue
        reasons = sorted(info["rejected"].items(), key=lambda kv: (-kv[1], kv[0]))
        why = reasons[0][0] if reasons else "unknown"
        if "no usable document" in why and manifest.get("failure_reasons"):
            top = max(manifest["failure_reasons"].items(), key=lambda kv: (kv[1], kv[0]))[0]
            why += f"; most frequent call failure: {top[:160]}"
        out.append(f"{length} tokens: {got} of {asked} conversations written: {why}")
    return out


class MergeError(ValueError):
    """Shards that cannot be merged; the message names the file or shard and the fix."""


def merge(out_dir: str) -> dict[str, Any]:
    """Verifies every worker's shards (present, readable, counts and lengths as recorded) and
    writes the combined `manifest.json`. Raises MergeError naming the first missing or bad
    file. `shortfalls(merged)` lists lengths with fewer conversations than asked."""
    if not os.path.isdir(out_dir):
        raise MergeError(f"--out={out_dir} is not a directory; pass the --out the workers "
                         f"wrote to")
    names = sorted(f for f in os.listdir(out_dir)
                   if f.startswith("manifest-") and f.endswith(".json"))
    if not names:
        raise MergeError(f"{out_dir}: no manifest-*.json; run the workers first")
    shards = []
    for f in names:
        try:
            with open(os.path.join(out_dir, f)) as fh:
                shards.append(json.load(fh))
        except (OSError, ValueError) as e:
            raise MergeError(f"{os.path.join(out_dir, f)} is unreadable ({e}); rerun that "
                             f"worker") from None
    n = shards[0]["num_shards"]
    have = sorted(s["shard"] for s in shards if s["num_shards"] == n)
    if have != list(range(n)):
        raise MergeError(f"{out_dir}: shards {sorted(set(range(n)) - set(have))} of {n} "
                         f"missing (rerun those workers)")
    lengths: dict[str, dict[str, Any]] = {}
    calls: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    skipped: dict[str, str] = {}
    for s in shards:
        skipped.update(s["skipped_docs"])
        calls.update(s["calls"])
        failures.update(s.get("failure_reasons", {}))
        for length, info in s["lengths"].items():
            path = os.path.join(out_dir, info["file"])
            try:
                got = list(records.read_array_record(path))
            except Exception as e:  # noqa: BLE001 - any unreadable shard is named
                raise MergeError(f"{path} is unreadable ({type(e).__name__}: {e}); rerun "
                                 f"shard {s['shard']}") from None
            if len(got) != info["conversations"]:
                raise MergeError(f"{path}: {len(got)} records, manifest says "
                                 f"{info['conversations']}; rerun shard {s['shard']}")
            for r in got:
                if r["meta"]["num_tokens"] > info["hard_max"]:
                    raise MergeError(f"{path}: {r['id']} exceeds the hard max")
            tot = lengths.setdefault(length, {"asked": 0, "conversations": 0, "rejected": {}})
            tot["asked"] += info.get("asked", info["conversations"])
            tot["conversations"] += len(got)
            for why, k in info["rejected"].items():
                tot["rejected"][why] = tot["rejected"].get(why, 0) + k
    merged = {"schema": MANIFEST_SCHEMA, "num_shards": n,
              "conversations": {k: v["conversations"] for k, v in lengths.items()},
              "lengths": lengths, "calls": dict(sorted(calls.items())),
              "failure_reasons": dict(sorted(failures.items())),
              "skipped_docs": dict(sorted(skipped.items())), "shards": names,
              "prompt_version": shards[0]["prompt_version"],
              "generator_model": shards[0]["generator_model"], "config": shards[0]["config"]}
    _atomic_json(os.path.join(out_dir, "manifest.json"), merged)
    return merged
