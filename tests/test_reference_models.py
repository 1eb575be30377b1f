"""Tests of reference_models/: hand backward vs finite differences and vs the engine.

Tolerances: the finite-difference and engine comparisons use gradverify's own
dtype-keyed tolerances (that is what is under test together with the models);
exact checks are exact where every intermediate value is a small integer.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gradverify as gv
from reference_models import (BatchNorm, LayerNorm, MaxPool2D, SigmoidNetwork, SmallCNN, egraph,
                              make_toy_problem, quadratic_cost_backward, quadratic_cost_forward)
from reference_models import harness

LAYER_NAMES = [name for name, _ in harness.layer_cases()]
PAIR_NAMES = [case[0] for case in harness._pair_cases()]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layer(name):
    return dict(harness.layer_cases())[name]


def _pair(name):
    return next(case for case in harness._pair_cases() if case[0] == name)


# -- against finite differences ------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_matches_finite_differences(name):
    layer = _layer(name)
    result = gv.check_layer(layer, inputs=layer.example_input(0), seed=0)
    assert result.passed, str(result)
    checked = {s.name for s in result.inputs if s.checked}
    assert set(layer.params) | {"x"} <= checked, checked


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_pair_matches_finite_differences(name):
    _, fwd, bwd, _, _, inputs = _pair(name)
    result = gv.check_pair(fwd, bwd, inputs, seed=0)
    assert result.passed, str(result)


def test_quadratic_cost_pair_at_a_fresh_point():
    rng = np.random.default_rng(7)
    a, y = rng.uniform(0, 1, (2, 8)), rng.uniform(0, 1, (2, 8))
    result = gv.check_pair(quadratic_cost_forward, quadratic_cost_backward, (a, y), seed=3)
    assert result.passed, str(result)


# -- against the engine ------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_agrees_with_engine(name):
    import gradverify.engine as E
    layer = _layer(name)
    x = layer.example_input(0)
    y, u, hand = harness.hand_gradients_layer(layer, x)
    y_eng, eng = harness.engine_gradients_layer(E, layer, x, u)
    fwd = gv.compare_gradients({"output": y}, {"output": y_eng}, reference_name="engine")
    assert fwd.passed, str(fwd)
    result = gv.compare_gradients(hand, eng, reference_name="engine")
    assert result.passed, str(result)


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_pair_agrees_with_engine(name):
    import gradverify.engine as E
    _, fwd_fn, bwd_fn, eng_fn, names, inputs = _pair(name)
    y, u, hand = harness.hand_gradients_pair(fwd_fn, bwd_fn, names, inputs)
    y_eng, eng = harness.engine_gradients_pair(E, eng_fn, names, inputs, u)
    assert gv.compare_gradients({"output": y}, {"output": y_eng}, reference_name="engine").passed
    result = gv.compare_gradients(hand, eng, reference_name="engine")
    assert result.passed, str(result)


# -- the worked example, exactly ----------------------------------------------------------


def test_egraph_values_exact():
    # Every intermediate (c = 3, d = 2, e = 6, adjoints 2, 3, 5) is a small
    # integer, exactly representable: the comparison is exact equality.
    e, cache = egraph.forward(2.0, 1.0)
    da, db = egraph.backward(1.0, cache)
    assert (float(e), float(da), float(db)) == (6.0, 2.0, 5.0)
    c, d = cache
    assert (float(c), float(d)) == (3.0, 2.0)


def test_egraph_b_sums_both_paths_and_backward_does_not_double_count():
    _, cache = egraph.forward(np.array([2.0, -1.0]), np.array([1.0, 4.0]))
    first = egraph.backward(np.ones(2), cache)
    second = egraph.backward(np.ones(2), cache)   # a second call starts from zero again
    # de/db = d + c = (b + 1) + (a + b): exact small integers, exact equality.
    np.testing.assert_array_equal(first[1], [2.0 + 3.0, 5.0 + 3.0])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


# -- training --------------------------------------------------------------------------------


def test_sgd_cost_falls():
    costs = harness.train_demo(epochs=8)
    # Measured: 0.317 before training, about 0.025 after 8 epochs. A correct
    # gradient cuts the cost of this separable toy problem by an order of
    # magnitude; we ask for a factor 4 (room for platform rounding, none for a
    # wrong gradient: a sign error raises the cost, a mis-scaled one stalls).
    assert len(costs) == 9
    assert costs[-1] < costs[0] / 4, costs
    assert all(np.isfinite(costs))


def test_sgd_threshold_has_power():
    # Gradient *ascent* (eta < 0) follows the same gradients the wrong way:
    # the cost must not pass the threshold used above.
    X, Y = make_toy_problem(200, seed=0)
    net = SigmoidNetwork()
    c0 = net.cost(X, Y)
    costs = net.sgd((X, Y), 8, 10, -3.0, seed=0)
    assert not costs[-1] < c0 / 4


def test_backprop_equations_match_per_example_sum():
    # The batch gradient of the averaged cost equals the mean of the
    # per-example (Nielsen, one column at a time) gradients; both are sums of
    # the same float64 products, so they agree to rounding (rtol 1e-12).
    X, Y = make_toy_problem(6, seed=1)
    net = SigmoidNetwork()
    _, batch = net.backprop(X, Y)
    per = [net.backprop(X[:, [j]], Y[:, [j]])[1] for j in range(6)]
    for k in batch:
        np.testing.assert_allclose(batch[k], np.mean([g[k] for g in per], axis=0), rtol=1e-12, atol=1e-15)


# -- the checks have power: broken backwards are caught --------------------------------------


class _BatchNormNoStatsGrad(BatchNorm):
    """A classic bug: treating the batch mean and variance as constants."""

    def backward(self, dy):
        super().backward(dy)
        _, _, _, inv = self._cache
        return dy * self.params["gamma"] * inv


class _LayerNormWrongGain(LayerNorm):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["gamma"] = self.grads["gamma"] * 1.001   # 0.1 % off
        return dx


@pytest.mark.parametrize("broken", [_BatchNormNoStatsGrad, _LayerNormWrongGain])
def test_broken_normalisation_is_caught(broken):
    layer = broken()
    result = gv.check_layer(layer, inputs=layer.example_input(0), seed=0)
    assert not result.passed
    assert result.status == "fail"


# -- protocol details --------------------------------------------------------------------------


def test_sequential_reads_replaced_params():
    net = SmallCNN()
    x = net.example_input(0)
    y0 = net.forward(x)
    net.params["dense.b"] = net.params["dense.b"] + 1.0     # replace, not mutate
    y1 = net.forward(x)
    # Adding 1 to the output bias adds exactly 1 to every output (up to one
    # rounding of the sum: atol 1e-12).
    np.testing.assert_allclose(y1 - y0, 1.0, atol=1e-12)
    net.backward(np.ones_like(y1))
    assert list(net.grads) == list(net.params)


def test_maxpool_tie_goes_to_first_maximum():
    pool = MaxPool2D(2, 2)
    x = np.zeros((1, 1, 2, 2))
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx, [[[[1.0, 0.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_models_construct_with_no_arguments(dtype):
    import reference_models as rm
    for cls in (rm.SigmoidNetwork, rm.SoftmaxClassifier, rm.Conv2D, rm.ReLU, rm.MaxPool2D,
                rm.Flatten, rm.Dense, rm.SmallCNN, rm.VanillaRNN, rm.LayerNorm, rm.BatchNorm,
                rm.SelfAttention):
        layer = cls() if dtype is np.float64 else cls(dtype=dtype)
        assert all(v.dtype == dtype for v in layer.params.values()), cls
        y = layer.forward(layer.example_input(0))
        assert y.dtype == dtype and np.all(np.isfinite(y)), cls
        layer.backward(np.ones_like(y))
        assert list(layer.grads) == list(layer.params), cls


# -- the command ---------------------------------------------------------------------------------


def test_main_module_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "reference_models"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert "sigmoid_net_3_4_2" in proc.stdout and "epoch 8" in proc.stdout


def test_broken_backward_is_caught_by_the_engine_comparison():
    import gradverify.engine as E
    layer = _BatchNormNoStatsGrad()
    x = layer.example_input(0)
    y, u, hand = harness.hand_gradients_layer(layer, x)
    _, eng = harness.engine_gradients_layer(E, layer, x, u)
    result = gv.compare_gradients(hand, eng, reference_name="engine")
    assert not result.passed and result.worst.input == "x", str(result)


def test_run_all_rows():
    rows = harness.run_all()
    assert [r["model"] for r in rows] == LAYER_NAMES + PAIR_NAMES
    for r in rows:
        assert set(r) >= {"model", "params", "engine_rel_err", "fd_rel_err", "verdict", "seconds"}
        assert r["verdict"] == "PASS", r["detail"]
    # Hand and engine backward are both exact: in float64 they agree to
    # rounding. 1e-8 is loose enough for the near-zero elements of batch
    # norm's dx (sums to zero over the batch: cancellation) and far below
    # any real derivation error.
    assert all(r["engine_rel_err"] < 1e-8 for r in rows if not r["model"].endswith("f32"))
