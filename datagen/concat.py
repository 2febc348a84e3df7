"""Multi-document conversations (He et al. Section 3.2, Algorithm 2, Appendix C format).

For documents D_1..D_K in order, after each D_i (read per Section 3.2 and Figure 3):
  1. the document turn: user = document text + "Please give me a summary of the book",
     assistant = its global summary (dropped for Table 7's "no-sum": the text then
     prefixes the first question of the block);
  2. N1 next hierarchical QAs of D_i (in walk order) and N1 diverse QAs of D_i;
  3. (i > 1) N2 diverse QAs sampled from the still-unused diverse QAs of D_1..D_{i-1};
  4. (i > 1) for each earlier D_j, with probability p = 0.6, its next N3 hierarchical QAs.
Table 7 compositions "x-y-z" pick which of h/s go after the first document (x), after later
documents (y) and into the revisits (z; absent = no revisits). A diverse QA is never used
twice in a conversation; hierarchical QAs keep their walk order.

Fill (Algorithm 2's last step, "process remaining questions"): when the recipe's turns end
short of the target, unused QAs are appended at the end, only of the kinds the recipe has
(an h-only recipe gets no diverse turn), mixed in the proportion of h to s among the
recipe's own turns, each document's hierarchical QAs in walk order. Fill goes on while QAs
fit under the target (the training length: shorter rows are padding), stops when the
wanted kind runs out, and never makes more than `max_fill` of the conversation's QA pairs:
a conversation that would need more to reach the window is rejected, not padded.

Choosing documents is what reaches the length, so fill stays small (our choice; the paper
does not say how it hit its lengths). With `docs_per_sample` K (the paper: 2/4/8/12 at
180K/350K/650K/1M) exactly K documents are drawn so that their texts plus recipe turns land
just under the target: the first K-1 at random among those that leave a reachable
remainder, the last among the documents whose estimated size fits the remainder (random
within the span that fill can close). Documents are never truncated: a cut document's global
summary and QAs would describe text the conversation no longer holds. Without K, shuffled
documents are added while they fit ("as many as fit", then fill). Lengths are exact: sums
of per-message token counts (each piece tokenised once).
"""
from __future__ import annotations

import bisect
import dataclasses
import random
from typing import Any

from datagen import prompts
from datagen.config import Config
from datagen.tokens import Counter

_H, _S = ("h", "revisit_h", "fill_h"), ("s", "revisit_s", "fill_s")


def doc_turn(bank: dict[str, Any]) -> str:
    """The user turn that presents a document (Appendix C): text + the summary request.

    Memoised on the bank: the same string object every time, so its hash (the token-count
    memo key) is computed once, not once per candidate conversation.
    """
    turn = bank.get("_doc_turn")
    if turn is None:
        turn = bank["_doc_turn"] = bank["text"] + "\n\n" + prompts.GLOBAL_SUMMARY_REQUEST
    return turn


def _diverse_order(bank: dict[str, Any], seed: int) -> list[int]:
    """A document's diverse QAs in the order a conversation draws them (its own seeded
    shuffle, memoised on the bank: the length search assembles the same document often)."""
    memo = bank.get("_s_order")
    if memo is None or memo[0] != seed:
        order = list(range(len(bank["diverse"])))
        random.Random(f"{seed}/{bank['doc_id']}").shuffle(order)
        memo = bank["_s_order"] = (seed, order)
    return list(memo[1])


def _count(cfg: Config, fixed: int, rng: random.Random) -> int:
    return fixed if cfg.counts == "fixed" else rng.randint(cfg.rand_min, cfg.rand_max)


