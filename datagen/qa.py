"""Per-document QA banks (He et al. Section 3.1, Algorithm 1, Appendices B and E).

A bank holds a document's hierarchical summaries (small -> medium -> global: each level
summarises the summaries below it, so every call fits a short-context generator), its
order-following hierarchical QAs from the Algorithm 1 walk (with a 20% chance of a multi-hop
QA over 2-4 small chunks after each, Appendix E; multi-hop counts inside the 25 hierarchical
per book of Section 4.1), and its diverse QAs (a random small chunk and a random prompt from
the Appendix B pool plus the specific-detail prompt): 25 + 50 = 75 QAs per book.

Summaries of all levels come before any QA call; a document whose global summary failed is
dropped before its QAs are asked. The walk's choices depend only on the seeded RNG, never on
generated text, so every QA call of a batch of documents goes out as one stream (what keeps
vLLM's batches full), and each finished call is cached the moment it completes.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
from typing import Any, Callable

from datagen import jsonfix, prompts
from datagen.backends.base import Request
from datagen.backends.base import stream as backend_stream
from datagen.chunking import Chunks
from datagen.config import Config

DIVERSE_KINDS = tuple(prompts.DIVERSE) + ("specific",)


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from any parts, identical across processes and Python versions."""
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:4],
                          "big") & 0x7FFFFFFF


@dataclasses.dataclass
class Job:
    kind: str           # summary/small, summary/medium, summary/global, or a QA kind
    prompt: str
    seed: int
    max_tokens: int
    word_limit: int = 0  # summaries only
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def request(self, attempt: int, cfg: Config) -> Request:
        """The call of attempt `attempt` (memoised, so its cache key is hashed once)."""
        memo = self.__dict__.setdefault("_requests", {})
        if attempt not in memo:
            memo[attempt] = Request(
                messages=(("user", self.prompt),), max_tokens=self.max_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p,
                seed=self.seed + 7919 * attempt,  # a new, fixed seed per retry
                json_schema=None if self.word_limit else prompts.QA_JSON_SCHEMA)
        return memo[attempt]


class Caller:
    """Runs jobs through a generator with parse/repair and bounded retries; counts outcomes.

    Attempt k of a job is always the same request (seed + 7919 k), and a generator with a
    call cache (`CachedGenerator`) replays a recorded error as that attempt's outcome, so a
    rerun walks the same retry path and reproduces the first run byte for byte. Only a job
    whose every attempt is a recorded error (it failed for good before) is tried afresh.
    """

    def __init__(self, gen: Any, cfg: Config, on_calls: Callable[[int], None] | None = None):
        self.gen, self.cfg, self.on_calls = gen, cfg, on_calls
        self.stats: collections.Counter[str] = collections.Counter()
        self.failure_reasons: collections.Counter[str] = collections.Counter()

    def _fresh(self, jobs: list[Job]) -> set[int]:
        """Jobs whose every attempt is a recorded error: they are sent again, not replayed."""
        if not getattr(self.gen, "recorded_errors", 0):
            return set()
        attempts = range(1, self.cfg.max_attempts)
        return {i for i, job in enumerate(jobs)
                if self.gen.recorded_error(job.request(0, self.cfg)) and
                all(self.gen.recorded_error(job.request(k, self.cfg)) for k in attempts)}

    def _stream(self, reqs: list[Request], replay: list[bool]):
        if hasattr(self.gen, "stream"):
            return self.gen.stream(reqs, replay_errors=replay)
        return backend_stream(self.gen, reqs)

    def run(self, jobs: list[Job]) -> list[Any]:
        """Parsed outputs in job order (None = failed for good). A QA output carries
        `attempt`, the attempt that produced it."""
        results: list[Any] = [None] * len(jobs)
        pending, last = list(range(len(jobs))), {}
        fresh = self._fresh(jobs)
        for attempt in range(self.cfg.max_attempts):
            if not pending:
                break
            reqs = [jobs[i].request(attempt, self.cfg) for i in pending]
            retry = []
            for pos, c in self._stream(reqs, [i not in fresh for i in pending]):
                if self.on_calls:
                    self.on_calls(1)  # progress moves with every finished call
                i = pending[pos]
                job = jobs[i]
                try:
                    if job.word_limit:
                        out, fixed = jsonfix.parse_summary(c.text, c.finish_reason,
                                                           job.word_limit)
                    else:
                        out, fixed = jsonfix.parse_qa(c.text, c.finish_reason)
                        out["attempt"] = attempt
                    results[i] = out
                    self.stats["repaired"] += fixed
                    self.stats["retried_ok"] += attempt > 0
                except Exception as e:  # noqa: BLE001 - any bad output fails this call only
                    last[i] = (f"error: {c.error}" if c.finish_reason == "error" else
                               str(e) if isinstance(e, jsonfix.BadOutput) else
                               f"unparseable ({type(e).__name__})")
                    retry.append(i)
            self.stats["calls"] += len(pending)
            pending = sorted(retry)
        for i in pending:
            self.stats[f"failed/{jobs[i].kind.split('/')[0]}"] += 1
            self.failure_reasons[last[i]] += 1
        return results


