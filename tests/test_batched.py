"""Batched full mode: ``evaluate_batch`` / ``evaluate_rows`` of the torch and JAX targets.

A full check evaluates four perturbations per element; torch and JAX
targets evaluate the perturbations of one tensor in batches
(``torch.func.vmap``, ``jax.jit(jax.vmap)``), verified once per tensor
against one-by-one evaluations, and fall back to a loop where the code
cannot be vectorised. These tests hold the batched path to the unbatched
one: the same rows (to rounding), the same derivatives, the same verdicts,
the same evaluation counts, and bugs still caught.

Tolerances: a vectorised kernel may sum in another order than the plain
one, so rows agree to a few ulps of the output (asserted at 64 ulps of the
row's largest output, the rule the targets themselves use,
``_common.BATCH_AGREEMENT``); derivatives from such rows differ by about
``ulps * |y| / h`` with ``h ~ 1e-4``, i.e. ~1e-12 relative, asserted at
1e-9 plus the estimates' own stated errors (which carry that rounding). Every input is seeded; tensors are small (the file runs in seconds).
"""

from __future__ import annotations

import numpy as np
import pytest

import gradverify as gv
from gradverify import numeric as nd
from gradverify.frameworks import callable_target, module_target
from gradverify.frameworks._common import BATCH_AGREEMENT, BatchedEvaluation


def _assert_rows_equal(batched, single):
    """Rows agree to rounding: 64 ulps (of the output's dtype) of each row's largest output."""
    assert batched.shape == single.shape and batched.dtype == single.dtype
    ulps = BATCH_AGREEMENT * np.finfo(single.dtype).eps
    scale = np.max(np.abs(single.reshape(len(single), -1)), axis=1)
    gap = np.max(np.abs(batched - single).reshape(len(single), -1), axis=1)
    assert np.all(gap <= ulps * np.maximum(scale, 1e-300)), gap


def _rows(target, name, rng, n=7):
    target.batch_min_rows = 1  # tiny requests: vectorise them anyway (the point of these tests)
    arr = target.point[name]
    idx = rng.integers(0, arr.size, n)
    vals = arr.reshape(-1)[idx] + rng.standard_normal(n) * 1e-3
    return idx, vals


def _probe_rows(target, name, rng, n=6):
    """Points x + t v of directional probes: whole values of ``point[name]``."""
    target.batch_min_rows = 1
    arr = target.point[name]
    v = rng.standard_normal(arr.shape)
    return np.stack([arr + t * v for t in np.linspace(-1e-3, 1e-3, n)])


def _assert_probe_rows(target, name, rng):
    rows = _probe_rows(target, name, rng)
    before = target.point[name].copy()
    _assert_rows_equal(target.evaluate_rows(name, rows), target._loop_rows({name: rows}))
    assert np.array_equal(target.point[name], before)


def _same_derivatives(target):
    """projected_gradients with and without evaluate_batch on one target: values, errors, counts."""
    y = np.asarray(target.evaluate())
    u = np.random.default_rng(11).standard_normal(y.shape)
    plain, n_plain = nd.projected_gradients(target.evaluate, target.point, u)
    target.batch_min_rows = 1
    batched, n_batched = nd.projected_gradients(target.evaluate, target.point, u,
                                                evaluate_batch=target.evaluate_batch)
    assert n_plain == n_batched
    for k in plain:
        # rounding of the rows only (~1e-12 relative of |y|); see the module docstring. An element whose
        # derivative is small beside |y| carries that rounding as an absolute error (64 ulps of |y| over a
        # step of ~1e-5 is ~1e-9), which each estimate's own error bound covers: the two must agree within
        # the sum of their stated errors (an atol of 1e-12 failed now and then on a module's 6e-3 element
        # whose estimates differed by 1.3e-11, as vmap's kernels summed in another order)
        gap = np.abs(batched[k].value - plain[k].value)
        assert np.all(gap <= 1e-9 * np.abs(plain[k].value) + batched[k].error + plain[k].error), (k, gap)
    return batched


# --------------------------------------------------------------------------
# the shared mechanism, without a framework