def assemble(banks: list[dict[str, Any]], cfg: Config, seed: int
             ) -> tuple[list[dict[str, str]], list[list[Any]], dict[str, Any]]:
    """Algorithm 2 over `banks` in order: (messages, turn labels, leftover state).

    Turn labels are [kind, doc position] for each user/assistant pair, kind one of summary,
    h, s, revisit_h, revisit_s. Deterministic in (banks, cfg, seed); a prefix of documents
    always yields a prefix of turns (what lets the length search re-assemble cheaply).
    """
    rng = random.Random(seed)
    parts = cfg.composition.split("-")
    if cfg.shuffle_hierarchical:  # Appendix E "without order": same QAs, walk order dropped
        banks = [dict(b, hierarchical=rng.sample(b["hierarchical"], len(b["hierarchical"])))
                 for b in banks]
    h_ptr = [0] * len(banks)
    unused_s = [_diverse_order(b, seed) for b in banks]
    msgs: list[dict[str, str]] = []
    labels: list[list[Any]] = []
    pending_prefix = [""]

    def qa(kind: str, d: int, entry: dict[str, str]) -> None:
        q = entry["question"]
        if pending_prefix[0]:
            q, pending_prefix[0] = pending_prefix[0] + "\n\n" + q, ""
        msgs.extend([{"role": "user", "content": q},
                     {"role": "assistant", "content": entry["answer"]}])
        labels.append([kind, d])

    def take_h(kind: str, d: int, n: int) -> None:
        hier = banks[d]["hierarchical"]
        for e in hier[h_ptr[d]:h_ptr[d] + n]:
            qa(kind, d, e)
        h_ptr[d] = min(len(hier), h_ptr[d] + n)

    for i, b in enumerate(banks):
        if cfg.global_summary:
            msgs.extend([{"role": "user", "content": doc_turn(b)},
                         {"role": "assistant", "content": b["global_summary"]}])
            labels.append(["summary", i])
        else:
            pending_prefix[0] = b["text"]
        part = parts[0] if i == 0 else parts[1]
        if "h" in part:
            take_h("h", i, _count(cfg, cfg.n1, rng))
        if "s" in part:
            for k in [unused_s[i].pop() for _ in range(min(len(unused_s[i]),
                                                           _count(cfg, cfg.n1, rng)))]:
                qa("s", i, b["diverse"][k])
        if pending_prefix[0]:  # no QA followed the document (empty bank): keep the text
            msgs.extend([{"role": "user", "content": pending_prefix[0]},
                         {"role": "assistant", "content": b["global_summary"]}])
            labels.append(["summary", i])
            pending_prefix[0] = ""
        if i == 0 or len(parts) < 3:
            continue
        if "s" in parts[2]:
            pool = [(j, k) for j in range(i) for k in unused_s[j]]
            for j, k in rng.sample(pool, min(len(pool), _count(cfg, cfg.n2, rng))):
                unused_s[j].remove(k)
                qa("revisit_s", j, banks[j]["diverse"][k])
        if "h" in parts[2]:
            for j in range(i):
                if rng.random() < cfg.revisit_p:
                    take_h("revisit_h", j, _count(cfg, cfg.n3, rng))
    return msgs, labels, {"h_ptr": h_ptr, "unused_s": unused_s, "banks": banks}


@dataclasses.dataclass
class Conversation:
    """One built conversation, or (empty messages) why none could be built."""
    messages: list[dict[str, str]]
    labels: list[list[Any]]
    doc_ids: list[str]
    num_tokens: int
    fill_pairs: int = 0
    fill_tokens: int = 0
    reason: str = ""  # why the conversation is empty or short ("" = fine)


def _pair(counter: Counter, e: dict[str, str]) -> int:
    return counter.message("user", e["question"]) + counter.message("assistant", e["answer"])


def fill(msgs: list[dict[str, str]], labels: list[list[Any]], state: dict[str, Any],
         counter: Counter, n: int, target: int, lo: float, cfg: Config, rng: random.Random
         ) -> tuple[int, int, int, bool]:
    """Appends fill QAs in place while they fit under `target`; returns (n, fill pairs,
    fill tokens, capped), capped = stopped by `max_fill` while still under `lo`."""
    banks, h_ptr = state["banks"], list(state["h_ptr"])
    kinds = set(cfg.composition.replace("-", ""))
    n_h = sum(k in _H for k, _ in labels)
    n_s = sum(k in _S for k, _ in labels)
    p_h = n_h / (n_h + n_s) if n_h + n_s else float("h" in kinds)
    p_h = p_h if kinds == {"h", "s"} else float("h" in kinds)
    recipe_pairs = n_h + n_s
    cap = (recipe_pairs * cfg.max_fill / (1 - cfg.max_fill) if cfg.max_fill < 1
           else float("inf"))
    s_cands = [(j, k) for j in range(len(banks)) for k in state["unused_s"][j]]
    rng.shuffle(s_cands)
    h_docs = list(range(len(banks)))
    rng.shuffle(h_docs)
    added = {"h": 0, "s": 0}
    start_n, blocked = n, set()

    def pick(kind: str) -> tuple[int, Any, dict[str, str]] | None:
        room = target - n
        if kind == "h":
            for j in h_docs:  # each document's next hierarchical QA, in walk order
                hier = banks[j]["hierarchical"]
                if h_ptr[j] < len(hier) and _pair(counter, hier[h_ptr[j]]) <= room:
                    return j, None, hier[h_ptr[j]]
            return None
        for pos, (j, k) in enumerate(s_cands):
            if _pair(counter, banks[j]["diverse"][k]) <= room:
                return j, pos, banks[j]["diverse"][k]
        return None

    while added["h"] + added["s"] < cap:
        total = added["h"] + added["s"] + 1
        want = "h" if p_h * total - added["h"] >= (1 - p_h) * total - added["s"] else "s"
        got = kind = None
        for k in [want] + [k for k in ("h", "s") if k != want]:
            if k in blocked or k not in kinds:
                continue
            got = pick(k)
            if got is not None:
                kind = k
                break
            blocked.add(k)  # nothing of this kind fits any more: the tail of the fill
            if k == want and not _exists(k, banks, h_ptr, s_cands):
                break  # run out, not just too long: stop rather than skew the proportion
        if got is None:
            break
        j, pos, e = got
        if kind == "h":
            h_ptr[j] += 1
        else:
            s_cands.pop(pos)
        msgs.extend([{"role": "user", "content": e["question"]},
                     {"role": "assistant", "content": e["answer"]}])
        labels.append([f"fill_{kind}", j])
        n += _pair(counter, e)
        added[kind] += 1
    pairs = added["h"] + added["s"]
    return n, pairs, n - start_n, n < lo and pairs >= cap


