"""Logging set-up for entry points and Ray workers (the library only logs)."""

from __future__ import annotations

import logging
import os
import sys


class _Stderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record comes (a redirect, a test's
    capture), never to a stream that was ``sys.stderr`` when the handler was made and is closed now."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one: ignored
        pass


def setup_logging(level: str | int | None = None) -> None:
    """Log ``animalclf`` messages to stderr once per process (``ANIMALCLF_LOG_LEVEL``, default INFO)."""
    logger = logging.getLogger("animalclf")
    if any(getattr(h, "animalclf_stderr", False) for h in logger.handlers):  # others' handlers (a test's) do not count
        return
    handler = _Stderr()
    handler.animalclf_stderr = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level or os.environ.get("ANIMALCLF_LOG_LEVEL", "INFO"))
    logger.propagate = False


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
