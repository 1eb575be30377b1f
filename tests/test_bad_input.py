"""The bad-input matrix: every malformed layer, pair or argument gets a specific
:class:`gradverify.errors.GradVerifyError` subclass (or a failed result) whose
message says what to fix -- never a pass, never a raw numpy traceback.

Decisions documented here (the contract these tests pin down):

* A gradient whose dtype *kind* differs from its real floating input -- a
  complex array (an imaginary part would be silently dropped) or an integer or
  boolean array (it cannot hold a cotangent-weighted value) -- is a
  :class:`~gradverify.errors.ProtocolError` naming the input and both dtypes.
  A gradient of the same kind but another precision (float64 for a float32
  input) is accepted.
* A gradient containing NaN is either a :class:`NonFiniteError` naming the
  input, or a failed result (never a pass).
* ``backward`` returning ``None`` for a differentiable input, or a ``grads``
  dict without a parameter's key, is a :class:`MissingGradient`.
* A forward that modifies its input in place, or a backward that modifies
  ``dy`` in place, does not fail a correct gradient; ``result.warnings`` says
  which argument was mutated.

Cost: each test runs at most one small check (milliseconds).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import gradverify as gv
from gradverify import errors

RNG_SEED = 0


def _rng():
    return np.random.default_rng(RNG_SEED)


def _has_word(msg: str, word: str) -> bool:
    """``word`` appears in ``msg`` as a whole identifier (e.g. ``x``, ``W``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", msg) is not None


def _shape_str(shape) -> str:
    return str(tuple(shape))


class Dense:
    """A correct y = x @ W + b layer, subclassed below to break one thing."""

    def __init__(self, d_in=4, d_out=3, dtype=np.float64):
        r = _rng()
        self.params = {
            "W": r.standard_normal((d_in, d_out)).astype(dtype),
            "b": r.standard_normal(d_out).astype(dtype),
        }
        self.grads = {}

    def forward(self, x):
        self._x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dy):
        self.grads = {"W": self._x.T @ dy, "b": dy.sum(axis=0)}
        return dy @ self.params["W"].T


# ---------------------------------------------------------------- non-finite


class NaNForward(Dense):
    def forward(self, x):
        y = super().forward(x)
        y[0, 0] = np.nan
        return y


class InfForward(Dense):
    def forward(self, x):
        y = super().forward(x)
        y[1, 2] = np.inf
        return y


@pytest.mark.parametrize("layer_cls, word", [(NaNForward, "nan"), (InfForward, "inf")])
def test_forward_nonfinite_layer(layer_cls, word):
    with pytest.raises(errors.NonFiniteError) as exc:
        gv.check_layer(layer_cls(), (5, 4))
    msg = str(exc.value).lower()
    assert word in msg or "non-finite" in msg or "finite" in msg
    assert "forward" in msg or "output" in msg


def test_forward_nonfinite_pair():
    def forward(x):
        with np.errstate(invalid="ignore"):
            return np.log(x), x  # log of a negative number: NaN

    def backward(dout, x):
        return (dout / x,)

    with pytest.raises(errors.NonFiniteError) as exc:
        gv.check_pair(forward, backward, (-np.ones(3),))
    msg = str(exc.value).lower()
    assert "nan" in msg or "finite" in msg


class NaNGradLayer(Dense):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["W"][1, 1] = np.nan
        return dx


def test_gradient_containing_nan_layer():
    try:
        result = gv.check_layer(NaNGradLayer(), (5, 4))
    except errors.NonFiniteError as e:
        assert _has_word(str(e), "W"), str(e)
    else:
        assert not result.passed
        assert result.status != "pass"
        assert result.worst is not None and result.worst.input == "W"


def test_gradient_containing_nan_pair():
    def forward(weight):
        return np.sin(weight), weight

    def backward(dout, weight):
        g = dout * np.cos(weight)
        g[0] = np.nan
        return (g,)

    try:
        result = gv.check_pair(forward, backward, (np.linspace(0.1, 1.0, 4),))
    except errors.NonFiniteError as e:
        assert "weight" in str(e) or _has_word(str(e), "0"), str(e)
    else:
        assert not result.passed


# -------------------------------------------------------------------- shapes


class WrongDxShape(Dense):
    def backward(self, dy):
        return super().backward(dy).reshape(-1)  # (5, 4) -> (20,)


class WrongParamGradShape(Dense):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["W"] = self.grads["W"].T  # (4, 3) -> (3, 4)
        return dx


