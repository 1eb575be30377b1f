"""Cost measurements (gradverify.scaling): the problem, the four gradients, the slope fit, thread pinning.

No timed assertions: timings are only checked to exist and be positive.
The numerical checks compare each method's gradient with reverse mode's,
with tolerances stated per method (forward mode is exact up to rounding;
finite differences carry their truncation error).

Cost: about two seconds (tiny problems, one sample per timing; one
subprocess for thread pinning).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradverify.engine as E
from gradverify import scaling as S

REPO = Path(__file__).resolve().parents[1]


# --- the slope fit -----------------------------------------------------------

def test_fit_slope_recovers_exact_power_laws():
    """Exact power laws: the fitted exponent is exact up to float rounding of the logs (1e-12)."""
    xs = [10, 100, 1e3, 1e4, 1e5]
    assert S.fit_slope(xs, [3.0 for _ in xs]) == pytest.approx(0.0, abs=1e-12)
    assert S.fit_slope(xs, [5.0 * x for x in xs]) == pytest.approx(1.0, abs=1e-12)
    assert S.fit_slope(xs, [2.0 * x ** 1.5 for x in xs]) == pytest.approx(1.5, abs=1e-12)
    slope, intercept = S.fit_line(xs, [7.0 * x for x in xs])
    assert slope == pytest.approx(1.0, abs=1e-12) and 10 ** intercept == pytest.approx(7.0, rel=1e-12)


def test_fit_slope_with_noise_stays_close():
    """Multiplicative noise of at most +-5% over five decades moves the slope by well under 0.05."""
    rng = np.random.default_rng(0)
    xs = np.logspace(1, 6, 12)
    ys = 4.0 * xs * np.exp(rng.uniform(-0.05, 0.05, xs.size))
    assert S.fit_slope(xs, ys) == pytest.approx(1.0, abs=0.05)


def test_fit_slope_skips_missing_points_and_needs_two_x():
    assert S.fit_slope([10, 100, 1000], [None, 0.0, 5.0]) is None          # one usable point
    assert S.fit_slope([10, 10], [1.0, 2.0]) is None                        # one distinct x
    assert S.fit_slope([10, 100, 1000], [1.0, None, 100.0]) == pytest.approx(1.0, abs=1e-12)


def test_slopes_reads_measured_rows_only():
    rows = [{"method": "reverse", "params": p, "relative": 3.0, "seconds": 3e-5, "measured": True}
            for p in (10, 100, 1000)]
    rows += [{"method": "central_diff", "params": p, "relative": 2.0 * p, "seconds": 2e-5 * p, "measured": True}
             for p in (10, 100)]
    rows.append({"method": "central_diff", "params": 1000, "relative": None, "seconds": None, "measured": False})
    s = S.slopes(rows)
    assert set(s) == set(S.METHODS)
    assert s["reverse"] == pytest.approx(0.0, abs=1e-12)
    assert s["central_diff"] == pytest.approx(1.0, abs=1e-12)
    assert s["forward_mode"] is None and s["forward_diff"] is None


# --- the problem --------------------------------------------------------------

@pytest.mark.parametrize("p", [1, 6, 10, 91, 1000, 12345])
def test_width_for_is_closest(p):
    h = S.width_for(p)
    count = lambda w: 2 * w * w + 3 * w + 1  # noqa: E731
    assert all(abs(count(h) - p) <= abs(count(w) - p) for w in range(1, h + 3))


def test_make_problem_parameters_are_views_of_theta():
    prob = S.make_problem(100, seed=1)
    assert prob.params == 2 * prob.width ** 2 + 3 * prob.width + 1 == prob.theta.size
    assert all(np.shares_memory(a, prob.theta) for a in prob.params_arrays)
    before = float(S.mlp_loss(*prob.arrays))
    prob.theta[0] += 1.0                                   # moves W1[0, 0]
    assert float(S.mlp_loss(*prob.arrays)) != before
    again = S.make_problem(100, seed=1)
    assert np.array_equal(again.x, prob.x)                 # seeded


# --- the measurements ---------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    return S.measure_scaling([10, 40], budget=60.0, repeats=1, min_sample=0.001, seed=0)


def test_measure_scaling_rows(rows):
    methods = [r for r in rows if r["method"] != "forward"]
    assert {(r["method"], r["params"]) for r in methods} == {(m, p) for m in S.METHODS for p in (6, 45)}
    for r in methods:
        P = r["params"]
        assert r["measured"] and r["seconds"] > 0 and r["relative"] > 0 and r["forward_seconds"] > 0
        assert r["seconds"] == r["cpu_seconds"] and r["wall_seconds"] > 0 and r["clock"] == "cpu"
        assert r["evaluations"] == {"reverse": 1, "forward_mode": P, "forward_diff": P + 1, "central_diff": 2 * P}[
            r["method"]]
    assert [r["params"] for r in rows if r["method"] == "forward"] == [6, 45]


def test_every_method_computes_the_reverse_mode_gradient(rows):
    """Tolerances: forward mode sums the same products in another order (1e-12 relative to max|g|);
    central differences with h ~ eps^(1/3) have truncation + rounding error ~1e-10 (allow 1e-6);
    forward differences with h ~ eps^(1/2), ~1e-8 times the curvature (allow 1e-4)."""
    tol = {"reverse": 0.0, "forward_mode": 1e-12, "central_diff": 1e-6, "forward_diff": 1e-4}
    for r in rows:
        if r["method"] in tol:
            assert r["max_rel_diff_vs_reverse"] <= tol[r["method"]], r


def test_reverse_gradient_matches_the_engine():
    """The measured reverse callable returns E.grad's gradient, flattened in parameter order (exact)."""
    prob = S.make_problem(30)
    g = S._gradient_fns(prob)["reverse"]()
    ref = E.grad(S.mlp_loss, argnums=tuple(range(2, 8)))(*prob.arrays)
    assert np.array_equal(g, np.concatenate([np.ravel(a) for a in ref]))


