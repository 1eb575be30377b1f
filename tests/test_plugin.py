"""The pytest plugin, run inside throw-away projects with ``pytester``.

Covered: the ``gradcheck`` fixture (layer, pair, function; the failure message
names the parameter, the index, both values, the tolerance and the seed), the
``gradverify`` marker and its validation, every ``--gradverify-*`` option and
its ini twin, the terminal summary, the per-test report section, the JSON and
HTML reports, the merge of records from ``pytest -n 2`` (pytest-xdist), the
``--help`` lines, and that loading the plugin is cheap.

The plugin is loaded with ``-p gradverify.pytest_plugin`` unless the package
is installed with its ``pytest11`` entry point (then pytest loads it itself,
and naming it again would register it twice).

Cost: a few in-process pytester runs of tiny layers (milliseconds each) and
three subprocess runs (xdist, Hypothesis budget, import check): about 10 s.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Imported here, before any in-process pytester run: pytester restores
# sys.modules after each run, and numpy cannot be imported twice in a process.
# (``import gradverify`` is lazy and no longer imports numpy itself.)
import gradverify  # noqa: F401
import gradverify.api  # noqa: F401  (its submodules, numpy among them, load once: one class per error)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


def _entry_point_installed() -> bool:
    return any(ep.value == "gradverify.pytest_plugin"
               for ep in importlib.metadata.entry_points(group="pytest11"))


PLUGIN = [] if _entry_point_installed() else ["-p", "gradverify.pytest_plugin"]

# A dense layer whose bias gradient can be wrong (doubled): the bias is the
# only parameter the bug touches, so "where" has one right answer.
LAYERS = '''
import numpy as np

class Dense:
    def __init__(self, n_in=3, n_out=2, bug=False, seed=0):
        rng = np.random.default_rng(seed)
        self.params = {"weight": rng.standard_normal((n_in, n_out)), "bias": rng.standard_normal(n_out)}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        db = dy.sum(0)
        self.grads = {"weight": self.x.T @ dy, "bias": 2 * db if self.bug else db}
        return dy @ self.params["weight"].T


def tanh_pair(x):
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, y):
    return (dy * (1 - y ** 2),)


def tanh_backward_wrong(dy, y):
    return (dy * (1 - y),)          # forgot the square
'''

TWO_TESTS = '''
from layers import Dense

def test_correct_layer(gradcheck):
    gradcheck.layer(Dense(), (4, 3))

def test_wrong_bias(gradcheck):
    gradcheck.layer(Dense(bug=True), (4, 3))
'''


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A fresh project with layers.py; gradverify importable from this checkout (also by xdist workers)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(layers=LAYERS)
    return pytester


def _run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest(*PLUGIN, "-p", "no:cacheprovider", *args)


def _report(p: pytest.Pytester, name: str = "r.json") -> dict:
    return json.loads((p.path / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# The fixture
# ---------------------------------------------------------------------------

def test_fixture_fails_only_the_wrong_layer_and_names_the_bias(project):
    project.makepyfile(test_layers=TWO_TESTS)
    result = _run(project)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    # The GradientMismatch message: what and where, both values, tolerance, seed.
    result.stdout.fnmatch_lines([
        "*GradientMismatch: gradient check FAIL at *: layer, float64, reference=reference*seed=0*",
        "*mismatch at input 'bias'[[]*",
        "*analytic:*", "*reference:*", "*tolerance:*",
    ])
    assert "test_correct_layer" not in out.split("short test summary")[1]
    # The failing verdict is printed once (in the failure), not again in the per-test section.
    # (above pytest's short summary, which under CI=true repeats each failure's first line untruncated)
    assert out.split("short test summary")[0].count("gradient check FAIL at") == 1
    assert "[Dense] gradient check FAIL" not in out


def test_fixture_pair_and_function_return_results_and_raise_on_mismatch(project):
    project.makepyfile(test_fns='''
        import numpy as np
        import pytest
        import gradverify
        from layers import tanh_pair, tanh_backward, tanh_backward_wrong

        X = np.linspace(-1.5, 1.5, 7)

        def test_pair(gradcheck):
            result = gradcheck.pair(tanh_pair, tanh_backward, (X,))
            assert result.passed and result.kind == "pair"
            assert gradcheck.results == [result]

        def test_pair_wrong(gradcheck):
            with pytest.raises(gradverify.GradientMismatch) as info:
                gradcheck.pair(tanh_pair, tanh_backward_wrong, (X,), label="tanh")
            assert info.value.result.worst.input == "x"

        def test_function(gradcheck):
            result = gradcheck(np.sin, (X,), vjp=lambda g, x: (g * np.cos(x),))
            assert result.passed and result.kind == "function"

        def test_bad_input_is_recorded_and_raised(gradcheck):
            with pytest.raises(gradverify.GradVerifyError):
                gradcheck(np.sin, (X,))            # numpy function without vjp=
    ''')
    result = _run(project, "--gradverify-report=r.json")
    result.assert_outcomes(passed=4)
    checks = {c["nodeid"].split("::")[1]: c for c in _report(project)["checks"]}
    assert set(checks) == {"test_pair", "test_pair_wrong", "test_function", "test_bad_input_is_recorded_and_raised"}
    assert checks["test_pair_wrong"]["passed"] is False and checks["test_pair_wrong"]["label"] == "tanh"
    assert checks["test_pair"]["label"] == "tanh_pair"
    bad = checks["test_bad_input_is_recorded_and_raised"]
    assert bad["status"] == "error" and "SpecError" in bad["error"]


def test_report_sections_and_attributes_carry_each_check(project):
    project.makepyfile(test_layers=TWO_TESTS)
    rec = project.inline_run(*PLUGIN, "-p", "no:cacheprovider")
    calls = {r.nodeid.split("::")[1]: r for r in rec.getreports("pytest_runtest_logreport") if r.when == "call"}
    bad = calls["test_wrong_bias"]
    (record,) = bad.gradverify
    assert record["passed"] is False and record["worst"]["input"] == "bias"
    assert record["kind"] == "layer" and record["seconds"] >= 0
    # The failing verdict is in the failure itself, so it is not repeated in a section.
    assert "mismatch at input 'bias'" in str(bad.longrepr)
    assert "gradverify" not in dict(bad.sections)
    assert "gradient check PASS" in dict(calls["test_correct_layer"].sections)["gradverify"]


# ---------------------------------------------------------------------------
# The marker
# ---------------------------------------------------------------------------

def test_marker_settings_reach_the_checks(project):
    project.makepyfile(test_marked='''
        import pytest
        from layers import Dense

        pytestmark = pytest.mark.gradverify(seed=3)

        @pytest.mark.gradverify(rtol=1e-3, mode="full", dtype="float32")
        def test_marked(gradcheck):
            r = gradcheck.layer(Dense(), (4, 3))
            assert r.seed == 3 and r.dtype == "float32"

        @pytest.mark.gradverify(seed=11)
        def test_closest_marker_wins(gradcheck):
            assert gradcheck.layer(Dense(), (4, 3)).seed == 11

        @pytest.mark.gradverify(seed=11)
        def test_keyword_wins(gradcheck):
            assert gradcheck.layer(Dense(), (4, 3), seed=12).seed == 12
    ''')
    result = _run(project, "--gradverify-report=r.json")
    result.assert_outcomes(passed=3)
    checks = {c["nodeid"].split("::")[1]: c for c in _report(project)["checks"]}
    assert checks["test_marked"]["tolerance"]["rtol"] == 1e-3
    assert checks["test_marked"]["seed"] == 3


@pytest.mark.parametrize("marker, message", [
    ("gradverify(rtol=1e-4, colour='red')", "*unknown key(s) 'colour'; known keys: rtol, atol, mode, seed, dtype, against*"),
    ("gradverify(1e-4)", "*keyword arguments only*"),
    ("gradverify(mode='sloppy')", "*gradverify(mode=...) must be one of*"),
    ("gradverify(dtype='int32')", "*gradverify(dtype=...) must be one of float16, float32, float64*"),
    ("gradverify(seed=-1)", "*gradverify(seed=...) must be >= 0*"),
    ("gradverify(against='fd,finite')", "*unknown reference 'finite'*"),
])
def test_marker_is_validated_with_a_clear_error(project, marker, message):
    project.makepyfile(test_bad_marker=f'''
        import pytest

        @pytest.mark.{marker}
        def test_not_using_the_fixture():
            pass
    ''')
    result = _run(project)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


# ---------------------------------------------------------------------------
# Options, ini, summary, reports
# ---------------------------------------------------------------------------

def test_help_lists_the_option_group_and_ini_keys(project):
    result = _run(project, "--help")
    result.stdout.fnmatch_lines([
        "gradient checks (gradverify):",
        "*--gradverify-report=PATH*",
        "*--gradverify-against=REFS*",
        "*--gradverify-dtype=DTYPE*",
        "*--gradverify-examples=N*",
        "*--gradverify-seed=SEED*",
    ])
    for ini in ("gradverify_report", "gradverify_against", "gradverify_dtype", "gradverify_examples",
                "gradverify_seed"):
        result.stdout.fnmatch_lines([f"*{ini} *"])
    markers = _run(project, "--markers")
    markers.stdout.fnmatch_lines(["*@pytest.mark.gradverify(rtol=, atol=, mode=, seed=, dtype=, against=, examples=)*"])


def test_seed_and_dtype_options_and_their_ini_equivalents(project):
    project.makepyfile(test_opts='''
        def test_options(gradcheck):
            from layers import Dense
            r = gradcheck.layer(Dense(), (4, 3))
            print("SEED", r.seed, "DTYPE", r.dtype, "AGAINST", ",".join(gradcheck.against))
    ''')
    _run(project, "-s", "--gradverify-seed=5", "--gradverify-dtype=float32").stdout.fnmatch_lines(
        ["gradverify: against=auto, seed=5, dtype=float32",        # the run header
         "*SEED 5 DTYPE float32 AGAINST auto*"])
    project.makeini("[pytest]\ngradverify_seed = 3\ngradverify_dtype = float32\ngradverify_against = fd\n")
    _run(project, "-s").stdout.fnmatch_lines(["*SEED 3 DTYPE float32 AGAINST fd*"])
    # The command line overrides the ini file.
    _run(project, "-s", "--gradverify-seed=9").stdout.fnmatch_lines(["*SEED 9 DTYPE float32*"])


def test_pyproject_toml_values_keep_their_types(project):
    project.makepyfile(test_opts='''
        def test_options(gradcheck):
            from layers import Dense
            r = gradcheck.layer(Dense(), (4, 3))
            print("SEED", r.seed, "AGAINST", ",".join(gradcheck.against), "EXAMPLES", gradcheck.examples)
    ''')
    project.makepyprojecttoml(
        '[tool.pytest.ini_options]\ngradverify_seed = 4\ngradverify_examples = 9\ngradverify_against = ["fd"]\n')
    result = _run(project, "-s", "-W", "error::pytest.PytestDeprecationWarning")
    result.stdout.fnmatch_lines(["*SEED 4 AGAINST fd EXAMPLES 9*"])


def test_bad_ini_value_is_a_usage_error(project):
    project.makepyfile(test_x="def test_x():\n    pass\n")
    project.makeini("[pytest]\ngradverify_seed = many\n")
    result = _run(project)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option gradverify_seed (int): *many*"])


@pytest.mark.parametrize("option, message", [
    ("--gradverify-against=fd,bogus", "*unknown reference 'bogus'; choose from auto,fd,reference,torch,jax*"),
    ("--gradverify-report=r.txt", "*--gradverify-report must end in .json or .html*"),
    ("--gradverify-seed=-2", "*--gradverify-seed must be >= 0*"),
    ("--gradverify-examples=many", "*--gradverify-examples must be an integer*"),
    ("--gradverify-dtype=float8", "*--gradverify-dtype must be one of float16, float32, float64*"),
])
def test_bad_options_are_usage_errors(project, option, message):
    project.makepyfile(test_x="def test_x():\n    pass\n")
    result = _run(project, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_against_a_framework_that_is_not_installed_is_a_usage_error(project, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",       # pretend JAX is missing (in-process run)
                        lambda name, *a, **k: None if name == "jax" else real(name, *a, **k))
    project.makepyfile(test_x="def test_x():\n    pass\n")
    result = _run(project, "--gradverify-against=fd,jax")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("--gradverify-against names 'jax' but jax is not installed "
            '(pip install jax (or, in a gradverify checkout: pip install ".[jax]"))') in result.stderr.str()


def test_terminal_summary_counts_checks_and_shows_worst_per_test(project):
    project.makepyfile(test_layers=TWO_TESTS + '''

def test_two_checks(gradcheck):
    gradcheck.layer(Dense(), (4, 3))
    gradcheck.layer(Dense(seed=1), (2, 3))

def test_no_checks():
    pass
''')
    result = _run(project)
    result.stdout.fnmatch_lines([
        "*= gradverify =*",
        "4 gradient checks in 3 tests, 1 failed",
        "FAIL test_layers.py::test_wrong_bias [[]Dense[]] (1/1 checks failed): worst 'bias'[[]*]: abs err *, "
        "rel err *, tolerance *, reference=reference",
        "ok   test_layers.py::test_* [[]Dense[]]*",
        "ok   test_layers.py::test_* [[]Dense[]]*",
    ])
    result.stdout.fnmatch_lines(["ok   test_layers.py::test_two_checks [[]Dense[]] (2 checks): worst *"])
    assert "test_no_checks" not in result.stdout.str().split("= gradverify =")[1].split("short test summary")[0]


def test_no_summary_when_no_check_ran(project):
    project.makepyfile(test_x="def test_x():\n    pass\n")
    result = _run(project)
    assert "gradient check" not in result.stdout.str()


def test_json_report_lists_every_check(project):
    project.makepyfile(test_layers=TWO_TESTS)
    _run(project, "--gradverify-report=out/r.json").assert_outcomes(passed=1, failed=1)
    data = _report(project, "out/r.json")
    assert data["summary"] == {"checks": 2, "failed": 1, "expected": 0, "errors": 0, "tests": 2}
    assert len(data["checks"]) == 2
    for check in data["checks"]:
        assert {"nodeid", "passed", "kind", "worst", "seconds", "seed", "status"} <= set(check)
    by_test = {c["nodeid"]: c for c in data["checks"]}
    bad = by_test["test_layers.py::test_wrong_bias"]
    assert bad["passed"] is False and bad["kind"] == "layer" and bad["worst"]["input"] == "bias"
    assert by_test["test_layers.py::test_correct_layer"]["passed"] is True


def test_html_report_is_self_contained(project):
    project.makepyfile(test_layers=TWO_TESTS)
    _run(project, "--gradverify-report=r.html")
    page = (project.path / "r.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert "test_layers.py::test_wrong_bias" in page and "&#x27;bias&#x27;" in page
    assert "<script" not in page and "http" not in page


def test_report_path_from_ini(project):
    project.makepyfile(test_layers=TWO_TESTS)
    project.makeini("[pytest]\ngradverify_report = from_ini.json\n")
    _run(project)
    assert len(_report(project, "from_ini.json")["checks"]) == 2


def test_examples_option_sets_the_hypothesis_budget(project):
    from hypothesis import settings

    before = settings.default.max_examples
    project.makepyfile(test_hyp='''
        from hypothesis import given, strategies as st

        SEEN = []

        @given(st.integers())
        def test_property(n):
            SEEN.append(n)

        def test_count(gradcheck):
            print("EXAMPLES", len(SEEN), gradcheck.examples)
    ''')
    # A subprocess, so the budget cannot leak into this session's Hypothesis profile.
    result = project.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-s", "--gradverify-examples=7")
    result.stdout.fnmatch_lines(["*EXAMPLES 7 7*"])
    assert settings.default.max_examples == before


def test_examples_profile_is_restored_after_an_in_process_run(project):
    from hypothesis import settings

    before = settings.default.max_examples
    project.makepyfile(test_x="def test_x():\n    pass\n")
    _run(project, f"--gradverify-examples={before + 3}").assert_outcomes(passed=1)
    assert settings.default.max_examples == before


# ---------------------------------------------------------------------------
# pytest-xdist
# ---------------------------------------------------------------------------

def test_xdist_gives_the_same_outcome_and_one_merged_report(project):
    pytest.importorskip("xdist")
    project.makepyfile(test_layers=TWO_TESTS + '''

import pytest

@pytest.mark.parametrize("seed", range(4))
def test_many(gradcheck, seed):
    gradcheck.layer(Dense(seed=seed), (2, 3), seed=seed)
''')
    result = project.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-n", "2",
                                          "--gradverify-report=r.json")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["6 gradient checks in 6 tests, 1 failed",
                                 "FAIL test_layers.py::test_wrong_bias*'bias'*"])
    data = _report(project)
    assert data["summary"]["checks"] == 6 and data["summary"]["failed"] == 1
    nodeids = [c["nodeid"] for c in data["checks"]]
    assert len(set(nodeids)) == 6                        # each check exactly once
    assert all(c["worker"].startswith("gw") for c in data["checks"])   # recorded on the workers
    assert [c["nodeid"] for c in data["checks"] if not c["passed"]] == ["test_layers.py::test_wrong_bias"]


# ---------------------------------------------------------------------------
# Cheap to load
# ---------------------------------------------------------------------------

def test_loading_the_plugin_imports_nothing_beyond_the_package():
    code = (
        "import sys, pytest, gradverify\n"
        "before = set(sys.modules)\n"
        "import gradverify.pytest_plugin\n"
        "new = sorted(set(sys.modules) - before)\n"
        "heavy = [m for m in ('torch', 'jax', 'hypothesis') if m in sys.modules]\n"
        "print(new, heavy)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "['gradverify.pytest_plugin'] []"


# ---------------------------------------------------------------------------
# against=, expected failures, labels, tracebacks (issue 12, points A and 6)
# ---------------------------------------------------------------------------

TORCH_FUNCTION = '''
import torch

class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g

X = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
'''


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_against_option_and_marker_reach_the_checks(project):
    project.makepyfile(fns=TORCH_FUNCTION, test_against='''
        import pytest
        from fns import Square, X

        def test_default(gradcheck):
            print("REF default", gradcheck(Square.apply, (X,)).reference)

        @pytest.mark.gradverify(against="fd")
        def test_marker_fd(gradcheck):
            print("REF marker", gradcheck(Square.apply, (X,)).reference)

        @pytest.mark.gradverify(against=("torch", "fd"))
        def test_marker_both(gradcheck):
            r = gradcheck(Square.apply, (X,), label="square")
            print("REF both", r.reference, any("also checked against fd" in w for w in r.warnings))
    ''')
    # subprocess: torch is imported by the run, and cannot be imported twice in this process
    out = project.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-s", "--gradverify-report=r.json")
    out.assert_outcomes(passed=3)
    out.stdout.fnmatch_lines(["*REF default torch*", "*REF marker fd*", "*REF both torch True*"])
    out.stdout.fnmatch_lines(["ok   test_against.py::test_default [[]Square.apply[]]: worst *, reference=torch",
                              "ok   test_against.py::test_marker_both [[]square[]]: worst *, reference=torch"])
    refs = {c["nodeid"].split("::")[1]: c["reference"] for c in _report(project)["checks"]}
    assert refs == {"test_default": "torch", "test_marker_fd": "fd", "test_marker_both": "torch"}
    # the command line sets it for every test without a marker
    out = project.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-s", "--gradverify-against=fd",
                                       "-k", "default")
    out.stdout.fnmatch_lines(["gradverify: against=fd*", "*REF default fd*"])


def test_against_auto_cannot_be_combined(project):
    project.makepyfile(test_x="def test_x():\n    pass\n")
    result = _run(project, "--gradverify-against=auto,fd")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gradverify-against: auto chooses by itself*"])


def test_expected_failure_is_reported_as_expected_not_fail(project):
    project.makepyfile(test_expect='''
        import numpy as np
        import pytest
        import gradverify
        from layers import tanh_pair, tanh_backward_wrong

        def test_catches_the_bug(gradcheck):
            with pytest.raises(gradverify.GradientMismatch):
                gradcheck.pair(tanh_pair, tanh_backward_wrong, (np.linspace(-1, 1, 5),), label="tanh-bug")

        @pytest.mark.xfail(raises=gradverify.GradientMismatch, strict=True)
        def test_known_bug(gradcheck):
            gradcheck.pair(tanh_pair, tanh_backward_wrong, (np.linspace(-1, 1, 5),), label="known")
    ''')
    result = _run(project, "--gradverify-report=r.json")
    result.assert_outcomes(passed=1, xfailed=1)
    result.stdout.fnmatch_lines([
        "2 gradient checks in 2 tests, 0 failed, 2 expected failures",
        "xfail test_expect.py::test_* [[]*[]] (1/1 checks failed as expected): worst 'x'*",
        "xfail test_expect.py::test_* [[]*[]] (1/1 checks failed as expected): worst 'x'*",
    ])
    assert "FAIL test_expect" not in result.stdout.str()
    data = _report(project)
    assert data["summary"]["failed"] == 0 and data["summary"]["expected"] == 2
    assert all(c["expected"] is True and c["passed"] is False for c in data["checks"])


def test_bad_input_traceback_stops_at_the_test_call(project):
    project.makepyfile(test_tb='''
        import numpy as np

        class Broken:
            params = {}
            def forward(self, x):
                return x @ np.ones((7, 2))      # the user's bug: wrong inner dimension
            def backward(self, dy):
                return dy

        def test_no_vjp(gradcheck):
            gradcheck(np.sin, (np.ones(3),))

        def test_forward_raises(gradcheck):
            gradcheck.layer(Broken(), (4, 3), label="broken")

        def test_direct_assert(gradcheck):
            import gradverify
            gradverify.assert_layer(Broken(), (4, 3))
    ''')
    result = _run(project)
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*gradcheck(np.sin, (np.ones(3),))*", "E*SpecError: check(fn, inputs) of a numpy*"])
    result.stdout.fnmatch_lines(["*return x @ np.ones((7, 2))*", "E*ValueError*",
                                 "*direct cause*",
                                 "*gradcheck.layer(Broken(), (4, 3), label=\"broken\")*",
                                 "E*CodeUnderTestError: Broken.forward raised ValueError*",
                                 "E*(forward called with x: (4, 3))*"])
    # nothing from inside gradverify in the tracebacks
    tracebacks = out.split("= FAILURES =")[1].split("= gradverify =")[0]
    assert "gradverify/api.py" not in tracebacks and "gradverify/layers.py" not in tracebacks
    assert "pytest_plugin.py" not in tracebacks
    result.stdout.fnmatch_lines(["FAIL test_tb.py::test_forward_raises [[]broken[]]*CodeUnderTestError*"])
    result.stdout.fnmatch_lines(["*gradverify.assert_layer(Broken(), (4, 3))*", "E*CodeUnderTestError*"])


def test_examples_option_property_tests_the_fixture_checks(project):
    """--gradverify-examples makes each gradcheck call a property check: the clip bug only |x| > 3 shows is found."""
    project.makepyfile(test_clip='''
        import numpy as np

        class Clip:
            params = {}

            def forward(self, x):
                return np.clip(x, -3.0, 3.0)

            def backward(self, dy):
                self.grads = {}
                return dy.copy()  # ignores the clip range

        def test_clip(gradcheck):
            gradcheck.layer(Clip(), (4, 3))
    ''')
    _run(project).assert_outcomes(passed=1)  # one standard-normal draw misses it
    result = _run(project, "--gradverify-examples=40")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*counterexample x = *"])