def test_wrong_dx_shape_layer():
    with pytest.raises(errors.ShapeMismatch) as exc:
        gv.check_layer(WrongDxShape(), (5, 4))
    msg = str(exc.value)
    assert _has_word(msg, "x"), msg
    assert _shape_str((5, 4)) in msg and _shape_str((20,)) in msg, msg


def test_wrong_param_grad_shape_layer():
    with pytest.raises(errors.ShapeMismatch) as exc:
        gv.check_layer(WrongParamGradShape(), (5, 4))
    msg = str(exc.value)
    assert _has_word(msg, "W"), msg
    assert _shape_str((4, 3)) in msg and _shape_str((3, 4)) in msg, msg


def test_wrong_grad_shape_pair_names_input():
    def forward(weight, bias):
        return weight * 2.0 + bias, None

    def backward(dout, cache):
        return 2.0 * dout, dout.sum(axis=0)  # bias is (3, 2): wrong (2,)

    with pytest.raises(errors.ShapeMismatch) as exc:
        gv.check_pair(forward, backward, (np.ones((3, 2)), np.zeros((3, 2))))
    msg = str(exc.value)
    assert "bias" in msg, msg
    assert _shape_str((3, 2)) in msg and _shape_str((2,)) in msg, msg


# ------------------------------------------------------------ missing grads


class NoneBackward(Dense):
    def backward(self, dy):
        super().backward(dy)
        return None


class MissingParamKey(Dense):
    def backward(self, dy):
        dx = super().backward(dy)
        del self.grads["b"]
        return dx


class NoneParamGrad(Dense):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["W"] = None
        return dx


def test_backward_returning_none():
    with pytest.raises(errors.MissingGradient) as exc:
        gv.check_layer(NoneBackward(), (5, 4))
    msg = str(exc.value)
    assert _has_word(msg, "x") or "backward" in msg, msg


def test_grads_missing_param_key():
    with pytest.raises(errors.MissingGradient) as exc:
        gv.check_layer(MissingParamKey(), (5, 4))
    assert _has_word(str(exc.value), "b"), str(exc.value)


def test_param_grad_none():
    with pytest.raises(errors.MissingGradient) as exc:
        gv.check_layer(NoneParamGrad(), (5, 4))
    assert _has_word(str(exc.value), "W"), str(exc.value)


def test_pair_backward_none_gradient():
    def forward(x):
        return x * 3.0, None

    def backward(dout, cache):
        return (None,)

    with pytest.raises(errors.MissingGradient) as exc:
        gv.check_pair(forward, backward, (np.ones(3),))
    assert "x" in str(exc.value), str(exc.value)


# ------------------------------------------------------------------ protocol


class NoBackward:
    params: dict = {}

    def forward(self, x):
        return x


class NoForward:
    params: dict = {}

    def backward(self, dy):
        return dy


@pytest.mark.parametrize("obj, missing", [(NoBackward(), "backward"), (NoForward(), "forward"),
                                          (object(), "forward")])
def test_layer_without_forward_or_backward(obj, missing):
    with pytest.raises(errors.ProtocolError) as exc:
        gv.check_layer(obj, (3,))
    assert missing in str(exc.value), str(exc.value)


@pytest.mark.parametrize("n_returned", [1, 3])
def test_pair_wrong_number_of_gradients(n_returned):
    def forward(a, b):
        return a * b, (a, b)

    def backward(dout, cache):
        a, b = cache
        return (dout * b, dout * a, dout)[:n_returned]

    with pytest.raises(errors.ProtocolError) as exc:
        gv.check_pair(forward, backward, (np.ones(3), np.full(3, 2.0)))
    msg = str(exc.value)
    assert "2" in msg and str(n_returned) in msg, msg


# --------------------------------------------------------------------- specs


def test_empty_input_layer():
    with pytest.raises(errors.SpecError) as exc:
        gv.check_layer(Dense(), inputs=np.zeros((0, 4)))
    assert "empty" in str(exc.value).lower() or _shape_str((0, 4)) in str(exc.value)


def test_empty_input_shape_layer():
    with pytest.raises(errors.SpecError):
        gv.check_layer(Dense(), (0, 4))


def test_empty_input_pair():
    def forward(x):
        return x * 2.0, None

    def backward(dout, cache):
        return (2.0 * dout,)

    with pytest.raises(errors.SpecError) as exc:
        gv.check_pair(forward, backward, (np.zeros(0),))
    assert "empty" in str(exc.value).lower() or "x" in str(exc.value)


