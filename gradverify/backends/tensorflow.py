"""The TensorFlow backend: ``tf`` kernels, ``tf.GradientTape`` VJPs, ``tf.autodiff.ForwardAccumulator`` JVPs.

``tensorflow`` is imported when the backend is constructed, never when this
module is imported (and TensorFlow's start-up log lines are silenced unless
``TF_CPP_MIN_LOG_LEVEL`` is already set: see :func:`import_tensorflow`).
Layers use TensorFlow's own kernels where it has one --
``tf.nn.conv1d``/``tf.nn.conv2d`` (NHWC, explicit padding),
``tf.nn.max_pool``/``tf.nn.avg_pool``, ``tf.nn.moments`` with
``tf.nn.batch_normalization`` (layer and batch norm),
``tf.nn.sparse_softmax_cross_entropy_with_logits`` -- so the comparison with
the reference engine, PyTorch and JAX pits independent implementations
against each other. Attention and the RNN are composed from ``tf`` primitives.

Notes:

* TensorFlow's CPU convolutions and pooling take channels last, so NCHW
  arrays are transposed to NHWC and back around each kernel (the transposes
  are linear: exact in every dtype).
* ``getitem`` (numpy indexing: ints, slices with any step, new axes,
  integer-array ``take``) is one ``tf.gather`` of the flattened array at the
  flat positions numpy's own indexing selects (computed once on an
  ``arange``); its gradient is TensorFlow's scatter-add, so repeated indices
  accumulate.
* float32 and float64; ``device="cpu"`` only (the ``tensorflow-cpu`` package).
"""

from __future__ import annotations

import math
import os

import numpy as np

from .. import ops
from .base import Backend, Lowering, _shape

__all__ = ["TensorFlowBackend", "TensorFlowLowering", "import_tensorflow"]


def import_tensorflow():
    """``import tensorflow``, its C++ start-up log lines silenced unless the user asked for them.

    TensorFlow prints oneDNN / CPU-feature / CUDA-probe messages from C++ on
    import. When ``TF_CPP_MIN_LOG_LEVEL`` is unset, it is set to ``2``
    (errors only; it stays set, so later C++ notices are quiet too) and
    file descriptor 2 points at ``/dev/null`` for the import itself (TF 2.21
    prints its oneDNN notice before reading that variable), also when JAX's
    import has set the variable to ``1``; a user who wants the messages sets
    ``TF_CPP_MIN_LOG_LEVEL=0``. Python-side ``absl`` warnings are lowered to
    errors likewise when the user has not configured that logger.
    """
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    # JAX's import sets TF_CPP_MIN_LOG_LEVEL=1 when it is unset, so "set" does not mean the user
    # asked for anything: only an explicit 0 keeps the messages.
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # TensorFlow 2.21 writes its oneDNN notice to file descriptor 2 before its logger reads
    # TF_CPP_MIN_LOG_LEVEL: the descriptor itself is pointed at /dev/null for the import.
    saved = devnull = None
    try:
        if quiet:
            try:
                sys.stderr.flush()
                saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
            except OSError:
                saved = None
        import tensorflow as tf
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if devnull is not None:
            os.close(devnull)
    try:
        logger = tf.get_logger()
        if logger.level == 0:
            logger.setLevel("ERROR")
    except Exception:  # noqa: BLE001 - logging is cosmetic
        pass
    return tf


def flat_positions(shape: tuple[int, ...], index: tuple) -> np.ndarray:
    """Where each element of ``x[index]`` comes from in ``x.reshape(-1)`` (numpy's own indexing on an arange)."""
    return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)[index]


