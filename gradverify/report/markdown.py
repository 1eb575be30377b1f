"""Render the report dict as Markdown (``report.md``); figures are linked as PNG files beside it.

:func:`render` only formats what the dict holds (:mod:`gradverify.report.model`);
:func:`plot_files` gives the PNGs it links (``plots/*.png``), drawn from the
same dict by :mod:`gradverify.report.plots` with matplotlib. Without
matplotlib there are no figures: the tables are written and the report says
how to get them. Cost: O(size of the dict), plus about a second of drawing.
"""

from __future__ import annotations

from typing import Any

from . import plots, text

__all__ = ["render", "plot_files"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    def esc(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_files(report: dict[str, Any], figures: list[Any] | None = None) -> dict[str, bytes]:
    """Relative path -> PNG bytes of every figure the Markdown links ({} without matplotlib).

    ``figures``: already drawn :func:`gradverify.report.plots.figures` of ``report`` (None: draw them).
    """
    specs = plots.figures(report) if figures is None else figures
    return {f"plots/{spec.name}.png": plots.png(spec) for spec in specs}


def _figure(figs: dict[str, Any], name: str) -> list[str]:
    spec = figs.get(name)
    if spec is None:
        return []
    return [f"![{spec.alt}](plots/{name}.png)", "", f"*{spec.caption}*", ""]


def render(report: dict[str, Any], figures: list[Any] | None = None) -> str:
    """The Markdown text of the report (``figures``: as for :func:`plot_files`; only names and captions are used)."""
    env = report.get("environment", {})
    figs = {f.name: f for f in (plots.figures(report) if figures is None else figures)}
    md = ["# gradverify report", "",
          f"`{env.get('command', 'gradverify report')}` -- seed {report.get('seed')}, "
          f"{env.get('date_utc', '')} UTC. "
          "The HTML version (`index.html`) shows the same numbers with the figures inline.", ""]
    md += ["## In numbers", ""] + [f"- {line}" for line in report.get("headline", [])] + [""]
    if not plots.available():
        md += [f"> {plots.MISSING}", ""]

    sc = report.get("scaling")
    if sc:
        md += ["## Cost of a gradient: reverse mode vs forward mode vs finite differences", ""]
        for para in text.scaling_explanation(sc):
            md += [para, ""]
        md += _figure(figs, "scaling-relative") + _figure(figs, "scaling-seconds") \
            + _figure(figs, "scaling-evaluations")
        md += ["### Fitted slopes (log-log, cost / one forward pass vs P)", ""]
        md += [_table(["method", "slope", "raw-time slope", "what one gradient costs"],
                      [[text.LABELS[m], text.slope(sc["slopes"].get(m)), text.slope(sc["slopes_seconds"].get(m)),
                        sc["methods"][m]] for m in sc["methods"]]), ""]
        md += ["### Median time per gradient (multiple of one forward pass)", ""]
        md += [_table(*text.scaling_pivot(sc)), ""]
        md += ["### Evaluations per gradient (and each gradient's largest difference from reverse mode, "
               "relative to max |gradient|)", ""]
        md += [_table(*text.evaluations_pivot(sc)), ""]
        if sc["not_measured"]:
            md += [f"Not measured (over the per-measurement budget of {sc['budget_seconds']:g} s; no number is "
                   "extrapolated for them):", ""]
            md += [f"- {text.LABELS.get(r['method'], r['method'])} at P = {text.number(r['params'])}: {r['reason']}"
                   for r in sc["not_measured"]] + [""]
        md += ["### (forward + backward) / forward", ""]
        md += [_table(["framework", "P", "forward", "forward + backward", "ratio", "wall-time ratio"],
                      [[r["framework"], text.number(r["params"]), text.seconds(r["forward_seconds"]),
                        text.seconds(r["gradient_seconds"]),
                        text.ratio(r["ratio"]) if r["available"] else r["reason"], text.ratio(r.get("wall_ratio"))]
                       for r in sc["cheap_gradient_rows"]]), ""]

    ch = report.get("checkers")
    if ch is not None:
        md += ["## Checker comparison", "", text.checkers_explanation(ch), ""]
        if ch.get("available") and ch.get("rows"):
            md += _figure(figs, "checkers")
            md += [_table(*text.checker_pivot(ch)), ""]
            notes = [f"- {r['method']} at P = {text.number(r['params'])}: {r['note']}" for r in ch["rows"]
                     if r.get("note")]
            md += notes + ([""] if notes else [])

    ag = report.get("agreement")
    if ag:
        md += ["## Agreement between references", "", text.agreement_explanation(ag), ""]
        if ag["skipped"]:
            md += ["Skipped: " + "; ".join(f"{s['backend']} ({s['reason']})" for s in ag["skipped"]), ""]
        md += [_table(["pair", "cases", "exact", "median error", "max error", "max |a-b|", "max error/tol",
                       "disagreements"],
                      [[label, str(p["cases"]), str(p["exact"]), text.error(p["median_scaled_err"]),
                        text.error(p["max_scaled_err"]), text.error(p["max_abs_err"]), text.error(p["max_ratio"]),
                        str(p["disagreements"])] for label, p in ag["pairs"].items()]), ""]
        md += [_table(["kind", "cases", "disagreements", "seconds"],
                      [[k, str(v["cases"]), str(v["disagreements"]), f"{v['seconds']:.1f}"]
                       for k, v in ag["by_kind"].items()]), ""]
        md += _figure(figs, "agreement")
        md += [f"### Disagreements ({len(ag['disagreements'])})", ""]
        if not ag["disagreements"]:
            md += ["None: every pair agreed within tolerance on every case.", ""]
        for d in ag["disagreements"]:
            md += [f"**case {d['case']}** ({d['kind']}, seed {d['seed']}): "
                   + "; ".join(f"{f.get('quantity', '')} {f.get('a', '')}~{f.get('b', '')} {f.get('status')} "
                               f"err/tol {text.error(f.get('ratio'))} at {f.get('worst', '')}"
                               if "a" in f else f"{f.get('status')}: {f.get('detail')}"
                               for f in d["failures"]), "",
                   "```python", d["snippet"].rstrip(), "```", ""]

    if env:
        md += ["## Environment", "", _table(["setting", "value"], [[k, v] for k, v in text.environment_rows(env)]
                                             + [["run time", text.run_time(report)]]), ""]
        md += ["Reproduce with:", "", "```", env.get("command", "gradverify report"), "```", ""]
    return "\n".join(md)