def test_check_layer_without_input_shape_or_inputs():
    with pytest.raises(errors.SpecError) as exc:
        gv.check_layer(Dense())
    msg = str(exc.value)
    assert "input_shape" in msg and "inputs" in msg, msg


def test_all_integer_inputs_pair():
    def forward(i, j):
        return (i * j).astype(float), None

    def backward(dout, cache):
        return np.zeros_like(dout), np.zeros_like(dout)

    with pytest.raises(errors.NoDifferentiableInputs):
        gv.check_pair(forward, backward, (np.arange(3), np.arange(3)))


class ParamFreeDouble:
    params: dict = {}
    grads: dict = {}

    def forward(self, x):
        return 2.0 * x

    def backward(self, dy):
        return 2.0 * dy


def test_all_integer_inputs_layer():
    # No parameters and an integer x: nothing differentiable to check.
    with pytest.raises(errors.NoDifferentiableInputs):
        gv.check_layer(ParamFreeDouble(), inputs=np.arange(6).reshape(2, 3))


# -------------------------------------------------------------------- dtypes


def _sin_pair(grad_cast):
    def forward(x):
        return np.sin(x), x

    def backward(dout, x):
        return (grad_cast(dout * np.cos(x)),)

    return forward, backward


@pytest.mark.parametrize(
    "cast, kind_word",
    [(lambda g: g.astype(np.complex128), "complex"),
     (lambda g: np.round(g * 100).astype(np.int64), "int"),
     (lambda g: g > 0, "bool")],
    ids=["complex", "int", "bool"],
)
def test_gradient_of_wrong_dtype_kind(cast, kind_word):
    fwd, bwd = _sin_pair(cast)
    with pytest.raises(errors.ProtocolError) as exc:
        gv.check_pair(fwd, bwd, (np.linspace(0.1, 1.0, 4),))
    msg = str(exc.value)
    assert "x" in msg and kind_word in msg and "float64" in msg, msg


def test_gradient_of_other_float_precision_is_accepted():
    # float32 input, float64 gradient with correct values: same kind, accepted.
    fwd, bwd = _sin_pair(lambda g: g.astype(np.float64))
    result = gv.check_pair(fwd, bwd, (np.linspace(0.1, 1.0, 4, dtype=np.float32),))
    assert result.passed, str(result)


# ------------------------------------------------------------------ mutation

_MUTATION = re.compile(r"in[- ]place|modif|mutat|overwr", re.IGNORECASE)


class ForwardMutatesInput:
    """Correct y = tanh(2 x @ W), but forward doubles x in place."""

    def __init__(self):
        self.params = {"W": _rng().standard_normal((4, 3))}
        self.grads = {}

    def forward(self, x):
        x *= 2.0  # in place: the caller's array changes
        self._x2 = x
        self._y = np.tanh(x @ self.params["W"])
        return self._y

    def backward(self, dy):
        dz = dy * (1 - self._y ** 2)
        self.grads = {"W": self._x2.T @ dz}
        return 2.0 * (dz @ self.params["W"].T)


class BackwardMutatesDy(Dense):
    """Correct y = tanh(x @ W + b); backward overwrites dy with dz."""

    def forward(self, x):
        self._y = np.tanh(super().forward(x))
        return self._y

    def backward(self, dy):
        dy *= 1 - self._y ** 2  # in place: the caller's cotangent changes
        self.grads = {"W": self._x.T @ dy, "b": dy.sum(axis=0)}
        return dy @ self.params["W"].T


def _mutation_warnings(result):
    return [w for w in result.warnings if _MUTATION.search(str(w))]


def test_forward_mutating_input_passes_with_warning():
    result = gv.check_layer(ForwardMutatesInput(), (5, 4))
    assert result.passed, str(result)
    hits = _mutation_warnings(result)
    assert hits, f"no mutation warning in {result.warnings!r}"
    assert any(_has_word(str(w), "x") or "input" in str(w) for w in hits), hits


def test_backward_mutating_dy_passes_with_warning():
    result = gv.check_layer(BackwardMutatesDy(), (5, 4))
    assert result.passed, str(result)
    hits = _mutation_warnings(result)
    assert hits, f"no mutation warning in {result.warnings!r}"
    assert any("dy" in str(w) or "cotangent" in str(w) or "backward" in str(w) for w in hits), hits