class TensorFlowLowering(Lowering):
    """TensorFlow primitives and native layers for one dtype."""

    def __init__(self, dtype: np.dtype):
        super().__init__(dtype)
        tf = import_tensorflow()
        self.tf = tf
        self.tdtype = tf.float64 if self.dtype == np.float64 else tf.float32

        def reduce(fn):
            return lambda x, axis, keepdims: fn(x, axis=list(axis), keepdims=keepdims) if axis else x

        def softmax(fn_one, x, axis):
            if not axis:
                return x
            if len(axis) == 1:
                return fn_one(x, axis=axis[0])
            s = x - tf.reduce_logsumexp(x, axis=list(axis), keepdims=True)
            return s if fn_one is tf.nn.log_softmax else tf.exp(s)

        def expand_dims(x, axis):
            for a in axis:
                x = tf.expand_dims(x, a)
            return x

        def getitem(x, index):
            pos = flat_positions(_shape(x), index)
            return tf.reshape(tf.gather(tf.reshape(x, [-1]), pos.reshape(-1)), pos.shape)

        def matmul(a, b):
            va, vb = len(a.shape) == 1, len(b.shape) == 1
            a2 = tf.expand_dims(a, 0) if va else a
            b2 = tf.expand_dims(b, -1) if vb else b
            y = tf.linalg.matmul(a2, b2)
            if vb:
                y = tf.squeeze(y, -1)
            if va:
                y = tf.squeeze(y, -1 if vb else -2)      # vector @ vector: (1,) after the first squeeze
            return y

        def nhwc(x):
            return tf.transpose(x, (0, 2, 3, 1))

        def nchw(x):
            return tf.transpose(x, (0, 3, 1, 2))

        def conv2d(x, w, stride, padding):
            pad = [[0, 0], [padding[0]] * 2, [padding[1]] * 2, [0, 0]]
            y = tf.nn.conv2d(nhwc(x), tf.transpose(w, (2, 3, 1, 0)), strides=[1, *stride, 1], padding=pad)
            return nchw(y)

        def pool(fn):
            return lambda x, kernel, stride: nchw(fn(nhwc(x), list(kernel), list(stride), "VALID"))

        prims = {
            "add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "div": tf.divide, "pow": tf.pow,
            "maximum": tf.maximum, "minimum": tf.minimum, "where": tf.where,
            "neg": tf.negative, "square": tf.square, "exp": tf.exp, "log": tf.math.log, "sqrt": tf.sqrt,
            "abs": tf.abs, "sin": tf.sin, "cos": tf.cos, "tanh": tf.tanh, "sigmoid": tf.sigmoid,
            "relu": tf.nn.relu, "softplus": tf.nn.softplus,
            "sum": reduce(tf.reduce_sum), "mean": reduce(tf.reduce_mean), "max": reduce(tf.reduce_max),
            "logsumexp": reduce(tf.reduce_logsumexp),
            "softmax": lambda x, axis: softmax(tf.nn.softmax, x, axis),
            "log_softmax": lambda x, axis: softmax(tf.nn.log_softmax, x, axis),
            "reshape": lambda x, shape: tf.reshape(x, shape),
            "transpose": lambda x, axes: tf.transpose(x, axes),
            "broadcast_to": lambda x, shape: tf.broadcast_to(x, shape),
            "expand_dims": expand_dims,
            "squeeze": lambda x, axis: tf.squeeze(x, list(axis)) if axis else x,
            "getitem": getitem,
            "concatenate": lambda *xs, axis: tf.concat(xs, axis=axis),
            "stack": lambda *xs, axis: tf.stack(xs, axis=axis),
            "matmul": matmul,
            "conv2d": conv2d,
            "max_pool2d": pool(tf.nn.max_pool2d),
            "avg_pool2d": pool(tf.nn.avg_pool2d),
        }
        missing = set(ops.public_primitives()) - set(prims)
        assert not missing, f"tensorflow lowering lacks {sorted(missing)}"
        self.prims = prims
        self._nhwc, self._nchw = nhwc, nchw

    # -- constants --------------------------------------------------------------
    def const(self, value):
        return self.tf.constant(value, dtype=self.tdtype)

    def mask(self, array):
        return self.tf.constant(np.asarray(array, dtype=bool))

    def int_array(self, array):
        return np.asarray(array, dtype=np.int64)

    def constant(self, array):
        return self.tf.constant(np.asarray(array, dtype=self.dtype))

    def index(self, index):
        return index.numpy()

    # -- native layers ----------------------------------------------------------
    def layer_dense(self, layer, x, p):
        y = self.tf.tensordot(x, p["W"], axes=[[len(x.shape) - 1], [0]])
        return y + p["b"] if layer.bias else y

    def layer_conv1d(self, layer, x, p):
        tf = self.tf
        pad = [[0, 0], [layer.padding] * 2, [0, 0]]
        # tf.nn.conv1d takes no explicit padding: pad, then VALID
        xp = tf.pad(tf.transpose(x, (0, 2, 1)), pad)
        y = tf.nn.conv1d(xp, tf.transpose(p["W"], (2, 1, 0)), stride=layer.stride, padding="VALID")
        y = tf.transpose(y, (0, 2, 1))
        return y + p["b"][None, :, None] if layer.bias else y

    def layer_conv2d(self, layer, x, p):
        y = self.P("conv2d", x, p["W"], stride=layer.stride, padding=layer.padding)
        return y + p["b"][None, :, None, None] if layer.bias else y

    def _native_pool(self, kind, layer, x):
        tf = self.tf
        ks, ss = layer.windows(len(x.shape))
        fn = tf.nn.max_pool if kind == "max" else tf.nn.avg_pool
        perm = (0, 2, 1) if len(ks) == 1 else (0, 2, 3, 1)
        back = (0, 2, 1) if len(ks) == 1 else (0, 3, 1, 2)
        return tf.transpose(fn(tf.transpose(x, perm), list(ks), list(ss), "VALID"), back)

    def layer_max_pool(self, layer, x, p):
        return self._native_pool("max", layer, x)

    def layer_avg_pool(self, layer, x, p):
        return self._native_pool("avg", layer, x)

    def _norm(self, layer, x, p, axes, shape):
        tf = self.tf
        mean, var = tf.nn.moments(x, axes=list(axes), keepdims=True)
        g = tf.reshape(p["gamma"], shape) if layer.affine else None
        b = tf.reshape(p["beta"], shape) if layer.affine else None
        return tf.nn.batch_normalization(x, mean, var, b, g, layer.eps)

    def layer_layer_norm(self, layer, x, p):
        return self._norm(layer, x, p, (len(x.shape) - 1,), (-1,))

    def layer_batch_norm(self, layer, x, p):
        nd = len(x.shape)
        return self._norm(layer, x, p, (0,) + tuple(range(2, nd)), (1, -1) + (1,) * (nd - 2))

    def attention_core(self, q, k, v, causal):
        tf = self.tf
        dh = int(q.shape[-1])
        s = tf.linalg.matmul(q, k, transpose_b=True) * self.const(1.0 / math.sqrt(dh))
        if causal:
            t = int(q.shape[-2])
            s = tf.where(self.mask(np.tril(np.ones((t, t), dtype=bool))), s, self.const(-np.inf))
        return tf.linalg.matmul(tf.nn.softmax(s, axis=-1), v)

    def layer_rnn(self, layer, x, p):
        tf = self.tf
        h = tf.zeros((int(x.shape[0]), int(p["Wh"].shape[0])), dtype=x.dtype)
        states = []
        for t in range(int(x.shape[1])):
            h = tf.tanh(tf.linalg.matmul(x[:, t], p["Wx"]) + tf.linalg.matmul(h, p["Wh"]) + p["b"])
            states.append(h)
        return tf.stack(states, axis=1) if layer.return_sequences else h

    def loss_mse(self, loss, y, constants):
        return self.tf.reduce_mean(self.tf.square(y - self.constant(constants["target"])))

    def loss_cross_entropy(self, loss, y, constants):
        labels = self.tf.constant(np.asarray(constants["labels"], dtype=np.int64))
        return self.tf.reduce_mean(self.tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y))


class TensorFlowBackend(Backend):
    """TensorFlow: values from eager ``tf``, VJPs from ``tf.GradientTape``, JVPs from ``ForwardAccumulator``."""

    name = "tensorflow"
    extra = "tensorflow"
    modules = ("tensorflow",)

    def _import(self):
        self.tf = import_tensorflow()

    def _make_lowering(self, dtype):
        return TensorFlowLowering(dtype)

    def _to(self, array):
        return self.tf.constant(np.array(array, copy=True))

    def _from(self, value):
        return np.array(value.numpy() if hasattr(value, "numpy") else value, copy=True)

    def _scope(self):
        return self.tf.device("/CPU:0")

    def _vjp(self, f, primals):
        tf = self.tf
        xs = list(primals)
        with tf.GradientTape(persistent=False, watch_accessed_variables=False) as tape:
            for x in xs:
                tape.watch(x)
            out = f(*xs)

        def pullback(ct):
            return tape.gradient(out, xs, output_gradients=ct,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return out, pullback

    def _jvp(self, f, primals, tangents):
        tf = self.tf
        with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
            out = f(*primals)
        return out, acc.jvp(out, unconnected_gradients=tf.UnconnectedGradients.ZERO)
