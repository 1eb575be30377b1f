"""Real code as users bring it (issue 12): several outputs, constants, other layer protocols, state, budgets.

Every check here runs against finite differences (``against="fd"``) unless
it says otherwise, so the verdicts do not depend on the engine's tracing;
tolerances are the library's defaults (float64: 1e-5 relative against
finite differences).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradverify as gv
from gradverify.api import SlowCheckWarning
from gradverify.errors import SpecError


def lstm_like_step(x, h, Wx, Wh):
    """Two outputs, like an LSTM step's ``(h, c)``."""
    z = x @ Wx + h @ Wh
    return np.tanh(z), 0.5 * z


def lstm_like_vjp(dout, x, h, Wx, Wh, *, drop_second=False):
    dh, dc = dout
    z = x @ Wx + h @ Wh
    dz = dh * (1 - np.tanh(z) ** 2) + (0.0 if drop_second else 0.5 * dc)
    return dz @ Wx.T, dz @ Wh.T, x.T @ dz, h.T @ dz


def _lstm_inputs():
    rng = np.random.default_rng(1)
    return (rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((3, 4)),
            rng.standard_normal((4, 4)))


def test_several_outputs_are_all_covered_by_the_cotangent():
    ins = _lstm_inputs()
    assert gv.check(lstm_like_step, ins, vjp=lstm_like_vjp, against="fd").passed
    # a vjp that ignores the second output's cotangent is wrong, and is caught
    bad = gv.check(lstm_like_step, ins, against="fd",
                   vjp=lambda d, *a: lstm_like_vjp(d, *a, drop_second=True))
    assert bad.status == "fail"


def test_a_pair_with_a_dict_output():
    def forward(x, w):
        a = x * w
        return {"y": np.sin(a), "count": 3, "z": a ** 2}, (x, w, a)

    def backward(dout, cache):
        x, w, a = cache
        assert dout["count"] is None  # not a floating-point output: no cotangent
        da = dout["y"] * np.cos(a) + dout["z"] * 2 * a
        return da * w, da * x

    rng = np.random.default_rng(2)
    assert gv.check_pair(forward, backward, (rng.standard_normal(4), rng.standard_normal(4)), against="fd").passed


def test_python_numbers_and_tuples_of_ints_are_constants():
    def fn(x, scale, shape, opts):
        return np.sin(x).reshape(shape) * scale * opts["k"]

    def vjp(g, x, scale, shape, opts):
        return (g.reshape(x.shape) * np.cos(x) * scale * opts["k"], None, None, None)

    r = gv.check(fn, (np.linspace(-1, 1, 6), 2.5, (2, 3), {"k": 3}), vjp=vjp, against="fd")
    assert r.passed
    assert [(s.name, s.checked) for s in r.inputs] == [("x", True), ("scale", False), ("shape", False),
                                                       ("opts", False)]


def test_constants_hold_arrays_constant():
    ins = _lstm_inputs()
    r = gv.check(lstm_like_step, ins, vjp=lstm_like_vjp, constants=("h", 3), against="fd")
    assert r.passed
    checked = {s.name: s.checked for s in r.inputs}
    assert checked == {"x": True, "Wx": True, "h": False, "Wh": False}
    with pytest.raises(SpecError, match="constants="):
        gv.check(lstm_like_step, ins, vjp=lstm_like_vjp, constants=("nope",))


class OtherProtocol:
    """Parameters in ``weights``, gradients in ``dweights``."""

    def __init__(self, bug=False):
        self.weights = {"W": np.random.default_rng(0).standard_normal((3, 2))}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x @ self.weights["W"]

    def backward(self, dy):
        self.dweights = {"W": self.x.T @ dy * (1.01 if self.bug else 1.0)}
        return dy @ self.weights["W"].T


def test_layer_protocol_attribute_names():
    r = gv.check_layer(OtherProtocol(), (4, 3), params_attr="weights", grads_attr="dweights", against="fd")
    assert r.passed and [s.name for s in r.inputs] == ["x", "W"]
    bad = gv.check_layer(OtherProtocol(bug=True), (4, 3), params_attr="weights", grads_attr="dweights",
                         against="fd")
    assert bad.status == "fail" and bad.worst.input == "W"


class Accumulating:
    """Caches every input in a list (backward pops it) and accumulates gradients with ``+=``."""

    def __init__(self, bug=False):
        rng = np.random.default_rng(0)
        self.params = {"W": rng.standard_normal((3, 2))}
        self.grads = {"W": np.zeros((3, 2))}
        self.cache = []
        self.bug = bug

    def forward(self, x):
        self.cache.append(x)
        return np.tanh(x @ self.params["W"])

    def backward(self, dy):
        x = self.cache.pop()
        y = np.tanh(x @ self.params["W"])
        d = dy * (1 - y ** 2)
        self.grads["W"] += x.T @ d * (1.01 if self.bug else 1.0)
        return d @ self.params["W"].T


def test_a_layer_that_keeps_state_is_reset_and_says_so():
    layer = Accumulating()
    r = gv.check_layer(layer, (4, 3), against="fd")
    assert r.passed, r
    assert any("changes state" in w and "cache" in w for w in r.warnings), r.warnings
    assert layer.cache == [] and np.all(layer.grads["W"] == 0)  # left as the user left it
    bad = gv.check_layer(Accumulating(bug=True), (4, 3), against="fd")
    assert bad.status == "fail" and bad.worst.input == "W"


class CheapWide:
    """y = tanh(x W) with 20,400 weights: cheap to evaluate."""

    def __init__(self):
        self.params = {"W": np.random.default_rng(0).standard_normal((100, 204)) / 10}

    def forward(self, x):
        self.x = x
        return np.tanh(x @ self.params["W"])

    def backward(self, dy):
        d = dy * (1 - np.tanh(self.x @ self.params["W"]) ** 2)
        self.grads = {"W": self.x.T @ d}
        return d @ self.params["W"].T


def test_auto_mode_chooses_by_the_budget():
    """Counted evaluations, no timing assertions: a generous budget checks every element, a tiny one projects."""
    full = gv.check_layer(CheapWide(), (2, 100), against="fd", budget=3600)
    assert full.mode == "full" and full.evaluations > 20_400
    fast = gv.check_layer(CheapWide(), (2, 100), against="fd", budget=1e-6)
    assert fast.mode == "fast" and fast.evaluations < 200
    assert any("over budget" in w for w in fast.warnings)


def test_a_full_check_past_its_budget_warns_with_the_estimate_before_it_runs():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = gv.check_layer(CheapWide(), (2, 100), against="fd", mode="full", budget=1e-6)
    assert r.mode == "full"
    slow = [w for w in caught if issubclass(w.category, SlowCheckWarning)]
    assert slow and "evaluations" in str(slow[0].message) and "budget" in str(slow[0].message)


def test_budget_is_validated():
    with pytest.raises(SpecError, match="budget"):
        gv.check_layer(CheapWide(), (2, 100), budget=-1)


def test_progress_bar_when_asked(capsys):
    r = gv.check_layer(OtherProtocol(), (4, 3), params_attr="weights", grads_attr="dweights", against="fd",
                       mode="full", progress=True)
    assert r.passed
    assert "full check" in capsys.readouterr().err