class _Numpy(BatchedEvaluation):
    """tanh(x @ W) with a numpy 'vectorised' call, optionally wrong or failing."""

    def __init__(self, mode="right"):
        rng = np.random.default_rng(0)
        self.point = {"W": rng.standard_normal((4, 3))}
        self.x = rng.standard_normal((2, 4))
        self.mode = mode
        self.calls = 0

    def evaluate(self):
        return np.tanh(self.x @ self.point["W"])

    def _vectorised(self, name, idx, vals):
        self.calls += 1
        if self.mode == "raise":
            raise ValueError("cannot vectorise this")
        Ws = np.repeat(self.point["W"][None], len(idx), axis=0)
        Ws.reshape(len(idx), -1)[np.arange(len(idx)), idx] = vals
        out = np.tanh(np.einsum("ij,bjk->bik", self.x, Ws))
        return out * (1 + 1e-9) if self.mode == "wrong" else out

    def _vectorised_rows(self, rows):
        (rows,) = rows.values()
        self.calls += 1
        if self.mode == "raise":
            raise ValueError("cannot vectorise this")
        out = np.tanh(np.einsum("ij,bjk->bik", self.x, rows))
        return out * (1 + 1e-9) if self.mode == "wrong" else out


@pytest.mark.parametrize("mode", ["right", "wrong", "raise"])
def test_the_rows_are_the_one_by_one_outputs_whatever_the_vectorised_call_does(mode):
    t = _Numpy(mode)
    idx, vals = _rows(t, "W", np.random.default_rng(1))
    ref = t._loop_batch("W", idx, vals)
    _assert_rows_equal(t.evaluate_batch("W", idx, vals), ref)
    assert bool(t.batch_fallbacks) == (mode != "right")
    calls = t.calls
    _assert_rows_equal(t.evaluate_batch("W", idx, vals), ref)
    # decided once: a tensor that fell back is not retried
    assert (t.calls == calls) == (mode != "right")


@pytest.mark.parametrize("mode", ["right", "wrong", "raise"])
def test_whole_rows_are_the_one_by_one_outputs_whatever_the_vectorised_call_does(mode):
    t = _Numpy(mode)
    _assert_probe_rows(t, "W", np.random.default_rng(3))
    assert bool(t.batch_fallbacks) == (mode != "right")


def test_sub_batches_respect_the_input_budget():
    t = _Numpy()
    t.batch_input_bytes = 3 * t.point["W"].nbytes  # three perturbed copies per call
    idx, vals = _rows(t, "W", np.random.default_rng(2), n=10)
    out = t.evaluate_batch("W", idx, vals)
    assert t.calls == 4  # ceil(10 / 3)
    _assert_rows_equal(out, t._loop_batch("W", idx, vals))


def test_the_point_is_restored_bit_for_bit():
    t = _Numpy("raise")
    before = t.point["W"].copy()
    t.evaluate_batch("W", np.array([0, 5, 11]), np.array([1.0, 2.0, 3.0]))
    assert np.array_equal(t.point["W"], before)


# --------------------------------------------------------------------------
# torch

try:
    import torch
except ImportError:  # the torch tests skip (tt fixture); the rest runs
    torch = None


@pytest.fixture
def tt():
    """torch, on one thread (tiny tensors), or skip."""
    t = pytest.importorskip("torch")
    n = t.get_num_threads()
    t.set_num_threads(1)
    yield t
    t.set_num_threads(n)


def _t(seed, *shape):
    return torch.tensor(np.random.default_rng(seed).standard_normal(shape), dtype=torch.float64)


def _mlp(x, W1, b1, W2, b2):
    return torch.tanh(torch.tanh(x @ W1 + b1) @ W2 + b2)


def _mlp_inputs():
    return [_t(0, 5, 4), _t(1, 4, 6), _t(2, 6), _t(3, 6, 3), _t(4, 3)]


def test_torch_function_rows_and_derivatives_match_the_loop(tt):
    t = callable_target(_mlp, _mlp_inputs(), None)
    rng = np.random.default_rng(3)
    for name in t.point:
        idx, vals = _rows(t, name, rng)
        _assert_rows_equal(t.evaluate_batch(name, idx, vals), t._loop_batch(name, idx, vals))
    _same_derivatives(t)
    for name in t.point:
        _assert_probe_rows(t, name, rng)
    assert t.batch_fallbacks == {}


def _assert_points_match_the_loop(target, rng, n=9):
    """Rows moving every input together (a noise table's points) are the one-by-one outputs; point restored."""
    target.batch_min_rows = 1
    rows = {k: np.stack([a + 1e-3 * j * rng.standard_normal(a.shape) for j in range(n)])
            for k, a in target.point.items()}
    before = {k: a.copy() for k, a in target.point.items()}
    out = target.evaluate_points(rows)
    _assert_rows_equal(out, target._loop_rows(rows))
    assert all(np.array_equal(target.point[k], before[k]) for k in before)
    # the same request for one tensor is what evaluate_rows gives
    k = next(iter(rows))
    _assert_rows_equal(target.evaluate_points({k: rows[k]}), target.evaluate_rows(k, rows[k]))


