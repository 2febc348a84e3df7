"""Token-exact samples: distractor passages around a task's content, to an exact length.

A sample is one user turn and one assistant turn in the chat format training renders
(`lctx.tokenizer.ChatFormat`, via `datagen.tokens.Counter`):

    user:      Passage 1:\\n<text>\\n\\nPassage 2:\\n<text> ... \\n\\n<prompt>[\\n\\n<question>]
    assistant: <answer>

The task's relevant blocks sit at uniformly random slots among the distractors (Li et al.:
c = Shuffle(p_i, {p_distract})); a program is an unnumbered "Code:" block. Its length in
tokens is the target: distractors are added while they fit, and one of them, the filler, is
cut to the token count that makes the sample exactly the target. Every sample is exactly
its target length, and the length is counted, not estimated.

Counting a long sample without tokenizing it whole (a 10M-token sample would need GBs): the
user content is a list of atoms (header, body, header, ... tail); each atom is tokenized
once on its own, and each boundary between atoms is checked by tokenizing a window of
`WINDOW` characters around it together and apart. Where they agree, no token crosses that
boundary and the counts add; where they do not, the atoms on both sides are counted as one
string. Tokenizers split text at pre-token (or whitespace) boundaries and merge only within
them, so what crosses a boundary lies inside the window. Samples up to
`verify_render_max` tokens are also rendered whole and must agree (they always have).
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any, Sequence

import numpy as np

from datagen.selfgen.tasks import Block, Content
from datagen.tokens import Counter

SEP = "\n\n"
WINDOW = 128     # characters each side of a boundary checked for tokens crossing it
MARGIN = 6       # atoms around a change whose boundaries are re-checked
BATCH = 256      # texts per tokenizer call


class Lengths:
    """Exact token counts in the target tokenizer and chat format, shared by samples."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self._small: dict[str, int] = {}

    @functools.cached_property
    def sep_left(self) -> bool:
        """Whether the separator is counted with the text before it ("text.\\n\\n" |
        "Passage 2:") rather than after it ("text." | "\\n\\nPassage 2:"). Llama-3's
        pre-tokenizer joins punctuation and the newlines after it (".\\n\\n" is one
        token); GPT-2's keeps newlines apart and merges "\\n\\n" only before more
        whitespace. Probed once per tokenizer; every boundary is still checked."""
        ends = [".", "!", "?", '"', ")", "a", "1", ":", ";", "'", "]", "-"]
        texts = [f"Some words here{e}" for e in ends]
        head = "Passage 12:\n"
        left = self.separable([(t + SEP, head) for t in texts])
        right = self.separable([(t, SEP + head) for t in texts])
        return sum(left) > sum(right)

    @functools.cached_property
    def counter(self) -> Counter:
        """The chat format's per-message counts (needs the Llama-3 special tokens)."""
        return Counter(self.tok)

    @functools.cached_property
    def user_overhead(self) -> int:
        return self.counter.message("user", "")  # header + <|eot_id|>

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token counts of texts on their own (short ones, headers, are remembered). Encoded
        BATCH texts at a time and reduced to counts at once: ids of a whole 10M-token
        sample never exist together."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._small]
        got = {}
        for b in range(0, len(todo), BATCH):
            part = todo[b:b + BATCH]
            got.update(zip(part, map(len, self.tok.encode_batch(part))))
        for t, n in got.items():
            if len(t) <= 64:
                self._small[t] = n
        return [self._small[t] if t in self._small else got[t] for t in texts]

    def separable(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether tokenizing L+R equals tokenizing L and R apart, for each (L, R)."""
        out = []
        for b in range(0, len(pairs), BATCH):
            part = pairs[b:b + BATCH]
            ids = self.tok.encode_batch([l + r for l, r in part] + [l for l, _ in part]
                                        + [r for _, r in part])
            n = len(part)
            out += [ids[i] == ids[n + i] + ids[2 * n + i] for i in range(n)]
        return out

    def sample_tokens(self, content_tokens: int, answer: str) -> int:
        """The rendered sample: what every conversation has (BOS, a template's default
        system block), the user turn and the assistant turn."""
        return (self.counter.bos + self.user_overhead + content_tokens
                + self.counter.message("assistant", answer))


class Atoms:
    """Exact token count of "".join(atoms), kept up to date as atoms change."""

    def __init__(self, lengths: Lengths):
        self.L = lengths
        self.atoms: list[str] = []
        self.counts: list[int] = []
        self.ok: list[bool] = []    # ok[b]: no token crosses the boundary after atom b
        self._memo: dict[str, int] = {}

    def remember(self, atom: str, tokens: int) -> None:
        """The count of an atom already tokenized elsewhere (a distractor when drawn)."""
        self._memo[atom] = tokens

    def _window(self, atoms: list[str], b: int) -> tuple[str, str]:
        left, i = "", b
        while i >= 0 and len(left) < WINDOW:
            left, i = atoms[i] + left, i - 1
        right, i = "", b + 1
        while i < len(atoms) and len(right) < WINDOW:
            right, i = right + atoms[i], i + 1
        return left[-WINDOW:], right[:WINDOW]

    def set(self, atoms: list[str]) -> int:
        """Replaces the atoms (re-counting only what changed); returns the exact total."""
        old, new = self.atoms, atoms
        n_min = min(len(old), len(new))
        p = 0
        while p < n_min and (old[p] is new[p] or old[p] == new[p]):
            p += 1
        s = 0
        while s < n_min - p and (old[-1 - s] is new[-1 - s] or old[-1 - s] == new[-1 - s]):
            s += 1
        todo = [a for a in new[p:len(new) - s] if a not in self._memo]
        for a, n in zip(todo, self.L.count(todo)):
            self._memo[a] = n
        self.counts = self.counts[:p] + [self._memo[a] for a in new[p:len(new) - s]] + (
            self.counts[len(old) - s:] if s else [])
        lo, hi = max(0, p - MARGIN), min(len(new) - 1, len(new) - s + MARGIN)
        keep_tail = len(new) - 1 - hi  # boundaries after `hi` are unchanged
        checked = self.L.separable([self._window(new, b) for b in range(lo, hi)])
        self.ok = self.ok[:lo] + checked + (self.ok[len(self.ok) - keep_tail:]
                                            if keep_tail > 0 else [])
        self.atoms = list(new)
        return self.total()

    def total(self) -> int:
        if all(self.ok):
            return sum(self.counts)
        total, run = 0, [0]
        for b in range(len(self.atoms)):
            if b == len(self.atoms) - 1 or self.ok[b]:
                if len(run) == 1:
                    total += self.counts[run[0]]
                else:
                    total += self.L.count(["".join(self.atoms[i] for i in run)])[0]
                run = [b + 1]
            else:
                run.append(b + 1)
        return total


@dataclasses.dataclass
class NoFit:
    """No sample of this content has the target length: its own content is longer
    (reason "content"; `tokens` is its length), or the corpus ran out of distractors."""
    reason: str
    tokens: int


@dataclasses.dataclass
class Sample:
    content: str       # the user turn
    answer: str
    num_tokens: int
    content_tokens: int
    answer_tokens: int
    meta: dict[str, Any]


def _header(block: Block | None, k: int) -> str:
    return f"Passage {k}:\n" if block is None or block.numbered else "Code:\n"


class _Draw:
    """Distractor passages in a seeded random order over the corpus, texts counted once."""

    def __init__(self, corpus, exclude: set[int], seed: int, lengths: Lengths,
                 atoms: Atoms):
        self.corpus, self.exclude, self.L, self.counted = corpus, exclude, lengths, atoms
        self.order = np.random.default_rng(seed).permutation(len(corpus))
        self.at = 0
        self.tokens: dict[int, int] = {}   # tokens of the passage's atom
        self.atoms: dict[int, str] = {}    # the same string objects every layout
        self.tail = SEP if lengths.sep_left else ""

    def text(self, i: int) -> str:
        """Passage i's text (its atom without the separator; only the filler needs it)."""
        a = self.atoms[i]
        return a[:len(a) - len(self.tail)]

    def next(self, n: int) -> list[int]:
        out = []
        while len(out) < n and self.at < len(self.order):
            i = int(self.order[self.at])
            self.at += 1
            if i not in self.exclude:
                out.append(i)
        for i, p in zip(out, self.corpus.get(out)):
            self.atoms[i] = p["text"] + self.tail
        for i, n_tok in zip(out, self.L.count([self.atoms[i] for i in out])):
            self.tokens[i] = n_tok
            self.counted.remember(self.atoms[i], n_tok)
        return out


def assemble(content: Content, target: int, corpus, lengths: Lengths, seed: int,
             max_rounds: int = 200) -> Sample | NoFit:
    """The sample of `content` with exactly `target` tokens, or why there is none."""
    rng = random.Random(seed)
    atoms = Atoms(lengths)

    def layout(slots: list, cut: str | None = None) -> tuple[list[str], list, str]:
        """Atoms of the user turn for `slots` (Block = relevant, int = corpus index,
        "filler" = the filler with text `cut`), the relevant blocks' numbers, the answer."""
        out, nums, k = [], [], 0
        pre, post = ("", SEP) if lengths.sep_left else (SEP, "")
        for j, slot in enumerate(slots):
            block = slot if isinstance(slot, Block) else None
            if block is None or block.numbered:
                k += 1
            out.append((pre if j else "") + _header(block, k))
            if block is not None:
                nums.append(k if block.numbered else None)
                out.append(block.text + post)
            else:
                out.append(cut + post if slot == "filler" else draw.atoms[slot])
        tail, answer, _ = content.finish(nums)
        out.append((pre if slots else "") + tail)
        return out, nums, answer

    def tokens(slots, cut=None) -> tuple[int, str]:
        a, _, answer = layout(slots, cut)
        return lengths.sample_tokens(atoms.set(a), answer), answer

    while True:  # the task's own content must fit
        base, _ = tokens(list(content.blocks))
        if base <= target or content.smaller is None:
            break
        content = content.smaller()
    if base > target:
        return NoFit("content", base)
    draw = _Draw(corpus, content.exclude, seed, lengths, atoms)
    head = lengths.count([SEP + "Passage 1000:\n"])[0]  # an estimate: the loop corrects
    chosen, est, want = [], base, 32
    while True:  # distractors while they fit (by their counted texts), plus the filler
        batch = draw.next(want)
        if not batch:
            break
        for i in batch:
            chosen.append(i)
            if est + draw.tokens[i] + head > target:
                break
            est += draw.tokens[i] + head
        else:  # draw about as many as the rest of the target needs, at most 2048 a time
            per = max(1.0, (est - base) / len(chosen))
            want = int(min(2048, max(32, (target - est) / per + 1)))
            continue
        break
    if not chosen:
        return NoFit("corpus", base)  # not one distractor left in the corpus
    n = len(content.blocks) + len(chosen)
    rel_slots = sorted(rng.sample(range(n), len(content.blocks)))
    blocks = list(content.blocks)
    if not content.ordered:
        rng.shuffle(blocks)
    slots: list[Any] = list(chosen)
    for pos, b in zip(rel_slots, blocks):
        slots.insert(pos, b)
    filler_at = rng.choice([j for j, s in enumerate(slots) if not isinstance(s, Block)])
    filler = slots[filler_at]
    slots[filler_at] = "filler"
    # Each evaluation below changes the atoms in one place only (the filler, or slots near
    # the end), so `Atoms.set` re-counts little even for a 10M-token sample.
    order, prev = ("lo", "hi"), None
    for _ in range(max_rounds):
        ftext, action = draw.text(filler), None
        for which in order:
            got, _ = tokens(slots, ftext[:1] if which == "lo" else ftext)
            if which == "lo" and target < got:
                action = "drop"  # too many distractors even with a 1-char filler
                break
            if which == "hi" and target > got:
                action, hi_n = "append", got  # too few even with the whole filler
                break
        if action and prev and action != prev:
            # Dropping one passage left too little, adding one too much: the filler is
            # too short to bridge that gap. Take the longest of the next few as filler.
            more = draw.next(8)
            if not more:
                return NoFit("corpus", target)
            filler = max(more, key=lambda i: draw.tokens[i])
            order, prev = ("lo", "hi"), None
            continue
        prev = action
        if action == "drop":  # drop the last distractor that is not the filler
            drop = [j for j, s in enumerate(slots) if isinstance(s, int)]
            if not drop:  # content + the smallest filler overshoot: no exact fit
                return NoFit("content", got)
            del slots[drop[-1]]
            order = ("lo", "hi")
            continue
        if action == "append":  # append (an estimated number) before the prompt
            more = draw.next(max(1, (target - hi_n) // max(1, draw.tokens[filler] + head)))
            if not more:
                return NoFit("corpus", hi_n)  # the corpus is too small for this target
            slots += more
            order = ("hi", "lo")
            continue
        cut = _fit(ftext, target, lambda c: tokens(slots, c)[0], lengths)
        if cut is not None:
            break
        more = draw.next(1)  # no cut of this passage hits the target: another filler
        if not more:
            return NoFit("corpus", target)
        filler, order = more[0], ("lo", "hi")
    else:
        raise RuntimeError(f"no exact fit for target {target} after {max_rounds} rounds")
    parts, nums, answer = layout(slots, cut)
    content_tokens = atoms.set(parts)
    tail, answer, task_meta = content.finish(nums)
    num = lengths.sample_tokens(content_tokens, answer)
    assert num == target, (num, target)
    dist = [s for s in slots if isinstance(s, int)]
    meta = {"length_target": target, "num_tokens": num, "content_tokens": content_tokens,
            "passages": sum(1 for s in slots if not isinstance(s, Block) or s.numbered),
            "distractors": len(dist) + 1, "distractor_corpus_indices": dist + [filler],
            "filler": {"corpus_index": filler, "slot": slots.index("filler"),
                       "chars_kept": len(cut), "chars": len(draw.text(filler))},
            "boundaries_merged": atoms.ok.count(False), **task_meta}
    return Sample("".join(parts), answer, num, content_tokens,
                  lengths.counter.message("assistant", answer), meta)


def _fit(text: str, target: int, total, lengths: Lengths) -> str | None:
    """A prefix of `text` (cut at a token, then at a character) whose sample has exactly
    `target` tokens, or None."""
    ids = lengths.tok.encode(text)

    def cut_at(m: int) -> str:
        return lengths.tok.decode(ids[:m]).rstrip("\ufffd").rstrip()

    m = len(ids)
    seen: dict[int, int] = {}
    for _ in range(8):  # Newton steps on the token count; usually one or two
        m = min(max(m, 1), len(ids))
        if m in seen:
            break
        c = cut_at(m)
        seen[m] = got = total(c) if c else -1
        if got == target:
            return c
        m += target - got if got > 0 else 1
    # Rare: token cuts skip the target (a cut re-tokenizes differently). Try characters
    # between the closest cuts below and above.
    below = [cut_at(k) for k, v in seen.items() if 0 < v < target]
    above = [cut_at(k) for k, v in seen.items() if v > target]
    lo = max((len(c) for c in below), default=1)
    hi = min((len(c) for c in above), default=len(text))
    while lo <= hi:
        mid = (lo + hi) // 2
        c = text[:mid].rstrip()
        got = total(c) if c else -1
        if got == target:
            return c
        lo, hi = (mid + 1, hi) if got < target else (lo, mid - 1)
    return None
