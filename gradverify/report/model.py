"""Run the report's measurements and gather them into one plain, JSON-ready dict.

This is the only module of :mod:`gradverify.report` that measures anything.
:func:`build` runs the sections -- each a thin wiring of a library stage --
and returns the dict that ``report.json`` holds and that
:mod:`~gradverify.report.markdown` and :mod:`~gradverify.report.html`
render without computing anything further:

* ``environment`` -- versions, CPU/GPU, thread settings, allocator, the
  exact command (:func:`environment`);
* ``scaling`` -- :mod:`gradverify.scaling`: time and evaluation count of
  ``reverse``, ``forward_mode``, ``forward_diff`` and ``central_diff``
  across P, the fitted log-log slopes (and the fitted lines the plots draw),
  and the measured (forward + backward) / forward of the reference engine,
  PyTorch and JAX;
* ``checkers`` -- :mod:`gradverify.checkers` when that module exists
  (gradverify full/fast against ``torch.autograd.gradcheck`` and
  ``jax.test_util.check_grads``); otherwise the section says it is not
  available, and holds no numbers;
* ``agreement`` -- N random networks and expressions
  (:mod:`gradverify.strategies`) through
  :func:`gradverify.backends.agreement.agreement` (every backend pair and
  finite differences, the one comparison core): per pair the largest errors
  and a histogram of the per-case scaled error, every disagreement with its
  reproduction snippet.

Cost: the sum of the sections (see :data:`PRESETS`): about half a minute
with ``quick``, a few minutes on the defaults on two cores.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

__all__ = ["Options", "PRESETS", "SECTIONS", "build", "environment", "measure_scaling_section",
           "measure_agreement_section", "measure_checkers_section", "headline", "plain", "HIST_EDGES",
           "tolerance_marks"]

#: The report's sections, in order.
SECTIONS = ("scaling", "checkers", "agreement")

#: Preset -> the settings a run uses unless an option overrides them.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "sizes": (10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000, 300000, 1000000),
        "budget": 90.0, "repeats": 5, "min_sample": 0.05,
        "ratio_sizes": (1000, 10000, 100000), "cases": 300,
        "checker_sizes": (100, 500, 2000, 5000, 20000), "checker_budget": 10.0,
    },
    "quick": {
        "sizes": (10, 100, 1000, 10000),
        "budget": 2.0, "repeats": 3, "min_sample": 0.01,
        "ratio_sizes": (1000, 10000), "cases": 20,
        "checker_sizes": (100, 1000), "checker_budget": 5.0,
    },
}

#: Histogram bin edges of the agreement errors, as powers of ten (1e-18 ... 1).
HIST_EDGES = tuple(range(-18, 1))

_TIMING = {
    "cpu": "scaling: process CPU time (time.process_time), which time spent descheduled by other processes does "
           "not inflate (wall time is kept in report.json too); checkers: wall time (and CPU time in report.json). "
           "A warm-up call, then repeated samples taken in turn across the compared calls; medians reported; "
           "sub-millisecond calls looped so each sample lasts a few milliseconds.",
    "wall": "scaling: wall time (time.perf_counter; CPU time is kept in report.json too); checkers: wall time. "
            "A warm-up call, then repeated samples taken in turn across the compared calls; medians reported; "
            "sub-millisecond calls looped so each sample lasts a few milliseconds.",
}

#: Pair labels in the order they are shown: the backends in registry order, then finite
#: differences against each (15 pairs with all six references).
_BACKEND_ORDER = ("reference", "torch", "jax", "tensorflow", "pytensor")
_PAIR_ORDER = (tuple(f"{a}~{b}" for i, a in enumerate(_BACKEND_ORDER) for b in _BACKEND_ORDER[i + 1:])
               + tuple(f"fd~{n}" for n in _BACKEND_ORDER))


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run; ``None`` fields take the preset's value (:data:`PRESETS`).

    Attributes:
        quick: use the ``quick`` preset.
        seed: seeds every random draw (problems, cases, cotangents).
        cases: random cases in the agreement section.
        backends: backends for the agreement section (None: every installed one).
        sizes: approximate parameter counts of the scaling section.
        budget: seconds allowed per (method, size) measurement.
        repeats: samples per timing.
        sections: which of :data:`SECTIONS` to run.
        threads: pin BLAS/torch/XLA to this many threads (0: leave them as they are).
        clock: ``"cpu"`` (process CPU time) or ``"wall"``: the clock the scaling timings are read on.
        command: the command line, as reported.
    """

    quick: bool = False
    seed: int = 0
    cases: int | None = None
    backends: tuple[str, ...] | None = None
    sizes: tuple[int, ...] | None = None
    budget: float | None = None
    repeats: int | None = None
    sections: tuple[str, ...] = SECTIONS
    threads: int = 1
    clock: str = "cpu"
    command: str = "gradverify report"

    def settings(self) -> dict[str, Any]:
        """The concrete settings: the preset with this run's overrides applied."""
        s = dict(PRESETS["quick" if self.quick else "default"])
        for key in ("cases", "sizes", "budget", "repeats"):
            if getattr(self, key) is not None:
                s[key] = getattr(self, key)
        s["sizes"] = tuple(int(x) for x in s["sizes"])
        s["ratio_sizes"] = tuple(x for x in s["ratio_sizes"] if x <= max(s["sizes"])) or (max(s["sizes"]),)
        s["preset"] = "quick" if self.quick else "default"
        s["clock"] = self.clock
        return s