def _same_noise(target):
    """The noise table evaluated in one vectorised call is the table of the loop: the same points, bit for bit
    (the outputs agree to the rows' rounding, so the measured noise agrees to rounding too)."""
    from gradverify.references.noise import function_noise

    target.batch_min_rows = 1
    y = np.asarray(target.evaluate())
    u = np.random.default_rng(12).standard_normal(y.shape)
    loop = function_noise(target.evaluate, target.point, u, rng=np.random.default_rng(1))
    calls = []
    together = function_noise(target.evaluate, target.point, u, rng=np.random.default_rng(1),
                              evaluate_points=lambda r: calls.append(len(r)) or target.evaluate_points(r),
                              rows_bytes=2**26)
    assert calls and together.evaluations == loop.evaluations
    # a smooth float64 function shows noise of about its rounding: both tables under 1e-13 relative
    assert loop.relative < 1e-13 and together.relative < 1e-13
    few = function_noise(target.evaluate, target.point, u, rng=np.random.default_rng(1),
                         evaluate_points=lambda r: calls.append(-1), rows_bytes=1)
    assert -1 not in calls and few == loop  # over the rows' budget: the loop, the same table


def test_torch_points_moving_every_input_match_the_loop(tt):
    t = callable_target(_mlp, _mlp_inputs(), None)
    _assert_points_match_the_loop(t, np.random.default_rng(7))
    _same_noise(t)
    assert t.batch_fallbacks == {}


def test_torch_points_each_moving_one_tensor_fall_back_per_tensor_not_to_the_loop(tt):
    """Code that vmaps while x is batched but not while b is (it reads b as a Python float): fast mode's rows
    of small tensors, each moving one of them, refused as one call, are served per tensor by each tensor's
    own strategy rather than one by one -- the same outputs either way."""
    def f(x, b):
        scale = 1.0 + 0.0 * float(b.abs().max())  # .item() under vmap: refused once b is batched
        return torch.tanh(x @ x.T + b) * scale

    t = callable_target(f, [_t(0, 4, 3), _t(1, 4)], None)
    rng = np.random.default_rng(9)
    owner = ["x"] * 8 + ["b"] * 8
    rows = {k: np.stack([a] * len(owner)) for k, a in t.point.items()}
    for j, k in enumerate(owner):
        rows[k][j] += 1e-3 * rng.standard_normal(t.point[k].shape)
    before = {k: a.copy() for k, a in t.point.items()}
    served = []
    plain = t.evaluate_rows
    t.evaluate_rows = lambda name, r: served.append((name, len(r))) or plain(name, r)
    out = t.evaluate_points(rows, owner)
    _assert_rows_equal(out, t._loop_rows(rows))
    assert all(np.array_equal(t.point[k], before[k]) for k in before)
    assert served == [("x", 8), ("b", 8)]  # the refused call's rows, per tensor
    assert t.batch_strategy[("x", "b")] == "loop" and t.batch_strategy["x"] == "vmap"
    with pytest.raises(ValueError, match="moved must name"):
        t.evaluate_points(rows, ["W"] * len(owner))


def test_torch_module_points_move_parameters_and_inputs_together(tt):
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    t = module_target(m, None, inputs=_t(0, 3, 4), dtype=None, rng=np.random.default_rng(0))
    _assert_points_match_the_loop(t, np.random.default_rng(8))
    assert t.batch_fallbacks == {}


def test_torch_tuple_outputs_and_integer_inputs_are_batched(tt):
    def f(x, idx, W):
        h = torch.tanh(x[idx] @ W)
        return h, {"s": (h * h).sum(), "i": idx}

    inputs = [_t(0, 4, 3), torch.tensor([2, 0, 3]), _t(1, 3, 2)]
    t = callable_target(f, inputs, None)
    for name in t.point:
        idx, vals = _rows(t, name, np.random.default_rng(4))
        _assert_rows_equal(t.evaluate_batch(name, idx, vals), t._loop_batch(name, idx, vals))
    assert t.batch_fallbacks == {}
    # a 0-d output leaf gets a 0-d cotangent (it once got shape (1,) and autograd refused it)
    assert gv.check(f, inputs, mode="full").passed


def test_torch_full_checks_batched_and_unbatched_agree(tt, monkeypatch):
    from gradverify.frameworks import _torch

    monkeypatch.setattr(_torch.TorchFunctionTarget, "batch_min_rows", 1)
    batched = gv.check(_mlp, _mlp_inputs(), mode="full")
    monkeypatch.setattr(_torch.TorchFunctionTarget, "evaluate_batch", None)
    plain = gv.check(_mlp, _mlp_inputs(), mode="full")
    assert batched.passed and plain.passed
    assert batched.evaluations == plain.evaluations
    assert (batched.worst.input, batched.worst.index) == (plain.worst.input, plain.worst.index)
    # the worst element's reference from rows that agree to rounding (module docstring)
    np.testing.assert_allclose(batched.worst.numeric, plain.worst.numeric, rtol=1e-9)


