"""The gradverify pytest plugin: a ``gradcheck`` fixture, a ``gradverify`` marker, options, a summary, a report.

Loaded through the ``pytest11`` entry point, so it runs in *every* pytest
session of the environment: this module imports only ``pytest`` and the
standard library at module scope. The checks are imported inside the fixture
and the hooks that need them, and Hypothesis only when
``--gradverify-examples`` is given. (Being a submodule, importing it runs the
package's ``__init__``, which is lazy: numpy and the checks load on first use.)

How records flow (one path, with or without pytest-xdist): every check the
fixture runs appends a plain, JSON-ready record to the test item's stash;
``pytest_runtest_makereport`` moves those records onto the test report
(``report.gradverify``, a list of dicts) and adds a ``gradverify`` report
section with the readable verdicts. pytest-xdist serialises report attributes
from the workers to the controller, so ``pytest_runtest_logreport`` on the
controller sees every record exactly once whatever the number of workers; the
controller alone prints the terminal summary and writes the report file.

Precedence of settings for a check: keyword arguments of the fixture call,
then the ``@pytest.mark.gradverify(...)`` marker, then the command line,
then the ini file, then gradverify's own defaults.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["GradCheck", "MARKER_KEYS", "REFERENCES", "DTYPES"]

#: Keys accepted by ``@pytest.mark.gradverify(...)``.
MARKER_KEYS = ("rtol", "atol", "mode", "seed", "dtype", "against", "examples")
#: References a check can be compared against (``--gradverify-against``; ``against=`` of the checks).
REFERENCES = ("auto", "fd", "reference", "torch", "jax")
#: Floating dtypes accepted by ``--gradverify-dtype`` and the marker.
DTYPES = ("float16", "float32", "float64")

_OPTIONS = (
    # (option, ini name, metavar, help); ini types in _INI_TYPES
    ("--gradverify-report", "gradverify_report", "PATH",
     "write a report of every gradient check to PATH: JSON if it ends in .json, HTML if .html "
     "(default: no report)"),
    ("--gradverify-against", "gradverify_against", "REFS",
     "what the gradcheck fixture's checks compare with (their against=), comma-separated, from "
     "auto,fd,reference,torch,jax (default: auto, an exact reference where one applies, else finite "
     "differences); a framework named here must be installed"),
    ("--gradverify-dtype", "gradverify_dtype", "DTYPE",
     "dtype of the inputs gradcheck.layer draws from input_shape: float16, float32 or float64 "
     "(default: the layer's parameter dtype, else float64)"),
    ("--gradverify-examples", "gradverify_examples", "N",
     "property-test every gradcheck fixture check on N Hypothesis-drawn inputs (their examples=; the failing "
     "input is shrunk), and the Hypothesis budget (max_examples) of strategy-driven tests "
     "(default: one input per check; the active Hypothesis profile)"),
    ("--gradverify-seed", "gradverify_seed", "SEED",
     "seed of every gradient check (cotangent and drawn inputs) (default: 0)"),
)

# Typed ini values so that TOML integers and lists are accepted as such.
_INI_TYPES = {"gradverify_against": "args", "gradverify_examples": "int", "gradverify_seed": "int"}

_PENDING = pytest.StashKey[list]()
_SESSION = pytest.StashKey["_Session"]()


# ---------------------------------------------------------------------------
# Options and their validation
# ---------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradverify", "gradient checks (gradverify)")
    for opt, ini, metavar, help_ in _OPTIONS:
        group.addoption(opt, action="store", dest=ini, default=None, metavar=metavar, help=help_)
        ini_help = help_.split(" (default")[0] + " (ini equivalent of " + opt + ")"
        try:
            parser.addini(ini, help=ini_help, type=_INI_TYPES.get(ini, "string"), default=None)
        except (ValueError, AssertionError, TypeError):      # a pytest without this ini type
            parser.addini(ini, help=ini_help, default=None)


def _raw_option(config: pytest.Config, ini: str) -> str | None:
    """The option's text: the command line, else the ini value, else None.

    Raises:
        ValueError: the ini value does not have the ini key's type.
    """
    value = config.getoption(ini, default=None)
    if value is None:
        try:
            value = config.getini(ini)
        except (ValueError, TypeError, pytest.UsageError) as exc:
            raise ValueError(f"ini option {ini} ({_INI_TYPES.get(ini, 'string')}): {exc}") from None
    if value in (None, "", []):
        return None
    if isinstance(value, (list, tuple)):          # a TOML list: gradverify_against = ["fd", "torch"]
        return ",".join(str(v).strip() for v in value)
    return str(value).strip()


def _parse_against(text: str, where: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise ValueError(f"{where}: give at least one of {','.join(REFERENCES)}")
    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        raise ValueError(f"{where}: unknown reference {unknown[0]!r}; choose from {','.join(REFERENCES)}")
    if "auto" in names and len(set(names)) > 1:
        raise ValueError(f"{where}: auto chooses by itself; combine only explicit references, e.g. reference,fd")
    return tuple(dict.fromkeys(names))


def _check_installed(names: tuple[str, ...], where: str) -> None:
    import importlib.util

    from gradverify.errors import install_hint

    for name in names:
        if name in ("torch", "jax") and importlib.util.find_spec(name) is None:
            raise ValueError(f"{where} names {name!r} but {name} is not installed "
                             f"({install_hint(name)})")


def _parse_int(text: Any, where: str, minimum: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{where} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value}")
    return value


def _parse_dtype(text: Any, where: str) -> str:
    name = str(getattr(text, "name", text)).strip()
    if name not in DTYPES:
        raise ValueError(f"{where} must be one of {', '.join(DTYPES)}, got {text!r}")
    return name


class _Session:
    """Run-wide state: the validated options and every check record received."""

    def __init__(self, config: pytest.Config):
        self.against: tuple[str, ...] = ("auto",)
        self.dtype: str | None = None
        self.examples: int | None = None
        self.seed: int | None = None
        self.report: Path | None = None
        self.records: list[dict[str, Any]] = []
        self.previous_hypothesis_settings: Any = None
        self.is_worker = hasattr(config, "workerinput")
        self.explicit = False
        try:
            raw = {ini: _raw_option(config, ini) for _, ini, _, _ in _OPTIONS}
            self.explicit = any(v is not None for v in raw.values())
            if raw["gradverify_against"] is not None:
                self.against = _parse_against(raw["gradverify_against"], "--gradverify-against")
                _check_installed(self.against, "--gradverify-against")
            if raw["gradverify_dtype"] is not None:
                self.dtype = _parse_dtype(raw["gradverify_dtype"], "--gradverify-dtype")
            if raw["gradverify_examples"] is not None:
                self.examples = _parse_int(raw["gradverify_examples"], "--gradverify-examples", 1)
            if raw["gradverify_seed"] is not None:
                self.seed = _parse_int(raw["gradverify_seed"], "--gradverify-seed", 0)
            if raw["gradverify_report"] is not None:
                path = Path(os.path.expanduser(raw["gradverify_report"]))
                if path.suffix.lower() not in (".json", ".html", ".htm"):
                    raise ValueError(f"--gradverify-report must end in .json or .html, got {str(path)!r}")
                self.report = path if path.is_absolute() else Path(config.invocation_params.dir) / path
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None

    # Registered as a plugin object in pytest_configure, so these are hooks.
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect the records a report carries (from this process or from an xdist worker)."""
        records = getattr(report, "gradverify", None)
        if records and not self.is_worker:
            self.records.extend(records)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gradverify(rtol=, atol=, mode=, seed=, dtype=, against=, examples=): per-test settings of the gradcheck "
        "fixture's checks (unknown keys are an error)",
    )
    state = _Session(config)
    config.stash[_SESSION] = state
    config.pluginmanager.register(state, "gradverify-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_SESSION, None)
    if state is None:
        return
    if state.previous_hypothesis_settings is not None:   # leave Hypothesis as we found it
        _restore_profile(state.previous_hypothesis_settings)
        state.previous_hypothesis_settings = None
    if config.pluginmanager.is_registered(state):
        config.pluginmanager.unregister(state)


def _load_examples_profile(examples: int) -> Any:
    """Make ``examples`` the max_examples of the active Hypothesis profile; return the previous settings.

    Imports Hypothesis (only called when ``--gradverify-examples`` is given).
    """
    from hypothesis import settings

    previous = settings.default
    settings.register_profile("gradverify-examples", parent=previous, max_examples=examples)
    settings.load_profile("gradverify-examples")
    return previous


def _restore_profile(previous: Any) -> None:
    from hypothesis import settings

    settings.register_profile("gradverify-restored", parent=previous)
    settings.load_profile("gradverify-restored")


def pytest_sessionstart(session: pytest.Session) -> None:
    # After every pytest_configure (Hypothesis's plugin loads --hypothesis-profile
    # there), so the budget is applied on top of the chosen profile.
    state = session.config.stash.get(_SESSION, None)
    if state is not None and state.examples is not None:
        state.previous_hypothesis_settings = _load_examples_profile(state.examples)


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(_SESSION, None)
    if state is None or not state.explicit:
        return None
    parts = [f"against={','.join(state.against)}", f"seed={0 if state.seed is None else state.seed}"]
    if state.dtype:
        parts.append(f"dtype={state.dtype}")
    if state.examples:
        parts.append(f"examples={state.examples}")
    if state.report:
        parts.append(f"report={state.report}")
    return "gradverify: " + ", ".join(parts)


# ---------------------------------------------------------------------------
# The marker
# ---------------------------------------------------------------------------

def _marker_settings(item: pytest.Item) -> dict[str, Any]:
    """Merge every ``gradverify`` marker on ``item`` (closest wins) and validate it.

    Raises:
        ValueError: positional arguments, an unknown key, or a bad value.
    """
    merged: dict[str, Any] = {}
    for mark in reversed(list(item.iter_markers(name="gradverify"))):
        if mark.args:
            raise ValueError(f"@pytest.mark.gradverify takes keyword arguments only "
                             f"({', '.join(MARKER_KEYS)}), got positional {mark.args!r}")
        unknown = sorted(set(mark.kwargs) - set(MARKER_KEYS))
        if unknown:
            raise ValueError(f"@pytest.mark.gradverify got unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"known keys: {', '.join(MARKER_KEYS)}")
        merged.update(mark.kwargs)
    out: dict[str, Any] = {}
    for key, value in merged.items():
        where = f"@pytest.mark.gradverify({key}=...)"
        if key in ("rtol", "atol"):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise ValueError(f"{where} must be a non-negative number, got {value!r}")
                value = float(value)
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where} must be a non-negative integer, got {value!r}")
            value = _parse_int(value, where, 0)
        elif key == "mode":
            from gradverify.api import MODES

            if value not in MODES:
                raise ValueError(f"{where} must be one of {', '.join(MODES)}, got {value!r}")
        elif key == "dtype":
            value = _parse_dtype(value, where)
        elif key == "examples":
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{where} must be a positive integer, got {value!r}")
                value = _parse_int(value, where, 1)
        elif key == "against":
            text = value if isinstance(value, str) else ",".join(map(str, value))
            value = _parse_against(text, where)
            _check_installed(value, where)
        out[key] = value
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gradverify") is None:
        return
    problem = _marker_problem(item)
    if problem:
        pytest.fail(problem, pytrace=False)


def _marker_problem(item: pytest.Item) -> str | None:
    """The marker's validation error message, or None if it is valid."""
    try:
        _marker_settings(item)
    except ValueError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------
# The fixture
# ---------------------------------------------------------------------------

def _plain(obj: Any) -> Any:
    """A JSON- and execnet-safe copy: numpy scalars to Python, tuples to lists, inf/nan to strings."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    item = getattr(obj, "item", None)      # numpy scalar
    if callable(item):
        try:
            return _plain(item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def _default_label(fn: Any) -> str:
    """A readable name for a checked callable: ``Square.apply`` for an autograd Function, else its name."""
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", None)
    if isinstance(owner, type) and name:
        return f"{owner.__name__}.{name}"
    return name or type(fn).__name__


class GradCheck:
    """The ``gradcheck`` fixture: asserting gradient checks that are recorded for the run's report.

    Each method wraps one public check (:func:`gradverify.check_layer`,
    :func:`gradverify.check_pair`, :func:`gradverify.check`), costs what that
    check costs, records the verdict, and raises
    :class:`gradverify.GradientMismatch` unless it passes. Bad input raises the
    check's :class:`gradverify.GradVerifyError` (recorded with status
    ``"error"``).

    Attributes:
        against: what the checks compare with (``--gradverify-against`` /
            the marker), passed as their ``against=`` unless a call gives its
            own, e.g. ``("auto",)`` or ``("reference", "fd")``.
        dtype: dtype requested for drawn inputs, or None.
        examples: inputs each check draws (``--gradverify-examples`` / the
            marker; their ``examples=``), or None for the one input given.
        seed: the seed the checks use unless given one.
        results: the :class:`gradverify.CheckResult` of every check run so far.
    """

    def __init__(self, item: pytest.Item, state: _Session, marker: dict[str, Any]):
        self._item = item
        self._marker = marker
        self.against: tuple[str, ...] = marker.get("against", state.against)
        self.dtype: str | None = marker.get("dtype", state.dtype)
        self.examples: int | None = marker.get("examples", state.examples)
        self.seed: int = marker.get("seed", state.seed if state.seed is not None else 0)
        self.results: list[Any] = []

    def __repr__(self) -> str:
        return (f"<gradcheck against={','.join(self.against)} seed={self.seed} dtype={self.dtype} "
                f"checks={len(self.results)}>")

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = {k: self._marker[k] for k in ("rtol", "atol", "mode") if k in self._marker}
        merged["seed"] = self.seed
        merged["against"] = self.against
        if self.examples is not None:
            merged["examples"] = self.examples
        merged.update(options)
        return merged

    def layer(self, layer: Any, input_shape: Any = None, *, inputs: Any = None, label: str | None = None,
              **options: Any) -> Any:
        """Assert :func:`gradverify.check_layer` passes for ``layer``; record it.

        ``dtype`` defaults to ``--gradverify-dtype`` / the marker when the
        input is drawn from ``input_shape``; explicit ``inputs`` are used as given.
        """
        __tracebackhide__ = True
        from gradverify import check_layer

        opts = self._options(options)
        if "dtype" not in opts and inputs is None and self.dtype is not None:
            opts["dtype"] = self.dtype
        return self._run("layer", label or type(layer).__name__, check_layer, (layer, input_shape),
                         dict(opts, inputs=inputs))

    def pair(self, forward: Any, backward: Any, inputs: Any, *, label: str | None = None, **options: Any) -> Any:
        """Assert :func:`gradverify.check_pair` passes for ``forward``/``backward``; record it."""
        __tracebackhide__ = True
        from gradverify import check_pair

        return self._run("pair", label or getattr(forward, "__name__", "pair"), check_pair,
                         (forward, backward, inputs), self._options(options))

    def __call__(self, fn: Any, inputs: Any, *, label: str | None = None, **options: Any) -> Any:
        """Assert :func:`gradverify.check` passes for ``fn`` (``vjp=`` for numpy functions); record it."""
        __tracebackhide__ = True
        from gradverify import check

        return self._run("function", label or _default_label(fn), check,
                         (fn, inputs), self._options(options))

    def _run(self, kind: str, label: str, fn: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run one check, record it, raise unless it passed.

        Bad input is re-raised with its traceback cut here (this frame and
        the fixture method are hidden), so pytest shows the test's own call
        and the message, not gradverify's internals; an error of the code
        under test keeps its original as ``__cause__``, with the user's line.
        """
        __tracebackhide__ = True
        from gradverify import GradientMismatch, GradVerifyError

        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except GradVerifyError as exc:
            self._record({
                "nodeid": self._item.nodeid, "label": label, "kind": kind, "passed": False, "status": "error",
                "worst": None, "seconds": time.perf_counter() - start, "seed": kwargs.get("seed"),
                "error": f"{type(exc).__name__}: {exc}",
            }, f"[{label}] gradient check ERROR: {type(exc).__name__}: {exc}", exc)
            raise exc.with_traceback(None) from exc.__cause__
        self.results.append(result)
        record = dict(result.to_dict())
        record.update(nodeid=self._item.nodeid, label=label, kind=result.kind,
                      worker=os.environ.get("PYTEST_XDIST_WORKER", "main"))
        mismatch = None if result.passed else GradientMismatch(result)
        self._record(record, f"[{label}] {result}", mismatch)
        if mismatch is not None:
            raise mismatch
        return result

    def _record(self, record: dict[str, Any], text: str, raised: BaseException | None = None) -> None:
        """Keep a record and its text for the test's report; ``raised`` is the exception the check raised."""
        record.setdefault("worker", os.environ.get("PYTEST_XDIST_WORKER", "main"))
        self._item.stash.setdefault(_PENDING, []).append((_plain(record), text, raised))


