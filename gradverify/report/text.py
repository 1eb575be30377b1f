"""What the Markdown and HTML renderers share: number formatting and the report's explanatory prose.

Everything here formats values already in the report dict; nothing is
measured or fitted. Cost: O(size of the dict).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LABELS", "seconds", "number", "ratio", "slope", "scaling_pivot", "evaluations_pivot",
           "checker_pivot", "scaling_explanation", "agreement_explanation", "checkers_explanation", "environment_rows",
           "error", "caption_relative", "caption_seconds", "caption_evaluations", "caption_checkers",
           "caption_agreement", "duration", "run_time"]

LABELS = {"reverse": "reverse mode", "forward_mode": "forward mode", "forward_diff": "forward differences",
          "central_diff": "central differences"}


def _f(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x


def seconds(v: Any) -> str:
    """``1.23 ms`` style; ``-`` for None."""
    x = _f(v)
    if x is None:
        return "-"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.2f} ms"
    return f"{x * 1e6:.1f} µs"


def number(v: Any) -> str:
    """An integer with thousands separators; ``-`` for None."""
    x = _f(v)
    return "-" if x is None else f"{int(x):,}"


def ratio(v: Any, digits: int = 2) -> str:
    x = _f(v)
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def slope(v: Any) -> str:
    x = _f(v)
    return "n/a" if x is None else f"{x:+.2f}"


def error(v: Any) -> str:
    """An error magnitude: ``0``, ``3.1e-16``, ``inf``."""
    x = _f(v)
    if x is None:
        return str(v)
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.2g}"


def scaling_pivot(sc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the time table: one row per P, one column per method ("time (x forward)")."""
    methods = list(sc["methods"])
    header = ["P", f"one forward pass ({sc.get('clock', 'wall')} time)"] + [LABELS.get(m, m) for m in methods]
    by = {(r["method"], r["params"]): r for r in sc["rows"]}
    fwd = {r["params"]: r for r in sc.get("forward", [])}
    rows = []
    for p in sorted({r["params"] for r in sc["rows"]}):
        line = [number(p), seconds(fwd[p]["seconds"]) if p in fwd else "-"]
        for m in methods:
            r = by.get((m, p))
            if r is None:
                line.append("-")
            elif not r["measured"]:
                line.append("not measured")
            else:
                line.append(f"{seconds(r['seconds'])} ({ratio(r['relative'], 1)}×)")
        rows.append(line)
    return header, rows