def test_torch_module_rows_match_the_loop_for_parameters_and_input(tt):
    # Seeded: the weights came from whatever torch's global generator held when the test ran (under -n 2, the
    # tests before it on its worker), and about one draw in eight has a derivative near 1e-3 whose one-ulp
    # row difference (|y| eps / h ~ 4e-12) exceeds _same_derivatives' atol.
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    t = module_target(m, None, inputs=_t(0, 3, 4), dtype=None, rng=np.random.default_rng(0))
    rng = np.random.default_rng(5)
    for name in t.point:
        idx, vals = _rows(t, name, rng)
        _assert_rows_equal(t.evaluate_batch(name, idx, vals), t._loop_batch(name, idx, vals))
        _assert_probe_rows(t, name, rng)
    _same_derivatives(t)
    assert t.batch_fallbacks == {}


def _item_scaled(x, W):
    return torch.tanh(x @ W) * (1.0 if float(W.detach().sum()) > -1e9 else 2.0)


def _plain_function():
    class TanhLinear(torch.autograd.Function):  # no setup_context: not vmappable
        @staticmethod
        def forward(ctx, x, W):
            y = torch.tanh(x @ W)
            ctx.save_for_backward(x, y)
            return y

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            gz = g * (1 - y * y)
            return gz @ W_.T, x.T @ gz

    W_ = _t(1, 4, 3)
    return TanhLinear.apply, W_


_captured: dict = {}


def _writes_into_captured(x, W):
    acc = _captured.setdefault("acc", torch.zeros(3, 3, dtype=torch.float64))
    acc.zero_()
    acc.add_(x @ W)
    return torch.tanh(acc)


@pytest.mark.parametrize("case", ["item", "function", "inplace"])
def test_torch_code_that_cannot_be_vmapped_falls_back_to_a_loop(tt, case):
    x = _t(0, 3, 4)
    if case == "function":
        fn, W = _plain_function()
    else:
        fn, W = (_item_scaled if case == "item" else _writes_into_captured), _t(1, 4, 3)
    t = callable_target(fn, [x, W], None)
    _assert_probe_rows(t, "W", np.random.default_rng(6))  # decides: falls back
    assert "W" in t.batch_fallbacks
    idx, vals = _rows(t, "W", np.random.default_rng(6))
    _assert_rows_equal(t.evaluate_batch("W", idx, vals), t._loop_batch("W", idx, vals))
    assert gv.check(fn, [x, W], mode="full").passed


@pytest.mark.parametrize("layer", ["dropout", "batchnorm_train"])
def test_torch_modules_that_cannot_be_vmapped_fall_back(tt, layer):
    torch.manual_seed(0)
    extra = torch.nn.Dropout(0.3) if layer == "dropout" else torch.nn.BatchNorm1d(5)
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), extra, torch.nn.Tanh()).double()
    x = _t(0, 6, 4)
    t = module_target(m, None, inputs=x, dtype=None, rng=np.random.default_rng(0))
    idx, vals = _rows(t, "0.weight", np.random.default_rng(7))
    _assert_rows_equal(t.evaluate_batch("0.weight", idx, vals), t._loop_batch("0.weight", idx, vals))
    assert "0.weight" in t.batch_fallbacks
    assert gv.check_layer(m, inputs=x, mode="full").passed


def _vmappable_function(corrupt=None):
    """tanh(x @ W) as an autograd.Function that vmap accepts; ``corrupt=(index, factor)`` plants a bug in dW."""

    class TanhLinear(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, W):
            return torch.tanh(x @ W)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], inputs[1], output)

        @staticmethod
        def backward(ctx, g):
            x, W, y = ctx.saved_tensors
            gz = g * (1 - y * y)
            gW = x.T @ gz
            if corrupt is not None:
                gW = gW.clone()
                gW[corrupt[0]] *= corrupt[1]
            return gz @ W.T, gW

    return TanhLinear.apply