def test_over_budget_cells_are_marked_not_measured():
    rows = S.measure_scaling([40], budget=1e-9, repeats=1, min_sample=0.001)
    by = {r["method"]: r for r in rows}
    assert by["reverse"]["measured"] and by["reverse"]["seconds"] > 0      # reverse mode is never skipped
    for m in ("forward_mode", "forward_diff", "central_diff"):
        assert not by[m]["measured"] and by[m]["seconds"] is None and by[m]["relative"] is None
        assert "budget" in by[m]["reason"] and by[m]["evaluations"] > 0
    assert S.slopes(rows)["central_diff"] is None


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown scaling method"):
        S.measure_scaling([10], methods=("backprop",))


def test_time_call_reports_a_median():
    t = S.time_call(lambda: sum(range(100)), repeats=3, min_sample=0.001)
    assert t.repeats == 3 and t.loops >= 1 and 0 < t.min <= t.median <= t.max
    assert t.clock == "cpu" and t.median == t.cpu and t.wall > 0


def test_time_calls_samples_every_callable_in_turn():
    order = []
    ts = S.time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3,
                      min_sample=0.0, warmup=1, clock="wall")
    assert set(ts) == {"a", "b"} and all(t.repeats == 3 and t.clock == "wall" and t.median == t.wall
                                         for t in ts.values())
    assert order[-6:] == ["a", "b"] * 3                       # one loop = one call here: strictly alternating
    with pytest.raises(ValueError, match="unknown clock"):
        S.time_call(lambda: None, clock="sundial")


def test_cheap_gradient_ratio_reference():
    rows = S.cheap_gradient_ratios([10], frameworks=("reference",), repeats=1, min_sample=0.001)
    assert len(rows) == 1 and rows[0]["available"] and rows[0]["ratio"] > 0
    assert rows[0]["ratio"] == pytest.approx(rows[0]["gradient_seconds"] / rows[0]["forward_seconds"])


def test_cheap_gradient_ratio_torch():
    pytest.importorskip("torch")
    rows = S.cheap_gradient_ratios([10], frameworks=("torch",), repeats=1, min_sample=0.001)
    assert rows[0]["framework"] == "torch" and rows[0]["ratio"] > 0


def test_cheap_gradient_ratio_unknown_framework():
    with pytest.raises(ValueError, match="unknown framework"):
        S.cheap_gradient_ratios([10], frameworks=("reference_x",))


def test_import_is_light_and_pinning_reports_one_thread():
    """In a fresh interpreter: importing gradverify.scaling loads neither torch nor jax; pin_threads(1)
    sets the variables, XLA_FLAGS (jax not imported yet) and -- where OpenBLAS or threadpoolctl is found --
    numpy's BLAS pool."""
    code = (
        "import json, sys\n"
        "import gradverify.scaling as S\n"
        "light = 'torch' not in sys.modules and 'jax' not in sys.modules\n"
        "info = S.pin_threads(1)\n"
        "print(json.dumps({'light': light, 'info': info, 'alloc': S.tune_allocator()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["light"]
    info = data["info"]
    assert info["OMP_NUM_THREADS"] == "1" and info["OPENBLAS_NUM_THREADS"] == "1"
    assert "intra_op_parallelism_threads=1" in info["XLA_FLAGS"]
    if "unknown" not in info["blas"]:
        assert info["blas"].endswith("=1"), info["blas"]
    if info["torch"] != "not loaded":
        assert info["torch"].startswith("1 intra-op")
    assert isinstance(data["alloc"], str) and data["alloc"]


def test_thread_settings_changes_nothing():
    before = dict(os.environ)
    info = S.thread_settings()
    assert {"blas", "torch", "XLA_FLAGS", "cpu_count"} <= set(info)
    assert dict(os.environ) == before
