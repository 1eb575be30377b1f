"""The ``gradverify report`` subcommand: run the measurements, write index.html, report.md, report.json.

Plugged into :mod:`gradverify.cli` through its ``PLUGGABLE`` table: this
module defines :data:`HELP`, :func:`add_arguments` and :func:`run`.

Exit status: ``0`` the report was written and every reference agreed;
``1`` it was written and the agreement section found disagreements (listed
in the report with their reproduction snippets); ``2`` bad arguments or an
unwritable output directory.

Cost: :func:`gradverify.report.model.build` (the measured times are in
docs/report.md, "A default run"), plus a few seconds of drawing the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

__all__ = ["HELP", "add_arguments", "run", "write", "command_line"]

HELP = ("measure and plot the cost of reverse mode vs forward mode vs finite differences, and the agreement "
        "of the reference engine, finite differences, PyTorch, JAX, TensorFlow and PyTensor (writes index.html, "
        "report.md, report.json)")

_EPILOG = """\
exit status: 0 report written, all references agree; 1 report written, disagreements
found (listed with reproduction snippets); 2 bad arguments or output directory.

examples:
  gradverify report                      # defaults: gradverify-report/index.html
  gradverify report --quick --out /tmp/r # a small report (measured times: docs/report.md, A default run)
  gradverify report --cases 1000 --seed 3 --backends reference torch
  gradverify report --from-json gradverify-report/report.json --out again   # re-render only
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The report's options (every one has a default: no argument is needed)."""
    from .model import PRESETS, SECTIONS

    d, q = PRESETS["default"], PRESETS["quick"]
    p.epilog = _EPILOG
    p.add_argument("--out", default="gradverify-report", metavar="DIR",
                   help="directory to write index.html, report.md, report.json and plots/*.png (default: gradverify-report)")
    p.add_argument("--quick", action="store_true",
                   help=f"a small report (sizes up to {max(q['sizes']):,}, "
                        f"{q['cases']} agreement cases)")
    p.add_argument("--cases", type=int, default=None, metavar="N",
                   help=f"random cases in the agreement section (default: {d['cases']}; --quick: {q['cases']})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of every random draw (default: 0)")
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="backends for the agreement section: reference, torch, jax, tensorflow, pytensor "
                        "(default: every installed one)")
    p.add_argument("--sizes", nargs="+", type=int, default=None, metavar="P",
                   help="approximate parameter counts of the scaling section (default: 10 ... 1,000,000; "
                        "--quick: 10 ... 10,000)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help=f"time allowed per (method, P) measurement; over it a cell is marked not measured "
                        f"(default: {d['budget']:g}; --quick: {q['budget']:g})")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help=f"timing samples per measurement, median reported (default: {d['repeats']}; "
                        f"--quick: {q['repeats']})")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME",
                   help=f"sections to run: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="pin BLAS, torch and XLA to N threads for the timings; 0 leaves them alone (default: 1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="clock of the scaling timings: the process's CPU time, steady on a busy machine, or wall "
                        "time (default: cpu; both are kept in report.json)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="re-render an existing report.json into --out without measuring anything")
    p.add_argument("--json", action="store_true",
                   help="print the written paths and the headline as JSON on stdout; no progress bars on stderr")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, with every option that was given."""
    parts = ["gradverify", "report"]
    if args.from_json:
        return " ".join(parts + ["--from-json", shlex.quote(args.from_json), "--out", shlex.quote(args.out)])
    if args.quick:
        parts.append("--quick")
    parts += ["--seed", str(args.seed)]
    for flag, value in (("--cases", args.cases), ("--budget", args.budget), ("--repeats", args.repeats)):
        if value is not None:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.sizes:
        parts += ["--sizes", *map(str, args.sizes)]
    if args.backends:
        parts += ["--backends", *args.backends]
    from .model import SECTIONS

    if list(args.sections) != list(SECTIONS):
        parts += ["--sections", *args.sections]
    if args.threads != 1:
        parts += ["--threads", str(args.threads)]
    if args.clock != "cpu":
        parts += ["--clock", args.clock]
    parts += ["--out", shlex.quote(args.out)]
    return " ".join(parts)


def write(report: dict[str, Any], out: str) -> dict[str, str]:
    """Write ``report.json``, ``report.md``, ``index.html`` and ``plots/*.png`` into ``out``; returns their paths.

    All three documents come from the one dict: the JSON is it, the others
    render it. The PNGs (the figures ``report.md`` links; ``index.html``
    inlines them as SVG) need matplotlib; without it none is written.
    Cost: O(size of the report), plus a second or two of drawing.
    """
    from . import html, markdown, plots

    figures = plots.figures(report)               # drawn once, for both documents
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    paths = {"json": os.path.join(out, "report.json"), "markdown": os.path.join(out, "report.md"),
             "html": os.path.join(out, "index.html")}
    with open(paths["json"], "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1, allow_nan=False)
        fh.write("\n")
    with open(paths["markdown"], "w", encoding="utf-8") as fh:
        fh.write(markdown.render(report, figures))
    for rel, data in markdown.plot_files(report, figures).items():
        with open(os.path.join(out, rel), "wb") as fh:
            fh.write(data)
    with open(paths["html"], "w", encoding="utf-8") as fh:
        fh.write(html.render(report, figures))
    return paths


def _error(message: str) -> int:
    print(f"gradverify report: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Measure (or load ``--from-json``), write the report, print where it is and its headline numbers."""
    from ..progress import progress as progress_bar
    from .model import Options, build

    if args.from_json:
        try:
            with open(args.from_json, encoding="utf-8") as fh:
                report = json.load(fh)
        except (OSError, ValueError) as exc:
            return _error(f"cannot read {args.from_json}: {exc}")
    else:
        if args.cases is not None and args.cases < 1:
            return _error("--cases must be at least 1")
        if args.sizes is not None and any(s < 1 for s in args.sizes):
            return _error("--sizes must be positive parameter counts")
        if args.budget is not None and args.budget <= 0:
            return _error("--budget must be positive")
        if args.repeats is not None and args.repeats < 1:
            return _error("--repeats must be at least 1")
        if args.threads < 0:
            return _error("--threads must be 0 (leave alone) or more")
        if args.backends:
            from ..backends import backend_names

            unknown = [b for b in args.backends if b not in backend_names()]
            if unknown:
                return _error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(backend_names())}")
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as exc:
            return _error(f"cannot create {args.out}: {exc}")
        options = Options(quick=args.quick, seed=args.seed, cases=args.cases,
                          backends=tuple(args.backends) if args.backends else None,
                          sizes=tuple(args.sizes) if args.sizes else None, budget=args.budget,
                          repeats=args.repeats, sections=tuple(dict.fromkeys(args.sections)),
                          threads=args.threads, clock=args.clock, command=command_line(args))

        def progress(section: str, total: int) -> Any:
            return progress_bar(section, total, enabled=False if args.json else None)

        report = build(options, progress=progress)
    try:
        paths = write(report, args.out)
    except OSError as exc:
        return _error(f"cannot write the report into {args.out}: {exc}")
    n = len(report.get("agreement", {}).get("disagreements", []))
    if args.json:
        print(json.dumps({"paths": paths, "headline": report.get("headline", []), "disagreements": n,
                          "figures": figures_note(report)}, indent=2))
        return 1 if n else 0
    print(f"report written to {paths['html']} (also {paths['markdown']}, {paths['json']})")
    for line in report.get("headline", []):
        print(f"  {line}")
    note = figures_note(report)
    if note:
        print(f"  {note}")
    return 1 if n else 0


def figures_note(report: dict[str, Any]) -> str:
    """What to install for the figures when matplotlib is missing ("" when they were drawn)."""
    from . import plots

    return "" if plots.available() else plots.MISSING
