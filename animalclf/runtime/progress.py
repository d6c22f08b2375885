"""Where a long phase is: a log line at most every ``every_s`` seconds with the count done, the
rate and an ETA, and a last line with the total time and rate. A phase that ends within
``every_s`` says nothing (fast tests and small runs stay quiet). The library logs; what shows the
lines is the caller's logging set-up (:func:`animalclf.runtime.logs.setup_logging`).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from animalclf.runtime.logs import fmt_seconds

__all__ = ["PROGRESS_EVERY_S", "ProgressLog"]

PROGRESS_EVERY_S = 10.0
"""Seconds between two progress lines of one phase; a phase shorter than this logs none."""

log = logging.getLogger(__name__)


class ProgressLog:
    """Progress of one phase over ``total`` items (``None``: unknown, no ETA), named ``what``.

    Call :meth:`update` with the items each step did and :meth:`done` at the end (or use it as a
    context manager, which calls :meth:`done` when the block succeeds). ``enabled=False``
    (e.g. on every Ray Train worker but rank 0) makes both no-ops, so callers need no ``if``.
    """

    def __init__(self, what: str, total: Optional[int] = None, *, unit: str = "images",
                 every_s: float = PROGRESS_EVERY_S, enabled: bool = True, logger: Optional[logging.Logger] = None):
        self.what, self.total, self.unit, self.every_s, self.enabled = what, total, unit, every_s, enabled
        self.log = logger or log
        self.count = 0
        self.lines = 0
        self._finished = False
        self.start = time.perf_counter()
        self._last = self.start

    def __enter__(self) -> "ProgressLog":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.done()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        """Items per second so far."""
        return self.count / max(self.elapsed, 1e-9)

    def eta(self) -> Optional[float]:
        """Seconds left at the rate so far (``None`` when the total or the rate is unknown)."""
        if self.total is None or self.count == 0:
            return None
        return max(self.total - self.count, 0) / self.rate()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; log a line when ``every_s`` has passed since the last one."""
        self.count += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s and (self.total is None or self.count < self.total):  # else done() says it
            self._last = now
            self.lines += 1
            self.log.info("%s", self.line())

    def line(self) -> str:
        """``"<what>: 640/2150 images (30%), 41.2 images/s, ETA 0m37s"``."""
        done = f"{self.count}/{self.total} {self.unit} ({100 * self.count / max(self.total, 1):.0f}%)" \
            if self.total is not None else f"{self.count} {self.unit}"
        eta = self.eta()
        return f"{self.what}: {done}, {self.rate():.1f} {self.unit}/s" + (f", ETA {fmt_seconds(eta)}" if eta is not None else "")

    def done(self) -> None:
        """Log the phase's total time and rate, once, when it lasted ``every_s`` or more."""
        if self._finished:
            return
        self._finished = True
        if self.enabled and self.elapsed >= self.every_s:
            self.lines += 1
            self.log.info("%s: %d %s in %s, %.1f %s/s", self.what, self.count, self.unit, fmt_seconds(self.elapsed),
                          self.rate(), self.unit)
