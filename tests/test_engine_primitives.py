"""One small test per engine primitive at chosen points with known derivatives, and the engine's
structural promises: broadcasting, accumulation, fixed order, deep graphs, dtypes, errors,
forward mode, higher order.

Tolerances used below, and why:

* Exact (rtol 0): linear and piecewise-linear primitives (reshape, getitem,
  matmul, conv2d, pooling, relu, maximum...) and rational rules at chosen points
  (``log'(4) = 0.25``) -- on integer-valued data every product and sum is an
  exactly representable integer or power-of-two fraction in float64, so the
  engine must reproduce the closed form bit for bit.
* ``RTOL = 1e-14`` for the ``ROUNDED`` primitives (exp, sin, pow, softmax...):
  the rule and the closed form evaluate the same transcendental expression in
  float64, possibly in a different order (``g * ans * log(x)`` vs ``x**y log x``);
  that changes at most the last two or three bits (relative 2.2e-16 each).
* ``ADJ_RTOL = 1e-12``: ``<J v, u> == <v, J^T u>``: forward and reverse mode are both
  exact, but each side sums O(100) products in a different order; the rounding
  of such sums is below 100 * eps ~ 2e-14 relative to the sum of |terms|, which
  we bound by 1e-12 of ``1 + |<J v, u>| + sum|terms|``.
* The 10,000-deep chain: ``n * eps = 2.2e-12`` bounds the relative rounding of a
  product of n factors computed in two different orders, so rtol is 5e-12.
"""

from __future__ import annotations

import inspect
import math
import sys

import numpy as np
import pytest

import gradverify.engine as E
from gradverify import ops
from gradverify.engine import jvps, vjps
from gradverify.errors import NoDerivativeRule, ShapeMismatch, SpecError

RTOL = 1e-14
ADJ_RTOL = 1e-12


def grads(f, *xs, u=None):
    """The engine's gradients of <f(*xs), u> (u = ones by default), one per input."""
    out, vjp_fn = E.vjp(f, *xs)
    return vjp_fn(np.ones_like(out) if u is None else np.asarray(u, dtype=out.dtype))


def a(*v):
    return np.array(v, dtype=np.float64)


# ---------------------------------------------------------------------------
# The table and the registries agree
# ---------------------------------------------------------------------------

def test_every_primitive_has_rules_for_exactly_its_differentiable_arguments():
    for name, p in ops.PRIMITIVES.items():
        assert name in vjps.VJPS, f"{name}: no VJP entry"
        assert name in jvps.JVPS, f"{name}: no JVP entry"
        assert len(p.arg_names) == (p.arity if p.arity is not None else 1), name
        rules = vjps.VJPS[name]
        if callable(rules):                       # variadic: every argument differentiable
            assert p.differentiable_args is None, name
            continue
        assert len(rules) == p.arity, name
        for i, rule in enumerate(rules):
            assert (rule is not None) == ops.is_differentiable_arg(name, i), (name, i)


def test_every_public_primitive_is_exported_and_tested_here():
    for name in ops.public_primitives():
        assert name in E.__all__ and callable(getattr(E, name)), name
        assert name in CASES, f"{name}: add it to CASES (dtype and JVP/VJP tests)"
        assert name in EXACT_IDS, f"{name}: add an exact-derivative test"


# ---------------------------------------------------------------------------
# Exact derivatives, one per primitive (u = ones unless stated)
# ---------------------------------------------------------------------------