def plan_walk(chunks: Chunks, n: int, multihop_prob: float, rng: random.Random,
              hop_rng: random.Random | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Algorithm 1's SelectContext walk: `n` hierarchical QAs in conversation order, each
    ("general", (medium,)) | ("specific", (small,)) | ("multi_hop", smalls).

    Multi-hop QAs count inside the `n` (the paper's 25 hierarchical per book, Section 4.1:
    582,900 QAs = 7,772 books x (25 + 50)); after each walk step one follows with
    probability `multihop_prob` (Appendix E). Multi-hop draws come from their own `hop_rng`,
    so the walk steps (and their cached calls) with multi-hop are a prefix of those without:
    Appendix E's variants share every walk call they have in common.
    """
    hop_rng = hop_rng or rng
    n_med, n_small = len(chunks.medium), len(chunks.small)
    plan: list[tuple[str, tuple[int, ...]]] = []
    m, s = rng.randrange(n_med), None
    step = 0
    while len(plan) < n:
        if step == 0:
            plan.append(("general", (m,)))
        elif s is None:
            s = chunks.medium[m][0]
            plan.append(("specific", (s,)))
        else:
            choice = rng.randrange(3)  # equal 1/3: deeper, next small, next medium
            pos = chunks.medium[m].index(s)
            if choice == 0:
                plan.append(("specific", (s,)))
            elif choice == 1 and pos + 1 < len(chunks.medium[m]):
                s = chunks.medium[m][pos + 1]
                plan.append(("specific", (s,)))
            else:  # next medium (also when the current medium has no next small chunk)
                m, s = (m + 1) % n_med, None
                plan.append(("general", (m,)))
        step += 1
        if n_small >= 2 and hop_rng.random() < multihop_prob and len(plan) < n:
            k = hop_rng.randint(2, min(4, n_small))
            plan.append(("multi_hop", tuple(sorted(hop_rng.sample(range(n_small), k)))))
    return plan


def _summary_jobs(level: str, texts: list[str], limit: int, cfg: Config, key: str) -> list[Job]:
    return [Job(f"summary/{level}", prompts.summary_prompt(t, limit),
                stable_seed(cfg.seed, key, level, i), cfg.max_tokens_summary, limit)
            for i, t in enumerate(texts)]


def build_banks(docs: list[tuple[str, str, Chunks]], caller: Caller, cfg: Config
                ) -> list[dict[str, Any] | str]:
    """QA banks for a batch of documents; a string instead of a bank = why it was skipped.

    Args:
      docs: (doc_id, text, chunks) triples.
      caller: runs the generator calls.
      cfg: settings (counts, word limits, seeds).
    """
    def staged(make: Callable[[int], list[Job]]) -> list[list[Any]]:
        per_doc = [make(d) for d in range(len(docs))]
        flat = caller.run([j for jobs in per_doc for j in jobs])
        out, at = [], 0
        for jobs in per_doc:
            out.append(flat[at:at + len(jobs)])
            at += len(jobs)
        return out

    small = staged(lambda d: _summary_jobs("small", list(docs[d][2].small), cfg.words_small,
                                           cfg, docs[d][0]))

    def medium_inputs(d: int) -> list[str]:
        ch = docs[d][2]
        return [" ".join(small[d][i] for i in grp if small[d][i]) for grp in ch.medium]
    med_in = [medium_inputs(d) for d in range(len(docs))]
    # A medium chunk whose small summaries all failed gets no call (and no general QA).
    med_jobs = [[j for j, text in zip(_summary_jobs("medium", med_in[d], cfg.words_medium,
                                                     cfg, docs[d][0]), med_in[d]) if text]
                for d in range(len(docs))]
    med_out = staged(lambda d: med_jobs[d])
    medium = []
    for d in range(len(docs)):
        it = iter(med_out[d])
        medium.append([next(it) if text else None for text in med_in[d]])
    glob_in = [" ".join(m for m in medium[d] if m) for d in range(len(docs))]
    glob = staged(lambda d: _summary_jobs("global", [glob_in[d]], cfg.words_global, cfg,
                                          docs[d][0]) if glob_in[d] else [])
    # Summaries come first: a document without a global summary cannot open its block of
    # the conversation (Appendix C), so it is dropped before any of its QA calls are sent.
    has_global = [bool(glob[d] and glob[d][0]) for d in range(len(docs))]

    def qa_jobs(d: int) -> list[Job]:
        doc_id, _, ch = docs[d]
        rng = random.Random(stable_seed(cfg.seed, doc_id, "walk"))
        jobs = []
        hop_rng = random.Random(stable_seed(cfg.seed, doc_id, "multi_hop"))
        plan = plan_walk(ch, cfg.n_hierarchical, cfg.multihop_prob, rng, hop_rng)
        walk_step = hop_step = 0
        for kind, idx in plan:
            # Seeds count walk and multi-hop steps apart, so adding multi-hop QAs leaves
            # every walk request (and its cache entry) unchanged.
            if kind == "multi_hop":
                step, hop_step = f"m{hop_step}", hop_step + 1
            else:
                step, walk_step = walk_step, walk_step + 1
            if kind == "general":
                if not medium[d][idx[0]]:
                    caller.stats["skipped/general_without_medium_summary"] += 1
                    continue
                p = prompts.render(prompts.HIERARCHICAL_GENERAL, context=ch.medium_text(idx[0]),
                                   summary=medium[d][idx[0]])
            elif kind == "specific":
                p = prompts.render(prompts.SPECIFIC, context=ch.small[idx[0]])
            else:
                p = prompts.multi_hop_prompt([ch.small[i] for i in idx])
            jobs.append(Job(kind, p, stable_seed(cfg.seed, doc_id, "h", step), cfg.max_tokens_qa,
                            meta={"bank": "h", "kind": kind, "chunks": list(idx)}))
        drng = random.Random(stable_seed(cfg.seed, doc_id, "diverse"))
        for i in range(cfg.n_diverse):
            s, kind = drng.randrange(len(ch.small)), drng.choice(DIVERSE_KINDS)
            tmpl = prompts.SPECIFIC if kind == "specific" else prompts.DIVERSE[kind]
            jobs.append(Job(kind, prompts.render(tmpl, context=ch.small[s]),
                            stable_seed(cfg.seed, doc_id, "s", i), cfg.max_tokens_qa,
                            meta={"bank": "s", "kind": kind, "chunks": [s]}))
        return jobs

    all_jobs = [qa_jobs(d) if has_global[d] else [] for d in range(len(docs))]
    qas = staged(lambda d: all_jobs[d])
    banks: list[dict[str, Any] | str] = []
    for d, (doc_id, text, ch) in enumerate(docs):
        if not has_global[d]:
            banks.append("global summary failed (no QA calls sent)")
            continue
        hier, div = [], []
        for job, qa in zip(all_jobs[d], qas[d]):
            if qa is None:
                continue
            entry = {**qa, "kind": job.meta["kind"], "chunks": job.meta["chunks"]}
            (hier if job.meta["bank"] == "h" else div).append(entry)
        if not hier and not div:
            banks.append("no QA pair survived generation")
            continue
        banks.append({"doc_id": doc_id, "text": text, "global_summary": glob[d][0],
                      "medium_summaries": medium[d], "small_summaries": small[d],
                      "n_small": len(ch.small), "n_medium": len(ch.medium),
                      "hierarchical": hier, "diverse": div})
    return banks
