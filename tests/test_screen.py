"""The one-difference screen of full mode (``numeric.projected_gradients(tolerance=...)``).

Every check here runs with ``against="fd"``: the screen is part of the finite
differences, and the default would compare numpy and custom-Function code with
an exact reference instead.

Tensors of at least ``SCREEN_MIN_SIZE`` elements get one central
difference per element at a small step, once a random sample has shown
that the screen settles most elements and agrees with Richardson on those
it settles; Richardson runs wherever the screen does not settle an
element. These tests pin what the
screen may not change: bugs caught and located, kinks named, verdicts
equal to those of Richardson everywhere -- and what it is for: about half
the evaluations on a smooth tensor (counted, not timed).
"""

from __future__ import annotations

import numpy as np
import pytest

import gradverify as gv
import gradverify.numeric as numeric
import gradverify.references.screen as screens

N = 12  # 12 x 12 = 144 elements: screened (SCREEN_MIN_SIZE is 64)


@pytest.fixture
def no_screen(monkeypatch):
    monkeypatch.setattr(screens, "SCREEN_MIN_SIZE", 2**62)


def dense_tanh(x, corrupt=None, approx_step=None):
    """``y = tanh(x @ W)`` and a hand-written vjp, optionally wrong in one element or approximated."""

    def fn(W):
        return np.tanh(x @ W)

    def vjp(dy, W):
        if approx_step is not None:  # the derivative of tanh as a central difference
            z = x @ W
            d = (np.tanh(z + approx_step) - np.tanh(z - approx_step)) / (2 * approx_step)
        else:
            d = 1 - np.tanh(x @ W) ** 2
        g = x.T @ (dy * d)
        if corrupt is not None:
            index, factor = corrupt
            g = g.copy()
            g[index] *= factor
        return (g,)

    return fn, vjp


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((5, N)), rng.standard_normal((N, N)) / np.sqrt(N)


def test_screen_needs_about_two_evaluations_per_element(no_screen, monkeypatch):
    x, W = inputs()
    fn, vjp = dense_tanh(x)
    plain = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    monkeypatch.undo()
    screened = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    assert plain.passed and screened.passed, (plain, screened)
    # Richardson: 4 per element; screen: 2 per element + 4 per sampled or unsettled one.
    assert plain.evaluations >= 4 * W.size
    assert screened.evaluations < 2 * W.size + 4 * screens.SCREEN_SAMPLES + 0.15 * 4 * W.size, screened.evaluations


