"""Progress bars on stderr, one per section of the report.

A bar redraws in place (``\\r``) when stderr is a terminal; otherwise -- a CI
log, a pipe -- it prints a line at each tenth of the work, so logs stay short.
Cost: one write per step on a terminal (at most ten per section otherwise).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "NullProgress"]


class Progress:
    """A text progress bar: ``[#####.....]  12/40  agreement  network 0.31 s``.

    Usage::

        bar = Progress("scaling", total=40)
        bar.step("P=1,035 reverse 60 us")   # 40 times
        bar.close()                         # prints the section's wall time
    """

    WIDTH = 28

    def __init__(self, section: str, total: int, *, stream: TextIO | None = None, tty: bool | None = None):
        self.section = section
        self.total = max(int(total), 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.start = time.perf_counter()
        self._last_tenth = -1
        self._draw("")

    def _line(self, detail: str) -> str:
        frac = min(self.done / self.total, 1.0)
        filled = int(round(frac * self.WIDTH))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        return f"[{bar}] {self.done:>{len(str(self.total))}}/{self.total}  {self.section:<10} {detail}"

    def _draw(self, detail: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self._line(detail)[:160])
            self.stream.flush()
            return
        tenth = int(10 * self.done / self.total)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self._line(detail) + "\n")
            self.stream.flush()

    def step(self, detail: str = "", n: int = 1) -> None:
        """Advance by ``n`` and show ``detail``."""
        self.done = min(self.done + n, self.total)
        self._draw(detail)

    __call__ = step

    def close(self, detail: str = "") -> float:
        """Fill the bar, end its line; returns the section's wall seconds."""
        seconds = time.perf_counter() - self.start
        self.done = self.total
        msg = detail or f"done in {seconds:.1f} s"
        if self.tty:
            self.stream.write("\r\033[K" + self._line(msg) + "\n")
        else:
            self.stream.write(self._line(msg) + "\n")
        self.stream.flush()
        return seconds


class NullProgress:
    """A progress bar that shows nothing (library use, tests)."""

    def __init__(self, section: str = "", total: int = 1, **_: object):
        self.start = time.perf_counter()

    def step(self, detail: str = "", n: int = 1) -> None:
        pass

    __call__ = step

    def close(self, detail: str = "") -> float:
        return time.perf_counter() - self.start
