"""Tests of gradverify.backends: registry, lazy imports, every primitive and layer on every backend.

Numerical comparisons use the one comparison core
(:func:`gradverify.compare_gradients`, the dtype-keyed tolerance): in
float64 independent implementations agree to a few ulps of the summed terms,
far inside rtol 1e-5; float32 results are compared with the float64
reference under the float32 rule (rtol 2e-3), which is what float32 rounding
in a backward pass needs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import gradverify.backends as B
from gradverify import BackendUnavailable, ShapeMismatch, SpecError, compare_gradients, ops
from gradverify.backends import get_backend
from gradverify.spec import (
    RNN, Activation, Attention, AvgPool, BatchNorm, Const, Conv1d, Conv2d, CrossEntropyLoss, Dense, Expression,
    Flatten, Index, Input, LayerNorm, Mask, MaxPool, MSELoss, Network, Op, Residual, Var,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = [pytest.param("torch", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                               reason="torch not installed")),
              pytest.param("jax", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                                             reason="jax not installed"))]


def _x(*shape, seed=0, low=-2.0, high=2.0):
    return tuple(float(v) for v in np.random.default_rng(seed).uniform(low, high, shape).ravel())


def _inp(name, shape, seed=0, positive=False):
    return Input(name, shape, _x(*shape, seed=seed, low=0.3 if positive else -2.0))


def _expr(root, *inputs):
    return Expression(root, inputs=tuple(inputs))


X, Y = Var("x"), Var("y")
X23, Y23, Y3 = _inp("x", (2, 3)), _inp("y", (2, 3), seed=1), _inp("y", (3,), seed=1)

#: One small expression per public primitive (inputs inside the domain, away from kinks).
PRIMITIVE_CASES = {
    "add": _expr(Op("add", X, Y), X23, Y3),
    "sub": _expr(Op("sub", X, Y), X23, Y23),
    "mul": _expr(Op("mul", X, Y), X23, Y3),
    "div": _expr(Op("div", X, Y), X23, _inp("y", (3,), 1, positive=True)),
    "pow": _expr(Op("pow", X, Y), _inp("x", (2, 3), positive=True), Y3),
    "maximum": _expr(Op("maximum", X, Y), X23, Y23),
    "minimum": _expr(Op("minimum", X, Y), X23, Y23),
    "where": _expr(Op("where", Mask((2, 3), (1, 0, 1, 1, 0, 0)), X, Y), X23, Y3),
    "neg": _expr(Op("neg", X), X23),
    "square": _expr(Op("square", X), X23),
    "exp": _expr(Op("exp", X), X23),
    "log": _expr(Op("log", X), _inp("x", (2, 3), positive=True)),
    "sqrt": _expr(Op("sqrt", X), _inp("x", (2, 3), positive=True)),
    "abs": _expr(Op("abs", X), X23),
    "sin": _expr(Op("sin", X), X23),
    "cos": _expr(Op("cos", X), X23),
    "tanh": _expr(Op("tanh", X), X23),
    "sigmoid": _expr(Op("sigmoid", X), X23),
    "relu": _expr(Op("relu", X), X23),
    "softplus": _expr(Op("softplus", X), X23),
    "sum": _expr(Op("sum", X, axis=0, keepdims=True), X23),
    "mean": _expr(Op("mean", X, axis=(0, 1)), X23),
    "max": _expr(Op("max", X, axis=-1), X23),
    "logsumexp": _expr(Op("logsumexp", X, axis=1), X23),
    "softmax": _expr(Op("softmax", X, axis=0), X23),
    "log_softmax": _expr(Op("log_softmax", X), X23),
    "reshape": _expr(Op("reshape", X, shape=(3, -1)), X23),
    "transpose": _expr(Op("transpose", X), X23),
    "broadcast_to": _expr(Op("broadcast_to", X, shape=(4, 2, 3)), X23),
    "expand_dims": _expr(Op("expand_dims", X, axis=1), X23),
    "squeeze": _expr(Op("squeeze", X, axis=0), _inp("x", (1, 3))),
    "getitem": _expr(Op("getitem", X, Index((("take", (1, 1, 0)), ("slice", 0, None, 2)))), X23),
    "concatenate": _expr(Op("concatenate", X, Y, X, axis=1), X23, Y23),
    "stack": _expr(Op("stack", X, Y, axis=2), X23, Y23),
    "matmul": _expr(Op("matmul", X, Y), X23, _inp("y", (3, 2), 1)),
    "conv2d": _expr(Op("conv2d", X, Var("w"), stride=2, padding=1), _inp("x", (2, 2, 4, 5)),
                    _inp("w", (3, 2, 2, 3), 1)),
    "max_pool2d": _expr(Op("max_pool2d", X, kernel=2, stride=1), _inp("x", (1, 2, 3, 4))),
    "avg_pool2d": _expr(Op("avg_pool2d", X, kernel=(2, 1)), _inp("x", (1, 2, 4, 3))),
}

#: One small network per layer kind and loss.
LAYER_CASES = {
    "dense": Network((Dense(3),), input_shape=(2, 4)),
    "dense_nobias_3d": Network((Dense(2, bias=False),), input_shape=(2, 3, 4)),
    "conv1d": Network((Conv1d(3, 2, stride=2, padding=1),), input_shape=(2, 2, 7)),
    "conv2d": Network((Conv2d(2, (2, 3), stride=(1, 2), padding=(1, 0)),), input_shape=(2, 3, 4, 5)),
    "max_pool_1d": Network((MaxPool(2),), input_shape=(2, 2, 6)),
    "max_pool_2d": Network((MaxPool((2, 2), stride=1),), input_shape=(1, 2, 3, 4)),
    "avg_pool_1d": Network((AvgPool(3, stride=1),), input_shape=(2, 2, 5)),
    "avg_pool_2d": Network((AvgPool(2),), input_shape=(1, 2, 4, 4)),
    "activation": Network((Activation("sigmoid"),), input_shape=(2, 3)),
    "flatten": Network((Flatten(), Dense(2)), input_shape=(2, 2, 3)),
    "rnn_last": Network((RNN(3),), input_shape=(2, 4, 2)),
    "rnn_seq": Network((RNN(3, return_sequences=True),), input_shape=(2, 4, 2)),
    "layer_norm": Network((LayerNorm(),), input_shape=(3, 4)),
    "layer_norm_plain": Network((LayerNorm(eps=1e-3, affine=False),), input_shape=(2, 3, 4)),
    "batch_norm_2d": Network((BatchNorm(),), input_shape=(4, 3)),
    "batch_norm_4d": Network((BatchNorm(affine=False),), input_shape=(2, 3, 2, 2)),
    "attention": Network((Attention(),), input_shape=(2, 3, 4)),
    "attention_causal_2h": Network((Attention(heads=2, causal=True),), input_shape=(2, 3, 4)),
    "residual": Network((Residual((LayerNorm(), Dense(4), Activation("tanh"))),), input_shape=(2, 4)),
    "mse": Network((Dense(2),), input_shape=(3, 4), loss=MSELoss()),
    "cross_entropy": Network((Dense(3),), input_shape=(4, 2), loss=CrossEntropyLoss(), seed=2),
}


def test_primitive_cases_cover_the_table():
    assert set(PRIMITIVE_CASES) == set(ops.public_primitives())


def test_layer_cases_cover_every_layer_kind():
    from gradverify.strategies import LAYER_KINDS

    kinds = {l.kind for net in LAYER_CASES.values() for l in net.layers}
    kinds |= {inner.kind for net in LAYER_CASES.values() for l in net.layers if isinstance(l, Residual)
              for inner in l.layers}
    assert set(LAYER_KINDS) <= kinds


def _all_derivatives(backend, spec, dtype="float64"):
    rng = np.random.default_rng(11)
    arrays = spec.arrays()
    u = rng.standard_normal(get_backend("reference").value(spec).shape)
    v = {k: rng.standard_normal(a.shape) for k, a in arrays.items()}
    value, grads = backend.vjp(spec, u, dtype=dtype)
    _, tangent = backend.jvp(spec, v, dtype=dtype)
    return value, grads, tangent


def _assert_agree(got, want, what):
    (v1, g1, t1), (v2, g2, t2) = got, want
    for label, a, b in (("value", {"output": v1}, {"output": v2}), ("vjp", g1, g2), ("jvp", {"jvp": t1}, {"jvp": t2})):
        res = compare_gradients(a, b, reference_name="reference")
        assert res.passed, f"{what} {label}:\n{res}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", sorted(PRIMITIVE_CASES))
def test_primitive_agrees_with_reference_float64(framework, name):
    spec = PRIMITIVE_CASES[name]
    got = _all_derivatives(get_backend(framework), spec)
    want = _all_derivatives(get_backend("reference"), spec)
    _assert_agree(got, want, f"{framework} {name}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_agrees_with_reference_float64(framework, name):
    spec = LAYER_CASES[name]
    got = _all_derivatives(get_backend(framework), spec)
    want = _all_derivatives(get_backend("reference"), spec)
    _assert_agree(got, want, f"{framework} {name}")


@pytest.mark.parametrize("backend", ["reference"] + FRAMEWORKS)
@pytest.mark.parametrize("name", ["conv2d", "rnn_seq", "layer_norm", "attention_causal_2h", "cross_entropy"])
def test_float32_stays_float32_and_agrees_with_float64(backend, name):
    spec = LAYER_CASES[name]
    b = get_backend(backend)
    v32, g32, t32 = _all_derivatives(b, spec, "float32")
    assert v32.dtype == np.float32 and t32.dtype == np.float32
    assert all(g.dtype == np.float32 for g in g32.values())
    _assert_agree((v32, g32, t32), _all_derivatives(get_backend("reference"), spec), f"{backend} float32 {name}")


def test_reference_matches_the_worked_example():
    # e = (a + b) * (b + 1) at a = 2, b = 1: de/da = 2, de/db = 5.
    spec = Expression(Op("mul", Op("add", Var("a"), Var("b")), Op("add", Var("b"), Const(1.0))),
                      inputs=(Input("a", (), (2.0,)), Input("b", (), (1.0,))))
    for name in B.available_backends():
        value, grads = get_backend(name).grad(spec)
        assert value == 6.0 and grads["a"] == 2.0 and grads["b"] == 5.0, name
        _, jv = get_backend(name).jvp(spec, {"b": np.array(1.0)})
        assert jv == 5.0, name


def test_arrays_override_and_unused_inputs_get_zero_gradient():
    spec = Expression(Op("exp", Var("x")), inputs=(Input("x", (2,)), Input("unused", (3,))))
    for name in B.available_backends():
        value, grads = get_backend(name).vjp(spec, np.ones(2), {"x": np.array([0.0, 1.0])})
        np.testing.assert_allclose(value, [1.0, np.e], rtol=1e-15)   # exp is correctly rounded to ~1 ulp
        assert np.array_equal(grads["unused"], np.zeros(3)), name


def test_registry_and_bad_arguments():
    assert B.backend_names()[:3] == ("reference", "torch", "jax")
    assert "reference" in B.available_backends()
    with pytest.raises(SpecError, match="unknown backend 'theano'"):
        get_backend("theano")
    ref = get_backend("reference")
    spec = LAYER_CASES["dense"]
    with pytest.raises(SpecError, match="dtype must be one of"):
        ref.value(spec, dtype="float16")
    with pytest.raises(SpecError, match=r"unknown name\(s\) \['W'\]"):
        ref.value(spec, {"W": np.zeros((4, 3))})
    with pytest.raises(ShapeMismatch, match="array '0.W' has shape"):
        ref.value(spec, {"0.W": np.zeros((3, 3))})
    with pytest.raises(ShapeMismatch, match="cotangent has shape"):
        ref.vjp(spec, np.ones(3))
    with pytest.raises(ShapeMismatch, match="tangent 'x' has shape"):
        ref.jvp(spec, {"x": np.ones(3)})
    with pytest.raises(BackendUnavailable, match="CPU only"):
        B.ReferenceBackend(device="cuda")
    with pytest.raises(SpecError, match="Expression or a Network"):
        ref.value(Dense(2))
    bad = Expression(Op("matmul", X, Y), inputs=(X23, Y23))
    with pytest.raises(SpecError, match=r"'matmul' failed on argument shapes \[\(2, 3\), \(2, 3\)\]"):
        ref.value(bad)


@pytest.mark.parametrize("framework, extra", [("torch", "torch"), ("jax", "jax")])
def test_missing_framework_names_the_extra(monkeypatch, framework, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == framework else real(name, *a))
    cls = B.BACKENDS[framework]
    assert not cls.available()
    assert framework not in B.available_backends()
    hint = rf'pip install {framework} \(or, in a gradverify checkout: pip install "\.\[{extra}\]"\)'
    with pytest.raises(BackendUnavailable, match=hint):
        cls()
    with pytest.raises(ImportError):          # BackendUnavailable is an ImportError too
        cls()


def test_importing_spec_backends_strategies_imports_no_framework():
    code = (
        "import sys, gradverify, gradverify.spec, gradverify.backends, gradverify.backends.agreement, "
        "gradverify.strategies\n"
        "from gradverify.backends import get_backend, available_backends\n"
        "from gradverify.spec import Network, Dense\n"
        "available_backends()\n"
        "get_backend('reference').value(Network((Dense(2),), input_shape=(1, 3)))\n"
        "print(sorted(m for m in ('torch', 'jax', 'jaxlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_torch_refuses_negative_slice_steps():
    pytest.importorskip("torch")
    spec = Expression(Op("getitem", X, Index((("slice", None, None, -1),))), inputs=(X23,))
    get_backend("reference").value(spec)        # numpy and JAX can
    with pytest.raises(SpecError, match="negative step"):
        get_backend("torch").value(spec)


def test_jax_float64_leaves_the_global_x64_flag_alone():
    jax = pytest.importorskip("jax")
    before = jax.config.read("jax_enable_x64")
    value = get_backend("jax").value(LAYER_CASES["layer_norm"], dtype="float64")
    assert value.dtype == np.float64
    assert jax.config.read("jax_enable_x64") == before


def test_margins_measure_domains_and_kinks():
    ref = get_backend("reference")
    at_kink = Expression(Op("relu", X), inputs=(Input("x", (3,), (0.5, 0.0, -1.0)),))
    m = ref.margins(at_kink)
    assert m.kink == 0.0 and m.finite and not m.safe(kink_margin=1e-3)
    near_tie = Expression(Op("max", X), inputs=(Input("x", (3,), (1.0, 0.98, -1.0)),))
    assert ref.margins(near_tie).kink == pytest.approx(0.01)          # half the gap of the top two
    log = Expression(Op("log", X), inputs=(Input("x", (2,), (0.25, 3.0)),))
    assert ref.margins(log).domain == 0.25 and ref.margins(log).kink == np.inf
    outside = Expression(Op("log", X), inputs=(Input("x", (2,), (-0.25, 3.0)),))
    m = ref.margins(outside)
    assert m.domain < 0 and not m.finite and not m.safe(kink_margin=0.0)