def _exists(kind: str, banks: list[dict[str, Any]], h_ptr: list[int], s_cands: list) -> bool:
    if kind == "s":
        return bool(s_cands)
    return any(h_ptr[j] < len(b["hierarchical"]) for j, b in enumerate(banks))


def _doc_cost(bank: dict[str, Any], counter: Counter, cfg: Config) -> tuple[int, float]:
    """(estimated tokens the document adds with its own recipe turns, mean QA pair tokens),
    memoised on the bank: exact document and summary turns; QA pairs by characters."""
    key = (cfg.global_summary, cfg.composition, cfg.n1, cfg.counts, cfg.rand_min, cfg.rand_max)
    if bank.get("_cost_key") == key:
        return bank["_cost"]
    doc = counter.message("user", doc_turn(bank))
    doc += counter.message("assistant", bank["global_summary"]) if cfg.global_summary else 0
    per_char = doc / max(1, len(doc_turn(bank)))
    qas = bank["hierarchical"] + bank["diverse"]
    mean = (sum(len(e["question"]) + len(e["answer"]) for e in qas) / len(qas) * per_char
            + 10) if qas else 0.0  # +10: the two message headers
    own = _n(cfg, cfg.n1) * len(set(cfg.composition.split("-")[1]))
    bank["_cost_key"], bank["_cost"] = key, (int(doc + own * mean), mean)
    return bank["_cost"]


def _n(cfg: Config, fixed: int) -> float:
    return fixed if cfg.counts == "fixed" else (cfg.rand_min + cfg.rand_max) / 2


def _revisit_pairs(cfg: Config, k: int) -> float:
    """Expected revisit QA pairs that k documents bring (N2 diverse, N3 hierarchical)."""
    parts = cfg.composition.split("-")
    z = parts[2] if len(parts) > 2 else ""
    return ((k - 1) * _n(cfg, cfg.n2) * ("s" in z) +
            cfg.revisit_p * _n(cfg, cfg.n3) * k * (k - 1) / 2 * ("h" in z))


def _finish(pool, chosen, counter, target, lo, cfg, seed, rng) -> Conversation:
    msgs, labels, state = assemble([pool[i] for i in chosen], cfg, seed)
    n = counter.messages(msgs)
    ids = [pool[i]["doc_id"] for i in chosen]
    if n > target:
        return Conversation([], [], ids, n, reason="documents and recipe turns exceed the "
                                                   "target")
    fp = ft = 0
    capped = False
    if cfg.fill:
        n, fp, ft, capped = fill(msgs, labels, state, counter, n, target, lo, cfg, rng)
    reason = "" if n >= lo else (
        f"would need more than max_fill={cfg.max_fill} of its QA pairs as fill" if capped else
        f"shorter than target*(1-{cfg.length_tolerance}) after fill (no unused QA of the "
        f"recipe's kinds fits, in its proportions)")
    return Conversation(msgs, labels, ids, n, fp, ft, reason)