def test_torch_bugs_are_still_caught_on_the_batched_path(tt):
    # 4 x 3 weights: 48 rows in the check's request, past the batching threshold (batch_min_rows = 32)
    x, W = _t(0, 5, 4), _t(1, 4, 3)
    fn = _vmappable_function(corrupt=((2, 1), 1.001))  # a 0.1% error in one element
    t = callable_target(fn, [x, W], None)
    idx, vals = _rows(t, "W", np.random.default_rng(8), n=40)
    t.evaluate_batch("W", idx, vals)
    assert t.batch_fallbacks == {}  # the batched path is what runs
    r = gv.check(fn, [x, W], mode="full")
    assert not r.passed and r.worst.input == "W" and r.worst.index == (2, 1)
    assert gv.check(_vmappable_function(), [x, W], mode="full").passed


# --------------------------------------------------------------------------
# JAX


def _jax():
    jax = pytest.importorskip("jax")
    return jax, jax.numpy


def test_jax_rows_and_derivatives_match_the_loop_under_x64():
    jax, jnp = _jax()
    rng = np.random.default_rng(9)
    # float32 inputs: the finite differences run in float64 inside the scoped x64 mode
    params = {"W": jnp.asarray(rng.standard_normal((4, 6)), dtype=jnp.float32),
              "b": jnp.asarray(rng.standard_normal(6), dtype=jnp.float32)}
    x = jnp.asarray(rng.standard_normal((5, 4)), dtype=jnp.float32)

    def f(x, params):
        h = jnp.tanh(x @ params["W"] + params["b"])
        return h, jnp.sum(h ** 2)

    t = callable_target(f, [x, params], None)
    assert all(v.dtype == np.float64 for v in t.point.values())
    for name in t.point:
        idx, vals = _rows(t, name, rng)
        out = t.evaluate_batch(name, idx, vals)
        assert out.dtype == np.float64
        _assert_rows_equal(out, t._loop_batch(name, idx, vals))
        _assert_probe_rows(t, name, rng)
    _same_derivatives(t)
    _assert_points_match_the_loop(t, rng)
    assert t.batch_fallbacks == {}


def test_jax_random_draws_from_a_passed_key_stay_batched():
    # (code drawing jax.random numbers is evaluated in its own dtype, float32 here: see _jax.random_draws)
    jax, jnp = _jax()
    key = jax.random.PRNGKey(3)
    rng = np.random.default_rng(10)
    x, W = jnp.asarray(rng.standard_normal((3, 4))), jnp.asarray(rng.standard_normal((4, 2)))

    def f(x, W, key):
        return jnp.tanh(x @ W) * jax.random.uniform(key, (3, 2))

    t = callable_target(f, [x, W, key], None)
    idx, vals = _rows(t, "W", rng)
    _assert_rows_equal(t.evaluate_batch("W", idx, vals), t._loop_batch("W", idx, vals))
    assert t.batch_fallbacks == {}


def test_jax_code_that_cannot_be_traced_falls_back():
    jax, jnp = _jax()
    rng = np.random.default_rng(11)
    x, W = jnp.asarray(rng.standard_normal((3, 4))), jnp.asarray(rng.standard_normal((4, 2)))

    def f(x, W):  # numpy inside: fine eagerly, not under a trace
        return jnp.asarray(np.tanh(np.asarray(x @ W)))

    t = callable_target(f, [x, W], None)
    idx, vals = _rows(t, "W", rng)
    _assert_rows_equal(t.evaluate_batch("W", idx, vals), t._loop_batch("W", idx, vals))
    assert "W" in t.batch_fallbacks


def test_jax_bugs_are_still_caught_on_the_batched_path(monkeypatch):
    jax, jnp = _jax()
    from gradverify.frameworks import _jax as gv_jax

    monkeypatch.setattr(gv_jax.JaxFunctionTarget, "batch_min_rows", 1)
    rng = np.random.default_rng(12)
    x, W = jnp.asarray(rng.standard_normal((5, 4))), jnp.asarray(rng.standard_normal((4, 3)))

    def make(factor):
        @jax.custom_vjp
        def f(x, W):
            return jnp.tanh(x @ W)

        def fwd(x, W):
            y = jnp.tanh(x @ W)
            return y, (x, W, y)

        def bwd(res, g):
            x, W, y = res
            gz = g * (1 - y * y)
            return gz @ W.T, (x.T @ gz).at[1, 2].multiply(factor)

        f.defvjp(fwd, bwd)
        return f

    bad = gv.check(make(1.001), [x, W], mode="full")  # a 0.1% error in one element
    assert not bad.passed and bad.worst.input == "W" and bad.worst.index == (1, 2)
    assert gv.check(make(1.0), [x, W], mode="full").passed
    t = callable_target(make(1.001), [x, W], None)
    idx, vals = _rows(t, "W", rng)
    t.evaluate_batch("W", idx, vals)
    assert t.batch_fallbacks == {}