def evaluations_pivot(sc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the evaluation-count table, with the accuracy of each gradient against reverse mode."""
    methods = list(sc["methods"])
    header = ["P"] + [f"{LABELS.get(m, m)}: evaluations (max rel. diff vs reverse)" for m in methods]
    by = {(r["method"], r["params"]): r for r in sc["rows"]}
    rows = []
    for p in sorted({r["params"] for r in sc["rows"]}):
        line = [number(p)]
        for m in methods:
            r = by.get((m, p))
            if r is None:
                line.append("-")
                continue
            ev = "1 + backward" if m == "reverse" else number(r["evaluations"])
            diff = "" if r.get("max_rel_diff_vs_reverse") is None or m == "reverse" else \
                f" ({error(r['max_rel_diff_vs_reverse'])})"
            line.append(ev + (diff if r["measured"] else " (not run)"))
        rows.append(line)
    return header, rows


def scaling_explanation(sc: dict[str, Any]) -> list[str]:
    """Paragraphs explaining the slopes, with this run's numbers."""
    s = sc["slopes"]
    cg = sc["cheap_gradient_ratio"].get("reference", {})
    at = cg.get("params")
    ref_ratio = ratio(cg.get("ratio")) if cg.get("ratio") is not None else "n/a"
    return [
        "Every method computes the same thing: the full gradient of one scalar loss with P parameters "
        f"({sc['problem']}). Costs are shown as multiples of one forward evaluation of the loss, so the "
        "log-log slope against P says how the cost grows *beyond* the forward pass itself.",
        "**Reverse mode** (backpropagation) runs one forward pass that records the graph and one backward "
        "sweep that carries adjoints from the loss back to every parameter: the whole gradient for a constant "
        f"multiple of one forward pass, whatever P is. Fitted slope: **{slope(s.get('reverse'))}** (about 0); "
        f"the constant, (forward + backward) / forward, is {ref_ratio}"
        + (f" at P = {number(at)}." if at else "."),
        "**Forward mode** pushes one tangent direction through the function per pass, so the gradient of a "
        f"scalar loss needs P passes, one per parameter: slope **{slope(s.get('forward_mode'))}** (about 1). "
        "**Forward differences** perturb one parameter at a time, P + 1 forward passes, and **central "
        "differences** two per parameter, 2P: slopes "
        f"**{slope(s.get('forward_diff'))}** and **{slope(s.get('central_diff'))}** (about 1). One backward "
        "pass versus one or two forward passes per parameter is the whole story of why training uses "
        "reverse mode -- and why finite differences are for checking gradients, not computing them.",
        "Raw-time slopes (seconds against P, which include the forward pass growing with P): "
        + ", ".join(f"{LABELS[m]} {slope(v)}" for m, v in sc["slopes_seconds"].items()) + ".",
    ]


def agreement_explanation(ag: dict[str, Any]) -> str:
    return (f"{ag['cases']} random networks and expressions (Hypothesis, seed {ag['seed']}, {ag['dtype']}) were "
            "each computed by every available backend; values, VJPs along a random cotangent and JVPs along "
            "random tangents were compared for every backend pair with gradverify's comparison core (its "
            "dtype-keyed tolerance), and each backend's VJP was checked against finite differences. The error "
            "histogrammed per pair is " + ag["error_measure"].split(": ", 1)[-1] + ". Exact agreement (error 0) "
            "has its own bar on the left; a disagreement is an error above the tolerance, not merely a "
            "non-zero one.")


def checkers_explanation(ch: dict[str, Any]) -> str:
    if not ch.get("available"):
        return f"Not available in this run: {ch.get('reason')}."
    return ("The same tanh MLP (float64, the function of every row) checked by gradverify in full and fast "
            "mode -- on the PyTorch, JAX and TensorFlow functions of it -- by torch.autograd.gradcheck (slow and "
            "fast mode), jax.test_util.check_grads, tf.test.compute_gradient and pytensor.gradient.verify_grad "
            "(each where its framework is installed), side by side in one run: median seconds per check "
            f"({ch.get('clock', 'wall')} time; report.json keeps wall and CPU time), with the number of "
            "function evaluations it made. Each checker had "
            f"{ch.get('budget_seconds', 0):g} s per size; one over it is marked not measured at that size and "
            "every larger one, never extrapolated.")


def checker_pivot(ch: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the checker table: one row per P, one column per checker ("seconds (evaluations)")."""
    rows = ch.get("rows", [])
    methods = list(dict.fromkeys(str(r.get("method")) for r in rows))
    by = {(str(r.get("method")), r.get("params")): r for r in rows}
    out = []
    for p in sorted({r.get("params") for r in rows if r.get("params") is not None}):
        line = [number(p)]
        for m in methods:
            r = by.get((m, p))
            if r is None:
                line.append("-")
            elif r.get("reported_seconds") is None:
                line.append(str(r.get("status") or "not measured"))
            else:
                cell = seconds(r["reported_seconds"])
                if r.get("evaluations") is not None:
                    cell += f" ({number(r['evaluations'])} ev.)"
                if r.get("passed") is False:
                    cell += " FAILED"
                line.append(cell)
        out.append(line)
    return ["P"] + methods, out


def environment_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) pairs of the environment table."""
    v = env.get("versions", {})
    threads = env.get("threads", {})
    return [
        ("command", env.get("command", "")),
        ("seed", str(env.get("seed"))),
        ("date (UTC)", env.get("date_utc", "")),
        ("python", env.get("python", "")),
        ("platform", env.get("platform", "")),
        ("CPU", f"{env.get('cpu')} ({env.get('cpu_count')} logical, {env.get('cpus_usable')} usable)"),
        ("GPU", ", ".join(env.get("gpus", []))),
        ("versions", ", ".join(f"{k} {val}" for k, val in v.items() if val)),
        ("not installed", ", ".join(k for k, val in v.items() if not val) or "-"),
        ("threads", "; ".join(f"{k}={val}" for k, val in threads.items())),
        ("allocator", env.get("allocator", "")),
        ("timing", env.get("timing", "")),
        ("preset", f"{env.get('settings', {}).get('preset')}: " + ", ".join(
            f"{k}={val}" for k, val in env.get("settings", {}).items() if k != "preset")),
    ]


# ---------------------------------------------------------------------------
# Figure captions: one sentence each, with this run's numbers
# ---------------------------------------------------------------------------

def _measured(sc: dict[str, Any], method: str, key: str) -> list[tuple[int, float]]:
    out = []
    for r in sc["rows"]:
        if r["method"] == method and r.get("measured") and _f(r.get(key)) is not None:
            out.append((int(r["params"]), float(r[key])))
    return sorted(out)


def caption_relative(sc: dict[str, Any]) -> str:
    """The cost-relative-to-one-forward-pass figure, in one sentence."""
    s = sc["slopes"]
    rev = _measured(sc, "reverse", "relative")
    if rev:
        lo, hi = min(v for _, v in rev), max(v for _, v in rev)
        head = (f"Reverse mode costs {lo:.1f}–{hi:.1f} forward passes from P = {number(rev[0][0])} to "
                f"P = {number(rev[-1][0])} (fitted slope {slope(s.get('reverse'))})")
    else:
        head = "Reverse mode was not measured"
    missing = len(sc.get("not_measured", []))
    skipped = (f"; {missing} (method, P) cell{'' if missing == 1 else 's'} over the time budget "
               f"{'is' if missing == 1 else 'are'} not drawn") if missing else ""
    return (f"{head}, while forward mode, forward differences and central differences grow like P (slopes "
            f"{slope(s.get('forward_mode'))}, {slope(s.get('forward_diff'))}, {slope(s.get('central_diff'))}); "
            f"the dashed black line is one forward pass{skipped}.")


def caption_seconds(sc: dict[str, Any]) -> str:
    """The seconds-per-gradient figure, in one sentence."""
    rev = _measured(sc, "reverse", "seconds")
    others = [(m, _measured(sc, m, "seconds")) for m in ("forward_mode", "forward_diff", "central_diff")]
    if not rev:
        return "Median time of one gradient per method against P; reverse mode was not measured."
    p, t = rev[-1]
    at_p = [f"{LABELS[m]} {seconds(dict(v)[p])}" for m, v in others if p in dict(v)]
    tail = f" against {', '.join(at_p)}" if at_p else ""
    return (f"Median {sc.get('clock', 'wall')} time of one gradient: at P = {number(p)} reverse mode takes "
            f"{seconds(t)}{tail}; the dashed black line is one forward pass.")


def caption_evaluations(sc: dict[str, Any]) -> str:
    """The evaluation-count figure, in one sentence."""
    ps = sorted({int(r["params"]) for r in sc["rows"]})
    top = number(ps[-1]) if ps else "-"
    return ("Function evaluations per gradient: reverse mode makes one forward pass (plus one backward sweep) "
            f"at every P, forward mode P, forward differences P + 1 and central differences 2P -- "
            f"{number(2 * ps[-1]) if ps else '-'} at P = {top}.")


def caption_checkers(ch: dict[str, Any]) -> str:
    """The checker-timing figure, in one sentence."""
    rows = [r for r in ch.get("rows", []) if _f(r.get("reported_seconds")) is not None and r.get("params")]
    if not rows:
        return "No checker was timed."
    p = max(int(r["params"]) for r in rows)
    at = sorted(((str(r["method"]), float(r["reported_seconds"])) for r in rows if int(r["params"]) == p),
                key=lambda mv: mv[1])
    return (f"Median seconds per check ({ch.get('clock', 'wall')} time) against P; at P = {number(p)}, fastest "
            "first: " + ", ".join(f"{m} {seconds(v)}" for m, v in at) + " (fast modes dashed).")


def caption_agreement(ag: dict[str, Any]) -> str:
    """The agreement histograms, in one sentence."""
    pairs = ag.get("pairs", {})
    worst = max((_f(p.get("max_scaled_err")) or 0.0 for p in pairs.values()), default=0.0)
    exact = sum(int(p.get("exact", 0)) for p in pairs.values())
    total = sum(int(p.get("cases", 0)) for p in pairs.values())
    n = len(ag.get("disagreements", []))
    return (f"Per-case error of each pair over {ag.get('cases')} random cases: {exact} of {total} comparisons exact, "
            f"the largest error {error(worst)}, {n} disagreement{'' if n == 1 else 's'}; the vertical lines mark "
            "where the float64 tolerance starts to bite (dotted: its floor, solid: at the largest element).")


def duration(v: Any) -> str:
    """``5 min 11 s`` / ``42.0 s``; ``-`` for None."""
    x = _f(v)
    if x is None:
        return "-"
    if x < 60:
        return f"{x:.1f} s"
    m, s = divmod(int(round(x)), 60)
    return f"{m} min {s} s"


def run_time(report: dict[str, Any]) -> str:
    """The report's own run time, stated once (in the environment section)."""
    return f"{duration(report.get('wall_seconds'))} of wall time measuring (rendering not included)"
