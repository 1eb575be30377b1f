"""The report's figures, drawn with matplotlib: SVG inline in ``index.html``, PNG for ``report.md`` and the README.

Each builder takes one section of the report dict and returns a
:class:`matplotlib.figure.Figure` built directly (no pyplot, no global
state): it draws only what the dict holds -- data points, and fitted lines
given as ``(slope, intercept)`` in log10 space; nothing is fitted here.
:func:`figures` gives every figure of a report with its name, alt text and
caption (the caption's prose is :mod:`gradverify.report.text`'s);
:func:`svg` and :func:`png` serialise one, through the SVG and Agg canvases
explicitly, inside :func:`matplotlib.rc_context`, so the user's rcParams and
backend are never touched. SVG text stays text (``svg.fonttype: none``),
ids are salted with the figure's name and the date is left out, so the same
dict always gives the same bytes.

Conventions: every axis is labelled with its unit; log-log axes carry minor
ticks; each method has one colour in every figure (:data:`COLORS`, the
Okabe-Ito colour-blind-safe palette), "one forward pass" is black; the
legend states each fitted slope. Artists carry ``gid`` s
(``<figure>-xlabel``, ``-ylabel``, ``-legend``, ``-data-<i>``) so a browser
test can find them in the page.

matplotlib is an extra (``pip install "gradverify[report]"``); it is
imported only when a figure is drawn. Without it :func:`available` is False
and the renderers write the tables with :data:`MISSING` in place of the
figures. Cost: about 0.1-0.3 s per figure and format.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from typing import Any, Callable

from . import text

__all__ = ["MISSING", "COLORS", "CHECKER_STYLE", "FigureSpec", "available", "figures", "svg", "png",
           "scaling_figures", "checker_figure", "agreement_figure"]

#: What the report says in place of the figures when matplotlib is missing.
MISSING = ('figures not drawn: matplotlib is not installed (pip install "gradverify[report]", then '
           "gradverify report --from-json report.json --out DIR draws them without measuring again)")

#: Okabe & Ito's colour-blind-safe palette.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}

#: One colour per cost-scaling method, the same in every figure.
COLORS = {"reverse": OKABE_ITO["blue"], "forward_mode": OKABE_ITO["vermillion"], "forward_diff": OKABE_ITO["green"],
          "central_diff": OKABE_ITO["purple"], "forward": OKABE_ITO["black"]}
#: Evaluations per gradient, short enough for a legend that leaves the lines free.
_COUNTS = {"reverse": "1 (+ 1 backward sweep)", "forward_mode": "P JVPs", "forward_diff": "P + 1",
           "central_diff": "2P"}

#: The histograms' bars (one colour for every pair; grey for the exact and above-1 bars).
_HIST_COLOR = OKABE_ITO["blue"]
_MARKERS = {"reverse": "o", "forward_mode": "s", "forward_diff": "^", "central_diff": "D"}

#: Checker name fragment -> (colour, marker): colour by tool, line style by mode (fast: dashed).
CHECKER_STYLE = (("gradverify", "torch", OKABE_ITO["blue"], "o"), ("gradverify", "jax", OKABE_ITO["sky"], "s"),
                 ("gradverify", "tensorflow", OKABE_ITO["green"], "P"),
                 ("gradverify", "pytensor", OKABE_ITO["yellow"], "h"),
                 ("torch gradcheck", "", OKABE_ITO["orange"], "^"), ("check_grads", "", OKABE_ITO["purple"], "D"),
                 ("compute_gradient", "", OKABE_ITO["vermillion"], "X"), ("verify_grad", "", OKABE_ITO["black"], "v"))

_RC = {"svg.fonttype": "none", "font.family": "sans-serif",
       "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial", "Liberation Sans"], "font.size": 11,
       "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
       "legend.fontsize": 9.5, "axes.grid": False, "figure.dpi": 100, "savefig.dpi": 150,
       "path.simplify": True, "axes.spines.top": True, "axes.spines.right": True}


@dataclasses.dataclass
class FigureSpec:
    """One figure of the report.

    Attributes:
        name: file stem and gid prefix (``scaling-relative``, ``checkers``, ``agreement``).
        alt: short alt text.
        caption: one sentence with this run's numbers.
        figure: the :class:`matplotlib.figure.Figure`.
    """

    name: str
    alt: str
    caption: str
    figure: Any


def available() -> bool:
    """Whether matplotlib can be imported (the figures are drawn only then)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new(name: str, w: float, h: float, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(w, h), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.set_gid(f"{name}-figure")
    return fig, axes


def _in_rc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` inside the report's rc_context (fonts and sizes picked up as artists are created)."""
    def wrapped(*a: Any, **k: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(_RC):
            return fn(*a, **k)

    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


def _label(ax: Any, name: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.label.set_gid(f"{name}-xlabel")
    ax.yaxis.label.set_gid(f"{name}-ylabel")


def _loglog_axes(ax: Any) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=100))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", color="#d9d9d9", linewidth=0.8)
    ax.grid(True, which="minor", color="#efefef", linewidth=0.5)
    ax.set_axisbelow(True)
    ax.margins(x=0.06, y=0.1)          # no point touches the frame


def _points(xs: list[Any], ys: list[Any]) -> tuple[list[float], list[float]]:
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if _pos(x) and _pos(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _pos(v: Any) -> bool:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(x) and x > 0


def _legend(ax: Any, name: str, **kw: Any) -> None:
    leg = ax.legend(frameon=True, framealpha=0.92, edgecolor="#cccccc", **kw)
    leg.set_gid(f"{name}-legend")


def _empty(ax: Any, name: str) -> None:
    ax.text(0.5, 0.5, "no measured points", transform=ax.transAxes, ha="center", va="center", gid=f"{name}-data-0")


# ---------------------------------------------------------------------------
# Cost scaling
# ---------------------------------------------------------------------------

def _method_rows(sc: dict[str, Any], m: str) -> list[dict[str, Any]]:
    return sorted((r for r in sc["rows"] if r["method"] == m), key=lambda r: r["params"])


@_in_rc
def scaling_figures(sc: dict[str, Any]) -> dict[str, Any]:
    """``{"relative": fig, "seconds": fig, "evaluations": fig}`` from the report's ``scaling`` section."""
    out = {}
    clock = sc.get("clock", "wall")
    specs = (("relative", "relative", sc["slopes"], "time of one gradient / time of one forward pass (×)"),
             ("seconds", "seconds", sc["slopes_seconds"], f"time of one gradient (s, median {clock} time)"),
             ("evaluations", "evaluations", None, "function evaluations per gradient (count)"))
    for key, field, slopes, ylabel in specs:
        name = f"scaling-{key}"
        fig, axes = _new(name, 7.2, 4.4)
        ax = axes[0, 0]
        _loglog_axes(ax)
        drawn = 0
        for m in sc["methods"]:
            rows = _method_rows(sc, m)
            x, y = _points([r["params"] for r in rows], [r.get(field) for r in rows])
            if not x:
                continue
            label = text.LABELS.get(m, m)
            if slopes is not None:
                label += f"  (slope {text.slope(slopes.get(m))})"
            elif key == "evaluations":
                label += f": {_COUNTS.get(m, sc['methods'][m])}"
            ax.plot(x, y, color=COLORS.get(m), marker=_MARKERS.get(m, "o"), markersize=5.5, linewidth=1.8,
                    label=label, gid=f"{name}-data-{drawn}", zorder=3)
            drawn += 1
            fit = (sc.get("fits") or {}).get(m) if key == "relative" else None
            if fit and len(x) > 1:
                fx = [min(x), max(x)]
                ax.plot(fx, [10 ** (fit["intercept"] + fit["slope"] * math.log10(v)) for v in fx], color=COLORS[m],
                        linestyle=(0, (1.5, 2.5)), linewidth=1.1, alpha=0.9, zorder=2)
        # the reference: one forward pass
        if key == "seconds":
            fwd = sorted(sc.get("forward", []), key=lambda r: r["params"])
            x, y = _points([r["params"] for r in fwd], [r.get("seconds") for r in fwd])
            if x:
                ax.plot(x, y, color=COLORS["forward"], linestyle="--", linewidth=1.4, marker=".",
                        label="one forward pass (the reference)", gid=f"{name}-data-{drawn}", zorder=2)
                drawn += 1
        elif drawn:
            ax.axhline(1.0, color=COLORS["forward"], linestyle="--", linewidth=1.2, zorder=1,
                       label="one forward pass (= 1)" if key == "relative" else "one evaluation (= 1)")
        if key == "relative" and drawn:
            rev = _points([r["params"] for r in _method_rows(sc, "reverse")],
                          [r.get("relative") for r in _method_rows(sc, "reverse")])
            if rev[0]:
                lo, hi = min(rev[1]), max(rev[1])
                ax.annotate(f"reverse mode: {lo:.1f}–{hi:.1f}× one forward pass at every P",
                            xy=(rev[0][-1], rev[1][-1]), xytext=(-8, 14), textcoords="offset points", ha="right",
                            va="bottom", color=COLORS["reverse"], fontsize=9.5, fontweight="bold")
        if key == "relative":
            fits = any((sc.get("fits") or {}).values())
            if fits:
                ax.plot([], [], color="#555555", linestyle=(0, (1.5, 2.5)), linewidth=1.1,
                        label="least-squares fit (log-log)")
        if not drawn:
            _empty(ax, name)
        _label(ax, name, "parameters P (count, log scale)", ylabel)
        ax.set_title({"relative": "Cost of one full gradient, in forward passes",
                      "seconds": "Time of one full gradient",
                      "evaluations": "Function evaluations per gradient"}[key])
        if drawn:                  # evaluations: the lower right is empty (the lines rise to the upper right)
            _legend(ax, name, **({"loc": "lower right", "bbox_to_anchor": (1.0, 0.1)} if key == "evaluations"
                                 else {"loc": "upper left"}))
        out[key] = fig
    return out


# ---------------------------------------------------------------------------
# Checker comparison
# ---------------------------------------------------------------------------

def _checker_style(method: str) -> tuple[str, str, Any]:
    low = method.lower()
    dash = "--" if "fast" in low else "-"
    for a, b, color, marker in CHECKER_STYLE:
        if a in low and b in low:
            return color, marker, dash
    return "#777777", "*", dash  # a method without a style of its own: grey, never a tool's colour


@_in_rc
def checker_figure(ch: dict[str, Any]) -> Any | None:
    """Seconds per check against P, one line per checker; None without measured rows."""
    rows = [r for r in ch.get("rows", []) if _pos(r.get("params")) and _pos(r.get("reported_seconds"))]
    if not rows:
        return None
    name = "checkers"
    fig, axes = _new(name, 7.2, 5.0)
    ax = axes[0, 0]
    _loglog_axes(ax)
    for i, m in enumerate(dict.fromkeys(str(r.get("method")) for r in rows)):
        rs = sorted((r for r in rows if str(r.get("method")) == m), key=lambda r: r["params"])
        color, marker, dash = _checker_style(m)
        ax.plot([r["params"] for r in rs], [r["reported_seconds"] for r in rs], color=color, marker=marker,
                linestyle=dash, linewidth=1.7, markersize=5.5, label=m, gid=f"{name}-data-{i}", zorder=3)
    ax.set_title("Time per gradient check (median)")
    _label(ax, name, "parameters P (count, log scale)", f"seconds per check (s, {ch.get('clock', 'wall')} time)")
    leg = fig.legend(loc="outside lower center", ncols=3, frameon=False)
    leg.set_gid(f"{name}-legend")
    return fig


# ---------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------

@_in_rc
def agreement_figure(ag: dict[str, Any]) -> Any | None:
    """Histograms of the per-case scaled error, one panel per pair, the tolerance marked; None without pairs.

    The x axis is log10 of the error (one bar per decade); cases with error
    0 (or below the first edge) have their own grey bar on the left, errors
    above 1 a grey bar on the right.
    """
    from matplotlib.ticker import FixedLocator, MaxNLocator

    pairs = list(ag.get("pairs", {}).items())
    if not pairs:
        return None
    name = "agreement"
    ncols = 1 if len(pairs) == 1 else 2
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = _new(name, 7.2, 1.2 + 2.3 * nrows, nrows, ncols)
    tol = ag.get("tolerance") or _tolerance_marks(str(ag.get("dtype", "float64")))
    gid = 0
    for k, ax in enumerate(axes.flat):
        if k >= len(pairs):
            ax.set_visible(False)
            continue
        label, p = pairs[k]
        h = p["histogram"]
        edges, counts = list(h["edges_log10"]), list(h["counts"])
        zero_at = edges[0] - 2.5
        above_at = edges[-1] + 1.0
        bars = ax.bar([e + 0.5 for e in edges[:-1]], counts, width=0.9, color=_HIST_COLOR,
                      label="cases per decade of error" if k == 0 else None, zorder=3)
        for b in bars:                      # one gid per bar: ids stay unique in the page
            b.set_gid(f"{name}-data-{gid}")
            gid += 1
        ax.bar([zero_at, above_at], [int(h.get("below", 0)), int(h.get("above", 0))], width=0.9, color="#9a9a9a",
               label="exact (0, or < 1e-18) / above 1" if k == 0 else None, zorder=3)
        for key, style, what in (("floor", ":", "tolerance floor"), ("largest", "-", "tolerance at the largest "
                                                                                     "element")):
            v = tol.get(key)
            if _pos(v):
                ax.axvline(math.log10(float(v)), color=OKABE_ITO["black"], linestyle=style, linewidth=1.3, zorder=4,
                           label=f"{what} ({float(v):.0e})" if k == 0 else None)
        step = 3 if ncols == 1 else 6
        ticks = [zero_at] + [e for e in edges if e % step == 0]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(FixedLocator([e for e in edges if e % step]))
        ax.set_xticklabels(["0"] + [("1" if e == 0 else f"$10^{{{e}}}$") for e in ticks[1:]])
        ax.set_xlim(zero_at - 0.8, above_at + 0.8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.set_ylim(0, max([1] + counts + [int(h.get("below", 0)), int(h.get("above", 0))]) * 1.18)
        ax.grid(True, axis="y", color="#e3e3e3", linewidth=0.7)
        ax.set_axisbelow(True)
        ax.set_title(f"{label}: {p['cases']} cases, {p['disagreements']} disagreeing", fontsize=10)
        row, col = divmod(k, ncols)
        if col == 0:
            ax.set_ylabel("cases (count)")
        if row == nrows - 1 or k + ncols >= len(pairs):     # the bottom panel of each column
            ax.set_xlabel("per-case error max|a − b| / max|b|" + (" (log scale)" if col == 0 else ""))
        if k == 0:
            ax.yaxis.label.set_gid(f"{name}-ylabel")
    bottom_left = axes[nrows - 1, 0] if len(pairs) > (nrows - 1) * ncols else axes[nrows - 2, 0]
    bottom_left.xaxis.label.set_gid(f"{name}-xlabel")
    leg = fig.legend(loc="outside lower center", ncols=2, frameon=False)
    leg.set_gid(f"{name}-legend")
    fig.suptitle("Agreement: distribution of the per-case error, by pair")
    return fig


def _tolerance_marks(dtype: str) -> dict[str, Any]:
    """For a report.json written before ``agreement.tolerance`` existed: the comparison core's table."""
    from .model import tolerance_marks

    return tolerance_marks(dtype)


# ---------------------------------------------------------------------------
# All figures, and their serialisation
# ---------------------------------------------------------------------------

def figures(report: dict[str, Any]) -> list[FigureSpec]:
    """Every figure of ``report`` with its alt text and caption, in page order; [] without matplotlib."""
    if not available():
        return []
    out = []
    sc = report.get("scaling")
    if sc:
        figs = scaling_figures(sc)
        out += [FigureSpec("scaling-relative", "cost of one gradient relative to one forward pass",
                           text.caption_relative(sc), figs["relative"]),
                FigureSpec("scaling-seconds", "seconds per gradient", text.caption_seconds(sc), figs["seconds"]),
                FigureSpec("scaling-evaluations", "function evaluations per gradient", text.caption_evaluations(sc),
                           figs["evaluations"])]
    ch = report.get("checkers")
    if ch and ch.get("available"):
        fig = checker_figure(ch)
        if fig is not None:
            out.append(FigureSpec("checkers", "seconds per gradient check", text.caption_checkers(ch), fig))
    ag = report.get("agreement")
    if ag:
        fig = agreement_figure(ag)
        if fig is not None:
            out.append(FigureSpec("agreement", "histograms of the per-case error by pair", text.caption_agreement(ag),
                                  fig))
    return out


def svg(spec: FigureSpec) -> str:
    """The figure as an ``<svg>`` element to inline in HTML: no XML prolog, no date, ids salted by its name."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"gradverify-{spec.name}"}):
        FigureCanvasSVG(spec.figure).print_svg(buf, metadata={"Date": None, "Creator": None, "Format": None,
                                                              "Type": None})
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r"<metadata>.*?</metadata>\s*", "", s, flags=re.S)
    # matplotlib numbers its groups per figure (figure_1, axes_1, text_3...): prefixed, they stay unique on a page
    # with several figures. Nothing refers to them (markers and clip paths use the salted hash ids).
    s = re.sub(r'id="([A-Za-z][A-Za-z0-9.]*_\d+)"', lambda m: f'id="{spec.name}-{m.group(1)}"', s)
    return s.replace("<svg ", f'<svg role="img" aria-label="{spec.alt}" ', 1)


def png(spec: FigureSpec, dpi: int = 150) -> bytes:
    """The figure as PNG bytes (Agg canvas), for ``report.md`` and the README."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        FigureCanvasAgg(spec.figure)                   # the Agg canvas, explicitly: no display needed
        spec.figure.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
