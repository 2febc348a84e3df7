"""Length targeting: the reference's haystack-size searches, computed on token counts.

The reference (RULER 2024) grows the haystack by a fixed increment and re-tokenises the whole
prompt at every step (O(L^2) at long lengths). Here the same decision is taken on token counts
estimated from cached pieces (`PieceCounter.estimate`), then confirmed with exact counts of a
handful of prompts next to the boundary. `reference_size_search` is the reference's loop as a
function of a count; both searches call it so they share its exact stopping rules.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional

MAX_FLOOR_RETRIES = 100  # the reference retries forever at the smallest size; we give up


class LengthTooSmallError(ValueError):
    """The target length cannot hold even the smallest prompt of a task."""


@dataclasses.dataclass(frozen=True)
class SizeSearch:
    """The reference's search settings for one task and target length.

    Attributes:
      incremental: haystack units added per step (words, sentences, docs, noises).
      max_len: target length in tokens.
      reserve: tokens counted on top of the prompt (tokens_to_generate [+ VT example]).
      cap: largest size (corpus words, word list, documents), or None.
      cap_mode: 'after_check' (niah essay: cap tested once a size fits) or 'after_increment'
        (cwe, qa: cap tested right after growing), as in the reference.
    """
    incremental: int
    max_len: int
    reserve: int
    cap: Optional[int] = None
    cap_mode: Optional[str] = None


def reference_size_search(count: Callable[[int], int], s: SizeSearch,
                          max_steps: int = 10_000_000) -> int:
    """The 2024 reference's linear loop; `count(n)` = tokens of the size-n search text."""
    n, total, steps = s.incremental, 0, 0
    while total + s.reserve < s.max_len:
        total = count(n)
        if total + s.reserve > s.max_len:
            n -= s.incremental
            break
        if s.cap_mode == "after_check" and s.cap is not None and n > s.cap:
            n = s.cap
            break
        n += s.incremental
        if s.cap_mode == "after_increment" and s.cap is not None and n > s.cap:
            n = s.cap
            break
        steps += 1
        if steps > max_steps:
            raise RuntimeError("size search did not terminate: the prompt does not grow")
    return n


def fast_size_search(text_of: Callable[[int], str], counter, s: SizeSearch) -> int:
    """Same result as `reference_size_search(exact count of text_of)` for prompts whose token
    count grows with size, from ~10 estimates and usually 1-2 exact tokenisations."""
    inc = s.incremental
    # The reference never looks past step cap//inc + 1; prompts are rendered at most at cap.
    k_cap = None if s.cap is None else s.cap // inc + 1
    size = lambda k: k * inc if s.cap is None else min(k * inc, s.cap)  # noqa: E731

    texts: dict[int, str] = {}
    est: dict[int, int] = {}
    exact: dict[int, int] = {}

    def text(k: int) -> str:
        if k not in texts:
            if len(texts) > 4:  # keep memory bounded at 1M-token prompts
                texts.pop(next(iter(texts)))
            texts[k] = text_of(size(k))
        return texts[k]

    def e(k: int) -> int:
        if k not in est:
            est[k] = counter.estimate(text(k))
        return est[k]

    def ex(k: int) -> int:
        if k not in exact:
            exact[k] = counter.exact(text(k))
        return exact[k]

    def grows(k: int) -> bool:  # the reference keeps growing past size k*inc
        return e(k) + s.reserve < s.max_len

    # First k whose estimate stops the loop. Token counts grow about linearly with size, so
    # a secant guess from two small prompts lands next to it; gallop around it, then bisect.
    guess = max(1, int((s.max_len - s.reserve - e(1)) / max(e(2) - e(1), 1)) + 1)
    if k_cap is not None:
        guess = min(guess, k_cap)
    step = 1
    if grows(guess):
        lo, hi = guess, guess + 1
        while (k_cap is None or hi < k_cap) and grows(hi):
            lo, step = hi, step * 2
            hi = guess + step if k_cap is None else min(guess + step, k_cap)
    else:
        lo, hi = guess - 1, guess
        while lo >= 1 and not grows(lo):
            hi, step = lo, step * 2
            lo = max(guess - step, 0)
    while hi - lo > 1:  # size lo*inc grows (or lo == 0), size hi*inc stops or is the cap
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if grows(mid) else (lo, mid)
    k = hi

    # Confirm with exact counts: size k*inc must stop and (k-1)*inc grow. The second is
    # taken from the estimate when it is clear of the budget by twice the error seen at k.
    err = abs(ex(k) - e(k))

    def k_minus_1_stops(kk: int) -> bool:
        if e(kk - 1) + s.reserve + 2 * err + 8 < s.max_len:
            return False
        return ex(kk - 1) + s.reserve >= s.max_len

    while k > 1 and k_minus_1_stops(k):
        k -= 1
    while ex(k) + s.reserve < s.max_len and (k_cap is None or k < k_cap):
        k += 1
    return reference_size_search(lambda n: ex(k) if n // inc >= k else 0, s)


def reference_binary_search(count: Callable[[int], int], s: SizeSearch, upper: int) -> int:
    """The 2025 rewrite's search: largest n in [inc, upper] with count(n)+reserve <= max_len."""
    lo, hi, best = s.incremental, upper, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if count(mid) + s.reserve <= s.max_len:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best if best is not None else s.incremental


def fast_binary_search(text_of: Callable[[int], str], counter, s: SizeSearch,
                       upper: int) -> int:
    """Largest n with exact count + reserve <= max_len: bisect on estimates, then gallop and
    bisect on exact counts around the estimate (a few exact tokenisations)."""
    fits_est = lambda n: counter.estimate(text_of(n)) + s.reserve <= s.max_len  # noqa: E731
    n0 = reference_binary_search(lambda n: 0 if fits_est(n) else s.max_len + 1, s, upper)
    fits = lambda n: counter.exact(text_of(n)) + s.reserve <= s.max_len  # noqa: E731
    if not fits(n0):
        if n0 <= s.incremental:
            return s.incremental
        step, hi = 1, n0
        while n0 - step > s.incremental and not fits(n0 - step):
            hi, step = n0 - step, step * 2
        lo = max(s.incremental, n0 - step)
    else:
        step, lo = 1, n0
        while n0 + step <= upper and fits(n0 + step):
            lo, step = n0 + step, step * 2
        hi = min(upper, n0 + step)
    while hi - lo > 1:  # lo fits (or is the floor), hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def draw_sample(render: Callable[[int], tuple[str, list]], count_exact: Callable[[str], int],
                size: int, s: SizeSearch, task: str) -> tuple[str, list, int, int]:
    """One sample as the reference draws it: shrink by `incremental` until it fits.

    Returns (input_text, answers, length incl. reserve, size used).
    """
    used, floor_tries = size, 0
    while True:
        text, answers = render(used)
        length = count_exact(text) + s.reserve
        if length <= s.max_len:
            return text, answers, length, used
        if used > s.incremental:
            used -= s.incremental
        else:
            floor_tries += 1
            if floor_tries >= MAX_FLOOR_RETRIES:
                raise LengthTooSmallError(
                    f"task {task}: the smallest prompt needs {length} tokens (incl. "
                    f"{s.reserve} reserved), more than the target length {s.max_len}; "
                    "use a larger --lengths value")


def probe_rng(seed: int) -> random.Random:
    """A fixed stream for probe prompts, so every probe of size n is the same text."""
    return random.Random(f"ruler-probe-{seed}")
