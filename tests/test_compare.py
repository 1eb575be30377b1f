"""The comparison core: the tolerance rule, scale invariance, the worst element."""

import json

import numpy as np
import pytest

import gradverify as gv
from gradverify.compare import TOLERANCES, Comparison, tolerance_for


def test_tolerance_table_keyed_by_dtype_and_overrides():
    assert tolerance_for(np.float32).rtol == TOLERANCES["float32"].rtol
    assert tolerance_for(np.float64).rtol < tolerance_for(np.float32).rtol < tolerance_for(np.float16).rtol
    t = tolerance_for(np.float64, rtol=1e-3, atol=1e-9)
    assert (t.rtol, t.atol) == (1e-3, 1e-9)
    with pytest.raises(gv.SpecError, match="rtol"):
        tolerance_for(np.float64, rtol=-1.0)


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_verdict_is_scale_invariant(scale):
    # The same 0.1% error in one element must fail, and rounding-level
    # differences pass, whatever the units of the gradient.
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 5)) * scale
    good = ref * (1 + 1e-12 * rng.standard_normal(ref.shape))
    bad = ref.copy()
    bad[1, 3] *= 1.001
    assert gv.compare_gradients({"W": good}, {"W": ref}).passed
    r = gv.compare_gradients({"W": bad}, {"W": ref})
    assert not r.passed and r.worst.input == "W" and r.worst.index == (1, 3)
    assert r.worst.rel_err == pytest.approx(1e-3, rel=1e-6)


def test_exact_zeros_pass_and_nonzero_where_zero_is_true_fails():
    ref = {"W": np.array([[1.0, -2.0]]), "unused": np.zeros(3)}
    assert gv.compare_gradients({"W": ref["W"].copy(), "unused": np.zeros(3)}, ref).passed
    r = gv.compare_gradients({"W": ref["W"].copy(), "unused": np.array([0.0, 0.3, 0.0])}, ref)
    assert not r.passed and r.worst.input == "unused" and r.worst.index == (1,)


def test_noise_allowance_covers_reference_error_but_no_more():
    a = {"x": np.array([1.0, 2.0])}
    n = {"x": np.array([1.0 + 1e-4, 2.0])}
    comp = Comparison(a, tolerance_for(np.float64))
    # a gap of 1e-4 inside an estimated reference error of 1e-4 is not a failure
    assert comp.result(n, {"x": np.array([1e-4, 0.0])}, kind="function").passed
    # with a small estimated error it is (1e-4 relative is 10x rtol)
    assert not comp.result(n, {"x": np.array([1e-9, 0.0])}, kind="function").passed


def test_worst_element_is_largest_relative_to_tolerance_and_json_ready():
    ref = {"a": np.array([1000.0, 1.0]), "b": np.array([1e-3])}
    ana = {"a": np.array([1000.1, 1.0]), "b": np.array([2e-3])}
    r = gv.compare_gradients(ana, ref)
    # b is off by 100% (a far larger multiple of its tolerance than a's 1e-4)
    assert r.worst.input == "b" and r.failures == 2
    d = json.loads(json.dumps(r.to_dict()))
    assert d["worst"]["input"] == "b" and d["status"] == "fail"


def test_float32_gradient_tolerance_catches_one_percent():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(20)
    ana32 = ref.astype(np.float32)
    assert gv.compare_gradients({"x": ana32}, {"x": ref}).passed  # float32 rounding only
    bad = ana32.copy()
    bad[7] *= 1.01
    r = gv.compare_gradients({"x": bad}, {"x": ref})
    assert not r.passed and r.worst.index == (7,)


def test_mismatched_names_and_shapes_are_clear_errors():
    with pytest.raises(gv.SpecError, match="missing"):
        gv.compare_gradients({"a": np.ones(2)}, {"b": np.ones(2)})
    with pytest.raises(gv.ShapeMismatch, match="shape"):
        gv.compare_gradients({"a": np.ones(2)}, {"a": np.ones(3)})
