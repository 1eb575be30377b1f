"""Mutation corpus for TensorFlow and PyTensor: buggy ``tf.custom_gradient`` functions and PyTensor ``Op.grad``s.

Like :mod:`tests.corpus.framework_mutants` (same :class:`Entry` record):
every case is written once with a ``bug`` flag, the correct line and the
buggy line side by side, and registered as a bug and its correct twin
(``<bug>__twin``). Bugs: a dropped term of a product rule, a transposed
weight gradient, a wrong sign, a 0.1% error in one element, a gradient
computed in float32 (cancellation makes its rounding a ~1e-3 error), a
gradient that ignores its upstream gradient, a wrong unbroadcast axis, a
residual saved from the wrong tensor, swapped output gradients, a missing
factor, a cumsum backward not reversed (under ``tf.function``).

TensorFlow cases take float64 ``tf.constant`` inputs; PyTensor cases are
``Op`` instances (``perform`` in numpy, ``grad`` symbolic) taking float64
numpy arrays. Neither framework is imported at module import.

Cost: every input has at most 32 elements; a full check of a case takes
milliseconds (TensorFlow eager) to a fraction of a second (PyTensor
compiles two small functions per case).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tests.corpus.framework_mutants import Entry, _normal

__all__ = ["ENTRIES", "BUGS", "TWINS", "TENSORFLOW", "PYTENSOR", "by_name"]

ENTRIES: list[Entry] = []


def _case(name: str, framework: str, description: str, expected_input: str,
          expected_index: tuple[int, ...] | None = None):
    """Register ``factory(bug: bool) -> (fn, inputs)`` as a bug and its twin."""

    def register(factory):
        ENTRIES.append(Entry(name, description, framework, lambda: factory(True), True, f"{name}__twin",
                             expected_input, expected_index))
        ENTRIES.append(Entry(f"{name}__twin", f"correct twin of {name}", framework, lambda: factory(False),
                             False, name))
        return factory

    return register


# ---------------------------------------------------------------------------
# TensorFlow: tf.custom_gradient
# ---------------------------------------------------------------------------

def _tf():
    from gradverify.backends.tensorflow import import_tensorflow

    return import_tensorflow()


def _tc(*arrays):
    tf = _tf()
    return tuple(tf.constant(a, dtype=tf.float64) for a in arrays)


def _one_hot_scale(tf, shape, index, rel):
    m = np.ones(shape)
    m[index] += rel
    return tf.constant(m, dtype=tf.float64)


@_case("tf_linear_transposed_dW", "tensorflow", "dW = g^T x instead of x^T g (square W hides the shape error)", "W")
def _tf_linear(bug):
    tf = _tf()

    @tf.custom_gradient
    def linear(x, W):
        def grad(g):
            dW = tf.transpose(g) @ x if bug else tf.transpose(x) @ g
            return g @ tf.transpose(W), dW
        return x @ W, grad

    return linear, _tc(_normal(1, 5, 4), _normal(2, 4, 4))


@_case("tf_product_rule_dropped_term", "tensorflow", "d(x sin x)/dx = sin x + x cos x: the x cos x term dropped", "x")
def _tf_product(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x):
        def grad(g):
            return g * (tf.sin(x) if bug else tf.sin(x) + x * tf.cos(x))
        return x * tf.sin(x), grad

    return f, _tc(_normal(3, 3, 4))


@_case("tf_exp_neg_sign", "tensorflow", "d exp(-x)/dx written as +exp(-x)", "x")
def _tf_expneg(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x):
        y = tf.exp(-x)

        def grad(g):
            return g * y if bug else -g * y
        return y, grad

    return f, _tc(_normal(4, 3, 4))


@_case("tf_sigmoid_ignores_upstream", "tensorflow", "gradient returns s(1-s) without multiplying by the upstream g", "x")
def _tf_sigmoid(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x):
        s = tf.sigmoid(x)

        def grad(g):
            return s * (1 - s) if bug else g * s * (1 - s)
        return s, grad

    return f, _tc(_normal(5, 3, 4))


@_case("tf_softmax_one_element_off", "tensorflow", "softmax gradient correct except dx[1, 2], 0.1% off", "x", (1, 2))
def _tf_softmax(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x):
        y = tf.nn.softmax(x, axis=-1)

        def grad(g):
            dx = y * (g - tf.reduce_sum(g * y, axis=-1, keepdims=True))
            return dx * _one_hot_scale(tf, (3, 4), (1, 2), 1e-3) if bug else dx
        return y, grad

    return f, _tc(_normal(6, 3, 4))


@_case("tf_float32_accumulation", "tensorflow",
       "d sum((x - mean x)^2)/dx computed in float32: x ~ 1e4, the centring loses 3 digits", "x")
def _tf_float32(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x):
        def grad(g):
            if bug:
                x32 = tf.cast(x, tf.float32)
                return g * tf.cast(2 * (x32 - tf.reduce_mean(x32)), tf.float64)
            return g * 2 * (x - tf.reduce_mean(x))
        return tf.reduce_sum(tf.square(x - tf.reduce_mean(x))), grad

    return f, _tc(1e4 + _normal(7, 16))


@_case("tf_scale_unbroadcast_wrong_axis", "tensorflow", "y = x * b (b broadcast over rows): db summed over axis 1", "b")
def _tf_bcast(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x, b):
        def grad(g):
            db = tf.reduce_sum(g * x, axis=1) if bug else tf.reduce_sum(g * x, axis=0)
            return g * b, db
        return x * b, grad

    return f, _tc(_normal(8, 4, 4), _normal(9, 4))


@_case("tf_tanh_saves_input", "tensorflow", "tanh gradient uses 1 - x^2 instead of 1 - y^2", "x")
def _tf_tanh(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x):
        y = tf.tanh(x)

        def grad(g):
            r = x if bug else y
            return g * (1 - r * r)
        return y, grad

    return f, _tc(_normal(10, 3, 4, scale=0.5))


@_case("tf_two_outputs_swapped", "tensorflow", "(x*y, x+y): the gradient swaps the two upstream gradients for dx", "x")
def _tf_two(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x, y):
        def grad(g1, g2):
            dx = g2 * y + g1 if bug else g1 * y + g2
            return dx, g1 * x + g2
        return (x * y, x + y), grad

    return f, _tc(_normal(11, 3, 4), _normal(12, 3, 4))


@_case("tf_square_missing_factor", "tensorflow", "d(x^2 w)/dx = 2 x w g: the factor 2 is missing", "x")
def _tf_square(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x, w):
        def grad(g):
            return (1.0 if bug else 2.0) * x * w * g, x * x * g
        return x * x * w, grad

    return f, _tc(_normal(13, 3, 4), _normal(14, 3, 4))


@_case("tf_function_cumsum_not_reversed", "tensorflow",
       "tf.function cumsum: the gradient is a cumsum of g, not the reversed cumsum", "x")
def _tf_cumsum(bug):
    tf = _tf()

    @tf.custom_gradient
    def f(x):
        def grad(g):
            return tf.cumsum(g, axis=-1) if bug else tf.cumsum(g, axis=-1, reverse=True)
        return tf.cumsum(x, axis=-1), grad

    return tf.function(f), _tc(_normal(15, 3, 5))


# ---------------------------------------------------------------------------
# PyTensor: Op with a hand-written grad
# ---------------------------------------------------------------------------

def _pt_op(name: str, perform: Callable, grad: Callable, n_out: int = 1, out_like: int = 0) -> Any:
    """An ``Op`` instance: ``perform(*arrays) -> output(s)`` in numpy, ``grad(inputs, gouts) -> list`` symbolic.

    Outputs have the type of input ``out_like`` (``-1``: a scalar of its dtype). ``make_node``'s
    signature names the inputs as ``perform``'s parameters (the names the check reports).
    """
    import inspect

    import pytensor.tensor as pt
    from pytensor.graph.basic import Apply
    from pytensor.graph.op import Op

    class CustomOp(Op):
        __props__ = ()

        def make_node(self, *inputs):
            inputs = [pt.as_tensor_variable(i) for i in inputs]
            like = inputs[max(out_like, 0)]
            make = (lambda: pt.scalar(dtype=like.dtype)) if out_like < 0 else like.type
            return Apply(self, inputs, [make() for _ in range(n_out)])

        def perform(self, node, inputs, outputs):
            res = perform(*inputs)
            res = res if n_out > 1 else (res,)
            for o, r, v in zip(outputs, res, node.outputs):
                o[0] = np.asarray(r, dtype=v.dtype)

        def grad(self, inputs, gouts):
            return grad(inputs, gouts)

    params = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD)
              for p in inspect.signature(perform).parameters]
    CustomOp.make_node.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + params)
    CustomOp.__name__ = CustomOp.__qualname__ = name
    return CustomOp()


def _pt():
    import pytensor.tensor as pt

    return pt


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@_case("pt_linear_transposed_dW", "pytensor", "dW = g^T x instead of x^T g (square W hides the shape error)", "W")
def _pt_linear(bug):
    pt = _pt()

    def grad(inp, g):
        x, W = inp
        return [pt.dot(g[0], W.T), pt.dot(g[0].T, x) if bug else pt.dot(x.T, g[0])]

    return _pt_op("Linear", lambda x, W: x @ W, grad), (_normal(1, 5, 4), _normal(2, 4, 4))


@_case("pt_product_rule_dropped_term", "pytensor", "d(x sin x)/dx = sin x + x cos x: the x cos x term dropped", "x")
def _pt_product(bug):
    pt = _pt()

    def grad(inp, g):
        (x,) = inp
        return [g[0] * (pt.sin(x) if bug else pt.sin(x) + x * pt.cos(x))]

    return _pt_op("XSinX", lambda x: x * np.sin(x), grad), (_normal(3, 3, 4),)


@_case("pt_exp_neg_sign", "pytensor", "d exp(-x)/dx written as +exp(-x)", "x")
def _pt_expneg(bug):
    pt = _pt()

    def grad(inp, g):
        (x,) = inp
        return [g[0] * pt.exp(-x) if bug else -g[0] * pt.exp(-x)]

    return _pt_op("ExpNeg", lambda x: np.exp(-x), grad), (_normal(4, 3, 4),)


@_case("pt_sigmoid_ignores_upstream", "pytensor", "grad returns s(1-s) without multiplying by the upstream g", "x")
def _pt_sigmoid(bug):
    pt = _pt()

    def grad(inp, g):
        s = pt.sigmoid(inp[0])
        return [s * (1 - s) if bug else g[0] * s * (1 - s)]

    return _pt_op("Sigmoid", _sigmoid, grad), (_normal(5, 3, 4),)


@_case("pt_softmax_one_element_off", "pytensor", "softmax grad correct except dx[1, 2], 0.1% off", "x", (1, 2))
def _pt_softmax(bug):
    pt = _pt()
    from pytensor.tensor.special import softmax

    def fwd(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def grad(inp, g):
        y = softmax(inp[0], axis=-1)
        dx = y * (g[0] - pt.sum(g[0] * y, axis=-1, keepdims=True))
        if bug:
            m = np.ones((3, 4))
            m[1, 2] += 1e-3
            dx = dx * pt.constant(m)
        return [dx]

    return _pt_op("Softmax", fwd, grad), (_normal(6, 3, 4),)


@_case("pt_float32_accumulation", "pytensor",
       "d sum((x - mean x)^2)/dx computed in float32: x ~ 1e4, the centring loses 3 digits", "x")
def _pt_float32(bug):
    pt = _pt()

    def grad(inp, g):
        (x,) = inp
        if bug:
            x32 = pt.cast(x, "float32")
            return [g[0] * pt.cast(2 * (x32 - pt.mean(x32)), x.dtype)]
        return [g[0] * 2 * (x - pt.mean(x))]

    return (_pt_op("CentredSquares", lambda x: np.sum((x - x.mean()) ** 2), grad, out_like=-1),
            (1e4 + _normal(7, 16),))


@_case("pt_scale_unbroadcast_wrong_axis", "pytensor", "y = x * b (b broadcast over rows): db summed over axis 1", "b")
def _pt_bcast(bug):
    pt = _pt()

    def grad(inp, g):
        x, b = inp
        return [g[0] * b, pt.sum(g[0] * x, axis=1 if bug else 0)]

    return _pt_op("Scale", lambda x, b: x * b, grad), (_normal(8, 4, 4), _normal(9, 4))


@_case("pt_tanh_saves_input", "pytensor", "tanh grad uses 1 - x^2 instead of 1 - y^2", "x")
def _pt_tanh(bug):
    pt = _pt()

    def grad(inp, g):
        (x,) = inp
        r = x if bug else pt.tanh(x)
        return [g[0] * (1 - r * r)]

    return _pt_op("Tanh", lambda x: np.tanh(x), grad), (_normal(10, 3, 4, scale=0.5),)


@_case("pt_two_outputs_swapped", "pytensor", "(x*y, x+y): grad swaps the two upstream gradients for dx", "x")
def _pt_two(bug):
    def grad(inp, g):
        x, y = inp
        g1, g2 = g
        return [g2 * y + g1 if bug else g1 * y + g2, g1 * x + g2]

    return _pt_op("ProdSum", lambda x, y: (x * y, x + y), grad, n_out=2), (_normal(11, 3, 4), _normal(12, 3, 4))


@_case("pt_square_missing_factor", "pytensor", "d(x^2 w)/dx = 2 x w g: the factor 2 is missing", "x")
def _pt_square(bug):
    def grad(inp, g):
        x, w = inp
        return [(1.0 if bug else 2.0) * x * w * g[0], x * x * g[0]]

    return _pt_op("SquareScale", lambda x, w: x * x * w, grad), (_normal(13, 3, 4), _normal(14, 3, 4))


BUGS = [e for e in ENTRIES if e.is_bug]
TWINS = [e for e in ENTRIES if not e.is_bug]
TENSORFLOW = [e for e in ENTRIES if e.framework == "tensorflow"]
PYTENSOR = [e for e in ENTRIES if e.framework == "pytensor"]
_BY_NAME = {e.name: e for e in ENTRIES}


def by_name(name: str) -> Entry:
    """The entry called ``name``."""
    return _BY_NAME[name]
