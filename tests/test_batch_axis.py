"""The batch axis: perturbations of a tensor evaluated in one call of code that broadcasts over a leading axis.

Where vmap is unavailable (numpy code) or refused (an old-style
``torch.autograd.Function`` without a vmap rule), a full check's
perturbations of a tensor go to the code as one array with a leading axis
of rows (:mod:`gradverify.batching`), verified against one-by-one
evaluations on every call. These tests hold that path to the loop: the same
rows (to rounding), the same verdicts, far fewer calls where the code
broadcasts; the loop, and the right verdict, where it does not (code that
sums over everything, reads a fixed row, mixes rows, draws random numbers
shaped like its input).

Tolerances: rows are compared with the rule the targets use themselves
(``BATCH_AGREEMENT`` = 64 ulps of each row's largest output: a batched
kernel may sum in another order than the plain one); derivatives from rows
that agree to rounding differ by about ``ulps * |y| / h`` with ``h ~ 1e-5``,
i.e. ~1e-11 relative, asserted at 1e-9. Inputs are seeded and small (the
file runs in seconds).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import gradverify as gv
from gradverify.batching import BATCH_AGREEMENT, TRIAL_ROWS
from gradverify.layers import FunctionTarget


def _assert_rows_equal(batched, single):
    """Rows agree to rounding: 64 ulps (of the output's dtype) of each row's largest output."""
    assert batched.shape == single.shape and batched.dtype == single.dtype
    ulps = BATCH_AGREEMENT * np.finfo(single.dtype).eps
    scale = np.max(np.abs(single.reshape(len(single), -1)), axis=1)
    gap = np.max(np.abs(batched - single).reshape(len(single), -1), axis=1)
    assert np.all(gap <= ulps * np.maximum(scale, 1e-300)), gap


def _perturbations(arr, rng, per_element=4):
    """Every element at four values, as a full check's first pass asks for them."""
    idx = np.repeat(np.arange(arr.size), per_element)
    vals = arr.reshape(-1)[idx] + rng.standard_normal(idx.size) * 1e-4
    return idx, vals


class _Counted:
    """``fn`` counting its calls and recording its first argument's shapes (its parameter names kept)."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self.fn, self.calls, self.shapes = fn, 0, []

    def __call__(self, *args):
        self.calls += 1
        self.shapes.append(np.shape(args[0]))
        return self.fn(*args)


def _target(fn, inputs, vjp=None):
    t = FunctionTarget(fn, vjp or (lambda dy, *xs: tuple(None for _ in xs)), inputs)
    # as a check starts: the first call learns the random streams to replay, the mutation probe earns views
    t.random.watch(t.evaluate)
    t.check_forward_mutation()
    return t


# --------------------------------------------------------------------------
# a numpy MLP: broadcasting code


def _mlp(x, W1, b1, W2, b2):
    return np.tanh(np.tanh(x @ W1 + b1) @ W2 + b2)


def _mlp_vjp(dy, x, W1, b1, W2, b2, bug=None):
    h = np.tanh(x @ W1 + b1)
    y = np.tanh(h @ W2 + b2)
    d2 = dy * (1 - y * y)
    d1 = (d2 @ W2.T) * (1 - h * h)
    dW1 = x.T @ d1
    if bug is not None:
        dW1[bug] *= 1.001  # a 0.1% error in one element
    return d1 @ W1.T, dW1, d1.sum(0), h.T @ d2, d2.sum(0)


def _mlp_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((6, 5)), rng.standard_normal((5, 8)) / 2, rng.standard_normal(8) * 0.1,
            rng.standard_normal((8, 3)) / 3, rng.standard_normal(3) * 0.1]


def test_a_broadcasting_numpy_function_is_evaluated_in_few_calls_with_the_loops_rows():
    f = _Counted(_mlp)
    t = _target(f, _mlp_inputs())
    rng = np.random.default_rng(1)
    batched = set()
    for name in t.point:
        idx, vals = _perturbations(t.point[name], rng)
        before = t.point[name].copy()
        f.calls = 0
        out = t.evaluate_batch(name, idx, vals)
        if idx.size >= t.batch_min_rows:
            batched.add(name)
            # one trial call and its two verified rows, then one call and one verified row per call
            assert f.calls <= 3 + 2 * int(np.ceil(idx.size / t._axis_rows_per_call(name))), (name, f.calls)
        assert np.array_equal(t.point[name], before)  # the point bit for bit
        _assert_rows_equal(out, t._loop_batch(name, idx, vals))
    # the bias (8,) broadcasts against x @ W1 of shape (6, 8) given as (B, 1, 8): padded (a tensor with a
    # request of fewer than batch_min_rows rows is a loop, undecided)
    assert {"x", "W1", "b1", "W2"} <= batched
    assert t.batch_strategy == {k: "batch axis" for k in batched}
    assert t.batch_fallbacks == {}


def test_a_numpy_full_check_batched_and_looped_agree(monkeypatch):
    f = _Counted(_mlp)
    batched = gv.check(f, _mlp_inputs(), vjp=_mlp_vjp, mode="full", against="fd")
    calls = f.calls
    monkeypatch.setattr(FunctionTarget, "evaluate_batch", None)
    f.calls = 0
    plain = gv.check(f, _mlp_inputs(), vjp=_mlp_vjp, mode="full", against="fd")
    assert batched.passed and plain.passed and batched.mode == plain.mode == "full"
    assert batched.evaluations == plain.evaluations
    assert calls < plain.evaluations / 5, (calls, plain.evaluations)  # far fewer calls than evaluations
    assert (batched.worst.input, batched.worst.index) == (plain.worst.input, plain.worst.index)
    # the worst element's finite difference from rows that agree to rounding (module docstring)
    np.testing.assert_allclose(batched.worst.numeric, plain.worst.numeric, rtol=1e-9)


def test_a_wrong_gradient_is_caught_and_located_on_the_batch_axis():
    f = _Counted(_mlp)
    r = gv.check(f, _mlp_inputs(), vjp=lambda dy, *xs: _mlp_vjp(dy, *xs, bug=(2, 5)), mode="full", against="fd")
    assert not r.passed and r.worst.input == "W1" and r.worst.index == (2, 5)
    assert f.calls < r.evaluations / 5  # the batched path is what ran


def test_a_pair_is_batched_too():
    def forward(x, W):
        y = np.tanh(x @ W)
        return y, (x, W, y)

    def backward(dy, cache):
        x, W, y = cache
        d = dy * (1 - y * y)
        return d @ W.T, x.T @ d

    rng = np.random.default_rng(2)
    counted = _Counted(forward)
    r = gv.check_pair(counted, backward, [rng.standard_normal((4, 6)), rng.standard_normal((6, 5))], mode="full",
                      against="fd")
    assert r.passed and counted.calls < r.evaluations / 5


def test_several_outputs_are_joined_per_row():
    def f(x, W):
        h = np.tanh(x @ W)
        return h, {"s": (h * h).sum(-1), "i": np.arange(3)}

    rng = np.random.default_rng(3)
    t = _target(f, [rng.standard_normal((3, 4)), rng.standard_normal((4, 5))])
    for name in t.point:
        idx, vals = _perturbations(t.point[name], rng)
        _assert_rows_equal(t.evaluate_batch(name, idx, vals), t._loop_batch(name, idx, vals))
    assert set(t.batch_strategy.values()) == {"batch axis"}


# --------------------------------------------------------------------------
# code that does not broadcast over a leading axis: the loop, and the right verdict


def _sum_all(x):
    return np.sum(np.sin(x))  # a scalar: a batch gives a scalar too


def _sum_all_vjp(dy, x):
    return (dy * np.cos(x),)


def _centred(x):
    return np.sin(x - x.mean(axis=0))  # the mean over the batch on a batch


def _centred_vjp(dy, x):
    g = dy * np.cos(x - x.mean(axis=0))
    return (g - g.mean(axis=0),)


def _first_row(x):
    return x * x[0]  # reads row 0 of the batch on a batch


def _first_row_vjp(dy, x):
    g = dy * x[0]
    g[0] += (dy * x).sum(axis=0)
    return (g,)


@pytest.mark.parametrize("fn, vjp", [(_sum_all, _sum_all_vjp), (_centred, _centred_vjp),
                                     (_first_row, _first_row_vjp)], ids=["sum", "centred", "first_row"])
def test_code_that_mixes_or_reduces_the_batch_falls_back_to_the_loop(fn, vjp):
    x = np.random.default_rng(4).standard_normal((5, 4))
    t = _target(fn, [x])
    idx, vals = _perturbations(x, np.random.default_rng(5))
    _assert_rows_equal(t.evaluate_batch("x", idx, vals), t._loop_batch("x", idx, vals))
    assert t.batch_strategy == {"x": "loop"} and t.batch_fallbacks["x"].startswith("batch axis")
    assert gv.check(fn, [x], vjp=vjp, mode="full", against="fd").passed
    bad = gv.check(fn, [x], vjp=lambda dy, x: (vjp(dy, x)[0] * 1.001,), mode="full", against="fd")
    assert not bad.passed


def _stable_exp(x):
    return np.exp(x - x.max())  # the max over the whole batch: one row moving it moves every other


def _stable_exp_vjp(dy, x):
    y = _stable_exp(x)
    g = dy * y
    g.reshape(-1)[np.argmax(x)] -= np.sum(dy * y)
    return (g,)


def test_a_later_call_that_mixes_rows_is_caught_and_the_tensor_loops_from_then_on():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 5))
    x.reshape(-1)[17] = 3.0  # the largest element, far from the trial's rows (element 0)
    t = _target(_stable_exp, [x])
    idx, vals = _perturbations(x, rng)
    vals[4 * 17] = x.reshape(-1)[17] + 1e-3  # moves the max in the call after the trial
    out = t.evaluate_batch("x", idx, vals)
    # the trial (element 0) agreed; the next call, whose max moved, did not: the loop from there on
    assert t.batch_strategy == {"x": "loop"} and "later call" in t.batch_fallbacks["x"]
    _assert_rows_equal(out, t._loop_batch("x", idx, vals))
    assert gv.check(_stable_exp, [x], vjp=_stable_exp_vjp, mode="full", against="fd").passed


def test_code_that_raises_on_a_batch_loops_and_says_why():
    def f(x, W):
        if x.ndim != 2:
            raise ValueError("x must be a matrix")
        return np.tanh(x @ W)

    rng = np.random.default_rng(7)
    t = _target(f, [rng.standard_normal((3, 4)), rng.standard_normal((4, 2))])
    idx, vals = _perturbations(t.point["x"], rng)
    _assert_rows_equal(t.evaluate_batch("x", idx, vals), t._loop_batch("x", idx, vals))
    assert t.batch_strategy["x"] == "loop" and "x must be a matrix" in t.batch_fallbacks["x"]
    idx, vals = _perturbations(t.point["W"], rng)
    t.evaluate_batch("W", idx, vals)
    assert t.batch_strategy["W"] == "batch axis"  # decided per tensor


def test_code_whose_cost_grows_with_the_batch_is_tried_on_a_few_rows_only():
    def outer(x):
        return np.outer(x, x).sum(axis=1)  # flattens a batch: (B n)^2 elements

    f = _Counted(outer)
    x = np.random.default_rng(8).standard_normal(30)
    t = _target(f, [x])
    idx, vals = _perturbations(x, np.random.default_rng(9))
    _assert_rows_equal(t.evaluate_batch("x", idx, vals), t._loop_batch("x", idx, vals))
    assert t.batch_strategy == {"x": "loop"}
    assert max(s[0] for s in f.shapes if len(s) == 2) == TRIAL_ROWS  # the batched calls saw the trial's rows


def test_a_function_writing_into_its_input_is_handed_arrays_of_its_own():
    def f(x, W):
        np.tanh(x, out=x)  # writes into its input
        return x @ W

    def vjp(dy, x, W):
        t = np.tanh(x)
        return (dy @ W.T) * (1 - t * t), t.T @ dy

    rng = np.random.default_rng(10)
    xs = [rng.standard_normal((3, 4)), rng.standard_normal((4, 5))]
    kept = [a.copy() for a in xs]
    t = _target(f, [a.copy() for a in xs])
    for name in t.point:
        idx, vals = _perturbations(t.point[name], rng)
        before = t.point[name].copy()
        _assert_rows_equal(t.evaluate_batch(name, idx, vals), t._loop_batch(name, idx, vals))
        assert np.array_equal(t.point[name], before)
    assert set(t.batch_strategy.values()) == {"batch axis"}
    r = gv.check(f, xs, vjp=vjp, mode="full", against="fd")
    assert r.passed and any("modifies its inputs in place" in w for w in r.warnings)
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))  # the caller's arrays bit for bit


def test_an_output_that_is_a_view_of_the_rows_is_copied():
    def f(x):
        return x[..., ::-1]  # a view of the input (of the rows, on a batch)

    x = np.random.default_rng(11).standard_normal((3, 4))
    t = _target(f, [x])
    idx, vals = _perturbations(x, np.random.default_rng(12))
    out = t.evaluate_batch("x", idx, vals)
    assert t.batch_strategy == {"x": "batch axis"}
    assert not any(np.shares_memory(out, a) for a in t.point.values())
    _assert_rows_equal(out, t._loop_batch("x", idx, vals))
    assert gv.check(f, [x], vjp=lambda dy, x: (dy[..., ::-1],), mode="full", against="fd").passed


# --------------------------------------------------------------------------
# random draws: replayed where the draw does not follow the batch, else the loop


_drop = np.random.default_rng(13)


def _dropout_fixed(x, W):
    mask = _drop.random((x.shape[-2], W.shape[-1])) < 0.8  # the same draw for a batch of W: replayed
    return np.tanh(x @ W) * mask


def _dropout_like_x(x, W):
    mask = _drop.random(x.shape) < 0.8  # a draw shaped like x: a batch of x draws other numbers
    return np.tanh((x * mask) @ W)


@pytest.mark.parametrize("fn, name, strategy", [(_dropout_fixed, "W", "batch axis"),
                                                (_dropout_like_x, "x", "loop")])
def test_random_draws_are_replayed_or_fall_back(fn, name, strategy):
    rng = np.random.default_rng(14)
    t = _target(fn, [rng.standard_normal((3, 4)), rng.standard_normal((4, 5))])
    idx, vals = _perturbations(t.point[name], rng)
    _assert_rows_equal(t.evaluate_batch(name, idx, vals), t._loop_batch(name, idx, vals))
    assert t.batch_strategy[name] == strategy


def test_a_check_of_code_drawing_random_numbers_passes_batched():
    rng = np.random.default_rng(15)
    xs = [rng.standard_normal((3, 4)), rng.standard_normal((4, 5))]
    state = _drop.bit_generator.state

    def vjp(dy, x, W):
        _drop.bit_generator.state = state  # (the check replays the draws; this vjp draws the same mask)
        mask = _drop.random((x.shape[-2], W.shape[-1])) < 0.8
        d = dy * mask * (1 - np.tanh(x @ W) ** 2)
        return d @ W.T, x.T @ d

    _drop.bit_generator.state = state
    r = gv.check(_dropout_fixed, xs, vjp=vjp, mode="full", against="fd")
    assert r.passed and any("random" in w for w in r.warnings)


# --------------------------------------------------------------------------
# torch: an autograd.Function without a vmap rule


@pytest.fixture
def torch():
    t = pytest.importorskip("torch")
    n = t.get_num_threads()
    t.set_num_threads(1)
    yield t
    t.set_num_threads(n)


def _old_style_linear(torch, counter, corrupt=None):
    """tanh(x @ W + b) as an old-style autograd.Function (forward(ctx, ...), no setup_context: vmap refuses it)."""

    class TanhLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W, b):
            counter.append(tuple(W.shape))
            y = torch.tanh(x @ W + b)
            ctx.save_for_backward(x, W, y)
            return y

        @staticmethod
        def backward(ctx, g):
            x, W, y = ctx.saved_tensors
            gz = g * (1 - y * y)
            gW = x.T @ gz
            if corrupt is not None:
                gW = gW.clone()
                gW[corrupt] *= 1.001
            return gz @ W.T, gW, gz.sum(0)

    return TanhLinear.apply


def _torch_inputs(torch):
    rng = np.random.default_rng(16)
    return [torch.tensor(rng.standard_normal(s), dtype=torch.float64) for s in ((5, 4), (4, 3), (3,))]


def test_an_old_style_function_is_evaluated_along_the_batch_axis(torch):
    from gradverify.frameworks import callable_target

    calls: list = []
    fn = _old_style_linear(torch, calls)
    t = callable_target(fn, _torch_inputs(torch), None)
    rng = np.random.default_rng(17)
    batched = set()
    for name in t.point:
        idx, vals = _perturbations(t.point[name], rng)
        calls.clear()
        out = t.evaluate_batch(name, idx, vals)
        if idx.size >= t.batch_min_rows:  # (a request of fewer rows is a loop: too few to batch)
            batched.add(name)
            # one trial call and its two verified rows, then one call and one verified row per call
            assert len(calls) <= 3 + 2 * int(np.ceil(idx.size / t._axis_rows_per_call(name))), (name, len(calls))
        _assert_rows_equal(out, t._loop_batch(name, idx, vals))
    assert {"x", "W"} <= batched
    assert t.batch_strategy == {k: "batch axis" for k in batched}
    # vmap refused it first, and said why
    assert all(v.startswith("vmap:") and "batch axis" not in v for v in t.batch_fallbacks.values())


def test_an_old_style_function_checked_in_full_is_batched_and_its_bug_located(torch):
    calls: list = []
    r = gv.check(_old_style_linear(torch, calls), _torch_inputs(torch), mode="full", against="fd")
    assert r.passed and len(calls) < r.evaluations / 4
    bad = gv.check(_old_style_linear(torch, [], corrupt=(1, 2)), _torch_inputs(torch), mode="full", against="fd")
    assert not bad.passed and bad.worst.input == "W" and bad.worst.index == (1, 2)


def test_whole_rows_of_a_function_writing_into_its_input_leave_the_callers_rows_alone(torch):
    from gradverify.frameworks import callable_target

    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_dirty(x)
            return x.mul_(2.0)  # in place, into its input

        @staticmethod
        def backward(ctx, g):
            return 2.0 * g

    x = _torch_inputs(torch)[0]
    t = callable_target(Doubled.apply, [x], None)
    rng = np.random.default_rng(20)
    rows = np.stack([t.point["x"] + 1e-3 * rng.standard_normal(t.point["x"].shape) for _ in range(20)])
    kept = rows.copy()
    out = t.evaluate_rows("x", rows)
    assert np.array_equal(rows, kept)  # the rows are the probes' own: the code wrote into a copy
    _assert_rows_equal(out, t._loop_rows({"x": rows}))
    assert t.batch_strategy == {"x": "batch axis"}


def test_torch_code_with_item_control_flow_runs_along_the_batch_axis(torch):
    from gradverify.frameworks import callable_target

    def f(x, W):
        scale = 2.0 if float(W.abs().max()) > 1e9 else 1.0  # .item(): vmap refuses it
        return torch.tanh(x @ W) * scale

    t = callable_target(f, _torch_inputs(torch)[:2], None)
    idx, vals = _perturbations(t.point["W"], np.random.default_rng(18))
    _assert_rows_equal(t.evaluate_batch("W", idx, vals), t._loop_batch("W", idx, vals))
    assert t.batch_strategy == {"W": "batch axis"} and t.batch_fallbacks["W"].startswith("vmap:")


def test_torch_dropout_in_a_function_without_vmap_rule_falls_back_to_the_loop(torch):
    from gradverify.frameworks import callable_target

    class Drop(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.nn.functional.dropout(torch.sin(x), 0.3)  # a draw shaped like the batch

        @staticmethod
        def backward(ctx, g):
            raise NotImplementedError

    x = _torch_inputs(torch)[0]
    t = callable_target(Drop.apply, [x], None)
    idx, vals = _perturbations(t.point["x"], np.random.default_rng(19))
    _assert_rows_equal(t.evaluate_batch("x", idx, vals), t._loop_batch("x", idx, vals))
    assert t.batch_strategy == {"x": "loop"} and "batch axis" in t.batch_fallbacks["x"]
