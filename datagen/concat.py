"""Multi-document conversations (He et al. Section 3.2, Algorithm 2, Appendix C format).

For documents D_1..D_K in order, after each D_i (read per Section 3.2 and Figure 3):
  1. the document turn: user = document text + "Please give me a summary of the book",
     assistant = its global summary (dropped for Table 7's "no-sum": the text then
     prefixes the first question of the block);
  2. N1 next hierarchical QAs of D_i (in walk order) and N1 diverse QAs of D_i;
  3. (i > 1) N2 diverse QAs sampled from the still-unused diverse QAs of D_1..D_{i-1};
  4. (i > 1) for each earlier D_j, with probability p = 0.6, its next N3 hierarchical QAs.
Table 7 compositions "x-y-z" pick which of h/s go after the first document (x), after later
documents (y) and into the revisits (z; absent = no revisits). Finally Algorithm 2's "process
remaining questions" step appends unused QAs while they fit, to land on the target length.
A diverse QA is never used twice in a conversation; hierarchical QAs keep their order.

The target length is reached by choosing which documents to concatenate: shuffled documents
are added while the conversation still fits, lengths measured exactly by summing per-message
token counts (each piece tokenised once).
"""
from __future__ import annotations

import random
from typing import Any

from datagen import prompts
from datagen.config import Config
from datagen.tokens import Counter


def doc_turn(bank: dict[str, Any]) -> str:
    """The user turn that presents a document (Appendix C): text + the summary request.

    Memoised on the bank: the same string object every time, so its hash (the token-count
    memo key) is computed once, not once per candidate conversation.
    """
    turn = bank.get("_doc_turn")
    if turn is None:
        turn = bank["_doc_turn"] = bank["text"] + "\n\n" + prompts.GLOBAL_SUMMARY_REQUEST
    return turn


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
    unused_s = []
    for b in banks:
        order = list(range(len(b["diverse"])))
        rng.shuffle(order)
        unused_s.append(order)
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


def build_conversation(pool: list[dict[str, Any]], counter: Counter, target: int, cfg: Config,
                       seed: int) -> tuple[list[dict[str, str]], list[list[Any]], list[str], int]:
    """One conversation of at most `target` tokens from documents of `pool`.

    Returns (messages, labels, document ids, token count). The caller checks the lower bound.
    """
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    chosen: list[int] = []
    best: tuple[list, list, dict, int] | None = None
    lo = target * (1 - cfg.length_tolerance)
    cur = counter.bos
    for d in order:
        if cfg.max_docs and len(chosen) >= cfg.max_docs:
            break
        if counter.message("user", doc_turn(pool[d])) > target - cur:
            continue  # cheap pre-check: the document alone no longer fits
        trial = [pool[i] for i in chosen + [d]]
        msgs, labels, state = assemble(trial, cfg, seed)
        n = counter.messages(msgs)
        if n <= target:
            chosen.append(d)
            best, cur = (msgs, labels, state, n), n
            if n >= lo and not cfg.fill:
                break
            if target - n < 0.5 * (target - lo):
                break  # close enough that documents cannot help; leftover QAs may
    if best is None:
        return [], [], [], 0
    msgs, labels, state, n = list(best[0]), list(best[1]), best[2], best[3]
    if cfg.fill:
        banks = state["banks"]
        cands = [("fill_s", j, k) for j in range(len(banks)) for k in state["unused_s"][j]]
        cands += [("fill_h", j, k) for j in range(len(banks))
                  for k in range(state["h_ptr"][j], len(banks[j]["hierarchical"]))]
        rng.shuffle(cands)
        # A document's hierarchical QAs must stay in walk order: re-sort them in place.
        h_pos = [i for i, c in enumerate(cands) if c[0] == "fill_h"]
        for i, c in zip(h_pos, sorted(cands[i] for i in h_pos)):
            cands[i] = c
        blocked: set[int] = set()
        added_s, spare_s = [], []  # (turn index, tokens, (j, k)) of diverse fill QAs
        for kind, j, k in cands:
            if kind == "fill_h" and j in blocked:
                continue
            e = banks[j]["hierarchical" if kind == "fill_h" else "diverse"][k]
            add = counter.message("user", e["question"]) + counter.message("assistant",
                                                                           e["answer"])
            if n + add <= target:
                if kind == "fill_s":
                    added_s.append((len(labels), add, (j, k)))
                msgs.extend([{"role": "user", "content": e["question"]},
                             {"role": "assistant", "content": e["answer"]}])
                labels.append([kind, j])
                n += add
            elif kind == "fill_h":
                blocked.add(j)  # skipping one would break this document's walk order
            else:
                spare_s.append((add, (j, k)))
        if n < lo:  # one swap of a diverse fill QA for a longer unused one closes the gap
            swaps = [(u_add - a_add, t, u) for t, a_add, _ in added_s
                     for u_add, u in spare_s if 0 < u_add - a_add <= target - n]
            if swaps:
                gain, t, (j, k) = max(swaps)
                e = banks[j]["diverse"][k]
                msgs[2 * t:2 * t + 2] = [{"role": "user", "content": e["question"]},
                                         {"role": "assistant", "content": e["answer"]}]
                labels[t] = ["fill_s", j]
                n += gain
    return msgs, labels, [pool[i]["doc_id"] for i in chosen], n
