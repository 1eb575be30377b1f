"""The campaign report: ``campaign.json``, ``campaign.md`` and ``campaign.html`` from the streamed results.

Everything is computed from ``results.jsonl`` alone (:func:`load`): its
``"meta"`` lines (one per start or resume: the configuration, the start
time) and its ``"case"`` lines (one per finished case). :func:`summarize`
reduces them to the report dict written as ``campaign.json``;
:func:`render_markdown` and :func:`render_html` only format that dict, with
the main report's table helpers and a histogram drawn as an inline SVG.
Cost: O(cases).
"""

from __future__ import annotations

import json
import math
import os
from html import escape
from typing import Any, Iterable

__all__ = ["load", "summarize", "render_markdown", "render_html", "write_reports", "RESULTS", "BINS"]

#: The streamed results file inside ``--out``.
RESULTS = "results.jsonl"

#: Histogram bins of the error/tolerance ratio (upper edges; the last is open).
BINS = (1e-8, 1e-6, 1e-4, 1e-2, 1e-1, 1.0, math.inf)
_BIN_LABELS = ("< 1e-8", "1e-8..1e-6", "1e-6..1e-4", "1e-4..0.01", "0.01..0.1", "0.1..1", "> 1 (fails)")

FAILED = ("disagree", "error", "crash")


