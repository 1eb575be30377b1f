"""Progress on stderr for long work: report sections, long gradient checks, campaigns.

One call, one bar::

    from gradverify.progress import progress

    with progress("agreement", total=300) as bar:
        for case in cases:
            ...
            bar.step(f"case {i} ok")          # advance by one (``n=`` for more), show a detail
    seconds = bar.close()                     # idempotent; the ``with`` block closes it too

:func:`progress` ``(section, total, *, enabled=None, stream=None)`` returns an
object with ``.step(detail="", n=1)`` (also callable as ``bar(detail)``, so
``bar.step`` can be passed as a ``progress=`` callback) and
``.close(detail="") -> float`` (the bar's wall seconds), usable as a context
manager. What it shows depends on where it writes:

* **a terminal** and tqdm installed (``pip install "gradverify[report]"``):
  a tqdm bar, redrawn in place, with the count, the rate and the time left;
* **not a terminal** (a CI log, a pipe), or tqdm missing: a plain line at
  each tenth of the work (``[#####.....]  12/40  section  detail``) and one
  at the end, so logs stay short;
* ``enabled=False`` (the CLI's ``--json``, library use, tests): nothing at
  all; ``close`` still returns the seconds.

``stream`` defaults to ``sys.stderr`` (looked up at the call, so pytest's
capture sees it). tqdm is imported only when a terminal bar is drawn:
``import gradverify`` never imports it. Cost: one redraw per step on a
terminal (tqdm rate-limits them), at most twelve lines per bar otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["progress", "Progress"]


class Progress:
    """One bar (see the module docstring); build it with :func:`progress`.

    Attributes:
        section: the name shown before the bar.
        total: the number of steps expected (at least 1).
        done: steps taken so far (never more than ``total``).
        mode: ``"tqdm"``, ``"lines"`` or ``"off"``.
    """

    WIDTH = 28

    def __init__(self, section: str, total: int, *, mode: str, stream: TextIO):
        self.section = section
        self.total = max(int(total), 1)
        self.done = 0
        self.mode = mode
        self.stream = stream
        self.start = time.perf_counter()
        self._seconds: float | None = None
        self._last_tenth = -1
        self._bar: Any = None
        if mode == "tqdm":
            from tqdm.auto import tqdm

            # A terminal that reports no size (some ptys) would get an empty bar: use 100 x 40 there.
            width = {"dynamic_ncols": True} if _columns(stream) > 0 else {"ncols": 100, "nrows": 40}
            self._bar = tqdm(total=self.total, desc=f"{section:<10}", file=stream, leave=True, unit="step",
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                        "[{elapsed}<{remaining}, {rate_fmt}]{postfix}", **width)
        elif mode == "lines":
            self._line("")

    def _line(self, detail: str, *, force: bool = False) -> None:
        tenth = int(10 * self.done / self.total)
        if tenth == self._last_tenth and not force:
            return
        self._last_tenth = tenth
        filled = int(round(min(self.done / self.total, 1.0) * self.WIDTH))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"[{bar}] {self.done:>{len(str(self.total))}}/{self.total}  {self.section:<10} "
                          f"{detail}".rstrip() + "\n")
        self.stream.flush()

    def step(self, detail: str = "", n: int = 1) -> None:
        """Advance by ``n`` steps and show ``detail`` (a few words: what was just done)."""
        n = max(0, min(int(n), self.total - self.done))
        self.done += n
        if self.mode == "tqdm":
            if detail:
                self._bar.set_postfix_str(detail[:60], refresh=False)
            self._bar.update(n)
        elif self.mode == "lines":
            self._line(detail)

    __call__ = step

    def close(self, detail: str = "") -> float:
        """Fill the bar and end it with ``detail`` (default ``done in 1.2 s``); returns its wall seconds.

        A second call returns the same seconds and prints nothing.
        """
        if self._seconds is not None:
            return self._seconds
        self._seconds = time.perf_counter() - self.start
        msg = detail or f"done in {self._seconds:.1f} s"
        if self.mode == "tqdm":
            self._bar.set_postfix_str(msg, refresh=False)
            self._bar.update(self.total - self.done)
            self._bar.close()
        elif self.mode == "lines":
            self.done = self.total
            self._line(msg, force=True)
        self.done = self.total
        return self._seconds

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close("failed" if exc[0] is not None else "")


def _columns(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(section: str, total: int, *, enabled: bool | None = None, stream: TextIO | None = None) -> Progress:
    """A progress bar for ``total`` steps of ``section`` on ``stream`` (default stderr).

    Args:
        section: a short name shown before the bar (``"scaling"``, ``"campaign"``).
        total: the number of :meth:`Progress.step` calls expected.
        enabled: ``False`` shows nothing; ``None`` or ``True`` shows a tqdm
            bar on a terminal when tqdm is installed, else a line per tenth.
        stream: where to write; default ``sys.stderr``.

    Returns:
        A :class:`Progress`: ``.step(detail="", n=1)``, ``.close(detail="")
        -> seconds``, a context manager.
    """
    out = sys.stderr if stream is None else stream
    if enabled is False:
        mode = "off"
    elif _isatty(out) and _have_tqdm():
        mode = "tqdm"
    else:
        mode = "lines"
    return Progress(section, total, mode=mode, stream=out)


def _have_tqdm() -> bool:
    try:
        import tqdm.auto  # noqa: F401 - imported only when a terminal bar is about to be drawn
    except ImportError:
        return False
    return True
