"""Hand-written SVG plots: log-log lines with fitted slopes, and histograms of log10 errors.

No plotting library: each function returns one self-contained ``<svg>``
string (no scripts, no external fonts or links) that a browser shows inline
in the HTML report and that the Markdown report links as a file. The plots
draw only what the report dict holds: data points, and fitted lines given as
``(slope, intercept)`` in log10 space -- nothing is fitted here.

Cost: O(number of points) string formatting.
"""

from __future__ import annotations

import hashlib
import math
from html import escape
from typing import Any, Sequence

__all__ = ["PALETTE", "loglog", "histogram", "scaling_plots", "agreement_plots", "checker_plot"]

#: Line colours (colour-blind friendly, after Okabe & Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")

_FONT = 'font-family="Helvetica, Arial, sans-serif"'
_MARKERS = ("circle", "square", "triangle", "diamond")


def _f(v: float) -> str:
    return f"{v:.1f}"


def _pow10_label(k: int, x: float, y: float, anchor: str) -> str:
    """``10^k`` as SVG text with a raised exponent (``1``, ``10`` for k = 0, 1)."""
    if k == 0:
        body = "1"
    elif k == 1:
        body = "10"
    else:
        body = f'10<tspan dy="-5" font-size="9">{k}</tspan>'
    return f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="11" {_FONT}>{body}</text>'


def _marker(kind: str, x: float, y: float, color: str) -> str:
    if kind == "square":
        return f'<rect x="{_f(x - 3.5)}" y="{_f(y - 3.5)}" width="7" height="7" fill="{color}"/>'
    if kind == "triangle":
        return (f'<polygon points="{_f(x)},{_f(y - 4.5)} {_f(x - 4)},{_f(y + 3.5)} {_f(x + 4)},{_f(y + 3.5)}" '
                f'fill="{color}"/>')
    if kind == "diamond":
        return (f'<polygon points="{_f(x)},{_f(y - 5)} {_f(x + 4.5)},{_f(y)} {_f(x)},{_f(y + 5)} '
                f'{_f(x - 4.5)},{_f(y)}" fill="{color}"/>')
    return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="3.8" fill="{color}"/>'


def _span(lo: float, hi: float) -> tuple[float, float]:
    """Axis limits in log10 units: the data's range padded by 6% (at least 0.1 decade) on each side,
    widened to whole decades when that would leave no decade tick inside."""
    a, b = math.log10(lo), math.log10(hi)
    pad = max(0.06 * (b - a), 0.1)
    a, b = a - pad, b + pad
    if math.floor(b) < math.ceil(a) + 1:          # fewer than two decade ticks inside: use whole decades
        a, b = math.floor(a), math.ceil(b)
        if a == b:
            a, b = a - 1, b + 1
    return a, b


