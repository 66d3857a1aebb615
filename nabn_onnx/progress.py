"""A small progress bar on stderr, shown only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """Counts steps of long work and draws ``desc [#####     ] 12/40 3.1s ETA 8.2s`` on a terminal.

    Args:
        desc: what is being done.
        total: number of steps, if known (then the bar shows the estimated time left).
        enabled: draw at all (the CLI passes False for ``-q``); off when stderr is not a tty.
        initial: steps already done before this run (a resumed sweep): counted, not timed.
    """

    def __init__(
        self,
        desc: str,
        total: Optional[int] = None,
        enabled: bool = True,
        stream: Optional[TextIO] = None,
        initial: int = 0,
    ):
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.desc, self.total, self.count, self.initial = desc, total, initial, initial
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, steps: int = 1) -> None:
        """Advance by ``steps``, redrawing at most ten times a second."""
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
        eta = self.eta(now)
        left = f" ETA {eta:.0f}s" if eta is not None and self.count < (self.total or 0) else ""
        self.stream.write(f"\r{self.desc} {bar} {elapsed:.1f}s{left}  ")
        self.stream.flush()

    def eta(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left at this run's pace, once a step of this run is done and the total is known."""
        done = self.count - self.initial
        if not self.total or done <= 0:
            return None
        elapsed = (now if now is not None else time.perf_counter()) - self.start
        return elapsed / done * max(self.total - self.count, 0)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
