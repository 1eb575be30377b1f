"""Render the report dict as one self-contained HTML page (``index.html``).

Inline CSS, figures inline as SVG drawn by matplotlib
(:mod:`gradverify.report.plots`), no scripts, no network: the page opens the
same from a laptop, a CI artifact or an air-gapped machine. The headline
numbers come first, each figure sits in a ``<figure>`` with a one-sentence
caption holding the measured numbers, and the environment, the seed and the
report's run time close the page. Without matplotlib the tables are written
and the page says how to get the figures. :func:`render` only formats what
the dict holds. Cost: O(size of the dict), plus about a second of drawing.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from . import plots, text

__all__ = ["render"]

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}.scroll{overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
table.env td,table.env th{text-align:left}
.headline{background:#f4f8fb;border-left:4px solid #0072B2;padding:.6em 1em}
figure{margin:1.2em 0;max-width:860px;overflow-x:auto}
figure svg{width:100%;min-width:480px;height:auto;display:block}
@media (max-width:640px){body{padding:0 8px;margin:1em auto}}
figcaption{font-size:.92em;color:#333;margin-top:.3em}
.headline li{margin:.2em 0}.missing{background:#fff6e5;border-left:4px solid #E69F00;padding:.5em 1em}
.muted{color:#666;font-size:.9em}.bad{color:#b00020;font-weight:bold}.good{color:#007a3d;font-weight:bold}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto;font-size:.85em}
code{background:#f6f6f6;padding:0 .2em}
"""