def load(path: str) -> tuple[list[dict], list[dict]]:
    """``(meta lines, case lines)`` of a results file; a torn last line (killed mid-write) is ignored.

    A case recorded twice (it cannot be, but a file concatenated by hand could) counts once: the last wins.
    """
    metas, cases = [], {}
    if not os.path.exists(path):
        return [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("type") == "meta":
                metas.append(rec)
            elif rec.get("type") == "case":
                cases[rec["index"]] = rec
    return metas, [cases[i] for i in sorted(cases)]


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _bin(ratio: float) -> int:
    for i, edge in enumerate(BINS):
        if ratio < edge:
            return i
    return len(BINS) - 1


def summarize(metas: list[dict], cases: Iterable[dict]) -> dict[str, Any]:
    """The report dict: configuration, counts, per pair statistics, disagreements, throughput."""
    cases = list(cases)
    meta = metas[0] if metas else {}
    per_pair: dict[str, dict[str, Any]] = {}
    kinds: dict[str, dict[str, Any]] = {}
    for rec in cases:
        k = kinds.setdefault(rec.get("kind", "?"), {"cases": 0, "disagreements": 0, "seconds": 0.0})
        k["cases"] += 1
        k["disagreements"] += rec.get("status") in FAILED
        k["seconds"] = round(k["seconds"] + float(rec.get("seconds", 0.0)), 3)
        for pair, v in rec.get("pairs", {}).items():
            ratio = _f(v.get("ratio"))
            cur = per_pair.setdefault(pair, {"cases": 0, "failed": 0, "worst_ratio": 0.0, "max_abs_err": 0.0,
                                             "max_scaled_err": 0.0, "worst_case": None,
                                             "histogram": [0] * len(BINS)})
            cur["cases"] += 1
            cur["failed"] += v.get("status") == "fail"
            cur["histogram"][_bin(ratio if math.isfinite(ratio) else math.inf)] += 1
            if ratio > cur["worst_ratio"] or (not math.isfinite(ratio) and math.isfinite(cur["worst_ratio"])):
                cur["worst_ratio"], cur["worst_case"] = ratio, rec["index"]
            cur["max_abs_err"] = max(cur["max_abs_err"], _f(v.get("max_abs_err")))
            cur["max_scaled_err"] = max(cur["max_scaled_err"], _f(v.get("scaled_err")))
    from .cases import PAIRS

    order = [p for p in PAIRS if p in per_pair] + sorted(p for p in per_pair if p not in PAIRS)
    for p in per_pair.values():
        p["worst_ratio"] = p["worst_ratio"] if math.isfinite(p["worst_ratio"]) else str(p["worst_ratio"])
    bad = [rec for rec in cases if rec.get("status") in FAILED]
    # Throughput over time: finished cases per interval of the run, from the first start.
    starts = [m["started"] for m in metas if "started" in m]
    t0 = min(starts) if starts else min((c.get("finished", 0.0) for c in cases), default=0.0)
    t_end = max((c.get("finished", t0) for c in cases), default=t0)
    span = max(t_end - t0, 1e-9)
    step = max(1.0, span / 10)
    buckets = [0] * max(1, int(math.ceil(span / step)))
    for c in cases:
        i = min(int((c.get("finished", t0) - t0) / step), len(buckets) - 1)
        buckets[max(i, 0)] += 1
    throughput = [{"from_s": round(i * step, 1), "to_s": round((i + 1) * step, 1), "cases": n,
                   "cases_per_s": round(n / step, 3)} for i, n in enumerate(buckets)]
    case_seconds = sum(float(c.get("seconds", 0.0)) for c in cases)
    # Steady state: between the first and the last finished case (start-up and worker imports left out).
    done = sorted(c.get("finished", t0) for c in cases)
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
    return {
        "config": {k: v for k, v in meta.items() if k not in ("type", "started")},
        "runs": len(metas),
        "requested": meta.get("cases"),
        "cases": len(cases),
        "passed": sum(c.get("status") == "pass" for c in cases),
        "disagreements": sum(c.get("status") == "disagree" for c in cases),
        "errors": sum(c.get("status") == "error" for c in cases),
        "crashes": sum(c.get("status") == "crash" for c in cases),
        "wall_seconds": round(span, 1),
        "case_seconds": round(case_seconds, 1),
        "cases_per_second": round(len(cases) / span, 3) if cases else 0.0,
        "steady_cases_per_second": round(steady, 3),
        "workers": sorted({c.get("worker", "?") for c in cases}),
        "by_kind": kinds,
        "per_pair": {p: per_pair[p] for p in order},
        "histogram_bins": list(_BIN_LABELS),
        "bad_cases": [{k: c.get(k) for k in ("index", "seed", "kind", "status", "repr", "failures", "snippet",
                                             "shrunk", "error", "traceback") if c.get(k) is not None}
                      for c in bad],
        "throughput": throughput,
    }


def _fmt(x: Any) -> str:
    v = _f(x)
    if math.isnan(v):
        return str(x)
    return f"{v:.3g}" if v != 0 else "0"


def _pair_rows(s: dict) -> list[list[str]]:
    return [[p, str(v["cases"]), str(v["failed"]), _fmt(v["worst_ratio"]), _fmt(v["max_abs_err"]),
             _fmt(v["max_scaled_err"]), str(v["worst_case"])] for p, v in s["per_pair"].items()]


_PAIR_HEADER = ["pair", "cases", "failed", "worst error/tolerance", "max abs error", "max scaled error",
                "worst case"]


def _headline(s: dict) -> str:
    bad = s["disagreements"] + s["errors"] + s["crashes"]
    verdict = "no disagreement" if bad == 0 else (f"{s['disagreements']} disagreement(s), {s['errors']} error(s), "
                                                  f"{s['crashes']} crash(es)")
    return (f"{s['cases']} case(s) of {s['requested']} requested: {verdict}; {s['wall_seconds']} s wall, "
            f"{s['cases_per_second']} cases/s ({s.get('steady_cases_per_second', 0)} once started), "
            f"{len(s['workers'])} worker process(es), {s['runs']} run(s)")


def _bad_text(c: dict) -> list[str]:
    lines = [f"case {c['index']} ({c.get('kind')}, seed {c.get('seed')}): {c['status']}"]
    if c.get("error"):
        lines.append(f"error: {c['error']}")
    sh = c.get("shrunk")
    if sh:
        lines.append(f"shrunk in {sh['tries']} tries: pair {sh['pair']} ({sh['quantity']}), element "
                     f"{sh['element'] or '-'}: {sh['a']} = {_fmt(sh['value_a'])}, {sh['b']} = {_fmt(sh['value_b'])}, "
                     f"error/tolerance {_fmt(sh['ratio'])}")
    for f in c.get("failures", ())[:6]:
        lines.append(f"{f.get('quantity')} {f.get('b')}~{f.get('a')}: element {f.get('worst') or '-'}, "
                     f"{f.get('a')} = {_fmt(f.get('worst_a'))}, {f.get('b')} = {_fmt(f.get('worst_b'))}, "
                     f"error/tolerance {_fmt(f.get('ratio'))}")
    return lines


def render_markdown(s: dict) -> str:
    """``campaign.md``."""
    from ..report.markdown import _table

    out = ["# gradverify campaign", "", _headline(s), "",
           f"Configuration: `{json.dumps(s['config'], sort_keys=True)}`", "", "## Per pair", "",
           _table(_PAIR_HEADER, _pair_rows(s)), "", "### Histogram of error/tolerance (cases per bin)", "",
           _table(["pair"] + s["histogram_bins"], [[p] + [str(n) for n in v["histogram"]]
                                                   for p, v in s["per_pair"].items()]), "",
           "## By kind", "", _table(["kind", "cases", "disagreements", "case seconds"],
                                    [[k, str(v["cases"]), str(v["disagreements"]), _fmt(v["seconds"])]
                                     for k, v in s["by_kind"].items()]), "",
           "## Disagreements", ""]
    if not s["bad_cases"]:
        out += ["None.", ""]
    for c in s["bad_cases"]:
        out += ["- " + "\n  ".join(_bad_text(c)), ""]
        snippet = (c.get("shrunk") or {}).get("snippet") or c.get("snippet")
        if snippet:
            out += ["```python", snippet.rstrip(), "```", ""]
    out += ["## Throughput over time", "",
            _table(["from s", "to s", "cases", "cases/s"],
                   [[str(t["from_s"]), str(t["to_s"]), str(t["cases"]), str(t["cases_per_s"])]
                    for t in s["throughput"]]), ""]
    return "\n".join(out)


def _svg_histogram(counts: list[int], labels: list[str]) -> str:
    w, h, pad = 56, 90, 18
    top = max(max(counts), 1)
    bars = []
    for i, n in enumerate(counts):
        bh = 0 if n == 0 else max(2, int((h - 2 * pad) * math.log1p(n) / math.log1p(top)))
        x = 4 + i * w
        color = "#b00020" if i == len(counts) - 1 else "#0072B2"
        bars.append(f'<rect x="{x}" y="{h - pad - bh}" width="{w - 8}" height="{bh}" fill="{color}"/>'
                    f'<text x="{x + (w - 8) / 2}" y="{h - pad - bh - 3}" font-size="10" text-anchor="middle">{n}'
                    f'</text><text x="{x + (w - 8) / 2}" y="{h - 4}" font-size="8" text-anchor="middle">'
                    f'{escape(labels[i])}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{8 + w * len(counts)}" height="{h}" '
            f'role="img">{"".join(bars)}</svg>')


def render_html(s: dict) -> str:
    """``campaign.html``: one self-contained page, histograms as inline SVG (log-scaled bar heights)."""
    from ..report.html import _CSS, _table

    bad = s["disagreements"] + s["errors"] + s["crashes"]
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>gradverify campaign</title>",
         f"<style>{_CSS}</style></head><body>", "<h1>gradverify campaign</h1>",
         f'<p class="headline"><span class="{"good" if bad == 0 else "bad"}">{escape(_headline(s))}</span></p>',
         f'<p class="muted">configuration: <code>{escape(json.dumps(s["config"], sort_keys=True))}</code></p>',
         "<h2>Per pair</h2>", _table(_PAIR_HEADER, _pair_rows(s)),
         "<h3>Histogram of error/tolerance</h3>", '<div class="plots">']
    for p, v in s["per_pair"].items():
        h.append(f"<figure><figcaption>{escape(p)}</figcaption>{_svg_histogram(v['histogram'], s['histogram_bins'])}"
                 "</figure>")
    h += ["</div>", "<h2>By kind</h2>",
          _table(["kind", "cases", "disagreements", "case seconds"],
                 [[k, str(v["cases"]), str(v["disagreements"]), _fmt(v["seconds"])] for k, v in s["by_kind"].items()]),
          "<h2>Disagreements</h2>"]
    if not s["bad_cases"]:
        h.append("<p>None.</p>")
    for c in s["bad_cases"]:
        h.append("<p>" + "<br>".join(escape(x) for x in _bad_text(c)) + "</p>")
        snippet = (c.get("shrunk") or {}).get("snippet") or c.get("snippet")
        if snippet:
            h.append(f"<pre>{escape(snippet)}</pre>")
    h += ["<h2>Throughput over time</h2>",
          _table(["from s", "to s", "cases", "cases/s"],
                 [[str(t["from_s"]), str(t["to_s"]), str(t["cases"]), str(t["cases_per_s"])]
                  for t in s["throughput"]]), "</body></html>"]
    return "\n".join(h)


def write_reports(out_dir: str) -> dict[str, Any]:
    """Render ``campaign.json``/``.md``/``.html`` into ``out_dir`` from its ``results.jsonl``; returns the summary."""
    metas, cases = load(os.path.join(out_dir, RESULTS))
    s = summarize(metas, cases)
    with open(os.path.join(out_dir, "campaign.json"), "w", encoding="utf-8") as fh:
        json.dump(s, fh, indent=2, default=str)
    with open(os.path.join(out_dir, "campaign.md"), "w", encoding="utf-8") as fh:
        fh.write(render_markdown(s))
    with open(os.path.join(out_dir, "campaign.html"), "w", encoding="utf-8") as fh:
        fh.write(render_html(s))
    return s