@pytest.mark.parametrize("factor", [1 + 1e-4, 1 - 1e-3, 1.01, 0.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_wrong_element_of_a_screened_tensor_is_caught_and_located(factor, seed):
    x, W = inputs(seed)
    g = dense_tanh(x)[1](np.ones((5, N)), W)[0]
    # a typical element: neither tiny nor the largest (a 1e-4 error on a near-zero one is below any tolerance)
    index = tuple(int(i) for i in np.unravel_index(np.argsort(np.abs(g), axis=None)[g.size // 2], g.shape))
    fn, vjp = dense_tanh(x, corrupt=(index, factor))
    r = gv.check(fn, W, vjp=vjp, mode="full", seed=seed, against="fd")
    assert not r.passed, r
    assert r.worst.index == index, r


@pytest.mark.parametrize("step", [1e-3, 1e-2, 3e-2])
def test_an_approximate_derivative_gets_the_same_verdict_as_under_richardson(step, monkeypatch):
    # The analytic side is itself a central difference of tanh (relative errors ~step**2): exactly
    # the kind of error a one-difference screen could mistake for its own truncation.
    x, W = inputs()
    fn, vjp = dense_tanh(x, approx_step=step)
    screened = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    monkeypatch.setattr(screens, "SCREEN_MIN_SIZE", 2**62)
    plain = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    assert screened.status == plain.status == "fail", (screened, plain)
    assert screened.worst.index == plain.worst.index


def test_same_verdict_and_worst_element_as_richardson(no_screen, monkeypatch):
    x, W = inputs(3)
    fn, vjp = dense_tanh(x, corrupt=((4, 7), 1.001))
    plain = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    monkeypatch.undo()
    screened = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    assert plain.status == screened.status == "fail"
    assert plain.worst.index == screened.worst.index == (4, 7)
    # the worst element is never left with a screen value: failing elements always run Richardson
    assert screened.worst.numeric == pytest.approx(plain.worst.numeric, rel=1e-9)


def test_kinks_with_the_central_subgradient_are_still_named():
    # |W| with sign(0) = 0 at exact zeros: the analytic value equals the central difference there,
    # so only the one-sided slopes (1 and -1) tell the kink.
    rng = np.random.default_rng(0)
    W = rng.standard_normal((N, N))
    zeros = [(0, 0), (3, 5), (11, 11)]
    for z in zeros:
        W[z] = 0.0

    r = gv.check(lambda W: np.abs(W), W, vjp=lambda dy, W: (dy * np.sign(W),), mode="full", against="fd")
    assert r.status == "nondiff", r
    named = {tuple(loc.index) for loc in r.nondifferentiable}
    assert named == set(zeros), named


def test_a_screen_that_errs_is_caught_by_its_sample(monkeypatch):
    """If the screen's values are off by half the tolerance, the sample disagrees and Richardson does the tensor."""
    x, W = inputs(5)
    fn, vjp = dense_tanh(x)
    monkeypatch.setattr(screens, "SCREEN_MIN_SIZE", 2**62)
    plain = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    monkeypatch.undo()
    real = screens.screen

    def biased(*args, **kwargs):
        out = real(*args, **kwargs)
        out["value"] = out["value"] * (1 + 5e-6)  # half the float64 rtol: settled by the judge, wrong to the sample
        return out

    monkeypatch.setattr(screens, "screen", biased)
    redone = gv.check(fn, W, vjp=vjp, mode="full", against="fd")
    assert redone.passed
    # every element ran Richardson (the sample after its screen: 2 more evaluations each)
    assert redone.evaluations >= 4 * W.size + 2 * screens.SCREEN_SAMPLES
    assert redone.worst == plain.worst  # the same Richardson values as with no screen at all


def test_layer_parameters_are_screened_in_their_own_storage():
    class Dense:
        def __init__(self, W):
            self.params = {"W": W}

        def forward(self, x):
            self.x = x
            return np.tanh(x @ self.params["W"])

        def backward(self, dy):
            y = np.tanh(self.x @ self.params["W"])
            d = dy * (1 - y * y)
            self.grads = {"W": self.x.T @ d}
            return d @ self.params["W"].T

    x, W = inputs(2)
    layer = Dense(W.copy())
    r = gv.check_layer(layer, inputs=x, mode="full", against="fd")
    assert r.passed, r
    assert np.array_equal(layer.params["W"], W)  # restored bit for bit


def test_torch_batched_screen_catches_one_element():
    torch = pytest.importorskip("torch")
    x, W = inputs(4)
    xt = torch.tensor(x)

    class Dense(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(W):
            return torch.tanh(xt @ W)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            gW = xt.T @ (g * (1 - y * y))
            gW = gW.clone()
            gW[2, 9] = gW[2, 9] * (1 + 1e-3)
            return gW

    Wt = torch.tensor(W, requires_grad=True)
    r = gv.check(Dense.apply, Wt, mode="full", against="fd")
    assert not r.passed and r.worst.index == (2, 9), r


REAL_LAYERS = {
    "Linear(32, 16)": (lambda nn: nn.Linear(32, 16), (4, 32)),
    "Conv2d(4, 8, 3)": (lambda nn: nn.Conv2d(4, 8, 3, padding=1), (2, 4, 6, 6)),
    "LSTM(8, 16)": (lambda nn: nn.LSTM(8, 16, batch_first=True), (2, 4, 8)),
    "TransformerEncoderLayer(16, 4, 32)": (
        lambda nn: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), (2, 5, 16)),
}


@pytest.mark.parametrize("name", list(REAL_LAYERS))
def test_real_torch_layers_with_screened_tensors_pass_with_fewer_evaluations(name, monkeypatch):
    """torch.nn layers whose weights reach the screened size: a pass either way, the screen using fewer evaluations."""
    torch = pytest.importorskip("torch")
    make, shape = REAL_LAYERS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        screened = gv.check_layer(make(torch.nn).double(), shape, mode="full", seed=1, against="fd")
        monkeypatch.setattr(screens, "SCREEN_MIN_SIZE", 2**62)
        torch.manual_seed(0)
        plain = gv.check_layer(make(torch.nn).double(), shape, mode="full", seed=1, against="fd")
    finally:
        torch.set_num_threads(threads)
    assert screened.status == plain.status == "pass", (screened, plain)
    # measured: 44% (Linear) to 19% (LSTM) fewer
    assert screened.evaluations < 0.9 * plain.evaluations, (screened.evaluations, plain.evaluations)


def test_screen_works_a_chunk_of_outputs_at_a_time():
    """A tiny ``batch_bytes`` (one element per chunk) gives the same values as one big chunk."""
    x, W = inputs(6)
    fn, vjp = dense_tanh(x)
    g = vjp(np.ones((5, N)), W)[0]
    u = np.ones((5, N))
    from gradverify.compare import Comparison, tolerance_for

    comp = Comparison({"W": g}, tolerance_for(np.float64))
    point = {"W": W.copy()}

    def evaluate():
        return fn(point["W"])

    runs = [numeric.projected_gradients(evaluate, point, u, judge=comp.judge, judge_many=comp.judge_many,
                                        tolerance=comp.base_tolerance, batch_bytes=b)[0]["W"]
            for b in (1, 64 * 2**20)]
    assert np.array_equal(runs[0].value, runs[1].value)
    assert np.array_equal(runs[0].error, runs[1].error)
    assert np.array_equal(point["W"], W)
