"""``gradverify report``: cost scaling, checker comparison and cross-framework agreement, as HTML, Markdown, JSON.

One dict, rendered three ways ("produce a plain dict, then render or save"):

* :mod:`~gradverify.report.model` runs the measurements (:func:`build`)
  and returns the dict that ``report.json`` holds;
* :mod:`~gradverify.report.html` and :mod:`~gradverify.report.markdown`
  format it -- they compute nothing -- with figures drawn by matplotlib in
  :mod:`~gradverify.report.plots` (inline SVG in the page, PNG beside the
  Markdown) and captions from :mod:`~gradverify.report.text`;
* :mod:`~gradverify.report.cli` is the subcommand (:func:`write` saves
  the three files and the PNGs); progress goes through
  :mod:`gradverify.progress`;
* :mod:`~gradverify.report.browser` loads a written page in headless
  Chromium (the browser test, the screenshots in docs/).

Importing this package imports numpy at most; torch and jax are imported
by the sections that use them, when they run, and matplotlib and tqdm
(the ``report`` extra) only when a figure or a terminal bar is drawn.
"""

from __future__ import annotations

from .model import SECTIONS, Options, build
from .cli import write

__all__ = ["Options", "SECTIONS", "build", "write"]
