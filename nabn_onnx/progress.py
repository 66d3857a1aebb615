"""A small progress bar on stderr, shown only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """Counts steps of long work and draws ``desc [#####     ] 12/40 3.1s`` on a terminal.

    Args:
        desc: what is being done.
        total: number of steps, if known.
        enabled: draw at all (the CLI passes False for ``-q``); off when stderr is not a tty.
    """

    def __init__(self, desc: str, total: Optional[int] = None, enabled: bool = True, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.desc, self.total, self.count = desc, total, 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, steps: int = 1) -> None:
        self.count += steps
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.count == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        if self.total:
            done = int(30 * min(self.count, self.total) / self.total)
            bar = f"[{'#' * done}{' ' * (30 - done)}] {self.count}/{self.total}"
        else:
            bar = f"{self.count}"
        self.stream.write(f"\r{self.desc} {bar} {elapsed:.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
