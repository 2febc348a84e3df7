"""Progress bars with the rates that matter for data generation: calls/s, QA/s, tokens/s."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("datagen")


class Progress:
    """A tqdm bar (ETA from tqdm) whose postfix shows generator calls/s, QA/s and tokens/s."""

    def __init__(self, total: int, unit: str, enabled: bool = True):
        self.t0 = time.perf_counter()
        self.calls = self.qas = self.tokens = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=unit, unit="it", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)

    def add_calls(self, n: int) -> None:
        self.calls += n
        self._post()

    def add_qas(self, n: int) -> None:
        self.qas += n

    def advance(self, n: int, tokens: int = 0) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(n)
        self._post()

    def rates(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return {"calls/s": self.calls / dt, "QA/s": self.qas / dt, "tok/s": self.tokens / dt}

    def _post(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.1f}" for k, v in self.rates().items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        log.info("done in %.1fs: %s", time.perf_counter() - self.t0, self.rates())