def test_pair_forward_mutating_input_passes_with_warning():
    def forward(x):
        np.exp(x, out=x)  # in place
        return x, x.copy()

    def backward(dout, y):
        return (dout * y,)

    result = gv.check_pair(forward, backward, (np.linspace(-1.0, 1.0, 5),))
    assert result.passed, str(result)
    assert _mutation_warnings(result), result.warnings


def test_pair_backward_mutating_dout_passes_with_warning():
    def forward(x):
        y = np.tanh(x)
        return y, y

    def backward(dout, y):
        dout *= 1 - y * y  # in place
        return (dout,)

    result = gv.check_pair(forward, backward, (np.linspace(-1.0, 1.0, 5),))
    assert result.passed, str(result)
    assert _mutation_warnings(result), result.warnings


# ---------------------------------------------------------------------------
# The code under test raising: a typed error naming the call (issue 12, point 3)
# ---------------------------------------------------------------------------

class _Dense:
    def __init__(self):
        self.params = {"W": np.random.default_rng(0).standard_normal((4, 3))}

    def forward(self, x):
        self.x = x
        return x @ self.params["W"]

    def backward(self, dy):
        self.grads = {"W": self.x.T @ dy}
        return dy @ self.params["W"].T


def test_wrong_input_shape_numpy_layer_is_a_typed_error():
    with pytest.raises(gv.CodeUnderTestError) as info:
        gv.check_layer(_Dense(), (5, 3))
    err = info.value
    assert isinstance(err, gv.GradVerifyError)
    assert err.call == "_Dense.forward" and err.stage == "forward" and err.shapes == {"x": (5, 3)}
    assert isinstance(err.__cause__, ValueError) and err.original is err.__cause__
    assert str(err).startswith("_Dense.forward raised ValueError: matmul")
    assert "(forward called with x: (5, 3))" in str(err)
    assert err.about_shapes


def test_broadcasting_error_in_a_pair_backward_names_the_backward():
    def add_forward(x, b):
        return x + b, None

    def add_backward(dout, cache):
        return dout, dout + np.ones(7)          # the user's bug: a broadcast that cannot happen

    with pytest.raises(gv.CodeUnderTestError) as info:
        gv.check_pair(add_forward, add_backward, [np.ones((2, 3)), np.ones(3)])
    err = info.value
    assert err.stage == "backward" and err.call.endswith("add_backward")
    assert err.shapes == {"dout": (2, 3)}
    assert "operands could not be broadcast" in str(err) and isinstance(err.__cause__, ValueError)


def test_a_raising_forward_of_a_pair_is_named_as_the_forward():
    def fwd(x):
        raise KeyError("cache_key")

    with pytest.raises(gv.CodeUnderTestError, match=r"fwd raised KeyError: 'cache_key'") as info:
        gv.check_pair(fwd, lambda d, c: (d,), [np.ones(3)])
    assert info.value.stage == "forward" and not info.value.about_shapes


def test_vjp_raising_is_named_vjp():
    def bad_vjp(g, x):
        raise ZeroDivisionError("oops")

    with pytest.raises(gv.CodeUnderTestError, match=r"vjp raised ZeroDivisionError: oops") as info:
        gv.check(np.sin, (np.ones(3),), vjp=bad_vjp)
    assert info.value.stage == "vjp" and info.value.shapes == {"dout": (3,), "x": (3,)}


def test_gradverify_errors_inside_user_calls_pass_through_unchanged():
    # the pair's forward not returning (out, cache) is gradverify's ProtocolError, raised inside the wrapped call
    with pytest.raises(errors.ProtocolError, match=r"forward must return a pair"):
        gv.check_pair(lambda x: x * 2, lambda d, c: (d,), [np.ones(3)])


def test_code_that_refuses_float64_still_falls_back_to_its_dtype():
    def f32_only(x):
        if x.dtype != np.float32:
            raise TypeError("float32 only")
        return x * x

    result = gv.check(f32_only, (np.linspace(-1, 1, 4).astype(np.float32),), vjp=lambda g, x: (2 * x * g,))
    assert result.passed
    assert any("refused float64 input" in w and "float32 only" in w for w in result.warnings)


def test_code_under_test_error_pickles_with_its_message():
    import pickle

    err = gv.CodeUnderTestError("f", "forward", {"x": (2,)}, ValueError("bad"))
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.stage == "forward"
