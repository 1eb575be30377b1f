"""Checks of torch code: ``check`` on torch callables, ``check_layer`` on ``torch.nn.Module``.

The analytic gradient is torch's own (``torch.autograd.grad``; for an
``autograd.Function`` its hand-written ``backward``) in the caller's dtype;
the reference is float64 finite differences. No test passes a tolerance:
the dtype-keyed defaults are under test (float64: rtol 1e-5; float32:
rtol 2e-3, so a 1% error in one element is 5x over the line while float32
rounding, ~1e-6 relative here, is far under it). Every input is seeded.

Cost: small tensors (at most ~40 elements); the file runs in a few seconds.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gradverify as gv

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny tensors: torch's intra-op thread pool only adds synchronisation,
    # which on a loaded machine (pytest -n N) costs milliseconds per op.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _t(seed, *shape, dtype=None):
    return torch.tensor(np.random.default_rng(seed).standard_normal(shape), dtype=dtype or torch.float64)


def _tanh_linear(corrupt=None):
    """A ``torch.autograd.Function`` for tanh(x @ W); ``corrupt=(name, index, factor)`` plants a bug."""

    class TanhLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W):
            y = torch.tanh(x @ W)
            ctx.save_for_backward(x, W, y)
            return y

        @staticmethod
        def backward(ctx, g):
            x, W, y = ctx.saved_tensors
            gz = g * (1 - y * y)
            grads = {"x": gz @ W.T, "W": x.T @ gz}
            if corrupt is not None:
                name, index, factor = corrupt
                grads[name] = grads[name].clone()
                grads[name][index] *= factor
            return grads["x"], grads["W"]

    return TanhLinear


# ---------------------------------------------------------------------------
# torch callables
# ---------------------------------------------------------------------------

def test_function_correct_backward_passes_and_names_inputs_after_forward():
    r = gv.check(_tanh_linear().apply, (_t(0, 4, 3), _t(1, 3, 5)))
    assert r.passed and r.status == "pass", str(r)
    assert [s.name for s in r.inputs] == ["x", "W"]  # forward(ctx, x, W), ctx dropped
    assert r.kind == "function" and r.dtype == "float64"


@pytest.mark.parametrize("name,index", [("W", (1, 2)), ("x", (3, 0))])
def test_function_with_one_wrong_element_fails_there(name, index):
    # 0.1% in one float64 element: 100x over rtol 1e-5.
    r = gv.check(_tanh_linear((name, index, 1.001)).apply, (_t(0, 4, 3), _t(1, 3, 5)))
    assert r.status == "fail", str(r)
    assert r.worst.input == name and tuple(r.worst.index) == index
    assert r.failures == 1


def test_new_style_function_with_setup_context_is_named_after_forward():
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(x, s):
            return s * x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.s = inputs[1]

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * ctx.s * x**2 * g, None

    r = gv.check(Cube.apply, (_t(2, 3, 2), 1.5))
    assert r.passed, str(r)
    assert [s.name for s in r.inputs] == ["x"]  # the Python float s is passed through, not differentiated


def test_dict_inputs_are_passed_by_keyword():
    seen = []

    def f(W, x):
        seen.append((tuple(W.shape), tuple(x.shape)))
        return torch.tanh(x @ W).sum(dim=0)

    r = gv.check(f, {"x": _t(3, 4, 3), "W": _t(4, 3, 2)})
    assert r.passed, str(r)
    assert {s.name for s in r.inputs} == {"x", "W"}
    assert seen and all(s == ((3, 2), (4, 3)) for s in seen)


def test_plain_torch_code_is_differentiated_by_autograd():
    def f(x, W, b):
        return torch.log_softmax(torch.relu(x @ W + b) ** 2 + torch.sin(x).sum(), dim=-1)

    r = gv.check(f, (_t(5, 4, 3), _t(6, 3, 3), _t(7, 3)))
    assert r.passed, str(r)


def test_torch_builtin_with_numpy_input_is_recognised():
    r = gv.check(torch.sinh, np.random.default_rng(0).standard_normal((3, 3)))
    assert r.passed and r.dtype == "float64", str(r)


# float32 code against the float64 oracle ------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_float32_function_no_false_alarm(seed):
    r = gv.check(_tanh_linear().apply, (_t(seed, 6, 5, dtype=torch.float32), _t(seed + 10, 5, 4, dtype=torch.float32)),
                 seed=seed)
    assert r.passed, str(r)
    assert r.dtype == "float32"  # the gradient under test stays in the caller's dtype


def test_float32_autograd_of_awkward_code_no_false_alarm():
    def f(x, W):
        z = x @ W * 4.0  # saturates some softmax entries in float32
        return torch.log_softmax(z, dim=-1) + torch.nn.functional.softplus(z)

    r = gv.check(f, (_t(8, 5, 4, dtype=torch.float32), _t(9, 4, 6, dtype=torch.float32)))
    assert r.passed, str(r)


def test_float32_function_one_percent_error_is_caught():
    # 1% in one element: 5x over float32 rtol 2e-3.
    r = gv.check(_tanh_linear(("W", (2, 1), 1.01)).apply,
                 (_t(0, 6, 5, dtype=torch.float32), _t(10, 5, 4, dtype=torch.float32)))
    assert r.status == "fail", str(r)
    assert r.worst.input == "W" and tuple(r.worst.index) == (2, 1)


# integer inputs, tuple outputs, None gradients, hazards -----------------------

def test_integer_tensor_is_a_constant():
    def gather_rows(table, idx):
        return torch.tanh(table[idx]) * 2.0

    r = gv.check(gather_rows, (_t(11, 5, 3), torch.tensor([4, 0, 4, 2])))
    assert r.passed, str(r)
    assert [s.name for s in r.inputs if s.checked] == ["table"]
    assert any("'idx'" in w and "constant" in w for w in r.warnings)


def test_tuple_output_is_checked_as_one_concatenated_output():
    def f(x, W):
        h = x @ W
        return torch.tanh(h), (h.sum(dim=1), torch.argmax(h, dim=1))  # the integer leaf is ignored

    assert gv.check(f, (_t(12, 3, 4), _t(13, 4, 2))).passed


def test_backward_returning_none_for_a_used_input_fails():
    class DropsW(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W):
            ctx.save_for_backward(x, W)
            return x @ W

        @staticmethod
        def backward(ctx, g):
            x, W = ctx.saved_tensors
            return g @ W.T, None

    r = gv.check(DropsW.apply, (_t(14, 3, 4), _t(15, 4, 2)))
    assert r.status == "fail" and r.worst.input == "W", str(r)


def test_backward_that_writes_into_grad_output_is_warned_about():
    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 3.0 * x

        @staticmethod
        def backward(ctx, g):
            g.mul_(3.0)  # correct value, but it corrupts the grad_output other nodes may read
            return g

    r = gv.check(Scale.apply, _t(16, 3, 3))
    assert r.passed, str(r)
    assert any("in place" in w for w in r.warnings), r.warnings


def test_function_that_writes_into_its_input_is_warned_about():
    def f(x):
        x.mul_(2.0)
        return torch.sin(x)

    r = gv.check(f, _t(17, 3, 2))
    assert r.passed, str(r)
    assert any("modifies its inputs" in w for w in r.warnings), r.warnings


def test_dropout_in_a_function_is_checked_with_a_fixed_mask_and_rng_untouched():
    def f(x):
        return torch.nn.functional.dropout(torch.tanh(x), p=0.4, training=True)

    torch.manual_seed(123)
    before = torch.get_rng_state().clone()
    r = gv.check(f, _t(18, 6, 5))
    assert r.passed, str(r)
    assert torch.equal(torch.get_rng_state(), before)


def test_check_inside_no_grad_still_uses_autograd():
    with torch.no_grad():
        assert gv.check(_tanh_linear().apply, (_t(0, 4, 3), _t(1, 3, 5))).passed


# vjp= : gradients from third-party autodiff engines ----------------------------

def _np_f(x, W):
    return np.tanh(x @ W) * np.exp(0.3 * x.sum())


def _torch_vjp_for_numpy(corrupt=False):
    def vjp(dout, x, W):
        xt = torch.tensor(x, requires_grad=True)
        Wt = torch.tensor(W, requires_grad=True)
        y = torch.tanh(xt @ Wt) * torch.exp(0.3 * xt.sum())
        dx, dW = torch.autograd.grad(y, (xt, Wt), grad_outputs=torch.tensor(dout))
        dW = dW.numpy().copy()
        if corrupt:
            dW[1, 0] *= 1 + 1e-3
        return dx.numpy(), dW

    return vjp


@pytest.mark.parametrize("corrupt", [False, True])
def test_numpy_function_with_torch_computed_gradients(corrupt):
    x, W = np.random.default_rng(20).standard_normal((4, 3)), np.random.default_rng(21).standard_normal((3, 2))
    r = gv.check(_np_f, (x, W), vjp=_torch_vjp_for_numpy(corrupt))
    if corrupt:  # 1e-3 relative in one float64 element: 100x over rtol
        assert r.status == "fail" and r.worst.input == "W" and tuple(r.worst.index) == (1, 0), str(r)
    else:
        assert r.passed, str(r)


@pytest.mark.parametrize("corrupt", [False, True])
def test_torch_function_with_reference_engine_gradients(corrupt):
    import gradverify.engine as E

    def f(x, W):
        return torch.tanh(x @ W)

    def vjp(dout, x, W):
        assert isinstance(dout, torch.Tensor) and isinstance(x, torch.Tensor)  # framework arrays in
        _, back = E.vjp(lambda a, b: E.tanh(E.matmul(a, b)), x.numpy(), W.numpy())
        dx, dW = back(dout.numpy())
        dx = np.array(dx)
        if corrupt:
            dx[2, 1] *= 1 + 1e-3
        return torch.from_numpy(dx), dW  # a tensor and a numpy array: both accepted

    r = gv.check(f, (_t(22, 3, 3), _t(23, 3, 4)), vjp=vjp)
    if corrupt:
        assert r.status == "fail" and r.worst.input == "x" and tuple(r.worst.index) == (2, 1), str(r)
    else:
        assert r.passed, str(r)


@pytest.mark.parametrize("corrupt", [False, True])
def test_numpy_function_with_reference_engine_pair(corrupt):
    import gradverify.engine as E

    fn, vjp = E.numpy_pair(lambda a, b: E.logsumexp(E.mul(a, b), axis=1))

    def maybe_corrupt(dout, a, b):
        da, db = (np.array(g) for g in vjp(dout, a, b))
        if corrupt:
            da[0, 3] *= 1 - 1e-3
        return da, db

    a, b = np.random.default_rng(24).standard_normal((3, 4)), np.random.default_rng(25).standard_normal((3, 4))
    r = gv.check(fn, (a, b), vjp=maybe_corrupt)
    if corrupt:
        assert r.status == "fail" and r.worst.input in ("0", "a") and tuple(r.worst.index) == (0, 3), str(r)
    else:
        assert r.passed, str(r)


# bad input ---------------------------------------------------------------------

def test_backward_returning_a_wrong_shape_is_a_shape_mismatch():
    class NoUnbroadcast(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            return x + b

        @staticmethod
        def backward(ctx, g):
            return g, g[:, :2]  # neither b's shape nor expandable to it

    with pytest.raises(gv.ShapeMismatch, match="wrong shape"):
        gv.check(NoUnbroadcast.apply, (_t(0, 3, 4), _t(1, 4)))


def test_bfloat16_is_refused_with_advice():
    with pytest.raises(gv.SpecError, match="bfloat16"):
        gv.check(torch.sin, _t(0, 3).to(torch.bfloat16))


def test_only_integer_inputs_is_an_error():
    with pytest.raises(gv.NoDifferentiableInputs):
        gv.check(lambda i: i * 2.0, torch.arange(4))


def test_mixing_torch_and_jax_inputs_is_an_error():
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(gv.SpecError, match="mix"):
        gv.check(lambda a, b: a, (_t(0, 2), jnp.ones(2)))


# ---------------------------------------------------------------------------
# torch.nn.Module
# ---------------------------------------------------------------------------

def test_module_parameters_are_named_as_in_named_parameters():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    r = gv.check_layer(m, (5, 3))
    assert r.passed, str(r)
    assert [s.name for s in r.inputs] == ["x"] + [n for n, _ in m.named_parameters()]


def test_module_with_a_buggy_function_fails_at_the_parameter():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Parameter(_t(30, 3, 3))

        def forward(self, x):
            return _tanh_linear(("W", (0, 2), 1.001)).apply(x, self.proj)

    r = gv.check_layer(Block(), (4, 3))
    assert r.status == "fail" and r.worst.input == "proj" and tuple(r.worst.index) == (0, 2), str(r)


def test_module_is_left_exactly_as_given():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.3)).double().train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    rng_before = torch.get_rng_state().clone()
    r = gv.check_layer(m, (6, 3))
    assert r.passed, str(r)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k  # weights bit for bit, running stats and counters untouched
    assert all(p.grad is None for p in m.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert m.training


def test_float32_module_with_dropout_falls_back_to_its_dtype_with_a_warning():
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Dropout(0.5), torch.nn.Tanh())
    r = gv.check_layer(m, (5, 4))
    assert r.passed, str(r)
    assert any("random" in w for w in r.warnings), r.warnings


def test_float32_module_against_float64_oracle_catches_one_percent():
    class Block(torch.nn.Module):
        def __init__(self, corrupt):
            super().__init__()
            self.W = torch.nn.Parameter(_t(31, 5, 4, dtype=torch.float32))
            self.fn = _tanh_linear(("W", (3, 3), 1.01) if corrupt else None)

        def forward(self, x):
            return self.fn.apply(x, self.W)

    assert gv.check_layer(Block(False), (6, 5)).passed
    r = gv.check_layer(Block(True), (6, 5))
    assert r.status == "fail" and r.worst.input == "W" and tuple(r.worst.index) == (3, 3), str(r)


def test_module_with_several_inputs_and_frozen_parameter():
    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(_t(32, 3))
            self.frozen = torch.nn.Parameter(_t(33, 3), requires_grad=False)

        def forward(self, a, b, *, scale=1.0):
            return scale * torch.sigmoid(a * self.w) * torch.tanh(b + self.frozen)

    r = gv.check_layer(Gate(), inputs={"a": _t(34, 2, 3), "b": _t(35, 2, 3), "scale": 0.5})
    assert r.passed, str(r)
    assert {s.name for s in r.inputs if s.checked} == {"a", "b", "w"}
    assert any("'frozen'" in w for w in r.warnings)
    r2 = gv.check_layer(Gate(), inputs=(_t(34, 2, 3), _t(35, 2, 3)))
    assert r2.passed and [s.name for s in r2.inputs][:2] == ["a", "b"], str(r2)


def test_module_given_numpy_input_and_dtype():
    m = torch.nn.Linear(3, 2).double()
    r = gv.check_layer(m, inputs=np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32),
                       dtype=np.float64)
    assert r.passed and r.dtype == "float64", str(r)


def test_input_shape_and_inputs_together_is_an_error():
    with pytest.raises(gv.SpecError, match="not both"):
        gv.check_layer(torch.nn.Linear(2, 2), (3, 2), inputs=_t(0, 3, 2))


# ---------------------------------------------------------------------------
# no framework import unless the code under test brings one
# ---------------------------------------------------------------------------

def test_numpy_checks_import_no_framework():
    code = (
        "import sys, numpy as np, gradverify as gv\n"
        "x = np.random.default_rng(0).standard_normal((3, 2))\n"
        "r = gv.check(np.tanh, x, vjp=lambda d, x: d * (1 - np.tanh(x) ** 2))\n"
        "assert r.passed, r\n"
        "class L:\n"
        "    params = {}\n"
        "    def forward(self, x): self.x = x; return 2 * x\n"
        "    def backward(self, d): self.grads = {}; return 2 * d\n"
        "assert gv.check_layer(L(), (2, 2)).passed\n"
        "bad = [m for m in ('torch', 'jax', 'jaxlib') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_list_argument_of_tensors_is_checked_leaf_by_leaf():
    def f(xs, w):
        return torch.stack([torch.tanh(x * w) for x in xs]).sum(dim=0)

    r = gv.check(f, ([_t(40, 3), _t(41, 3)], _t(42, 3)))
    assert r.passed, str(r)
    assert [s.name for s in r.inputs] == ["xs[0]", "xs[1]", "w"]


# ---------------------------------------------------------------------------
# issue 12: typed errors from torch code, torch tensors given to numpy code
# ---------------------------------------------------------------------------

def test_torch_module_with_a_wrong_input_shape_is_a_typed_error():
    with pytest.raises(gv.CodeUnderTestError) as info:
        gv.check_layer(torch.nn.Linear(4, 3).double(), (5, 3))
    err = info.value
    assert err.call == "Linear.forward" and err.stage == "forward" and err.shapes == {"x": (5, 3)}
    assert isinstance(err.__cause__, RuntimeError) and "mat1 and mat2 shapes cannot be multiplied" in str(err)
    assert err.about_shapes


def test_torch_function_whose_backward_raises_names_the_backward():
    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g + torch.ones(7, dtype=g.dtype)    # a broadcasting error in the user's backward

    with pytest.raises(gv.CodeUnderTestError) as info:
        gv.check(Broken.apply, (torch.ones(3, dtype=torch.float64),))
    assert info.value.stage == "backward" and isinstance(info.value.__cause__, RuntimeError)


def test_torch_function_whose_forward_raises_names_the_forward():
    def f(x):
        return x @ torch.ones(5, 2, dtype=x.dtype)

    with pytest.raises(gv.CodeUnderTestError, match=r"f raised RuntimeError") as info:
        gv.check(f, (torch.ones(4, 3, dtype=torch.float64),))
    assert info.value.stage == "forward" and info.value.shapes == {"x": (4, 3)}


class _NumpyDense:
    def __init__(self):
        self.params = {"W": np.random.default_rng(0).standard_normal((2, 4))}

    def forward(self, x):
        self.x = x
        return x @ self.params["W"]

    def backward(self, dy):
        self.grads = {"W": self.x.T @ dy}
        return dy @ self.params["W"].T


@pytest.mark.parametrize("requires_grad", [False, True])
def test_torch_tensors_given_to_numpy_code_convert_without_deprecation_warnings(requires_grad):
    import warnings

    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=requires_grad)
    w = torch.randn(2, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert gv.check_layer(_NumpyDense(), inputs=x).passed
        assert gv.check_pair(lambda x, w: (x @ w, (x, w)), lambda d, c: (d @ c[1].T, c[0].T @ d), [x, w]).passed


def test_numpy_pair_whose_forward_returns_a_tensor_is_a_protocol_error():
    def forward(x):
        return torch.as_tensor(x) * 2, None

    with pytest.raises(gv.ProtocolError, match=r"forward returned a torch.Tensor; numpy code must return numpy"):
        gv.check_pair(forward, lambda d, c: (2 * d,), [np.ones(3)])


@pytest.mark.parametrize("wrapped", [False, True], ids=["argument", "in a dict argument"])
def test_a_numpy_generator_passed_to_torch_code_is_replayed_and_left_as_it_was(wrapped):
    # dropout drawn from a numpy Generator the caller passes in: every evaluation must see the same mask
    # (else the check is nondeterministic), and the caller's stream must be where it was
    def f(x, r):
        rng = r["rng"] if wrapped else r
        return x * torch.from_numpy((rng.random(tuple(x.shape)) > 0.5) * 2.0)

    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    x = torch.tensor(np.random.default_rng(4).standard_normal((4, 5)))
    r = gv.check(f, (x, {"rng": rng} if wrapped else rng))
    assert r.passed and any("random" in w for w in r.warnings), r
    assert rng.bit_generator.state == state