def loglog(series: Sequence[dict[str, Any]], *, title: str, xlabel: str, ylabel: str, width: int = 720,
           height: int = 420, note: str = "") -> str:
    """A log-log line plot.

    Args:
        series: dicts with ``name``, ``x`` and ``y`` (sequences; ``None`` or
            non-positive points are skipped), optional ``fit`` =
            ``{"slope": s, "intercept": c}`` (log10 y = c + s log10 x, drawn
            dashed across the series' x range), ``color``, ``dashed``
            (draw the data line dashed) and ``markers`` (default True).
        title, xlabel, ylabel: text.
        width, height: pixels.
        note: a line of small text under the plot.

    Returns:
        The ``<svg>`` element as a string.
    """
    pts = [(x, y) for s in series for x, y in zip(s["x"], s["y"])
           if x is not None and y is not None and x > 0 and y > 0]
    legend_w = 210
    left, right, top, bottom = 70, legend_w + 20, 36, 56 + (16 if note else 0)
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left + pw / 2:.1f}" y="22" text-anchor="middle" font-size="14" font-weight="bold" '
           f'{_FONT}>{escape(title)}</text>']
    if not pts:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle" font-size="13" '
                   f'{_FONT}>no measured points</text></svg>')
        return "".join(out)
    x0, x1 = _span(min(p[0] for p in pts), max(p[0] for p in pts))
    y0, y1 = _span(min(p[1] for p in pts), max(p[1] for p in pts))

    def X(x: float) -> float:
        return left + (math.log10(x) - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        return top + ph - (math.log10(y) - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#333" '
               f'stroke-width="1"/>')
    xstep = max(1, math.ceil((x1 - x0) / 8))
    ystep = max(1, math.ceil((y1 - y0) / 8))
    for k in range(math.floor(x0), math.ceil(x1) + 1):
        if x0 - 1e-9 <= k <= x1 + 1e-9 and k % xstep == 0:
            px = X(10.0 ** k)
            out.append(f'<line x1="{_f(px)}" y1="{top}" x2="{_f(px)}" y2="{top + ph}" stroke="#ddd"/>')
            out.append(_pow10_label(k, px, top + ph + 17, "middle"))
        for m in range(2, 10):
            if x0 < k + math.log10(m) < x1:
                mx = X(m * 10.0 ** k)
                out.append(f'<line x1="{_f(mx)}" y1="{top + ph}" x2="{_f(mx)}" y2="{top + ph - 4}" stroke="#666"/>')
    for k in range(math.floor(y0), math.ceil(y1) + 1):
        if y0 - 1e-9 <= k <= y1 + 1e-9 and k % ystep == 0:
            py = Y(10.0 ** k)
            out.append(f'<line x1="{left}" y1="{_f(py)}" x2="{left + pw}" y2="{_f(py)}" stroke="#ddd"/>')
            out.append(_pow10_label(k, left - 6, py + 4, "end"))
        if (y1 - y0) <= 10:
            for m in range(2, 10):
                if y0 < k + math.log10(m) < y1:
                    my = Y(m * 10.0 ** k)
                    out.append(f'<line x1="{left}" y1="{_f(my)}" x2="{left + 4}" y2="{_f(my)}" stroke="#666"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 40}" text-anchor="middle" font-size="12" '
               f'{_FONT}>{escape(xlabel)}</text>')
    out.append(f'<text x="18" y="{top + ph / 2:.1f}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 18 {top + ph / 2:.1f})" {_FONT}>{escape(ylabel)}</text>')
    cid = "c" + hashlib.sha1(f"{title}|{xlabel}|{ylabel}|{len(series)}".encode()).hexdigest()[:10]
    out.append(f'<clipPath id="{cid}"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>')
    clip = f'clip-path="url(#{cid})"'
    ly = top + 8
    for i, s in enumerate(series):
        color = s.get("color") or PALETTE[i % len(PALETTE)]
        sp = [(x, y) for x, y in zip(s["x"], s["y"]) if x is not None and y is not None and x > 0 and y > 0]
        fit = s.get("fit")
        if fit and sp:
            fx0, fx1 = min(p[0] for p in sp), max(p[0] for p in sp)
            fy = [10.0 ** (fit["intercept"] + fit["slope"] * math.log10(v)) for v in (fx0, fx1)]
            out.append(f'<line x1="{_f(X(fx0))}" y1="{_f(Y(fy[0]))}" x2="{_f(X(fx1))}" y2="{_f(Y(fy[1]))}" '
                       f'stroke="{color}" stroke-width="1.2" stroke-dasharray="2 3" opacity="0.9" {clip}/>')
        if len(sp) > 1:
            d = " ".join(f"{_f(X(x))},{_f(Y(y))}" for x, y in sp)
            dash = ' stroke-dasharray="6 4"' if s.get("dashed") else ""
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash} {clip}/>')
        marker = _MARKERS[i % len(_MARKERS)]
        if s.get("markers", True):
            out.extend(_marker(marker, X(x), Y(y), color) for x, y in sp)
        # legend entry
        lx = left + pw + 14
        dash = ' stroke-dasharray="6 4"' if s.get("dashed") else ""
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>')
        if s.get("markers", True):
            out.append(_marker(marker, lx + 11, ly, color))
        out.append(f'<text x="{lx + 28}" y="{ly + 4}" font-size="12" {_FONT}>{escape(s["name"])}</text>')
        ly += 18
        if s.get("legend_note"):
            out.append(f'<text x="{lx + 28}" y="{ly + 2}" font-size="10" fill="#555" {_FONT}>'
                       f'{escape(s["legend_note"])}</text>')
            ly += 16
    if any(s.get("fit") for s in series):
        lx = left + pw + 14
        out.append(f'<line x1="{lx}" y1="{ly + 2}" x2="{lx + 22}" y2="{ly + 2}" stroke="#333" '
                   'stroke-dasharray="2 3"/>')
        out.append(f'<text x="{lx + 28}" y="{ly + 6}" font-size="10" fill="#555" {_FONT}>least-squares fit</text>')
    if note:
        out.append(f'<text x="{left}" y="{height - 8}" font-size="10" fill="#555" {_FONT}>{escape(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def _nice_max(n: int) -> tuple[int, int]:
    """A round axis maximum >= n and its tick step."""
    if n <= 5:
        return max(n, 1), 1
    mag = 10 ** math.floor(math.log10(n))
    for step in (mag / 5, mag / 2, mag, 2 * mag):
        step = max(1, int(step))
        if n / step <= 6:
            return int(math.ceil(n / step) * step), step
    return n, max(1, n // 5)


def histogram(hist: dict[str, Any], *, title: str, xlabel: str = "error (log10 bins)", width: int = 360,
              height: int = 220, color: str = PALETTE[0]) -> str:
    """A histogram of log10-binned values, with a separate bar for zero (below the first edge).

    Args:
        hist: ``{"edges_log10": [e0, ..., en], "counts": [n bins], "below": k, "above": m}``
            as the report model stores it.
        title, xlabel: text; width, height: pixels.
    """
    edges, counts = list(hist["edges_log10"]), list(hist["counts"])
    below, above = int(hist.get("below", 0)), int(hist.get("above", 0))
    bars = [("0", below)] + [(str(e), c) for e, c in zip(edges[:-1], counts)] + [(">1", above)]
    left, right, top, bottom = 36, 10, 28, 44
    pw, ph = width - left - right, height - top - bottom
    ymax, ystep = _nice_max(max(c for _, c in bars) if bars else 1)
    bw = pw / len(bars)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left + pw / 2:.1f}" y="17" text-anchor="middle" font-size="12" font-weight="bold" '
           f'{_FONT}>{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#333"/>']
    for v in range(0, ymax + 1, ystep):
        py = top + ph - v / ymax * ph
        out.append(f'<line x1="{left}" y1="{_f(py)}" x2="{left + pw}" y2="{_f(py)}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 4}" y="{_f(py + 3)}" text-anchor="end" font-size="9" {_FONT}>{v}</text>')
    for i, (label, c) in enumerate(bars):
        x = left + i * bw
        h = c / ymax * ph
        fill = "#888888" if i in (0, len(bars) - 1) else color
        if c:
            out.append(f'<rect x="{_f(x + 1)}" y="{_f(top + ph - h)}" width="{_f(max(bw - 2, 1))}" '
                       f'height="{_f(h)}" fill="{fill}"><title>{escape(label)}: {c}</title></rect>')
    # x labels: "0", every third decade, and ">1"
    for i, (label, _) in enumerate(bars):
        x = left + i * bw
        if i == 0:
            out.append(f'<text x="{_f(x + bw / 2)}" y="{top + ph + 13}" text-anchor="middle" font-size="9" '
                       f'{_FONT}>0</text>')
        elif i == len(bars) - 1:
            continue
        else:
            k = int(label)
            if k % 3 == 0 and k != edges[0]:
                out.append(f'<line x1="{_f(x)}" y1="{top + ph}" x2="{_f(x)}" y2="{top + ph + 3}" stroke="#333"/>')
                body = "1" if k == 0 else f'10<tspan dy="-4" font-size="7">{k}</tspan>'
                out.append(f'<text x="{_f(x)}" y="{top + ph + 13}" text-anchor="middle" font-size="9" '
                           f'{_FONT}>{body}</text>')
    xr = left + (len(bars) - 1) * bw                  # 10^0 = 1: the left edge of the ">1" bar
    out.append(f'<line x1="{_f(xr)}" y1="{top + ph}" x2="{_f(xr)}" y2="{top + ph + 3}" stroke="#333"/>')
    out.append(f'<text x="{_f(xr)}" y="{top + ph + 13}" text-anchor="middle" font-size="9" {_FONT}>1</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="10" '
               f'{_FONT}>{escape(xlabel)}</text>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------
# The report's plots, from the report dict
# ---------------------------------------------------------------------------

_LABELS = {"reverse": "reverse mode", "forward_mode": "forward mode (P JVPs)",
           "forward_diff": "forward differences", "central_diff": "central differences"}


def scaling_plots(scaling: dict[str, Any]) -> dict[str, str]:
    """``{"relative": svg, "seconds": svg, "evaluations": svg}`` from the report's ``scaling`` section."""
    rows = scaling["rows"]
    methods = list(scaling["methods"])
    rel, sec, ev = [], [], []
    for i, m in enumerate(methods):
        mr = [r for r in rows if r["method"] == m]
        s = scaling["slopes"].get(m)
        slope = f"slope {s:+.2f}" if isinstance(s, (int, float)) else "slope n/a"
        color = PALETTE[i]
        rel.append({"name": _LABELS.get(m, m), "legend_note": slope, "color": color,
                    "x": [r["params"] for r in mr], "y": [r["relative"] for r in mr], "fit": scaling["fits"].get(m)})
        ss = scaling["slopes_seconds"].get(m)
        sec.append({"name": _LABELS.get(m, m), "color": color,
                    "legend_note": f"slope {ss:+.2f}" if isinstance(ss, (int, float)) else "slope n/a",
                    "x": [r["params"] for r in mr], "y": [r["seconds"] for r in mr]})
        ev.append({"name": _LABELS.get(m, m), "color": color,
                   "x": [r["params"] for r in mr], "y": [r["evaluations"] for r in mr]})
    fwd = scaling.get("forward", [])
    sec.append({"name": "one forward pass", "color": PALETTE[6], "dashed": True,
                "x": [r["params"] for r in fwd], "y": [r["seconds"] for r in fwd]})
    missing = len(scaling.get("not_measured", []))
    note = (f"{missing} (method, P) cells over the {scaling['budget_seconds']:g} s budget are not measured "
            "and not drawn" if missing else "")
    return {
        "relative": loglog(rel, title="Cost of one full gradient, in forward passes",
                           xlabel="parameters P", ylabel="time / time of one forward pass", note=note),
        "seconds": loglog(sec, title="Time of one full gradient", xlabel="parameters P",
                          ylabel=f"seconds (median, {scaling.get('clock', 'wall')} time)", note=note),
        "evaluations": loglog(ev, title="Function evaluations per gradient", xlabel="parameters P",
                              ylabel="evaluations"),
    }


def agreement_plots(agreement: dict[str, Any]) -> dict[str, str]:
    """Pair label -> histogram svg of the per-case scaled errors."""
    out = {}
    for i, (label, p) in enumerate(agreement["pairs"].items()):
        out[label] = histogram(p["histogram"], title=f"{label}  ({p['cases']} cases)",
                               xlabel="max|a - b| / max|b| per case (grey: 0 or < 1e-18; > 1)",
                               color=PALETTE[i % 6])
    return out


def checker_plot(checkers: dict[str, Any]) -> str | None:
    """Seconds per check against P, one line per checker; None without measured rows."""
    rows = [r for r in checkers.get("rows", []) if r.get("params") and r.get("reported_seconds")]
    if not rows:
        return None
    names = list(dict.fromkeys(str(r.get("method")) for r in rows))
    series = []
    for i, n in enumerate(names):
        rs = sorted((r for r in rows if str(r.get("method")) == n), key=lambda r: r["params"])
        series.append({"name": n, "x": [r["params"] for r in rs], "y": [r["reported_seconds"] for r in rs],
                       "color": PALETTE[i % len(PALETTE)], "dashed": "fast" in n})
    return loglog(series, title="Time per gradient check (median)", xlabel="parameters P",
                  ylabel=f"seconds per check ({checkers.get('clock', 'wall')} time)", height=440)