ProgressFactory = Callable[[str, int], Any]


def _null_progress(section: str, total: int) -> Any:
    from ..progress import progress

    return progress(section, total, enabled=False)


# ---------------------------------------------------------------------------
# Plain data
# ---------------------------------------------------------------------------

def plain(obj: Any) -> Any:
    """``obj`` as JSON-ready data: tuples to lists, numpy scalars to Python, inf/nan to strings."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _num(v: Any) -> float:
    """A stored number back as a float (``"inf"`` strings included)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    found: list[str] = []
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                found += [f"cuda:{i} {torch.cuda.get_device_name(i)} (torch)" for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - a broken CUDA setup is reported as no GPU
            pass
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            found += [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')} (jax)" for d in jax.devices()
                      if d.platform != "cpu"]
        except Exception:  # noqa: BLE001
            pass
    return found


def environment(*, threads: dict[str, Any] | None = None, allocator: str = "", seed: int = 0,
                command: str = "", settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, CPU/GPU, thread settings, allocator, seed and command; imports nothing new.

    Cost: milliseconds.
    """
    from ..scaling import thread_settings

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    versions = {"python": platform.python_version()}
    for dist in ("gradverify", "numpy", "hypothesis", "torch", "jax", "jaxlib"):
        versions[dist] = _version(dist)
    if versions["gradverify"] is None:
        from .. import __version__

        versions["gradverify"] = f"{__version__} (source tree)"
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "seed": seed,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "gpus": _gpus() or ["none found"],
        "versions": versions,
        "threads": threads if threads is not None else thread_settings(),
        "allocator": allocator or "default",
        "timing": _TIMING[(settings or {}).get("clock", "cpu")],
        "settings": dict(settings or {}),
    }


# ---------------------------------------------------------------------------
# Scaling
# ---------------------------------------------------------------------------

def measure_scaling_section(settings: dict[str, Any], *, seed: int = 0,
                            progress: ProgressFactory = _null_progress) -> dict[str, Any]:
    """The ``scaling`` section: :func:`gradverify.scaling.measure_scaling` and the cheap-gradient ratios.

    Cost: see :mod:`gradverify.scaling`; bounded per measurement by ``settings["budget"]``.
    """
    from .. import scaling as S

    sizes, budget = settings["sizes"], float(settings["budget"])
    bar = progress("scaling", len(sizes) * (len(S.METHODS) + 1))
    clock = settings.get("clock", "cpu")
    all_rows = S.measure_scaling(sizes, budget=budget, repeats=settings["repeats"],
                                 min_sample=settings["min_sample"], seed=seed, clock=clock, progress=bar.step)
    seconds = bar.close()
    rows = [r for r in all_rows if r["method"] != "forward"]
    forward = [r for r in all_rows if r["method"] == "forward"]
    frameworks = ("reference", "torch", "jax")
    bar = progress("ratio", len(settings["ratio_sizes"]) * len(frameworks))
    ratio_rows = S.cheap_gradient_ratios(settings["ratio_sizes"], frameworks=frameworks,
                                         repeats=settings["repeats"], min_sample=settings["min_sample"],
                                         seed=seed, clock=clock, progress=bar.step)
    seconds += bar.close()
    measured = [r for r in ratio_rows if r["available"]]
    by_fw = {fw: {r["params"]: r for r in measured if r["framework"] == fw} for fw in frameworks}
    common = set.intersection(*(set(v) for v in by_fw.values() if v)) if any(by_fw.values()) else set()
    at = max(common) if common else None
    cheap: dict[str, Any] = {}
    for fw in frameworks:
        r = by_fw[fw].get(at) if at is not None else None
        if r is None:
            why = next((x["reason"] for x in ratio_rows if x["framework"] == fw and not x["available"]),
                       "not measured")
            cheap[fw] = {"ratio": None, "params": None, "reason": why}
        else:
            cheap[fw] = {"ratio": r["ratio"], "params": r["params"], "forward_seconds": r["forward_seconds"],
                         "gradient_seconds": r["gradient_seconds"]}
    fits = S.lines(rows, key="relative")
    return {
        "problem": (f"tanh MLP, two hidden layers of width h, input width h, one output, batch {S.BATCH}, "
                    "mean squared error, float64, reference engine; P = 2h^2 + 3h + 1"),
        "sizes_requested": list(sizes),
        "budget_seconds": budget,
        "repeats": settings["repeats"],
        "clock": clock,
        "methods": {m: S.EVALUATIONS[m][1] for m in S.METHODS},
        "rows": rows,
        "forward": forward,
        "slopes": S.slopes(rows, key="relative"),
        "slopes_seconds": S.slopes(rows, key="seconds"),
        "fits": {m: (None if f is None else {"slope": f[0], "intercept": f[1]}) for m, f in fits.items()},
        "not_measured": [{"method": r["method"], "params": r["params"], "reason": r["reason"]}
                         for r in rows if not r["measured"]],
        "cheap_gradient_ratio": cheap,
        "cheap_gradient_rows": ratio_rows,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------
# Checker comparison
# ---------------------------------------------------------------------------

def measure_checkers_section(settings: dict[str, Any], *, seed: int = 0,
                             progress: ProgressFactory = _null_progress) -> dict[str, Any]:
    """The ``checkers`` section from :func:`gradverify.checkers.time_checkers`, or a note that it is not available.

    Seconds per check of the same MLP by gradverify (full and fast, on the
    torch and the JAX function), ``torch.autograd.gradcheck`` (slow and
    fast) and ``jax.test_util.check_grads``, side by side in one run, at
    ``settings["checker_sizes"]`` with ``settings["checker_budget"]``
    seconds per method and size; rows are copied as that function returns
    them (``method``, ``params``, ``status``, ``seconds``, ``cpu_seconds``,
    ``evaluations``, ``passed``, ``note``...). Cost: that function's,
    bounded by about ``len(sizes) * methods * budget``.
    """
    if importlib.util.find_spec("gradverify.checkers") is None:
        return {"available": False, "reason": "gradverify.checkers is not part of this version of gradverify, "
                                              "so no checker timings were made", "rows": []}
    mod = importlib.import_module("gradverify.checkers")
    fn = getattr(mod, "time_checkers", None)
    if fn is None:
        return {"available": False, "reason": "gradverify.checkers has no time_checkers() function", "rows": []}
    sizes = tuple(settings["checker_sizes"])
    methods = dict(getattr(mod, "METHODS", {}) or {})
    is_available = getattr(mod, "_available", None)
    if methods and is_available is not None:       # decided before a bar starts: no bar for a section that can't run
        runnable = [m for m in methods.values() if is_available(getattr(m, "framework", ""))]
        if not runnable:
            missing = sorted({getattr(m, "framework", "?") for m in methods.values()})
            return {"available": False, "rows": [],
                    "reason": f"none of the frameworks the checkers need is installed ({', '.join(missing)}); "
                              "pip install \"gradverify[all]\" adds them"}
    else:
        runnable = list(methods.values())
    # time_checkers reports twice per (size, method): after the warm-up and after the timed runs.
    bar = progress("checkers", max(1, len(sizes) * max(len(runnable), 1) * 2))
    start = time.perf_counter()
    try:
        rows = fn(sizes, repeats=settings["repeats"], budget_s=float(settings["checker_budget"]), seed=seed,
                  progress=bar.step)
    except Exception as exc:  # noqa: BLE001 - the section fails alone; the report still renders
        bar.close("failed")
        return {"available": False, "reason": f"gradverify.checkers.time_checkers raised {type(exc).__name__}: {exc}",
                "rows": []}
    bar.close()
    clock = settings.get("clock", "cpu")
    key = "cpu_seconds" if clock == "cpu" else "seconds"
    rows = [dict(r) for r in rows]
    for r in rows:                      # the module's "seconds" is wall time; report on the run's clock
        r["reported_seconds"] = r.get(key) if r.get(key) is not None else r.get("seconds")
    measured = [r for r in rows if r.get("seconds") is not None]
    if not measured:
        return {"available": False, "reason": "no checker could be timed (torch and JAX not installed?)",
                "rows": rows, "seconds": time.perf_counter() - start}
    return {"available": True, "reason": "", "sizes_requested": list(sizes), "clock": clock,
            "budget_seconds": float(settings["checker_budget"]), "rows": rows,
            "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------

def _histogram(values: Sequence[float]) -> dict[str, Any]:
    """Counts of ``log10(value)`` in :data:`HIST_EDGES` bins; zeros and values below 1e-18 in ``below``."""
    import numpy as np

    edges = list(HIST_EDGES)
    counts = [0] * (len(edges) - 1)
    below = above = 0
    for v in values:
        if not v > 10.0 ** edges[0]:
            below += 1
            continue
        e = math.log10(v) if math.isfinite(v) else math.inf
        if e >= edges[-1]:
            above += 1
            continue
        counts[int(np.clip(math.floor(e) - edges[0], 0, len(counts) - 1))] += 1
    return {"edges_log10": edges, "counts": counts, "below": below, "above": above}


def measure_agreement_section(settings: dict[str, Any], *, seed: int = 0, backends: Sequence[str] | None = None,
                              progress: ProgressFactory = _null_progress) -> dict[str, Any]:
    """The ``agreement`` section: random cases through every available reference, pairwise.

    Cases are drawn with Hypothesis (seeded; the generate phase only, no
    database): ``st.one_of(networks(), expressions(max_leaves=8,
    max_depth=5))``, as ``benchmarks/campaign.py`` does. Each goes through
    :func:`~gradverify.backends.agreement.agreement` in float64 with case
    seed ``seed * 1_000_000 + i``. An exception raised by a backend is
    recorded as a disagreement too (status ``error``), never dropped.

    Cost: about 0.05 s per expression and 0.5 s per network, plus JAX's
    compilations of the shapes it meets.
    """
    import warnings

    from hypothesis import HealthCheck, Phase, given, settings as hsettings, seed as hseed
    from hypothesis import strategies as st

    from ..backends import available_backends
    from ..backends.agreement import agreement
    from ..spec import snippet
    from ..strategies import expressions, networks

    n_cases = int(settings["cases"])
    names = tuple(backends) if backends else available_backends()
    bar = progress("agreement", n_cases)
    records: list[dict[str, Any]] = []
    disagreements: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()

    @hseed(seed)
    @hsettings(max_examples=n_cases, deadline=None, database=None, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False)
    @given(st.one_of(networks(), expressions(max_leaves=8, max_depth=5)))
    def run(spec: Any) -> None:
        i = len(records)
        case_seed = seed * 1_000_000 + i
        kind = type(spec).__name__.lower()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = agreement(spec, backends=names, dtype="float64", seed=case_seed)
        except Exception as exc:  # noqa: BLE001 - recorded as a disagreement with its repro
            records.append({"case": i, "kind": kind, "seconds": None, "passed": False, "errors": {}})
            disagreements.append({"case": i, "kind": kind, "seed": case_seed, "repr": repr(spec),
                                  "failures": [{"status": "error", "detail": f"{type(exc).__name__}: {exc}"}],
                                  "snippet": snippet(spec, backends=names, seed=case_seed)})
            bar.step(f"case {i}: {kind} raised {type(exc).__name__}")
            return
        for name, why in a.skipped:
            skipped[name] = why
        errors = {label: {"max_abs_err": e["max_abs_err"], "scaled_err": e["scaled_err"], "ratio": e["ratio"]}
                  for label, e in a.max_errors().items()}
        failed_pairs = sorted({(f"{r.b}~{r.a}" if r.quantity == "fd" else r.pair) for r in a.failures()})
        records.append({"case": i, "kind": kind, "seconds": a.seconds, "passed": a.passed, "errors": errors,
                        "failed_pairs": failed_pairs})
        if not a.passed:
            disagreements.append({"case": i, "kind": kind, "seed": case_seed, "repr": repr(spec),
                                  "failures": [r.to_dict() for r in a.failures()], "snippet": a.snippet()})
        bar.step(f"case {i}: {kind} {'ok' if a.passed else 'DISAGREE'} {a.seconds:.2f} s")

    run()
    bar.close(f"{len(records)} cases, {len(disagreements)} disagreements")
    labels = [p for p in _PAIR_ORDER if any(p in r["errors"] for r in records)]
    labels += sorted({p for r in records for p in r["errors"]} - set(labels))
    pairs: dict[str, Any] = {}
    for label in labels:
        vals = [(r, r["errors"][label]) for r in records if label in r["errors"]]
        worst = max(vals, key=lambda rv: _num(rv[1]["ratio"]))
        pairs[label] = {
            "cases": len(vals),
            "disagreements": sum(1 for r, _ in vals if label in r.get("failed_pairs", ())),
            "exact": sum(1 for _, e in vals if _num(e["max_abs_err"]) == 0.0),
            "max_abs_err": max(_num(e["max_abs_err"]) for _, e in vals),
            "max_scaled_err": max(_num(e["scaled_err"]) for _, e in vals),
            "median_scaled_err": float(sorted(_num(e["scaled_err"]) for _, e in vals)[len(vals) // 2]),
            "max_ratio": _num(worst[1]["ratio"]),
            "worst_case": worst[0]["case"],
            "histogram": _histogram([_num(e["scaled_err"]) for _, e in vals]),
        }
    kinds: dict[str, Any] = {}
    for r in records:
        k = kinds.setdefault(r["kind"], {"cases": 0, "disagreements": 0, "seconds": 0.0})
        k["cases"] += 1
        k["disagreements"] += 0 if r["passed"] else 1
        k["seconds"] += r["seconds"] or 0.0
    return {
        "cases": len(records),
        "requested": n_cases,
        "tolerance": tolerance_marks("float64"),
        "seed": seed,
        "dtype": "float64",
        "backends": list(names),
        "skipped": [{"backend": k, "reason": v} for k, v in sorted(skipped.items())],
        "error_measure": "per case and pair: the largest max|a - b| / max|b| over the compared tensors "
                         "(values, VJPs along a random cotangent, JVPs along random tangents; for fd pairs "
                         "the backend's VJP against central differences with Richardson extrapolation)",
        "pairs": pairs,
        "by_kind": kinds,
        "disagreements": disagreements,
        "records": records,
        "seconds": time.perf_counter() - start,
    }


def tolerance_marks(dtype: str) -> dict[str, Any]:
    """Where the comparison core's tolerance sits on the scale of the per-case error ``max|a - b| / max|b|``.

    An element fails when ``|a - b|`` exceeds ``rtol * |b| + floor * max|b|``
    (plus rounding terms): an error below ``floor`` times the largest value
    cannot fail anywhere, and one above ``rtol + floor`` fails at the
    largest element. Returns ``{"dtype", "rtol", "floor", "largest"}``.
    """
    from ..compare import TOLERANCES

    t = TOLERANCES.get(dtype, TOLERANCES["float64"])
    return {"dtype": dtype, "rtol": t.rtol, "floor": t.floor, "largest": t.rtol + t.floor}


# ---------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------

def build(options: Options, *, progress: ProgressFactory = _null_progress) -> dict[str, Any]:
    """Run every selected section and return the report dict (JSON-ready, see :func:`plain`).

    Threads are pinned first (``options.threads``; 0 leaves them alone) and
    the allocator tuned for the timings (:func:`gradverify.scaling.tune_allocator`).
    Cost: the sum of the sections.
    """
    from .. import scaling as S

    from ..scaling import CLOCKS

    if options.clock not in CLOCKS:
        raise ValueError(f"unknown clock {options.clock!r}; choose from {CLOCKS}")
    unknown = [s for s in options.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown report section(s) {unknown}; choose from {SECTIONS}")
    settings = options.settings()
    start = time.perf_counter()
    threads = S.pin_threads(options.threads) if options.threads > 0 else S.thread_settings()
    allocator = S.tune_allocator() if "scaling" in options.sections else "default"
    report: dict[str, Any] = {"schema": 1, "seed": options.seed, "quick": options.quick,
                              "sections": list(options.sections)}
    if "scaling" in options.sections:
        report["scaling"] = measure_scaling_section(settings, seed=options.seed, progress=progress)
    if "checkers" in options.sections:
        report["checkers"] = measure_checkers_section(settings, seed=options.seed, progress=progress)
    if "agreement" in options.sections:
        report["agreement"] = measure_agreement_section(settings, seed=options.seed, backends=options.backends,
                                                        progress=progress)
    # The environment last: by now every framework the run used is imported and its threads are set.
    threads_now = S.thread_settings()
    threads_now["pinned"] = options.threads if options.threads > 0 else "not pinned (--threads 0)"
    if options.threads > 0 and threads.get("XLA_FLAGS") != threads_now.get("XLA_FLAGS"):
        threads_now["note"] = "XLA_FLAGS changed during the run"
    report["environment"] = environment(threads=threads_now, allocator=allocator, seed=options.seed,
                                        command=options.command, settings=settings)
    report["wall_seconds"] = time.perf_counter() - start
    report["headline"] = headline(report)
    return plain(report)


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(_num(v), spec)


def headline(report: dict[str, Any]) -> list[str]:
    """The report's few headline numbers as short sentences (stored in the dict, printed by the CLI).

    In reading order: the slopes, (forward + backward) / forward, the cells
    over budget, the agreement cases and disagreements, the checkers at the
    largest P every checker measured.
    """
    lines: list[str] = []
    sc = report.get("scaling")
    if sc:
        s = sc["slopes"]
        names = {"reverse": "reverse mode", "forward_mode": "forward mode", "forward_diff": "forward differences",
                 "central_diff": "central differences"}
        lines.append("slopes of cost / one forward pass vs P: " + ", ".join(
            f"{names[m]} {_fmt(s.get(m), '+.2f')}" for m in names))
        cg = sc["cheap_gradient_ratio"]
        at = next((v["params"] for v in cg.values() if v.get("params")), None)
        lines.append(f"(forward + backward) / forward at P={at:,}: " if at else
                     "(forward + backward) / forward: ")
        lines[-1] += ", ".join(f"{fw} {_fmt(v.get('ratio'))}" for fw, v in cg.items())
        if sc["not_measured"]:
            lines.append(f"{len(sc['not_measured'])} (method, P) cells over the time budget, marked not measured")
    ag = report.get("agreement")
    if ag:
        worst = max((p["max_ratio"] for p in ag["pairs"].values()), default=0.0)
        n = len(ag["pairs"])
        lines.append(f"agreement: {ag['cases']} random cases, {n} pair{'' if n == 1 else 's'}, "
                     f"{len(ag['disagreements'])} disagreements (worst error/tolerance {_num(worst):.2g})")
    ch = report.get("checkers")
    if ch is not None:
        best = _checker_headline(ch) if ch.get("available") else None
        if best:
            lines.append(best)
        elif not ch.get("available"):
            lines.append(f"checker comparison: not available ({ch.get('reason')})")
    return lines


def _checker_headline(ch: dict[str, Any]) -> str | None:
    """Seconds per check of every checker at the largest P all of them measured."""
    rows = [r for r in ch.get("rows", []) if r.get("reported_seconds") is not None and r.get("params")]
    by: dict[str, dict[int, Any]] = {}
    for r in rows:
        by.setdefault(str(r.get("method")), {})[r["params"]] = r
    if not by:
        return None
    common = set.intersection(*(set(v) for v in by.values()))
    if not common:
        return None
    p = max(common)
    return (f"seconds per check at P={p:,} ({ch.get('clock', 'wall')} time): "
            + ", ".join(f"{m} {_num(v[p]['reported_seconds']):.3g}" for m, v in by.items()))
