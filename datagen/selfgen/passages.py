"""The passage corpus P of Li et al. Section 2.1: one generated passage per WordNet noun.

"We prompt the base LLM to generate a passage about each noun. The noun serves as a random
seed ... and we also vary the prompt to cover diverse genres." Each noun gets a genre from
`prompts.GENRES`, drawn from a hash of (seed, noun), and one passage call. The corpus is
generated once per generator and reused by every task (the relevant passages and all the
distractors). Worker `shard` of `num_shards` owns nouns shard, shard + n, ...; its calls go
through the crash-safe cache (`<out>/passages/cache`), so kill -9 and rerun re-sends no
finished call and writes the same bytes.

Files under `<out>/passages/`: `passages-SSSSS-of-NNNNN.arrayrecord` (JSON passages, random
access) and `manifest-SSSSS-of-NNNNN.json` (generator, nouns and their hash, failures). A
finished shard is not rebuilt; a corpus made by another generator or settings is an error,
so passages from two models never mix.
"""
from __future__ import annotations

import glob
import json
import os
import random
from typing import Any

from datagen.cache import CachedGenerator
from datagen.pipeline import _atomic_json, shard_name
from datagen.progress import Progress
from datagen.qa import stable_seed
from datagen.selfgen import calls, prompts, store, wordnet
from datagen.selfgen.config import SelfGenConfig

PASSAGE_SCHEMA = "selfgen.passage/v1"
MANIFEST_SCHEMA = "selfgen.passages_manifest/v1"


class CorpusError(ValueError):
    """The passage corpus is missing, incomplete or from another generator."""


def select_nouns(cfg: SelfGenConfig) -> list[str]:
    """All WordNet nouns, or a seeded subset of `cfg.num_nouns` (kept in sorted order)."""
    nouns = wordnet.load_nouns(cfg.nouns_path)
    if cfg.num_nouns and cfg.num_nouns < len(nouns):
        rng = random.Random(stable_seed(cfg.seed, "nouns"))
        return [nouns[i] for i in sorted(rng.sample(range(len(nouns)), cfg.num_nouns))]
    return list(nouns)


def genre_of(noun: str, cfg: SelfGenConfig, salt: str = "genre") -> str:
    return cfg.genres[stable_seed(cfg.seed, salt, noun) % len(cfg.genres)]


def passage_call(noun: str, cfg: SelfGenConfig) -> calls.Call:
    return calls.Call(
        "passage", prompts.render(prompts.PASSAGE, words=cfg.passage_words,
                                  genre=genre_of(noun, cfg), noun=wordnet.display(noun)),
        stable_seed(cfg.seed, "passage", noun), cfg.max_tokens_passage,
        calls.prose(2 * cfg.passage_words, cfg.min_passage_words))


def fingerprint(cfg: SelfGenConfig, model: str, nouns_sha: str) -> dict[str, Any]:
    """What makes two corpora the same: generator, prompts, nouns and passage settings."""
    return {"generator_model": model, "prompt_version": prompts.PROMPT_VERSION,
            "nouns_sha256": nouns_sha, "seed": cfg.seed, "genres": list(cfg.genres),
            "passage_words": cfg.passage_words, "min_passage_words": cfg.min_passage_words,
            "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_tokens_passage": cfg.max_tokens_passage, "max_attempts": cfg.max_attempts}


def _check_same(path: str, fp: dict[str, Any]) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        got = json.load(f)
    if got.get("fingerprint") != fp:
        diff = sorted(k for k in fp if got.get("fingerprint", {}).get(k) != fp[k])
        raise CorpusError(f"{os.path.dirname(path)} holds passages made with other "
                          f"settings ({', '.join(diff)} differ, e.g. generator "
                          f"{got.get('fingerprint', {}).get('generator_model')!r}); use a new "
                          f"--out for a new generator, or delete that directory")
    return got


