"""``gradverify report``: cost scaling, checker comparison and cross-framework agreement, as HTML, Markdown, JSON.

One dict, rendered three ways ("produce a plain dict, then render or save"):

* :mod:`~gradverify.report.model` runs the measurements (:func:`build`)
  and returns the dict that ``report.json`` holds;
* :mod:`~gradverify.report.html` and :mod:`~gradverify.report.markdown`
  format it -- they compute nothing -- with plots drawn as hand-written SVG
  by :mod:`~gradverify.report.plots`;
* :mod:`~gradverify.report.cli` is the subcommand (:func:`write` saves
  the three files and the SVGs).

Importing this package imports numpy at most; torch and jax are imported
by the sections that use them, when they run.
"""

from __future__ import annotations

from .model import SECTIONS, Options, build
from .cli import write

__all__ = ["Options", "SECTIONS", "build", "write"]