def _naive_conv2d(x, w, stride, padding):
    """Loop reference: out[n,o,i,j] = sum_{c,k,l} xp[n,c,i*s+k,j*s+l] w[o,c,k,l]."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, c, h, wd = xp.shape
    o, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out


def _linear_vjp(fn, x, u):
    """J^T u of a linear map fn, with J built column by column from fn(e_i) (exact)."""
    cols = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1.0
        cols.append(np.asarray(fn(e.reshape(x.shape))).ravel())
    return (np.stack(cols, axis=1).T @ np.asarray(u).ravel()).reshape(x.shape)


def _conv_case():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (2, 2, 5, 4)).astype(float)
    w = rng.integers(-2, 3, (3, 2, 3, 2)).astype(float)
    u = rng.integers(-2, 3, _naive_conv2d(x, w, 2, 1).shape).astype(float)
    dx = _linear_vjp(lambda xx: _naive_conv2d(xx, w, 2, 1), x, u)
    dw = _linear_vjp(lambda ww: _naive_conv2d(x, ww, 2, 1), w, u)
    return (lambda x, w: E.conv2d(x, w, stride=2, padding=1)), (x, w), u, (dx, dw)


def _matmul_case():
    rng = np.random.default_rng(1)
    A = rng.integers(-3, 4, (2, 1, 3, 4)).astype(float)      # batch broadcast (2,1) x (5,)
    B = rng.integers(-3, 4, (5, 4, 2)).astype(float)
    u = rng.integers(-3, 4, (2, 5, 3, 2)).astype(float)
    dA = np.einsum("bjmn,jkn->bmk", u, B)[:, None]           # sum over B's batch axis
    dB = np.einsum("bmk,bjmn->jkn", A[:, 0], u)              # sum over A's batch axis
    return (lambda A, B: A @ B), (A, B), u, (dA, dB)


S3 = math.sqrt(3.0)
EXACT = [
    # name, f, inputs, cotangent (None = ones), expected gradients
    ("add", E.add, (a(0, 1, 2).reshape(3, 1), a(1, 2, 3, 4).reshape(1, 4)), None,
     (np.full((3, 1), 4.0), np.full((1, 4), 3.0))),                      # summed back over broadcast axes
    ("sub", E.sub, (np.ones((2, 3)), a(1, 2, 3)), None, (np.ones((2, 3)), np.full(3, -2.0))),
    ("mul", E.mul, (a(1, 2, 3), np.array(2.0)), None, (np.full(3, 2.0), np.array(6.0))),
    ("div", E.div, (a(1, 2), a(4, 0.5)), None, (a(0.25, 2), a(-1 / 16, -8))),
    ("neg", E.neg, (a(1, -2),), None, (a(-1, -1),)),
    ("pow", E.pow, (a(2, 3), a(3, 0.5)), None, (a(12, 0.5 / S3), a(8 * math.log(2), S3 * math.log(3)))),
    ("square", E.square, (a(-3, 2),), None, (a(-6, 4),)),
    ("exp", E.exp, (a(0, 1),), None, (a(1, math.e),)),
    ("log", E.log, (a(0.5, 4),), None, (a(2, 0.25),)),
    ("sqrt", E.sqrt, (a(0.25, 4),), None, (a(1, 0.25),)),
    ("abs", E.abs, (a(-2, 0, 3),), None, (a(-1, 0, 1),)),                 # abs'(0) := 0
    ("sin", E.sin, (a(0, math.pi / 3),), None, (a(1, math.cos(math.pi / 3)),)),
    ("cos", E.cos, (a(0, math.pi / 6),), None, (a(0, -math.sin(math.pi / 6)),)),
    ("tanh", E.tanh, (a(0, math.atanh(0.5)),), None, (a(1, 0.75),)),
    ("sigmoid", E.sigmoid, (a(0, math.log(3)),), None, (a(0.25, 3 / 16),)),
    ("relu", E.relu, (a(-1, 0, 2),), None, (a(0, 0, 1),)),                # relu'(0) := 0
    ("softplus", E.softplus, (a(0, math.log(3)),), None, (a(0.5, 0.75),)),
    ("maximum", E.maximum, (a(1, 2, 3), a(3, 2, 1)), None, (a(0, 0.5, 1), a(1, 0.5, 0))),  # tie: half each
    ("minimum", E.minimum, (a(1, 2, 3), a(3, 2, 1)), None, (a(1, 0.5, 0), a(0, 0.5, 1))),
    ("where", lambda x, y: E.where(np.array([True, False, True]), x, y), (a(1, 2, 3), a(5)), None,
     (a(1, 0, 1), a(1))),
    ("sum", lambda x: E.sum(x, axis=(0, 2)), (np.zeros((2, 3, 4)),), a(1, 2, 3),
     (np.broadcast_to(a(1, 2, 3)[:, None], (2, 3, 4)),)),
    ("mean", lambda x: E.mean(x, axis=1, keepdims=True), (np.zeros((2, 4)),), None, (np.full((2, 4), 0.25),)),
    ("max", lambda x: E.max(x, axis=1), (np.array([[1.0, 3, 3], [2, 0, 1]]),), None,
     (np.array([[0, 0.5, 0.5], [1, 0, 0]]),)),                            # tied maxima share equally
    ("logsumexp", E.logsumexp, (a(0, math.log(3)),), None, (a(0.25, 0.75),)),
    ("softmax", E.softmax, (a(0, 0),), a(1, 0), (a(0.25, -0.25),)),
    ("log_softmax", E.log_softmax, (a(0, math.log(3)),), a(1, 0), (a(0.75, -0.75),)),
    ("reshape", lambda x: E.reshape(x, (3, -1)), (np.zeros((2, 3)),), np.arange(6.0).reshape(3, 2),
     (np.arange(6.0).reshape(2, 3),)),
    ("transpose", lambda x: E.transpose(x, (2, 0, 1)), (np.zeros((2, 3, 4)),),
     np.arange(24.0).reshape(4, 2, 3), (np.arange(24.0).reshape(4, 2, 3).transpose(1, 2, 0),)),
    ("broadcast_to", lambda x: E.broadcast_to(x, (2, 3)), (np.zeros((3,)),), np.arange(6.0).reshape(2, 3),
     (a(3, 5, 7),)),
    ("expand_dims", lambda x: E.expand_dims(x, (0, 2)), (np.zeros(3),), np.arange(3.0).reshape(1, 3, 1),
     (a(0, 1, 2),)),
    ("squeeze", E.squeeze, (np.zeros((1, 3, 1)),), a(4, 5, 6), (np.array([[[4.0], [5], [6]]]),)),
    ("getitem", lambda x: x[np.array([0, 0, 2, 0])], (np.zeros(3),), a(1, 2, 3, 4),
     (a(7, 0, 3),)),                                                      # repeated indices accumulate
    ("concatenate", lambda x, y: E.concatenate([x, y, x], axis=1), (np.zeros((1, 2)), np.zeros((1, 1))),
     np.arange(5.0).reshape(1, 5), (np.array([[3.0, 5]]), np.array([[2.0]]))),
    ("stack", lambda x, y: E.stack([x, y, x], axis=1), (np.zeros(2), np.zeros(2)),
     np.arange(6.0).reshape(2, 3), (a(2, 8), a(1, 4))),
    ("matmul", *_matmul_case()),
    ("conv2d", *_conv_case()),
    ("max_pool2d", lambda x: E.max_pool2d(x, 2), (np.array([[[[1.0, 5, 0, 0], [5, 2, 0, 1]]]]),),
     np.array([[[[4.0, 8]]]]), (np.array([[[[0.0, 2, 0, 0], [2, 0, 0, 8]]]]),)),   # 5-5 tie and 0-0-0 ties
    ("avg_pool2d", lambda x: E.avg_pool2d(x, 2, 1), (np.zeros((1, 1, 3, 3)),), None,
     (np.array([[[[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 4,)),           # overlapping windows add up
]
EXACT_IDS = [c[0] for c in EXACT]


ROUNDED = {"pow", "exp", "sin", "cos", "tanh", "sigmoid", "softplus", "logsumexp", "softmax", "log_softmax"}


@pytest.mark.parametrize("name, f, xs, u, expected", EXACT, ids=EXACT_IDS)
def test_exact_derivative(name, f, xs, u, expected):
    got = grads(f, *xs, u=u)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == np.shape(e) and g.dtype == np.float64
        # Transcendental closed forms: RTOL (rounding of the same formula); the rest: bit for bit.
        np.testing.assert_allclose(g, e, rtol=RTOL if name in ROUNDED else 0, atol=0)


def test_max_pool_ties_inside_one_window_split_the_gradient():
    # window [[1, 5], [5, 2]] has two maxima: each gets half of the window's cotangent 4.
    (dx,) = grads(lambda x: E.max_pool2d(x, 2), np.array([[[[1.0, 5], [5, 2]]]]), u=[[[[4.0]]]])
    np.testing.assert_array_equal(dx, [[[[0.0, 2], [2, 0]]]])          # exact: 4 / 2


def test_forward_values_match_numpy_and_naive_references():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    # conv: tensordot vs loop sum the same products in another order -> 1e-12 relative.
    np.testing.assert_allclose(E.numpy_pair(lambda x, w: E.conv2d(x, w, 2, 1))[0](x, w),
                               _naive_conv2d(x, w, 2, 1), rtol=1e-12, atol=1e-12)
    v = rng.standard_normal((3, 5)) * 30
    fn = E.numpy_pair(E.logsumexp)[0]
    # logsumexp/log_softmax/softmax: stable forms vs the naive ones; equal to rounding (1e-12).
    np.testing.assert_allclose(fn(v), np.log(np.sum(np.exp(v))), rtol=1e-12)
    np.testing.assert_allclose(E.numpy_pair(E.log_softmax)[0](v),
                               v - np.log(np.sum(np.exp(v), -1, keepdims=True)), rtol=1e-12, atol=1e-12)
    assert np.isfinite(E.numpy_pair(E.logsumexp)[0](a(1000, 1000))) and \
        E.numpy_pair(E.sigmoid)[0](a(-800))[0] == 0.0                  # no overflow at the tails


# ---------------------------------------------------------------------------
# Structure: paths add up, broadcasting, fixed order, depth
# ---------------------------------------------------------------------------

def test_reused_node_sums_its_paths():
    # e = (a + b) * (b + 1) at a=2, b=1: de/da = b + 1 = 2, de/db = (b+1) + (a+b) = 2*1 + 3*1 = 5.
    da, db = E.grad(lambda a, b: (a + b) * (b + 1), argnums=(0, 1))(2.0, 1.0)
    assert (float(da), float(db)) == (2.0, 5.0)                        # exact small integers


def test_broadcast_gradient_is_summed_back_to_each_input_shape():
    x, y = np.ones((3, 1)), np.ones((1, 4))
    dx, dy = grads(lambda x, y: x * y + x, x, y)
    np.testing.assert_array_equal(dx, np.full((3, 1), 8.0))            # 4 columns * (y + 1)
    np.testing.assert_array_equal(dy, np.full((1, 4), 3.0))
    assert E.unbroadcast(np.ones((2, 3, 4)), (3, 1)).shape == (3, 1)


def test_gradients_are_bitwise_reproducible():
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((4, 5)), rng.standard_normal((5, 3))]

    def f(x, w):
        h = E.tanh(x @ w)
        return E.sum(h * h) + E.sum(E.softmax(x @ w) * h)

    first, second = E.grad(f, (0, 1))(*xs), E.grad(f, (0, 1))(*xs)
    for g1, g2 in zip(first, second):
        assert np.array_equal(g1, g2)                                  # fixed order: bitwise equal


def test_ten_thousand_deep_chain():
    n, c = 10_000, 1.0001

    def chain(x):
        for _ in range(n):
            x = x * c
        return x

    assert n > sys.getrecursionlimit()          # a recursive toposort would fail here
    g = E.grad(chain)(1.0)
    np.testing.assert_allclose(g, c ** n, rtol=5e-12)                  # n * eps rounding bound
    _, t = E.jvp(chain, (1.0,), (1.0,))
    np.testing.assert_allclose(t, c ** n, rtol=5e-12)


def test_deep_chain_of_mixed_primitives_reverse_equals_forward():
    def chain(x):
        for _ in range(5_000):
            x = E.sin(x) * 0.5 + x * 0.5
        return E.sum(x)

    x = a(0.3, -0.2)
    g = E.grad(chain)(x)
    jac_cols = [E.jvp(chain, (x,), (e,))[1] for e in np.eye(2)]
    # Two exact sweeps of 10,000 rounding steps each: 1e-11 relative.
    np.testing.assert_allclose(g, jac_cols, rtol=1e-11)


# ---------------------------------------------------------------------------
# Every primitive at generic points and at its kinks: dtypes and JVP/VJP agreement
# ---------------------------------------------------------------------------

def _r(rng, *shape, pos=False):
    return rng.uniform(0.5, 2.0, shape) if pos else rng.standard_normal(shape)


def _cases():
    rng = np.random.default_rng(4)
    r = lambda *s, pos=False: _r(rng, *s, pos=pos)  # noqa: E731
    tie = np.array([[1.0, 3, 3], [2, 0, 1]])
    return {
        "add": (E.add, [r(3, 1), r(1, 4)]),
        "sub": (E.sub, [r(3, 4), r(4)]),
        "mul": (E.mul, [r(3, 1), r(2, 1, 4)]),
        "div": (E.div, [r(3, 4), r(3, 1, pos=True)]),
        "pow": (E.pow, [r(3, 4, pos=True), r(4)]),
        "neg": (E.neg, [r(3)]),
        "square": (E.square, [r(3)]),
        "exp": (E.exp, [r(3)]),
        "log": (E.log, [r(3, pos=True)]),
        "sqrt": (E.sqrt, [r(3, pos=True)]),
        "abs": (E.abs, [a(-1, 0, 2)]),                                  # includes the kink
        "sin": (E.sin, [r(3)]),
        "cos": (E.cos, [r(3)]),
        "tanh": (E.tanh, [r(3)]),
        "sigmoid": (E.sigmoid, [r(3)]),
        "relu": (E.relu, [a(-1, 0, 2)]),                                # includes the kink
        "softplus": (E.softplus, [r(3)]),
        "maximum": (E.maximum, [a(1, 2, 3), a(3, 2, 1)]),               # includes a tie
        "minimum": (E.minimum, [r(3, 4), r(3, 1)]),
        "where": (lambda x, y: E.where(np.array([True, False, True, False]), x, y), [r(3, 4), r(3, 1)]),
        "sum": (lambda x: E.sum(x, axis=(0, 2)), [r(2, 3, 4)]),
        "mean": (lambda x: E.mean(x, axis=-1, keepdims=True), [r(2, 3, 4)]),
        "max": (lambda x: E.max(x, axis=1), [tie]),                     # includes a tie
        "logsumexp": (lambda x: E.logsumexp(x, axis=1), [r(2, 3, 4)]),
        "softmax": (lambda x: E.softmax(x, axis=1), [r(2, 3, 4)]),
        "log_softmax": (E.log_softmax, [r(2, 3, 4)]),
        "reshape": (lambda x: E.reshape(x, (4, -1)), [r(2, 3, 2)]),
        "transpose": (lambda x: x.T, [r(2, 3, 4)]),
        "broadcast_to": (lambda x: E.broadcast_to(x, (2, 3, 4)), [r(3, 1)]),
        "expand_dims": (lambda x: E.expand_dims(x, -1), [r(3, 4)]),
        "squeeze": (lambda x: E.squeeze(x, 1), [r(3, 1, 4)]),
        "getitem": (lambda x: x[np.array([0, 2, 0]), 1:][::-1, None], [r(3, 4)]),
        "concatenate": (lambda x, y: E.concatenate([x, y, x], axis=-1), [r(2, 3), r(2, 1)]),
        "stack": (lambda x, y: E.stack([x, y], axis=1), [r(2, 3), r(2, 3)]),
        "matmul": (E.matmul, [r(2, 1, 3, 4), r(5, 4, 2)]),
        "matmul_1d": (E.matmul, [r(4), r(2, 4, 3)]),
        "matmul_vec": (E.matmul, [r(2, 3, 4), r(4)]),
        "matmul_dot": (E.matmul, [r(4), r(4)]),
        "conv2d": (lambda x, w: E.conv2d(x, w, stride=(2, 1), padding=(1, 0)), [r(2, 3, 6, 5), r(4, 3, 3, 2)]),
        "max_pool2d": (lambda x: E.max_pool2d(x, 2, 1), [np.array([[[[1.0, 5, 0], [5, 2, 0], [0, 0, 0]]]])]),
        "avg_pool2d": (lambda x: E.avg_pool2d(x, (2, 3), (1, 2)), [r(2, 2, 5, 6)]),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_jvp_agrees_with_vjp(name):
    """<J v, u> == <v, J^T u>: forward and reverse mode are transposes (kinks included)."""
    f, xs = CASES[name]
    rng = np.random.default_rng(5)
    vs = [rng.standard_normal(x.shape) for x in xs]
    out, jv = E.jvp(f, xs, vs)
    u = rng.standard_normal(out.shape)
    jtu = grads(f, *xs, u=u)
    lhs = float(np.sum(jv * u))
    terms = np.abs(jv * u).sum() + sum(np.abs(g * v).sum() for g, v in zip(jtu, vs))
    rhs = float(sum(np.sum(g * v) for g, v in zip(jtu, vs)))
    assert abs(lhs - rhs) <= ADJ_RTOL * (1 + terms), (lhs, rhs)


@pytest.mark.parametrize("name", list(CASES))
def test_float32_stays_float32(name):
    f, xs = CASES[name]
    x32 = [x.astype(np.float32) for x in xs]
    out, vjp_fn = E.vjp(f, *x32)
    gs = vjp_fn(np.ones(out.shape, np.float32))
    _, t = E.jvp(f, x32, [np.ones_like(x) for x in x32])
    assert out.dtype == t.dtype == np.float32
    assert all(g.dtype == np.float32 for g in gs)


def test_python_scalars_do_not_upcast():
    x = np.ones(3, np.float32)

    def f(x):
        return E.sum(E.maximum(2.0 * x / 3 - 1.5, 0.25) ** 2 + 2.0 ** x + np.float32(0.5) * x)

    val, g = E.value_and_grad(f)(x)
    assert val.dtype == g.dtype == np.float32


# ---------------------------------------------------------------------------
# Missing rules and non-differentiable arguments
# ---------------------------------------------------------------------------

def test_missing_vjp_rule_names_primitive_and_argument(monkeypatch):
    monkeypatch.setitem(vjps.VJPS, "sin", (None,))
    with pytest.raises(NoDerivativeRule, match=r"no VJP rule for primitive 'sin', argument 0 \(x\)"):
        E.grad(E.sin)(1.0)
    monkeypatch.delitem(vjps.VJPS, "matmul")
    with pytest.raises(NoDerivativeRule, match=r"primitive 'matmul', argument 0 \(a\)"):
        E.grad(lambda a, b: E.sum(a @ b))(np.ones((2, 2)), np.ones((2, 2)))


def test_missing_jvp_rule_names_primitive_and_argument(monkeypatch):
    monkeypatch.setitem(jvps.JVPS, "exp", (None,))
    with pytest.raises(NoDerivativeRule, match=r"no JVP rule for primitive 'exp', argument 0 \(x\)"):
        E.jvp(E.exp, (1.0,), (1.0,))


def test_non_differentiable_arguments_get_no_gradient():
    # where's condition is listed as non-differentiable: asking for its rule is an error ...
    with pytest.raises(NoDerivativeRule, match=r"primitive 'where', argument 0 \(condition\)"):
        vjps.vjp_rule("where", 0)
    # ... but in a graph it is a constant: a float condition argument simply gets zeros.
    cond, x = a(1, 0, 1), a(5, 6, 7)
    dc, dx = grads(lambda c, x: E.where(c, x, 0.0), cond, x)
    np.testing.assert_array_equal(dc, np.zeros(3))
    np.testing.assert_array_equal(dx, a(1, 0, 1))
    # Integer arrays are constants too (an index, a label): zero gradient, float64.
    dx, di = grads(lambda x, i: x[i], a(1, 2, 3), np.array([2, 2]))
    np.testing.assert_array_equal(dx, a(0, 0, 2))
    assert di.dtype == np.float64 and not di.any()


# ---------------------------------------------------------------------------
# Higher order (falls out of rules written with engine primitives)
# ---------------------------------------------------------------------------

def test_second_derivatives():
    x = 0.7
    # d2/dx2 sin = -sin; d2/dx2 exp(sin x) = exp(sin x) (cos^2 x - sin x): same formulas, 1e-14.
    np.testing.assert_allclose(E.grad(E.grad(E.sin))(x), -math.sin(x), rtol=RTOL)
    np.testing.assert_allclose(E.grad(E.grad(lambda x: E.exp(E.sin(x))))(x),
                               math.exp(math.sin(x)) * (math.cos(x) ** 2 - math.sin(x)), rtol=RTOL)
    # Closures are not confused with arguments: d/dx [x * d/dy (x * y)] = 2x.
    assert E.grad(lambda x: x * E.grad(lambda y: x * y)(2.0))(3.0) == 6.0


def test_hessian_vector_products_forward_over_reverse_and_reverse_over_reverse():
    A = np.array([[1.0, 2, 0], [-1, 3, 1], [0, 4, -2]])
    x, v = a(1, -2, 3), a(2, 1, -1)

    def f(x):                                       # f = x^T A x, Hessian A + A^T
        return E.sum(x * (A @ x))

    expected = (A + A.T) @ v                        # integer data: exact
    np.testing.assert_array_equal(E.jvp(E.grad(f), (x,), (v,))[1], expected)
    np.testing.assert_array_equal(E.grad(lambda x: E.sum(E.grad(f)(x) * v))(x), expected)


# ---------------------------------------------------------------------------
# The functional API
# ---------------------------------------------------------------------------

def test_vjp_returns_ndarrays_one_gradient_per_argument():
    out, vjp_fn = E.vjp(lambda x, y: x * y, a(1, 2), 3.0)
    assert type(out) is np.ndarray
    gx, gy = vjp_fn(a(1, 1))
    assert type(gx) is np.ndarray and type(gy) is np.ndarray and gy.shape == ()
    np.testing.assert_array_equal(gx, a(3, 3))
    assert float(gy) == 3.0
    with pytest.raises(ShapeMismatch, match="cotangent has shape"):
        vjp_fn(np.ones(3))


def test_grad_argnums_value_and_grad_and_errors():
    f = lambda x, y: E.sum(x * x * y)  # noqa: E731
    x, y = a(1, 2), a(3, 4)
    np.testing.assert_array_equal(E.grad(f)(x, y), a(6, 16))
    np.testing.assert_array_equal(E.grad(f, argnums=-1)(x, y), a(1, 4))
    val, (gx, gy) = E.value_and_grad(f, argnums=(0, 1))(x, y)
    assert float(val) == 19.0
    np.testing.assert_array_equal(gy, a(1, 4))
    with pytest.raises(SpecError, match="one output value"):
        E.grad(lambda x: x * 2)(a(1, 2))
    with pytest.raises(SpecError, match="argnums"):
        E.grad(f, argnums=2)(x, y)
    with pytest.raises(SpecError, match="one array"):
        E.vjp(lambda x: (x, x), x)


def test_unused_input_and_constant_output_get_zero_gradients():
    gx, gy = E.grad(lambda x, y: E.sum(x), argnums=(0, 1))(a(1, 2), a(3))
    np.testing.assert_array_equal(gy, a(0))
    (g,) = E.vjp(lambda x: np.ones(2), a(1, 2))[1](a(1, 1))
    np.testing.assert_array_equal(g, a(0, 0))


def test_numpy_pair_has_the_check_shape_and_keeps_parameter_names():
    def f(x, W):
        return E.tanh(x @ W)

    fn, vjp = E.numpy_pair(f)
    assert list(inspect.signature(fn).parameters) == ["x", "W"]
    x, W = np.ones((2, 3)), np.full((3, 2), 0.1)
    out = fn(x, W)
    assert type(out) is np.ndarray and out.shape == (2, 2)
    dx, dW = vjp(np.ones((2, 2)), x, W)
    np.testing.assert_allclose(dW, np.full((3, 2), 2 * (1 - np.tanh(0.3) ** 2)), rtol=RTOL)
    assert dx.shape == x.shape


def test_tensor_surface():
    t = E.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert t.shape == (2, 3) and t.dtype == np.float64 and t.ndim == 2 and t.T.shape == (3, 2)
    assert isinstance(np.ones((4, 2)) @ t, E.Tensor) and isinstance(np.float64(2) * t, E.Tensor)
    assert isinstance(t > 2, np.ndarray)            # comparisons are constants
    assert isinstance(-t[0, 1:] ** 2 / 2 - 1 + abs(t).sum(axis=0)[1:], E.Tensor)
    assert [n.prim for n in E.toposort(E.exp(t) + t)] == [None, "exp", "add"]


# ---------------------------------------------------------------------------
# The table's helper predicates
# ---------------------------------------------------------------------------

def test_domain_helpers():
    assert ops.in_domain("log", a(0.1, 2)) and not ops.in_domain("log", a(0, 2))
    assert not ops.in_domain("div", a(1, 2), a(1, 0))
    assert ops.in_domain("pow", a(-2, 3), 3) and not ops.in_domain("pow", a(-2, 3), 0.5)
    assert ops.domain_margin("sqrt", a(0.5, 0.25)) == 0.25
    assert ops.domain_margin("sin", a(-1)) == math.inf


def test_kink_helpers():
    assert ops.distance_to_kink("relu", a(-0.5, 0.25)) == 0.25
    assert ops.distance_to_kink("maximum", a(1, 2), a(1.5, 5)) == 0.25         # |x - y| / 2
    assert ops.distance_to_kink("max", np.array([[1, 3, 2.5], [0, 0, 9]]), axis=1) == 0.25
    assert ops.distance_to_kink("max", np.array([[1, 3, 3]]), axis=(0, 1)) == 0.0
    assert ops.distance_to_kink("max_pool2d", np.array([[[[1, 5], [5, 2]]]]), kernel=2) == 0.0
    assert ops.distance_to_kink("tanh", a(0)) == math.inf


# ---------------------------------------------------------------------------
# Fast paths: the shortcuts taken for speed change no result
# (the tape instead of a graph walk, numpy directly on raw arrays in the rules,
# copies instead of broadcast views, memoised argument normalisation)
# ---------------------------------------------------------------------------

def _fan_out(x, w, b):
    """Fan-out, broadcasting, a reduction over leading axes, a constant and an unused branch."""
    h = E.tanh(x @ w + b)                       # b (3,) broadcast over the batch
    unused = E.exp(h) * 2.0                     # recorded on the tape, never reaches the output
    del unused
    return E.mean(h * h) + E.sum(E.softmax(h, axis=0) * h, axis=(0, 1)) + E.sum(w * 3.0)


def test_tape_sweep_equals_the_graph_walk_bit_for_bit():
    rng = np.random.default_rng(10)
    xs = [rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)]
    fast = E.vjp(_fan_out, *xs)[1](np.array(1.0))             # sweeps the trace's tape
    leaves = [E.Tensor(x, requires_grad=True) for x in xs]
    adj = E.backward(_fan_out(*leaves), np.array(1.0))        # toposort walk from the output
    for g, leaf in zip(fast, leaves):
        assert np.array_equal(g, adj[leaf.id])                 # same order of accumulation: bitwise


def test_recording_state_is_restored_when_the_function_raises():
    from gradverify.engine.tracer import RECORDING

    def bad(x):
        E.exp(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        E.grad(lambda y: E.grad(bad)(y) * y)(1.0)
    assert RECORDING.depth == 0 and RECORDING.tape is None
    assert E.grad(lambda x: x * x)(3.0) == 6.0                 # and the engine still works


def test_traces_on_several_threads_do_not_mix():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    inputs = [[rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)]
              for _ in range(8)]
    vg = E.value_and_grad(_fan_out, argnums=(0, 1, 2))
    expected = [vg(*xs) for xs in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda xs: [vg(*xs) for _ in range(20)][-1], inputs))
    for (v1, g1), (v2, g2) in zip(expected, got):
        assert np.array_equal(v1, v2) and all(np.array_equal(a1, a2) for a1, a2 in zip(g1, g2))


def test_returned_gradients_own_their_memory():
    x, y = np.ones((2, 3)), np.ones(6)
    gx, gy = E.grad(lambda x, y: E.sum(E.reshape(x, (6,)) + y), argnums=(0, 1))(x, y)
    gx2, gy2 = E.vjp(lambda x, y: E.reshape(x, (6,)) + y, x, y)[1](np.ones(6))
    for g1, g2 in ((gx, gy), (gx2, gy2)):
        assert g1.flags.writeable and g2.flags.writeable and not np.shares_memory(g1, g2)
    big = np.ones(1 << 17)                                     # large enough for a broadcast view
    g = E.grad(E.sum)(big)
    assert g.flags.writeable and np.array_equal(g, big)


def test_raw_forward_helpers_match_numpy():
    from gradverify.engine.tracer import FORWARD

    bt, ed = FORWARD["broadcast_to"], FORWARD["expand_dims"]
    for x, shape in [(np.float32(2), (3, 2)), (np.arange(3.0), (2, 3)), (np.ones((3, 1)), (2, 3, 4)),
                     (np.arange(4.0), (1 << 15, 4))]:                  # the last one: a view
        got = bt(x, shape)
        assert got.dtype == np.asarray(x).dtype and np.array_equal(got, np.broadcast_to(x, shape))
    assert not bt(np.arange(4.0), (1 << 15, 4)).flags.writeable
    for x, shape in [(np.ones(3), (2, 2)), (np.ones((1, 1, 3)), (2, 3))]:
        with pytest.raises(ValueError):
            bt(x, shape)
    x = np.arange(6.0).reshape(2, 3)
    for axis in [(0,), (2,), (0, 3), (1, 2, 4)]:
        assert ed(x, axis).shape == np.expand_dims(x, axis).shape


@pytest.mark.parametrize("gshape, shape", [((4, 3), (3,)), ((4, 3), (4, 1)), ((2, 4, 3), (4, 1)),
                                           ((2, 4, 3), (1, 3)), ((4, 3), (1, 1)), ((4, 3), ())])
def test_unbroadcast_on_arrays_and_on_tensors(gshape, shape):
    g = np.arange(float(np.prod(gshape))).reshape(gshape)
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and gshape[lead + i] != 1)
    expected = np.sum(g, axis=axes, keepdims=True).reshape(shape)
    assert np.array_equal(E.unbroadcast(g, shape), expected)            # integer sums: exact
    traced = E.unbroadcast(E.Tensor(g, requires_grad=True), shape)
    assert isinstance(traced, E.Tensor) and np.array_equal(traced.value, expected)
    assert np.array_equal(E.unbroadcast(2.0, ()), 2.0)                 # a Python scalar is fine


def test_second_order_through_matmul_mean_and_broadcasting():
    rng = np.random.default_rng(12)
    # f(W) = sum(C * (W @ W)): gradient C W^T + W^T C, Hessian-vector product C V^T + V^T C.
    C, W, V = (rng.integers(-3, 4, (3, 3)).astype(float) for _ in range(3))
    f = lambda W: E.sum(C * (W @ W))  # noqa: E731
    expected = C @ V.T + V.T @ C                                        # integer data: exact
    np.testing.assert_array_equal(E.jvp(E.grad(f), (W,), (V,))[1], expected)
    np.testing.assert_array_equal(E.grad(lambda W: E.sum(E.grad(f)(W) * V))(W), expected)
    # A smooth loss with a mean, a bias broadcast and both matmul operands traced: forward-over-
    # reverse and reverse-over-reverse are two exact evaluations of the same Hessian-vector
    # product (1e-12 relative, rounding of O(100)-term sums), and central differences of the
    # gradient agree to 1e-7 (step 1e-5: truncation ~1e-10, rounding ~1e-11 relative).
    x, b, Vb = rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal(3)

    def loss(W, b):
        return E.mean(E.tanh(x @ W @ W + b) ** 2)

    g = E.grad(loss, argnums=(0, 1))
    fwd_rev = E.jvp(lambda W, b: E.sum(g(W, b)[0] * V) + E.sum(g(W, b)[1] * Vb), (W, b), (V, Vb))[1]
    rev_rev = E.grad(lambda W, b: E.sum(g(W, b)[0] * V) + E.sum(g(W, b)[1] * Vb), argnums=(0, 1))(W, b)
    h = 1e-5
    fd = [(p - m) / (2 * h) for p, m in zip(g(W + h * V, b + h * Vb), g(W - h * V, b - h * Vb))]
    hv_dot = float(sum(np.sum(r * d) for r, d in zip(rev_rev, (V, Vb))))
    np.testing.assert_allclose(fwd_rev, hv_dot, rtol=1e-12)
    hvp = E.jvp(lambda W, b: g(W, b)[0], (W, b), (V, Vb))[1]
    np.testing.assert_allclose(hvp, fd[0], rtol=1e-7, atol=1e-9)


def test_list_constants_and_unhashable_arguments():
    (dx,) = grads(lambda x: E.matmul(x, [[1.0, 2.0], [3.0, 4.0]]), np.ones((3, 2)))
    np.testing.assert_array_equal(dx, np.tile(a(3, 7), (3, 1)))        # exact small integers
    x = np.arange(24.0).reshape(2, 3, 4)
    assert np.array_equal(E.sum(x, axis=[0, 2]), E.sum(x, axis=(2, 0)))
    assert np.array_equal(E.transpose(x, [2, 0, 1]), x.transpose(2, 0, 1))
    assert E.reshape(x, [4, -1]).shape == (4, 6) and E.broadcast_to(1.0, [2, 2]).shape == (2, 2)
    for _ in range(2):                                                  # errors are not memoised
        with pytest.raises(SpecError, match="out of bounds"):
            E.sum(x, axis=3)
