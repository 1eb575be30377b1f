"""The JAX backend: ``jax.numpy``/``lax`` kernels, ``jax.vjp`` and ``jax.jvp``.

``jax`` is imported when the backend is constructed, never when this module is
imported. Layers use JAX's own operations where it has them --
``lax.conv_general_dilated`` (conv1d/conv2d), ``lax.reduce_window`` (pooling),
``jax.nn.standardize`` (layer/batch norm, stable two-pass variance),
``jax.nn.dot_product_attention`` (float32 only: it computes its softmax in
float32 even for float64 input, so float64 attention is composed from
``jax.numpy`` primitives), ``lax.scan`` (the RNN) -- so the comparison
with the reference engine and PyTorch pits independent implementations
against each other.

64-bit floats: JAX computes in float32 unless x64 is enabled. This backend
does every computation inside ``jax.enable_x64(True)`` -- a scoped,
thread-local switch (a context manager in this JAX version), so the caller's
global setting is left as it was. float32 requests still compute in float32
(arrays are created float32 and Python constants are weakly typed).

Devices: ``"cpu"``, or ``"cuda"``/``"gpu"`` when JAX sees a GPU.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import BackendUnavailable
from .base import Backend, Lowering

__all__ = ["JaxBackend", "JaxLowering"]


class JaxLowering(Lowering):
    """JAX primitives and native layers for one dtype."""

    def __init__(self, dtype: np.dtype, device):
        super().__init__(dtype)
        import jax
        import jax.numpy as jnp
        from jax import lax

        self.jax, self.jnp, self.lax = jax, jnp, lax
        self.device = device

        def reduce(fn):
            return lambda x, axis, keepdims: fn(x, axis=axis, keepdims=keepdims) if axis else x

        def softmax(fn, x, axis):
            return fn(x, axis=axis) if axis else x

        def pool(reducer, init, scale):
            def run(x, kernel, stride):
                y = lax.reduce_window(x, init(x.dtype), reducer, (1, 1) + tuple(kernel), (1, 1) + tuple(stride),
                                      "VALID")
                return y / (kernel[0] * kernel[1]) if scale else y
            return run

        def conv2d(x, w, stride, padding):
            return lax.conv_general_dilated(x, w, tuple(stride), [(padding[0],) * 2, (padding[1],) * 2],
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"))

        prims = {
            "add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide, "pow": jnp.power,
            "maximum": jnp.maximum, "minimum": jnp.minimum, "where": jnp.where,
            "neg": jnp.negative, "square": jnp.square, "exp": jnp.exp, "log": jnp.log, "sqrt": jnp.sqrt,
            "abs": jnp.abs, "sin": jnp.sin, "cos": jnp.cos, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
            "relu": jax.nn.relu, "softplus": jax.nn.softplus,
            "sum": reduce(jnp.sum), "mean": reduce(jnp.mean), "max": reduce(jnp.max),
            "logsumexp": reduce(jax.nn.logsumexp),
            "softmax": lambda x, axis: softmax(jax.nn.softmax, x, axis),
            "log_softmax": lambda x, axis: softmax(jax.nn.log_softmax, x, axis),
            "reshape": lambda x, shape: jnp.reshape(x, shape),
            "transpose": lambda x, axes: jnp.transpose(x, axes),
            "broadcast_to": lambda x, shape: jnp.broadcast_to(x, shape),
            "expand_dims": lambda x, axis: jnp.expand_dims(x, axis),
            "squeeze": lambda x, axis: jnp.squeeze(x, axis) if axis else x,
            "getitem": lambda x, index: x[index],
            "concatenate": lambda *xs, axis: jnp.concatenate(xs, axis=axis),
            "stack": lambda *xs, axis: jnp.stack(xs, axis=axis),
            "matmul": jnp.matmul,
            "conv2d": conv2d,
            "max_pool2d": pool(lax.max, lambda dt: -jnp.inf, False),
            "avg_pool2d": pool(lax.add, lambda dt: np.array(0, dtype=dt), True),
        }
        missing = set(ops.public_primitives()) - set(prims)
        assert not missing, f"jax lowering lacks {sorted(missing)}"
        self.prims = prims

    def _put(self, array):
        return self.jax.device_put(array, self.device)

    def const(self, value):
        return self._put(np.asarray(value, dtype=self.dtype))

    def mask(self, array):
        return self._put(np.asarray(array, dtype=bool))

    def int_array(self, array):
        return self._put(np.asarray(array, dtype=np.int64))

    def constant(self, array):
        return self._put(np.asarray(array, dtype=self.dtype))

    # -- native layers ----------------------------------------------------------
    def _conv(self, x, w, stride, padding, spec):
        return self.lax.conv_general_dilated(x, w, tuple(stride), [(p, p) for p in padding], dimension_numbers=spec)

    def layer_conv1d(self, layer, x, p):
        y = self._conv(x, p["W"], (layer.stride,), (layer.padding,), ("NCH", "OIH", "NCH"))
        return y + p["b"][None, :, None] if layer.bias else y

    def layer_conv2d(self, layer, x, p):
        (sh, sw), (ph, pw) = ((layer.stride,) * 2 if isinstance(layer.stride, int) else layer.stride,
                              (layer.padding,) * 2 if isinstance(layer.padding, int) else layer.padding)
        y = self._conv(x, p["W"], (sh, sw), (ph, pw), ("NCHW", "OIHW", "NCHW"))
        return y + p["b"][None, :, None, None] if layer.bias else y

    def _native_pool(self, kind, layer, x):
        lax, jnp = self.lax, self.jnp
        ks, ss = layer.windows(x.ndim)
        window, strides = (1, 1) + tuple(ks), (1, 1) + tuple(ss)
        if kind == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, "VALID")
        return lax.reduce_window(x, np.array(0, dtype=x.dtype), lax.add, window, strides, "VALID") / int(np.prod(ks))

    def layer_max_pool(self, layer, x, p):
        return self._native_pool("max", layer, x)

    def layer_avg_pool(self, layer, x, p):
        return self._native_pool("avg", layer, x)

    def _norm(self, layer, x, p, axes, shape):
        y = self.jax.nn.standardize(x, axis=axes, epsilon=layer.eps, algorithm="stable")
        if not layer.affine:
            return y
        return y * p["gamma"].reshape(shape) + p["beta"].reshape(shape)

    def layer_layer_norm(self, layer, x, p):
        return self._norm(layer, x, p, -1, (-1,))

    def layer_batch_norm(self, layer, x, p):
        nd = x.ndim
        return self._norm(layer, x, p, (0,) + tuple(range(2, nd)), (1, -1) + (1,) * (nd - 2))

    def attention_core(self, q, k, v, causal):
        if self.dtype == np.float64:
            # jax.nn.dot_product_attention computes its softmax in float32 whatever the input
            # dtype (JAX 0.10: values off by ~5e-8 in float64), so float64 uses jnp primitives.
            return super().attention_core(q, k, v, causal)
        # jax.nn.dot_product_attention takes (batch, time, heads, head_dim)
        t = lambda a: self.jnp.transpose(a, (0, 2, 1, 3))
        return t(self.jax.nn.dot_product_attention(t(q), t(k), t(v), is_causal=causal))

    def layer_rnn(self, layer, x, p):
        global _RNN
        if _RNN is None:
            _RNN = self.jax.jit(_rnn_scan, static_argnums=(4,))
        return _RNN(x, p["Wx"], p["Wh"], p["b"], layer.return_sequences)

    def loss_mse(self, loss, y, constants):
        return self.jnp.mean(self.jnp.square(y - self.constant(constants["target"])))

    def loss_cross_entropy(self, loss, y, constants):
        jnp = self.jnp
        lp = self.jax.nn.log_softmax(y, axis=-1)
        labels = self.int_array(constants["labels"])
        return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=1))


_RNN = None


def _rnn_scan(x, wx, wh, b, return_sequences):
    """The RNN as one ``lax.scan``; jitted once (module level), so equal shapes reuse the compiled loop."""
    import jax.numpy as jnp
    from jax import lax

    def step(h, xt):
        h = jnp.tanh(xt @ wx + h @ wh + b)
        return h, h

    h0 = jnp.zeros((x.shape[0], wh.shape[0]), dtype=x.dtype)
    h, hs = lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(hs, 0, 1) if return_sequences else h


class JaxBackend(Backend):
    """JAX: values and derivatives from ``jax.vjp`` and ``jax.jvp``, 64-bit mode scoped."""

    name = "jax"
    extra = "jax"
    modules = ("jax",)

    def _import(self):
        import jax

        self.jax = jax

    def _device(self, device):
        jax = self.jax
        platform = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu"}.get(device.split(":")[0])
        if platform is None:
            raise BackendUnavailable(f"unknown JAX device {device!r}; use 'cpu' or 'cuda'")
        try:
            devs = jax.devices(platform)
        except RuntimeError:
            raise BackendUnavailable(f"device {device!r} requested but JAX sees no {platform} device") from None
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= len(devs):
            raise BackendUnavailable(f"device {device!r} requested but JAX sees {len(devs)} {platform} device(s)")
        self._jax_device = devs[idx]
        return device

    def _make_lowering(self, dtype):
        return JaxLowering(dtype, self._jax_device)

    def _scope(self):
        return self.jax.enable_x64(True)

    def _to(self, array):
        return self.jax.device_put(np.array(array, copy=True), self._jax_device)

    def _from(self, value):
        return np.array(value, copy=True)

    def _vjp(self, f, primals):
        out, fn = self.jax.vjp(f, *primals)
        return out, lambda ct: list(fn(ct))

    def _jvp(self, f, primals, tangents):
        return self.jax.jvp(f, tuple(primals), tuple(tangents))
