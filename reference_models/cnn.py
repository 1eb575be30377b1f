"""A small convolutional network: conv (stride, padding), ReLU, max pooling, dense.

Each piece is its own layer following the numpy object protocol, and
:class:`Sequential` chains them under the same protocol, its parameters and
gradients prefixed by the layer name (``"conv.W"``, ``"dense.b"``...).

Layouts are PyTorch's: images NCHW, convolution kernels OIHW, dense layers
act on rows (``y = x W + b`` with ``W`` of shape ``(in, out)``).

The convolution and the pooling loop over the kernel offsets ``(i, j)`` only;
each offset is one strided view of the (padded) input, so the forward is a sum
of ``kh * kw`` small matrix products and the backward scatters each term back
through the very same view, accumulating (``+=``) where windows overlap.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._base import Layer

__all__ = ["Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "Sequential", "SmallCNN"]


def _window(start: int, count: int, stride: int) -> slice:
    """The slice picking ``count`` positions ``start, start + stride, ...``."""
    return slice(start, start + stride * (count - 1) + 1, stride)


class Conv2D(Layer):
    """2-D cross-correlation (what deep learning calls convolution) with bias.

    y[n, o, p, q] = b[o] + sum_{c, i, j} W[o, c, i, j] * xpad[n, c, p*s + i, q*s + j]

    Cost: O(N O C kh kw Ho Wo) each way.

    Args:
        in_channels, out_channels: C and O.
        kernel_size: int or (kh, kw).
        stride: s (same in both directions).
        padding: zeros added on every side.
        seed, dtype: initialisation seed and dtype.
        input_hw: spatial size of the example input.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 3, kernel_size=3,
                 stride: int = 1, padding: int = 0, seed: int = 0, dtype=np.float64,
                 input_hw: tuple[int, int] = (6, 6), batch: int = 2):
        super().__init__(dtype)
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        self.stride, self.padding = int(stride), int(padding)
        rng = np.random.default_rng(seed)
        fan_in = in_channels * kh * kw
        self.params["W"] = (rng.standard_normal((out_channels, in_channels, kh, kw))
                            / np.sqrt(fan_in)).astype(self.dtype)
        self.params["b"] = (0.1 * rng.standard_normal(out_channels)).astype(self.dtype)
        self.input_shape = (batch, in_channels, *input_hw)

    def _out_size(self, H: int, W: int) -> tuple[int, int]:
        kh, kw = self.params["W"].shape[2:]
        p, s = self.padding, self.stride
        return (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Convolve ``x`` (NCHW) with ``W`` (OIHW), add ``b``; cache the padded input."""
        W, b = self.params["W"], self.params["b"]
        N, C, H, Wd = x.shape
        _, _, kh, kw = W.shape
        p = self.padding
        Ho, Wo = self._out_size(H, Wd)
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        y = np.zeros((N, W.shape[0], Ho, Wo), dtype=np.result_type(x, W))
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, :, _window(i, Ho, self.stride), _window(j, Wo, self.stride)]
                # forward: y += W[:, :, i, j] . patch    (dy/dW[:,:,i,j] = patch, dy/dpatch = W[:,:,i,j])
                y += np.einsum("nchw,oc->nohw", patch, W[:, :, i, j])
        y += b[None, :, None, None]             # dy/db = 1, broadcast over N, Ho, Wo
        self._cache = (x.shape, xp, Ho, Wo)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Scatter ``dy`` back through every kernel offset; returns ``dx`` (NCHW)."""
        (N, C, H, Wd), xp, Ho, Wo = self._cache
        W = self.params["W"]
        _, _, kh, kw = W.shape
        p = self.padding
        grads = self._zero_grads()
        dxp = np.zeros_like(xp, dtype=np.result_type(xp, dy))
        for i in range(kh):
            for j in range(kw):
                rows, cols = _window(i, Ho, self.stride), _window(j, Wo, self.stride)
                patch = xp[:, :, rows, cols]
                grads["W"][:, :, i, j] += np.einsum("nohw,nchw->oc", dy, patch)
                # overlapping windows read the same input pixel: += sums them
                dxp[:, :, rows, cols] += np.einsum("nohw,oc->nchw", dy, W[:, :, i, j])
        grads["b"] += dy.sum(axis=(0, 2, 3))
        return dxp[:, :, p:p + H, p:p + Wd]      # drop the padding: it is a constant

    def engine_forward(self, E, params: dict, x):
        """Engine version: conv2d(x, W, stride, padding) + b."""
        y = E.conv2d(x, params["W"], stride=self.stride, padding=self.padding)
        return y + E.reshape(params["b"], (1, params["b"].shape[0], 1, 1))


class ReLU(Layer):
    """relu(x) = max(x, 0); local derivative 1 where x > 0, else 0. Cost: O(x.size)."""

    def __init__(self, dtype=np.float64, input_shape: tuple[int, ...] = (2, 3, 4, 4)):
        super().__init__(dtype)
        self.input_shape = input_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return np.where(self._mask, x, 0).astype(x.dtype)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._zero_grads()
        return np.where(self._mask, dy, 0).astype(dy.dtype)

    def engine_forward(self, E, params: dict, x):
        return E.relu(x)


class MaxPool2D(Layer):
    """Max pooling over ``kernel x kernel`` windows with the given stride (no padding).

    The gradient goes to the window's maximum; on a tie, to the first maximum
    in row-major order (as PyTorch does). Overlapping windows (stride <
    kernel) accumulate. Cost: O(N C kernel^2 Ho Wo) each way.
    """

    def __init__(self, kernel: int = 2, stride: int | None = None, dtype=np.float64,
                 input_shape: tuple[int, ...] = (2, 3, 4, 4)):
        super().__init__(dtype)
        self.kernel = int(kernel)
        self.stride = int(stride) if stride is not None else self.kernel
        self.input_shape = input_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        N, C, H, W = x.shape
        k, s = self.kernel, self.stride
        Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
        y = np.full((N, C, Ho, Wo), -np.inf, dtype=x.dtype)
        arg = np.zeros((N, C, Ho, Wo), dtype=np.intp)    # winning offset i * k + j
        for i in range(k):
            for j in range(k):
                v = x[:, :, _window(i, Ho, s), _window(j, Wo, s)]
                better = v > y                   # strict: the first maximum keeps the tie
                y = np.where(better, v, y)
                arg = np.where(better, i * k + j, arg)
        self._cache = (x.shape, x.dtype, arg, Ho, Wo)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype, arg, Ho, Wo = self._cache
        self._zero_grads()
        k, s = self.kernel, self.stride
        dx = np.zeros(shape, dtype=np.result_type(dtype, dy))
        for i in range(k):
            for j in range(k):
                # dy/dx = 1 for the window's argmax, 0 for the others
                dx[:, :, _window(i, Ho, s), _window(j, Wo, s)] += np.where(arg == i * k + j, dy, 0)
        return dx

    def engine_forward(self, E, params: dict, x):
        return E.max_pool2d(x, self.kernel, self.stride)


class Flatten(Layer):
    """Reshape (N, ...) to (N, -1); the backward reshapes back. Cost: O(1)."""

    def __init__(self, dtype=np.float64, input_shape: tuple[int, ...] = (2, 3, 2, 2)):
        super().__init__(dtype)
        self.input_shape = input_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._zero_grads()
        return dy.reshape(self._shape)

    def engine_forward(self, E, params: dict, x):
        return E.reshape(x, (x.shape[0], int(np.prod(x.shape[1:]))))


class Dense(Layer):
    """Fully connected layer on rows: y = x W + b. Cost: O(N in out) each way."""

    def __init__(self, n_in: int = 12, n_out: int = 4, seed: int = 0, dtype=np.float64,
                 batch: int = 2):
        super().__init__(dtype)
        rng = np.random.default_rng(seed)
        self.params["W"] = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(self.dtype)
        self.params["b"] = (0.1 * rng.standard_normal(n_out)).astype(self.dtype)
        self.input_shape = (batch, n_in)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x @ self.params["W"] + self.params["b"]     # dy/dx = W^T, dy/dW = x^T, dy/db = 1

    def backward(self, dy: np.ndarray) -> np.ndarray:
        grads = self._zero_grads()
        grads["W"] += self._x.T @ dy
        grads["b"] += dy.sum(axis=0)                        # b broadcast over rows -> summed
        return dy @ self.params["W"].T

    def engine_forward(self, E, params: dict, x):
        return E.matmul(x, params["W"]) + params["b"]


class Sequential(Layer):
    """Chain of named layers under the same protocol; parameter keys ``"name.key"``.

    ``self.params`` is the source of truth: ``forward`` first hands each layer
    the current array of each of its parameters (so a checker may mutate the
    arrays in place or replace them in this dict), then runs the layers in
    order; ``backward`` runs them in reverse and collects their gradients under
    the same prefixed keys. Cost: the sum of the layers' costs.

    Args:
        layers: ``(name, layer)`` pairs, names unique and without dots.
    """

    def __init__(self, layers: Sequence[tuple[str, Layer]], dtype=None):
        first = layers[0][1] if layers else None
        super().__init__(dtype if dtype is not None else (first.dtype if first else np.float64))
        names = [name for name, _ in layers]
        if len(set(names)) != len(names) or any("." in n for n in names):
            raise ValueError(f"layer names must be unique and contain no '.', got {names!r}")
        self.layers = list(layers)
        for name, layer in self.layers:
            for key, value in layer.params.items():
                self.params[f"{name}.{key}"] = value
        self.input_shape = first.input_shape if first else ()

    def forward(self, x: np.ndarray) -> np.ndarray:
        for name, layer in self.layers:
            for key in layer.params:
                layer.params[key] = self.params[f"{name}.{key}"]
            x = layer.forward(x)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        grads = {}
        for name, layer in reversed(self.layers):
            dy = layer.backward(dy)
            for key, g in layer.grads.items():
                grads[f"{name}.{key}"] = g
        self.grads = {k: grads[k] for k in self.params}     # same order as params
        return dy

    def engine_forward(self, E, params: dict, x):
        for name, layer in self.layers:
            sub = {key: params[f"{name}.{key}"] for key in layer.params}
            x = layer.engine_forward(E, sub, x)
        return x


class SmallCNN(Sequential):
    """conv(3x3, stride 2, padding 1) -> ReLU -> maxpool(2) -> flatten -> dense.

    Default input (2, 2, 7, 7): conv gives (2, 3, 4, 4), pooling (2, 3, 2, 2),
    flatten (2, 12), dense (2, 4). P = 3*2*9 + 3 + 12*4 + 4 = 109.
    """

    def __init__(self, in_channels: int = 2, channels: int = 3, n_out: int = 4,
                 input_hw: tuple[int, int] = (7, 7), batch: int = 2, seed: int = 0,
                 dtype=np.float64):
        rng = np.random.default_rng(seed)
        s1, s2 = (int(v) for v in rng.integers(0, 2**31, size=2))
        conv = Conv2D(in_channels, channels, 3, stride=2, padding=1, seed=s1, dtype=dtype,
                      input_hw=input_hw, batch=batch)
        H, W = conv._out_size(*input_hw)
        Hp, Wp = (H - 2) // 2 + 1, (W - 2) // 2 + 1
        super().__init__([
            ("conv", conv),
            ("relu", ReLU(dtype)),
            ("pool", MaxPool2D(2, 2, dtype)),
            ("flatten", Flatten(dtype)),
            ("dense", Dense(channels * Hp * Wp, n_out, seed=s2, dtype=dtype, batch=batch)),
        ], dtype=dtype)