@pytest.fixture
def gradcheck(request: pytest.FixtureRequest) -> GradCheck:
    """Asserting gradient checks, recorded in the run's summary and report.

    ``gradcheck.layer(layer, input_shape=None, *, inputs=None, **options)``,
    ``gradcheck.pair(forward, backward, inputs, **options)`` and
    ``gradcheck(fn, inputs, **options)`` mirror ``gradverify.check_layer``,
    ``check_pair`` and ``check``; each raises ``gradverify.GradientMismatch``
    unless the check passes. Settings come from keyword arguments, then the
    ``gradverify`` marker, then ``--gradverify-*`` options / ini.
    """
    problem = _marker_problem(request.node)
    if problem:
        pytest.fail(problem, pytrace=False)
    return GradCheck(request.node, request.config.stash[_SESSION], _marker_settings(request.node))


# ---------------------------------------------------------------------------
# Reports: per-test sections, collection (xdist-safe), summary, files
# ---------------------------------------------------------------------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Move the test's check records onto its report, and its readable verdicts into a report section.

    A check that failed (or met bad input) in a test that passed anyway --
    inside ``pytest.raises(GradientMismatch)``, or an ``xfail`` test -- is an
    expected failure: its record gets ``"expected": True`` and is not
    counted as failed. A verdict whose exception is the one the test
    failed with is already printed in the traceback, so it is left out of
    the section: each failing verdict is printed once.
    """
    report = yield
    pending = item.stash.get(_PENDING, None)
    if pending:
        item.stash[_PENDING] = []
        expected = report.passed or hasattr(report, "wasxfail")
        raised = call.excinfo.value if call.excinfo is not None else None
        texts = []
        for record, text, exc in pending:
            if not record.get("passed") and expected:
                record["expected"] = True
                text = "(expected failure) " + text
            if exc is None or exc is not raised:
                texts.append(text)
        report.gradverify = [record for record, _, _ in pending]
        if texts:
            report.sections.append(("gradverify", "\n\n".join(texts)))
    return report


def _ratio(worst: dict[str, Any] | None) -> float:
    if not worst:
        return 0.0
    try:
        abs_err, tol = float(worst["abs_err"]), float(worst["tolerance"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    if tol > 0:
        return abs_err / tol
    return 0.0 if abs_err == 0 else math.inf


def _fmt(x: Any) -> str:
    try:
        return f"{float(x):.3g}"
    except (TypeError, ValueError):
        return str(x)


def _where(worst: dict[str, Any]) -> str:
    return f"{worst.get('input')!r}[{', '.join(str(i) for i in worst.get('index', []))}]"


def _failed(rec: dict[str, Any]) -> bool:
    return not rec.get("passed") and not rec.get("expected")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-test and overall counts from check records; the worst check of each test by error/tolerance.

    Failed checks the test expected (see :func:`pytest_runtest_makereport`)
    are counted as ``expected``, not ``failed``; a test's worst check is
    chosen among its unexpected failures first.
    """
    tests: dict[str, dict[str, Any]] = {}
    for rec in records:
        t = tests.setdefault(rec["nodeid"], {"nodeid": rec["nodeid"], "checks": 0, "failed": 0, "expected": 0,
                                             "worst": None, "worst_ratio": -1.0, "label": None, "error": None,
                                             "reference": None, "_rank": (-1, -1.0)})
        t["checks"] += 1
        if _failed(rec):
            t["failed"] += 1
        elif not rec.get("passed"):
            t["expected"] += 1
        if rec.get("error") and t["error"] is None:
            t["error"] = rec["error"]
            if t["label"] is None:
                t["label"] = rec.get("label")
        r = _ratio(rec.get("worst"))
        rank = (int(_failed(rec)), r)
        if rec.get("worst") and rank > t["_rank"]:
            t["worst"], t["worst_ratio"], t["label"], t["reference"], t["_rank"] = \
                rec["worst"], r, rec.get("label"), rec.get("reference"), rank
    for t in tests.values():
        del t["_rank"]
    return {
        "checks": len(records),
        "failed": sum(1 for r in records if _failed(r)),
        "expected": sum(1 for r in records if not r.get("passed") and r.get("expected")),
        "errors": sum(1 for r in records if r.get("status") == "error" and _failed(r)),
        "tests": len(tests),
        "per_test": list(tests.values()),
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_SESSION, None)
    if state is None or state.is_worker or not state.records:
        return
    s = summarize(state.records)
    tr = terminalreporter
    tr.section("gradverify")
    tr.write_line(f"{s['checks']} gradient check{'s' if s['checks'] != 1 else ''} in {s['tests']} "
                  f"test{'s' if s['tests'] != 1 else ''}, {s['failed']} failed"
                  + (f" ({s['errors']} with bad input)" if s["errors"] else "")
                  + (f", {s['expected']} expected failure{'s' if s['expected'] != 1 else ''}"
                     if s["expected"] else ""))
    rows = sorted(s["per_test"], key=lambda t: (t["failed"] == 0, -t["worst_ratio"], t["nodeid"]))
    limit = None if config.get_verbosity() > 0 else 30
    for t in rows[:limit]:
        tag = "FAIL" if t["failed"] else ("xfail" if t["expected"] else "ok  ")
        w = t["worst"]
        if w:
            detail = (f"worst {_where(w)}: abs err {_fmt(w.get('abs_err'))}, rel err {_fmt(w.get('rel_err'))}, "
                      f"tolerance {_fmt(w.get('tolerance'))}, reference={t['reference']}")
        else:
            detail = " ".join(str(t["error"]).split()) if t["error"] else "nothing compared"
        count = f" ({t['failed']}/{t['checks']} checks failed)" if t["failed"] else \
            (f" ({t['expected']}/{t['checks']} checks failed as expected)" if t["expected"] else
             (f" ({t['checks']} checks)" if t["checks"] > 1 else ""))
        label = f" [{t['label']}]" if t["label"] else ""
        tr.write_line(f"{tag} {t['nodeid']}{label}{count}: {detail}")
    if limit is not None and len(rows) > limit:
        tr.write_line(f"... {len(rows) - limit} more tests (use -v to list all, or --gradverify-report)")
    if state.report is not None:
        tr.write_line(f"report written to {state.report}")