def build_conversation(pool: list[dict[str, Any]], counter: Counter, target: int, cfg: Config,
                       seed: int, docs: int = 0) -> Conversation:
    """One conversation of at most `target` tokens from documents of `pool`.

    Args:
      pool: document banks (`qa.build_banks`), each shorter than the target.
      counter: exact chat-format token counts.
      target: most tokens; the window's low end is target * (1 - cfg.length_tolerance).
      cfg: recipe settings.
      seed: every random choice of this conversation.
      docs: documents per conversation (0 = as many as fit, at most cfg.max_docs if set).

    Returns a Conversation; one with no messages, or short of the window, says why in
    `reason` (the caller rejects it).
    """
    lo = target * (1 - cfg.length_tolerance)
    rng = random.Random(seed)
    if docs:
        return _exact_docs(pool, counter, target, lo, cfg, seed, rng, docs)
    conv = Conversation([], [], [], 0, reason="no document fits the target")
    for _ in range(4):  # restarts with a fresh order when fill cannot close the gap
        order = list(range(len(pool)))
        rng.shuffle(order)
        chosen: list[int] = []
        cur = counter.bos
        for d in order:
            if cfg.max_docs and len(chosen) >= cfg.max_docs:
                break
            if counter.message("user", doc_turn(pool[d])) > target - cur:
                continue  # cheap pre-check: the document alone no longer fits
            msgs, _, _ = assemble([pool[i] for i in chosen + [d]], cfg, seed)
            n = counter.messages(msgs)
            if n <= target:
                chosen.append(d)
                cur = n
                if target - n < 0.5 * (target - lo):
                    break  # close enough that documents cannot help; leftover QAs may
        if not chosen:
            break
        conv = _finish(pool, chosen, counter, target, lo, cfg, seed, rng)
        if not conv.reason:
            break
    return conv


def _exact_docs(pool, counter, target, lo, cfg, seed, rng, k) -> Conversation:
    """Exactly `k` documents whose estimated sizes sum to just under the target."""
    if len(pool) < k:
        return Conversation([], [], [], 0, reason=f"fewer than docs_per_sample={k} documents "
                                                  f"fit the target")
    costs = sorted((_doc_cost(b, counter, cfg)[0], i) for i, b in enumerate(pool))
    values = [c for c, _ in costs]
    lows, highs = [0], [0]  # sums of the m smallest / largest costs
    for m in range(1, k + 1):
        lows.append(lows[-1] + values[m - 1])
        highs.append(highs[-1] + values[-m])
    pair = sorted(_doc_cost(b, counter, cfg)[1] for b in pool)[len(pool) // 2]
    own_pairs = _n(cfg, cfg.n1) * len(set(cfg.composition.split("-")[1]))
    recipe = k * own_pairs + _revisit_pairs(cfg, k)
    cap = recipe * cfg.max_fill / (1 - cfg.max_fill) if cfg.max_fill < 1 else 4 * recipe
    # What fill can close on top of the window: half its pair cap, to keep fill small.
    span = (target - lo) + 0.5 * cap * pair * cfg.fill
    budget = target - counter.bos - _revisit_pairs(cfg, k) * pair
    last: Conversation | None = None
    for _ in range(4):  # restarts with a fresh draw of the first k-1 documents
        order = list(range(len(pool)))
        rng.shuffle(order)
        chosen: list[int] = []
        used = 0
        for d in order:
            if len(chosen) == k - 1:
                break
            rest = budget - used - _doc_cost(pool[d], counter, cfg)[0]
            m = k - 1 - len(chosen)  # documents still to come after d, the last included
            if lows[m] <= rest <= highs[m] + span:
                chosen.append(d)
                used += _doc_cost(pool[d], counter, cfg)[0]
        if len(chosen) < k - 1:
            continue
        rest = budget - used
        hi = bisect.bisect_right(values, rest)
        lo_i = bisect.bisect_left(values, rest - span)
        taken = set(chosen)
        near = [costs[i][1] for i in range(lo_i, hi) if costs[i][1] not in taken]
        rng.shuffle(near)
        below = [costs[i][1] for i in range(lo_i - 1, -1, -1) if costs[i][1] not in taken]
        for d in (near + below)[:6]:
            conv = _finish(pool, chosen + [d], counter, target, lo, cfg, seed, rng)
            if not conv.reason:
                return conv
            last = conv
    return last or Conversation([], [], [], 0, reason=f"no {k} documents of the pool fit "
                                                      f"the target together")
