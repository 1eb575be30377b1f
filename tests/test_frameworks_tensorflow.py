"""Checks of TensorFlow code: eager functions, ``tf.function``, ``tf.custom_gradient`` and Keras layers.

The analytic gradient is ``tf.GradientTape`` in the caller's dtype (for a
``tf.custom_gradient`` function: its hand-written gradient function); the
reference is float64 finite differences, or TensorFlow's autodiff of the
undecorated primal (``against="tensorflow"``). No test passes a tolerance.

Cost: tiny arrays; ~10 s, most of it importing TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gradverify as gv

pytest.importorskip("tensorflow", reason='tensorflow not installed (pip install ".[tensorflow]")')
from gradverify.backends.tensorflow import import_tensorflow  # noqa: E402

tf = import_tensorflow()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _np(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _tanh_linear(bug=False):
    @tf.custom_gradient
    def tanh_linear(x, W):
        y = tf.tanh(x @ W)

        def grad(g):
            dz = g * (1 - y * y)
            dW = tf.transpose(x) @ dz
            if bug:
                dW = dW * tf.constant(np.where(np.arange(dW.shape[0] * dW.shape[1]).reshape(dW.shape) == 5,
                                               1.001, 1.0), dtype=dW.dtype)
            return dz @ tf.transpose(W), dW
        return y, grad

    return tanh_linear


def test_custom_gradient_passes_and_its_primal_is_the_exact_reference():
    x, W = tf.constant(_np(0, 3, 4)), tf.constant(_np(1, 4, 2))
    r = gv.check(_tanh_linear(), (x, W))
    assert r.passed, r
    exact = gv.check(_tanh_linear(), (x, W), against="tensorflow")
    assert exact.passed and exact.to_dict()["reference"] == "tensorflow", exact


@pytest.mark.parametrize("against", ["fd", "tensorflow"])
def test_custom_gradient_one_element_bug_is_located(against):
    x, W = tf.constant(_np(0, 3, 4)), tf.constant(_np(1, 4, 2))
    r = gv.check(_tanh_linear(bug=True), (x, W), against=against)
    assert r.status == "fail" and r.worst.input == "W" and tuple(r.worst.index) == (2, 1), r


def test_tf_function_float32_and_eager_numpy_inputs():
    f = tf.function(_tanh_linear())
    r = gv.check(f, (tf.constant(_np(0, 3, 4), tf.float32), tf.constant(_np(1, 4, 2), tf.float32)))
    assert r.passed and r.to_dict()["dtype"] == "float32", r
    # a plain function of tf ops fed numpy arrays is recognised by its output
    r = gv.check(lambda a, b: tf.reduce_sum(tf.sin(a) * b, axis=0), (_np(2, 3, 4), _np(3, 3, 4)))
    assert r.passed and r.worst.input in ("a", "b"), r


def test_user_vjp_on_tensorflow_tensors_and_against_tensorflow():
    def f(x):
        return tf.exp(-x) * x

    def vjp(g, x):
        return g * tf.exp(-x) * (1 - x) * (1.001 if vjp.bug else 1.0)

    vjp.bug = False
    x = tf.constant(_np(4, 5))
    assert gv.check(f, x, vjp=vjp, against="tensorflow").passed
    vjp.bug = True
    assert gv.check(f, x, vjp=vjp, against="tensorflow").status == "fail"


def test_keras_layer_weights_are_named_as_keras_names_them():
    import keras

    layer = keras.layers.Dense(3, name="d")
    r = gv.check_layer(layer, input_shape=(2, 4))
    assert r.passed, r
    assert {s.name for s in r.inputs} == {"x", "kernel", "bias"}
    assert r.to_dict()["dtype"] == "float32"


def test_keras_layer_with_a_wrong_custom_gradient_is_caught():
    import keras

    class Scaled(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

        def call(self, x):
            @tf.custom_gradient
            def mul(x, w):
                def grad(g):
                    return g * w, tf.reduce_sum(g * x, axis=0) * 1.01      # 1% too large
                return x * w, grad
            return mul(x, tf.cast(self.w, x.dtype))

        def get_config(self):
            return super().get_config()

    r = gv.check_layer(Scaled(), input_shape=(3, 4), dtype="float64")
    assert r.status == "fail" and r.worst.input == "w", r


def test_vectorised_calls_are_traced_once_per_set_of_inputs_and_read_the_point_as_it_is():
    """tf.vectorized_map traces the function on every call; the check keeps each set of inputs' traced call
    (any number of rows), so the function's Python body runs at the first vectorised request only, requests
    smaller than the first one's threshold are vectorised once traced, and the point is an argument of the
    traced call, not baked into it: a later point gives the loop's outputs at that point (to the rows' 64 ulps)."""
    from gradverify.batching import rows_disagree
    from gradverify.frameworks import callable_target

    traced = []

    def f(x, W):
        traced.append(1)  # Python runs here only while tracing, or in an eager call
        return tf.tanh(x @ W)

    t = callable_target(f, [_np(0, 5, 3), _np(1, 3, 4)], None)
    rng = np.random.default_rng(2)

    def rows(name, n):
        return t.point[name][None] + 1e-3 * rng.standard_normal((n,) + t.point[name].shape)

    first = rows("W", t.batch_min_rows)
    assert rows_disagree(t.evaluate_rows("W", first), t._loop_rows({"W": first})) is None
    assert t.batch_strategy["W"] == "vmap"
    before = len(traced)
    small = rows("W", 8)  # under batch_min_rows: vectorised now that W's call is traced
    t.point["x"][...] += 0.5  # a new point: the traced call reads it
    got = t.evaluate_rows("W", small)
    assert len(traced) == before  # no trace, no eager call
    assert rows_disagree(got, t._loop_rows({"W": small})) is None


def test_code_tensorflow_cannot_vectorise_falls_back_without_logging_errors(caplog):
    """tf.vectorized_map logs every op pfor cannot convert (a convolution with a batched kernel) at ERROR
    before it raises; the check takes the loop and keeps the reason in batch_fallbacks, and the user's log
    stays clean."""
    from gradverify.frameworks import callable_target

    def f(x, k):
        return tf.tanh(tf.nn.conv1d(x, k, 1, "VALID"))

    t = callable_target(f, [_np(0, 2, 10, 6), _np(1, 3, 6, 8)], None)
    rows = t.point["k"][None] + 1e-3 * np.random.default_rng(2).standard_normal((t.batch_min_rows, 3, 6, 8))
    with caplog.at_level("DEBUG", logger="tensorflow"):
        got = t.evaluate_rows("k", rows)
    assert t.batch_strategy["k"] == "loop" and "vmap" in t.batch_fallbacks["k"]
    assert not [r for r in caplog.records if r.name == "tensorflow" and r.levelno >= 40], caplog.text[:500]
    np.testing.assert_array_equal(got, t._loop_rows({"k": rows}))  # (the loop: the same calls, bit for bit)


def test_missing_tensorflow_is_a_clear_error(monkeypatch):
    import importlib.util

    import gradverify.backends as B

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorflow" else real(n, *a))
    with pytest.raises(gv.BackendUnavailable, match=r'pip install tensorflow-cpu .*"\.\[tensorflow\]"'):
        B.BACKENDS["tensorflow"]()


def test_import_gradverify_and_plugin_import_no_framework():
    code = ("import sys, gradverify, gradverify.pytest_plugin, gradverify.frameworks\n"
            "import numpy as np\n"
            "gradverify.check(lambda x: np.sin(x), np.ones(3), vjp=lambda g, x: g * np.cos(x))\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'pytensor') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_vectorised_float64_calls_leave_stderr_and_the_optimizer_options_as_they_were():
    """Grappler's remapper logs "Not handling type DT_DOUBLE" from C++ on float64 graphs (seen where torch
    was imported first); the check turns it off while its traced calls run and puts the user's option back.
    In a fresh process, so the import order and the options are this test's."""
    code = ("import importlib.util, numpy as np\n"
            "if importlib.util.find_spec('torch'): import torch\n"
            "import tensorflow as tf\n"
            "tf.config.optimizer.set_experimental_options({'constant_folding': False})\n"
            "from gradverify.frameworks import callable_target\n"
            "rng = np.random.default_rng(0)\n"
            "x = tf.constant(rng.standard_normal((8, 30)))\n"
            "def f(W1, b1, W2, b2):\n"
            "    return tf.reduce_mean(tf.tanh(tf.tanh(x @ W1 + b1) @ W2 + b2))\n"
            "t = callable_target(f, [rng.standard_normal((30, 30)), rng.standard_normal(30),\n"
            "                        rng.standard_normal((30, 20)), rng.standard_normal(20)], None)\n"
            "for name in t.point:\n"
            "    for n in (t.batch_min_rows, 8):\n"
            "        t.evaluate_rows(name, np.repeat(t.point[name][None], n, axis=0))\n"
            "print(sorted(set(t.batch_strategy.values())), tf.config.optimizer.get_experimental_options())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("['vmap']"), out.stdout + out.stderr[-2000:]
    assert "'constant_folding': False" in out.stdout and "'remapping': False" not in out.stdout, out.stdout
    assert "DT_DOUBLE" not in out.stderr, out.stderr[-2000:]