def _md_inline(s: str) -> str:
    """Escape, then turn ``**bold**`` and ``*em*`` into tags (the prose in :mod:`text` uses them)."""
    s = escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table in a box that scrolls sideways when the window is narrower than the table."""
    out = ['<div class="scroll">', f'<table class="{cls}">' if cls else "<table>", "<tr>"]
    out += [f"<th>{escape(str(h))}</th>" for h in header]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def _figure(figs: dict[str, Any], name: str) -> str:
    spec = figs.get(name)
    if spec is None:
        return ""
    return (f'<figure id="fig-{name}">{plots.svg(spec)}<figcaption>{_md_inline(spec.caption)}</figcaption>'
            "</figure>")


def render(report: dict[str, Any], figures: list[Any] | None = None) -> str:
    """The HTML text of the report.

    Args:
        report: the report dict.
        figures: :func:`gradverify.report.plots.figures` of it, when the
            caller already drew them (:func:`gradverify.report.cli.write`
            draws once for both documents); None draws them here.
    """
    env = report.get("environment", {})
    figs = {f.name: f for f in (plots.figures(report) if figures is None else figures)}
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         "<title>gradverify report</title>", f"<style>{_CSS}</style></head><body>",
         "<h1>gradverify report</h1>",
         f'<p class="muted"><code>{escape(env.get("command", "gradverify report"))}</code> &middot; seed '
         f'{escape(str(report.get("seed")))} &middot; {escape(env.get("date_utc", ""))} UTC</p>']
    h.append('<div class="headline"><b>In numbers</b><ul>'
             + "".join(f"<li>{escape(x)}</li>" for x in report.get("headline", [])) + "</ul></div>")
    if not plots.available():
        h.append(f'<p class="missing">{escape(plots.MISSING)}</p>')
    toc = [("scaling", "Cost scaling"), ("checkers", "Checker comparison"), ("agreement", "Agreement"),
           ("environment", "Environment")]
    h.append("<p>" + " &middot; ".join(f'<a href="#{k}">{v}</a>' for k, v in toc if k in report) + "</p>")

    sc = report.get("scaling")
    if sc:
        h.append('<h2 id="scaling">Cost of a gradient: reverse mode vs forward mode vs finite differences</h2>')
        h += [f"<p>{_md_inline(p)}</p>" for p in text.scaling_explanation(sc)]
        h.append(_figure(figs, "scaling-relative"))
        h.append("<h3>Fitted slopes (log-log, cost / one forward pass vs P)</h3>")
        h.append(_table(["method", "slope", "raw-time slope", "what one gradient costs"],
                        [[text.LABELS[m], text.slope(sc["slopes"].get(m)), text.slope(sc["slopes_seconds"].get(m)),
                          sc["methods"][m]] for m in sc["methods"]]))
        h.append(_figure(figs, "scaling-seconds") + _figure(figs, "scaling-evaluations"))
        h.append("<h3>Median time per gradient (multiple of one forward pass)</h3>")
        h.append(_table(*text.scaling_pivot(sc)))
        h.append("<h3>Evaluations per gradient (and each gradient's largest difference from reverse mode, "
                 "relative to max |gradient|)</h3>")
        h.append(_table(*text.evaluations_pivot(sc)))
        if sc["not_measured"]:
            h.append(f"<p>Not measured (over the per-measurement budget of {sc['budget_seconds']:g} s; no number "
                     "is extrapolated for them):</p><ul>")
            h += [f"<li>{escape(text.LABELS.get(r['method'], r['method']))} at P = {text.number(r['params'])}: "
                  f"{escape(r['reason'])}</li>" for r in sc["not_measured"]]
            h.append("</ul>")
        h.append("<h3>(forward + backward) / forward</h3>")
        h.append(_table(["framework", "P", "forward", "forward + backward", "ratio", "wall-time ratio"],
                        [[r["framework"], text.number(r["params"]), text.seconds(r["forward_seconds"]),
                          text.seconds(r["gradient_seconds"]),
                          text.ratio(r["ratio"]) if r["available"] else r["reason"], text.ratio(r.get("wall_ratio"))]
                         for r in sc["cheap_gradient_rows"]]))

    ch = report.get("checkers")
    if ch is not None:
        h.append('<h2 id="checkers">Checker comparison</h2>')
        h.append(f"<p>{escape(text.checkers_explanation(ch))}</p>")
        if ch.get("available") and ch.get("rows"):
            h.append(_figure(figs, "checkers"))
            h.append(_table(*text.checker_pivot(ch)))
            notes = [f"{r['method']} at P = {text.number(r['params'])}: {r['note']}" for r in ch["rows"]
                     if r.get("note")]
            if notes:
                h.append('<ul class="muted">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")

    ag = report.get("agreement")
    if ag:
        h.append('<h2 id="agreement">Agreement between references</h2>')
        h.append(f"<p>{escape(text.agreement_explanation(ag))}</p>")
        if ag["skipped"]:
            h.append('<p class="muted">Skipped: ' + escape("; ".join(f"{s['backend']} ({s['reason']})"
                                                                       for s in ag["skipped"])) + "</p>")
        h.append(_table(["pair", "cases", "exact", "median error", "max error", "max |a-b|", "max error/tol",
                         "disagreements"],
                        [[label, str(p["cases"]), str(p["exact"]), text.error(p["median_scaled_err"]),
                          text.error(p["max_scaled_err"]), text.error(p["max_abs_err"]), text.error(p["max_ratio"]),
                          str(p["disagreements"])] for label, p in ag["pairs"].items()]))
        h.append(_table(["kind", "cases", "disagreements", "seconds"],
                        [[k, str(v["cases"]), str(v["disagreements"]), f"{v['seconds']:.1f}"]
                         for k, v in ag["by_kind"].items()]))
        h.append(_figure(figs, "agreement"))
        n = len(ag["disagreements"])
        h.append(f'<h3>Disagreements: <span class="{"bad" if n else "good"}">{n}</span></h3>')
        if not n:
            h.append("<p>None: every pair agreed within tolerance on every case.</p>")
        for d in ag["disagreements"]:
            h.append(f"<p><b>case {d['case']}</b> ({escape(d['kind'])}, seed {d['seed']})</p><ul>")
            for f in d["failures"]:
                if "a" in f:
                    h.append(f"<li>{escape(str(f.get('quantity')))} {escape(f['a'])}~{escape(str(f.get('b')))}: "
                             f"{escape(str(f.get('status')))}, error/tolerance {text.error(f.get('ratio'))} at "
                             f"<code>{escape(str(f.get('worst')))}</code></li>")
                else:
                    h.append(f"<li>{escape(str(f.get('status')))}: {escape(str(f.get('detail')))}</li>")
            h.append(f"</ul><pre>{escape(d['snippet'])}</pre>")

    if env:
        h.append('<h2 id="environment">Environment</h2>')
        h.append(_table(["setting", "value"], [[k, v] for k, v in text.environment_rows(env)]
                        + [["run time", text.run_time(report)]], cls="env"))
        h.append(f"<p>Reproduce with: <code>{escape(env.get('command', 'gradverify report'))}</code></p>")
    h.append("</body></html>")
    return "\n".join(h)
