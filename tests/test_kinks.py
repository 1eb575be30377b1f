"""Correct code evaluated exactly at kinks and ties: a non-differentiable verdict, never a failure.

At a kink the one-sided derivatives differ; any value between them is a
valid subgradient (relu'(0) in [0, 1], a max-pool tie routing its gradient
to either of the tied elements). The check reports such points in
``result.nondifferentiable`` with status ``"nondiff"``; a value outside the
one-sided interval, or a wrong gradient elsewhere in the same tensor, still
fails.

The tests that name every kink run against finite differences (``against="fd"``):
against the exact reference a valid subgradient equal to the engine's own is
simply a pass (see tests/test_exact_references.py for kinks there).
"""

import numpy as np
import pytest

import gradverify as gv


def relu_pair(bad_at=None, subgradient=0.0):
    def forward(x):
        return np.maximum(x, 0.0), x

    def backward(dout, x):
        g = dout * (x > 0) + dout * (x == 0) * subgradient
        if bad_at is not None:
            g = g.copy()
            g[bad_at] *= 1.01
        return (g,)

    return forward, backward


X = np.array([[-1.5, 0.0, 2.0], [0.0, 0.7, -0.3]])


@pytest.mark.parametrize("subgradient", [0.0, 0.5, 1.0])
def test_relu_at_zero_is_nondiff_for_every_valid_subgradient(subgradient):
    r = gv.check_pair(*relu_pair(subgradient=subgradient), (X,), against="fd")
    assert r.passed and r.status == "nondiff"
    assert sorted(loc.index for loc in r.nondifferentiable) == [(0, 1), (1, 0)]
    for loc in r.nondifferentiable:
        assert min(loc.left, loc.right) <= loc.analytic <= max(loc.left, loc.right)


def test_invalid_subgradient_at_a_kink_fails():
    r = gv.check_pair(*relu_pair(subgradient=2.0), (X,))
    assert not r.passed and r.worst.index in {(0, 1), (1, 0)}


def test_wrong_gradient_next_to_a_kink_is_still_caught():
    r = gv.check_pair(*relu_pair(bad_at=(1, 1)), (X,))
    assert not r.passed and r.worst.input == "x" and r.worst.index == (1, 1)


def test_abs_at_zero_with_sign_zero():
    x = np.array([-2.0, 0.0, 3.0])
    r = gv.check(np.abs, [x], vjp=lambda d, x: (d * np.sign(x),), against="fd")
    assert r.passed and r.status == "nondiff" and [loc.index for loc in r.nondifferentiable] == [(1,)]


def test_maximum_of_two_inputs_at_ties():
    def forward(a, b):
        return np.maximum(a, b), (a, b)

    def backward(d, cache):
        a, b = cache
        return d * (a >= b), d * (a < b)  # ties routed to a

    a = np.array([1.0, 2.0, -1.0])
    b = np.array([1.0, 0.5, -1.0])
    r = gv.check_pair(forward, backward, (a, b))
    assert r.passed and r.status == "nondiff"
    assert {(loc.input, loc.index) for loc in r.nondifferentiable} >= {("a", (0,)), ("b", (0,))}


class MaxPool1D:
    """Max over windows of 2 along the last axis; ties routed to the first maximum."""

    params = {}

    def forward(self, x):
        self.x = x
        w = x.reshape(x.shape[0], -1, 2)
        self.arg = np.argmax(w, axis=-1)
        return w.max(axis=-1)

    def backward(self, dy):
        dx = np.zeros(self.x.shape[:1] + (self.x.shape[1] // 2, 2))
        np.put_along_axis(dx, self.arg[..., None], dy[..., None], axis=-1)
        return dx.reshape(self.x.shape)


def test_max_pool_ties_are_nondiff_not_failures():
    x = np.array([[1.0, 1.0, 0.5, 2.0], [3.0, -1.0, 0.25, 0.25]])
    r = gv.check_layer(MaxPool1D(), inputs=x)
    assert r.passed and r.status == "nondiff"
    assert {loc.index for loc in r.nondifferentiable} <= {(0, 0), (0, 1), (1, 2), (1, 3)}
    assert len(r.nondifferentiable) >= 2


def test_max_over_axis_tie_split_evenly():
    x = np.array([[4.0, 4.0, 1.0]])

    def fn(x):
        return x.max(axis=1)

    def vjp(d, x):
        m = x == x.max(axis=1, keepdims=True)
        return (d[:, None] * m / m.sum(axis=1, keepdims=True),)

    r = gv.check(fn, [x], vjp=vjp, against="fd")
    assert r.passed and r.status == "nondiff"


def test_curvature_that_dominates_the_step_is_not_a_jump():
    """sum((x - mean x)^2) at x ~ 1e4: the step is sized from |x| = 1e4 while the function curves on scale 1.

    An extremum between x + t/2 and x + t gives equal one-sided values, which alone looks like a jump;
    the central quotients at t and t/2 agree (exactly, for a quadratic), so no kink is reported.
    """
    x = 1e4 + np.random.default_rng(7).standard_normal(16)

    def fn(x):
        return np.sum((x - x.mean()) ** 2)

    r = gv.check(fn, (x,), vjp=lambda g, x: (g * 2 * (x - x.mean()),), mode="full", against="fd")
    assert r.status == "pass" and not r.nondifferentiable, r


@pytest.mark.parametrize("shape", [(), (4,), (3, 5)], ids=["0-d", "vector", "matrix"])
def test_a_one_sided_gradient_at_a_curved_kink_is_a_kink_not_a_failure(shape):
    """sin(|x| + 0.1) at x = 0, with the right derivative as the gradient (JAX's |x|' = 1 at 0).

    The one-sided differences there are first order in the step: taken raw
    they missed the right derivative by 5e-8 relative, far outside a
    float64 tolerance of ~1e-10, and the check failed (a 0-d input even
    crashed). Extrapolated from two steps, with what remains of their error
    as slack, the gradient is a valid subgradient: nondiff, the kink named.
    A 0.1% error beyond the one-sided interval still fails.
    """
    x = np.zeros(shape)

    def fn(x):
        return np.sin(np.abs(x) + 0.1) * 1.3

    def right(g, x):
        return (g * 1.3 * np.cos(np.abs(x) + 0.1),)

    r = gv.check(fn, (x,), vjp=right, mode="full", against="fd")
    assert r.status == "nondiff" and r.nondifferentiable, r
    bad = gv.check(fn, (x,), vjp=lambda g, x: (right(g, x)[0] * 1.001,), mode="full", against="fd")
    assert bad.status == "fail", bad