def build_passages(out_dir: str, backend: Any, cfg: SelfGenConfig, shard: int = 0,
                   num_shards: int = 1, progress: bool = True) -> dict[str, Any]:
    """Generates (or resumes, or finds finished) this worker's share of the corpus."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard={shard} must be in [0, --num-shards={num_shards})")
    pdir = os.path.join(out_dir, "passages")
    nouns = select_nouns(cfg)
    fp = fingerprint(cfg, backend.model, wordnet.nouns_sha256(nouns))
    man_path = os.path.join(pdir, shard_name("manifest", shard, num_shards, "json"))
    done = _check_same(man_path, fp)
    if done is not None:
        return done
    for other in glob.glob(os.path.join(pdir, "manifest-*.json")):
        _check_same(other, fp)
    os.makedirs(pdir, exist_ok=True)
    store.remove_stale_tmp(pdir, f"-{shard:05d}-of-{num_shards:05d}.")
    mine = nouns[shard::num_shards]
    gen = CachedGenerator(backend, os.path.join(pdir, "cache"), worker=f"{shard:05d}")
    prog = Progress(len(mine), "passages", enabled=progress)
    runner = calls.Runner(gen, cfg.temperature, cfg.top_p, cfg.max_attempts, prog.add_calls)
    path = os.path.join(pdir, shard_name("passages", shard, num_shards, "arrayrecord"))
    writer = store.Writer(path)
    kept, failed, words = [], {}, 0
    try:
        for b0 in range(0, len(mine), cfg.batch_nouns):
            batch = mine[b0:b0 + cfg.batch_nouns]
            for noun, out in zip(batch, runner.calls([passage_call(n, cfg) for n in batch])):
                if not out.ok:
                    failed[noun] = out.errors[-1][:200]
                    continue
                writer.write({"schema": PASSAGE_SCHEMA, "noun": noun,
                              "genre": genre_of(noun, cfg), "text": out.value,
                              "attempts": out.attempts})
                kept.append(noun)
                words += len(out.value.split())
            prog.advance(len(batch))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        gen.close()
        prog.close()
    manifest = {
        "schema": MANIFEST_SCHEMA, "shard": shard, "num_shards": num_shards,
        "fingerprint": fp, "generator": backend.describe(), "nouns_total": len(nouns),
        "nouns_in_shard": len(mine), "passages": len(kept), "words": words,
        "failed": dict(sorted(failed.items())), "calls": dict(sorted(runner.stats.items())),
        "file": os.path.basename(path), "nouns": kept}
    _atomic_json(man_path, manifest)
    return manifest


class Corpus:
    """Random access to a finished corpus: `noun(i)`, `get([i, ...])` -> passage dicts.

    Only the noun list is held in memory; passage texts are read from disk on demand, so a
    10M-token sample never needs more than its own passages in memory.
    """

    def __init__(self, out_dir: str):
        pdir = os.path.join(out_dir, "passages")
        mans = sorted(glob.glob(os.path.join(pdir, "manifest-*.json")))
        if not mans:
            raise CorpusError(f"no passage corpus in {pdir}: run `python -m datagen.selfgen "
                              f"passages --out={out_dir} ...` first (build does it itself "
                              f"with one shard)")
        self.manifests = [json.load(open(m, encoding="utf-8")) for m in mans]
        n = self.manifests[0]["num_shards"]
        have = sorted(m["shard"] for m in self.manifests if m["num_shards"] == n)
        if have != list(range(n)) or len(self.manifests) != n:
            raise CorpusError(f"{pdir}: passage shards {sorted(set(range(n)) - set(have))} "
                              f"of {n} are missing (or shard counts differ); finish them "
                              f"first")
        fps = {json.dumps(m["fingerprint"], sort_keys=True) for m in self.manifests}
        if len(fps) != 1:
            raise CorpusError(f"{pdir}: shards were made with different settings")
        self.fingerprint = self.manifests[0]["fingerprint"]
        self.generator_model = self.fingerprint["generator_model"]
        # Canonical order (the nouns' sorted order), whatever the number of shards: sample
        # draws index it, so datasets do not depend on how the corpus was sharded.
        on_disk = [x for m in self.manifests for x in m["nouns"]]
        order = sorted(range(len(on_disk)), key=on_disk.__getitem__)
        self.nouns = [on_disk[i] for i in order]
        self._row = order  # canonical index -> record index over the shard files
        if not self.nouns:
            why = next(iter(self.manifests[0]["failed"].values()), "?")
            raise CorpusError(f"{pdir}: the corpus holds no passage (every call failed, "
                              f"e.g. {why})")
        self._reader = store.Reader([os.path.join(pdir, m["file"]) for m in self.manifests])
        if len(self._reader) != len(self.nouns):
            raise CorpusError(f"{pdir}: {len(self._reader)} passages on disk but the "
                              f"manifests list {len(self.nouns)}")

    def __len__(self) -> int:
        return len(self.nouns)

    def get(self, indices) -> list[dict[str, Any]]:
        return self._reader.get([self._row[i] for i in indices])

    def close(self) -> None:
        self._reader.close()
