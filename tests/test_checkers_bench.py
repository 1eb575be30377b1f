"""The checker-comparison library (``gradverify.checkers``) and its CLI, at tiny sizes.

No timing is asserted (times depend on the machine): these tests check the
shape of the rows, that the torch and JAX versions of the MLP compute the
same loss, that the injected bugs are what they claim (a 0.1% error in one
element of dW2; a tanh derivative off by at most 1e-3 relative), that the
budget marks a slow method "not measured" rather than inventing a number,
and that the command line runs. Sizes: P ~ 20-100; the file runs in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradverify import checkers as C

ROOT = Path(__file__).resolve().parents[1]


def test_widths_and_parameter_counts():
    assert C.param_count(49) == 4950 and C.param_count(99) == 19900
    for p in (100, 500, 2000, 5000, 20000):
        h = C.width_for(p)
        assert all(abs(C.param_count(h) - p) <= abs(C.param_count(w) - p) for w in (h - 1, h + 1) if w > 0)


def test_the_mlp_is_seeded_and_the_bug_sits_on_a_typical_element():
    a, b = C.make_mlp(100, seed=3), C.make_mlp(100, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.params, b.params))
    g = np.abs(C._numpy_grads(a.x, a.target, a.params)[2])
    # the median element of |dW2| (exactly: argsort's middle)
    assert np.sum(g < g[a.bug_index]) == g.size // 2


def _torch_grads(mlp, bug):
    torch = pytest.importorskip("torch")
    fn, ps = C.torch_mlp(mlp, bug, custom=True)
    loss = fn(*ps)
    return float(loss.detach()), [g.numpy() for g in torch.autograd.grad(loss, ps)]


def test_torch_bugs_are_the_stated_size():
    mlp = C.make_mlp(60)
    _, right = _torch_grads(mlp, None)
    _, elem = _torch_grads(mlp, "element")
    _, approx = _torch_grads(mlp, "approx")
    ref = C._numpy_grads(mlp.x, mlp.target, mlp.params)
    for r, g in zip(ref, right):  # the custom layers are right without a bug (float64 rounding: 1e-12)
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-15)
    diff = [np.argwhere(e != r) for e, r in zip(elem, right)]
    assert [len(d) for d in diff] == [0, 0, 1, 0, 0, 0]
    assert tuple(diff[2][0]) == mlp.bug_index
    np.testing.assert_allclose(elem[2][mlp.bug_index] / right[2][mlp.bug_index], 1 + C.ELEMENT_ERROR, rtol=1e-12)
    # the approximation bug: a tanh derivative off by up to 1e-3 relative, in both layers; the parameter
    # gradients inherit an error of that order (two layers compound it, cancellation can enlarge it a
    # little): between 1e-5 and 1e-2 of each tensor's scale. W3 and b3 come before any tanh: untouched.
    gaps = [np.max(np.abs(a - r)) / np.max(np.abs(r)) for a, r in zip(approx, right)]
    assert all(1e-5 < g < 1e-2 for g in gaps[:4]) and gaps[4:] == [0.0, 0.0], gaps


def test_jax_and_torch_mlps_agree():
    pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    mlp = C.make_mlp(60)
    for bug in (None, "element", "approx"):
        t_loss, t_grads = _torch_grads(mlp, bug)
        with C._x64():
            fn, ps = C.jax_mlp(mlp, bug, custom=True)
            j_loss, j_grads = jax.value_and_grad(fn, argnums=tuple(range(6)))(*ps)
        # the same float64 arithmetic in two libraries: rounding only (1e-12)
        np.testing.assert_allclose(float(j_loss), t_loss, rtol=1e-12)
        for a, b in zip(j_grads, t_grads):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10, atol=1e-14)


def test_timing_rows_and_budget():
    pytest.importorskip("torch")
    methods = ["gradverify full (torch)", "torch gradcheck fast"]
    rows = C.time_checkers((20, 60), methods, repeats=2, budget_s=30.0)
    assert [(r["method"], r["params"]) for r in rows] == [
        (m, p) for p in (C.param_count(C.width_for(20)), C.param_count(C.width_for(60))) for m in methods]
    for r in rows:
        assert r["status"] == "measured" and r["runs"] >= 1 and r["passed"] is True
        assert r["min"] <= r["seconds"] <= r["max"] and r["evaluations"] > 0
    # a budget no run fits: every size after the first warm-up is marked, never invented
    tight = C.time_checkers((20, 60), ["gradverify full (torch)"], repeats=2, budget_s=1e-9)
    assert [r["status"] for r in tight] == ["not measured", "not measured"]
    assert all(r["seconds"] is None for r in tight)


def test_missing_frameworks_are_skipped(monkeypatch):
    monkeypatch.setattr(C, "_available", lambda fw: False)
    rows = C.time_checkers((20,), ["torch gradcheck"], repeats=1)
    assert rows[0]["status"] == "skipped" and rows[0]["seconds"] is None


def test_detection_and_localisation_rows():
    pytest.importorskip("torch")
    det = C.detection_table(60, ["gradverify full (torch)", "torch gradcheck"], seeds=1)
    cases = {(r["method"], r["case"]): r for r in det}
    # full mode: no false alarm, both bugs caught, the element bug located exactly
    assert cases[("gradverify full (torch)", "correct")]["failed"] == 0
    assert cases[("gradverify full (torch)", "element")]["failed"] == 1
    assert cases[("gradverify full (torch)", "element")]["located"] == [cases[("gradverify full (torch)",
                                                                               "element")]["expected"]]
    assert cases[("gradverify full (torch)", "approx")]["failed"] == 1
    assert cases[("torch gradcheck", "correct")]["failed"] == 0
    loc = C.localisation(60, errors=(0.1,), frameworks=("torch",))
    assert loc[0]["detected"] and loc[0]["correct"] and loc[0]["evaluations"] > 0
    t = C.targets(C.time_checkers((60,), ["torch gradcheck fast"], repeats=1), det, loc)
    assert [x["met"] for x in t[:2]] == [None, None]  # sizes not measured: no verdict


def test_pin_threads_reports_what_it_pinned():
    out = C.pin_threads()
    assert set(out) >= {"env", "blas", "jax", "torch"}


def test_cli_quick_run_writes_json(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "checkers.py"), "--params", "20", "--repeats", "1",
         "--methods", "gradverify fast (torch)", "torch gradcheck fast", "--detection-params", "20", "--seeds", "1",
         "--localisation-params", "20", "--quiet", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "seconds per check" in proc.stdout and "targets:" in proc.stdout
    data = json.loads(out.read_text())
    assert {"pinned", "environment", "timing", "detection", "localisation", "targets"} <= set(data)
    assert len(data["timing"]) == 2