def report_dict(records: list[dict[str, Any]], state: _Session | None = None) -> dict[str, Any]:
    """The report as a plain dict: a top-level ``checks`` list plus summary and run settings."""
    import datetime

    from gradverify import __version__

    s = summarize(records)
    return {
        "tool": "gradverify",
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "against": list(state.against) if state else ["auto"],
            "dtype": state.dtype if state else None,
            "examples": state.examples if state else None,
            "seed": (state.seed if state and state.seed is not None else 0),
        },
        "summary": {"checks": s["checks"], "failed": s["failed"], "expected": s["expected"], "errors": s["errors"],
                    "tests": s["tests"]},
        "tests": [{k: t[k] for k in ("nodeid", "checks", "failed", "expected", "worst", "label", "reference", "error")}
                  for t in s["per_test"]],
        "checks": sorted(records, key=lambda r: r["nodeid"]),
    }


def render_html(data: dict[str, Any]) -> str:
    """A self-contained HTML page (no scripts, no network) of a :func:`report_dict`."""
    import html

    esc = html.escape
    s = data["summary"]
    rows = []
    for rec in data["checks"]:
        w = rec.get("worst") or {}
        status = rec.get("status", "pass" if rec.get("passed") else "fail")
        if rec.get("expected"):
            status += " (expected)"
        rows.append(
            f"<tr class=\"{'bad' if _failed(rec) else 'ok'}\"><td>{esc(rec['nodeid'])}</td>"
            f"<td>{esc(str(rec.get('label', '')))}</td><td>{esc(str(rec.get('kind', '')))}</td>"
            f"<td>{esc(status)}</td><td>{esc(str(rec.get('reference') or ''))}</td>"
            f"<td>{esc(_where(w)) if w else esc(str(rec.get('error') or ''))}</td>"
            f"<td>{esc(_fmt(w.get('analytic'))) if w else ''}</td><td>{esc(_fmt(w.get('numeric'))) if w else ''}</td>"
            f"<td>{esc(_fmt(w.get('abs_err'))) if w else ''}</td><td>{esc(_fmt(w.get('rel_err'))) if w else ''}</td>"
            f"<td>{esc(_fmt(w.get('tolerance'))) if w else ''}</td>"
            f"<td>{esc(str(rec.get('seed')))}</td><td>{esc(_fmt(rec.get('seconds')))}</td></tr>"
        )
    settings = ", ".join(f"{k}={v}" for k, v in data["settings"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gradverify report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
tr.bad td {{ background: #fde2e2; }} tr.ok td {{ background: #eef8ee; }}
</style></head><body>
<h1>gradverify report</h1>
<p>{s['checks']} gradient checks in {s['tests']} tests, {s['failed']} failed, {s['expected']} expected failures.
gradverify {esc(str(data['version']))}, {esc(data['created'])}; {esc(settings)}.</p>
<table><thead><tr><th>test</th><th>check</th><th>kind</th><th>status</th><th>reference</th><th>worst element</th>
<th>analytic</th><th>numeric</th><th>abs err</th><th>rel err</th><th>tolerance</th><th>seed</th><th>seconds</th>
</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_SESSION, None)
    if state is None or state.is_worker or state.report is None:
        return
    import json

    data = report_dict(state.records, state)
    state.report.parent.mkdir(parents=True, exist_ok=True)
    if state.report.suffix.lower() == ".json":
        state.report.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    else:
        state.report.write_text(render_html(data), encoding="utf-8")
