"""Layer normalisation and batch normalisation (training mode), gradients exact.

Both standardise ``x`` over some axes and then scale and shift it::

    mu   = mean(x)                        dmu/dx    = 1/n
    xc   = x - mu                         dxc/dx    = 1,   dxc/dmu = -1
    var  = mean(xc^2)                     dvar/dxc  = 2 xc / n
    inv  = (var + eps)^(-1/2)             dinv/dvar = -inv^3 / 2
    xhat = xc * inv                       dxhat/dxc = inv, dxhat/dinv = xc
    y    = gamma * xhat + beta            dy/dxhat  = gamma, dy/dgamma = xhat, dy/dbeta = 1

Layer norm takes the statistics over the features of each example (the last
axis); batch norm over the batch (axis 0, and the spatial axes of NCHW
input). The backward walks this graph in reverse: ``xc`` feeds both ``xhat``
and ``var``, ``x`` feeds both ``xc`` and ``mu``, so their adjoints accumulate
two paths each -- which is how the gradient flows through the mean and the
variance. (The usual closed form,
``dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``, is what these
steps add up to.)
"""

from __future__ import annotations

import numpy as np

from ._base import Layer

__all__ = ["standardize_forward", "standardize_backward", "LayerNorm", "BatchNorm"]


def standardize_forward(x: np.ndarray, axes: tuple[int, ...], eps: float):
    """xhat = (x - mean) / sqrt(var + eps) over ``axes``, step by step. Cost: O(x.size).

    Returns:
        ``(xhat, cache)``.
    """
    n = int(np.prod([x.shape[a] for a in axes]))
    mu = x.mean(axis=axes, keepdims=True)               # dmu/dx = 1/n
    xc = x - mu                                          # dxc/dx = 1, dxc/dmu = -1
    var = (xc * xc).mean(axis=axes, keepdims=True)       # dvar/dxc = 2 xc / n   (biased variance)
    inv = 1.0 / np.sqrt(var + eps)                       # dinv/dvar = -inv^3 / 2
    xhat = xc * inv                                      # dxhat/dxc = inv, dxhat/dinv = xc
    return xhat, (axes, n, xc, inv)


def standardize_backward(dxhat: np.ndarray, cache) -> np.ndarray:
    """Pull ``dxhat`` back to ``dx`` through inv, var, xc and mu. Cost: O(x.size)."""
    axes, n, xc, inv = cache
    dxc = np.zeros_like(xc, dtype=np.result_type(xc, dxhat))
    dx = np.zeros_like(dxc)
    # xhat = xc * inv
    dxc += dxhat * inv                                   # path 1 into xc
    dinv = np.sum(dxhat * xc, axis=axes, keepdims=True)  # inv is broadcast -> summed
    # inv = (var + eps)^(-1/2)
    dvar = dinv * (-0.5) * inv ** 3
    # var = mean(xc^2)
    dxc += dvar * (2.0 / n) * xc                         # path 2 into xc
    # xc = x - mu
    dx += dxc                                            # path 1 into x
    dmu = -np.sum(dxc, axis=axes, keepdims=True)
    # mu = mean(x)
    dx += dmu / n                                        # path 2 into x (broadcast back)
    return dx


def _engine_standardize(E, x, axes: tuple[int, ...], eps: float):
    mu = E.mean(x, axis=axes, keepdims=True)
    xc = x - mu
    var = E.mean(xc * xc, axis=axes, keepdims=True)
    return xc * (var + eps) ** -0.5


class LayerNorm(Layer):
    """Layer normalisation over the last axis, with gain ``gamma`` and bias ``beta``.

    Cost: O(x.size) each way.

    Args:
        dim: size of the normalised (last) axis.
        eps: added to the variance.
        batch: leading shape of the example input.
        seed, dtype: initialisation seed and dtype (gamma near 1, beta near 0,
            randomised so the check exercises them).
    """

    def __init__(self, dim: int = 5, eps: float = 1e-5, batch: tuple[int, ...] = (4,),
                 seed: int = 0, dtype=np.float64):
        super().__init__(dtype)
        rng = np.random.default_rng(seed)
        self.eps = float(eps)
        self.params["gamma"] = (1.0 + 0.1 * rng.standard_normal(dim)).astype(self.dtype)
        self.params["beta"] = (0.1 * rng.standard_normal(dim)).astype(self.dtype)
        self.input_shape = (*batch, dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        xhat, self._cache = standardize_forward(x, (x.ndim - 1,), self.eps)
        self._xhat = xhat
        return self.params["gamma"] * xhat + self.params["beta"]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        grads = self._zero_grads()
        lead = tuple(range(dy.ndim - 1))                    # gamma, beta broadcast over these
        grads["gamma"] += np.sum(dy * self._xhat, axis=lead)  # dy/dgamma = xhat
        grads["beta"] += np.sum(dy, axis=lead)                # dy/dbeta = 1
        return standardize_backward(dy * self.params["gamma"], self._cache)

    def engine_forward(self, E, params: dict, x):
        xhat = _engine_standardize(E, x, (len(x.shape) - 1,), self.eps)
        return xhat * params["gamma"] + params["beta"]


class BatchNorm(Layer):
    """Batch normalisation in training mode: statistics of the current batch.

    Input ``(N, D)`` normalises each feature over the batch; input ``(N, C, H,
    W)`` each channel over ``(N, H, W)``. The gradient flows through the batch
    mean and variance (every example's output depends on every other's).
    No running statistics are kept: this is the training-mode function only.
    Cost: O(x.size) each way.
    """

    def __init__(self, num_features: int = 4, eps: float = 1e-5, batch: int = 6,
                 seed: int = 0, dtype=np.float64):
        super().__init__(dtype)
        rng = np.random.default_rng(seed)
        self.eps = float(eps)
        self.params["gamma"] = (1.0 + 0.1 * rng.standard_normal(num_features)).astype(self.dtype)
        self.params["beta"] = (0.1 * rng.standard_normal(num_features)).astype(self.dtype)
        self.input_shape = (batch, num_features)

    @staticmethod
    def _axes(ndim: int) -> tuple[int, ...]:
        return (0,) if ndim == 2 else (0, *range(2, ndim))

    def _bshape(self, ndim: int) -> tuple[int, ...]:
        return (1, -1) + (1,) * (ndim - 2)                   # features on axis 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        axes = self._axes(x.ndim)
        xhat, self._cache = standardize_forward(x, axes, self.eps)
        self._xhat = xhat
        shape = self._bshape(x.ndim)
        return self.params["gamma"].reshape(shape) * xhat + self.params["beta"].reshape(shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        grads = self._zero_grads()
        axes = self._axes(dy.ndim)
        grads["gamma"] += np.sum(dy * self._xhat, axis=axes)
        grads["beta"] += np.sum(dy, axis=axes)
        dxhat = dy * self.params["gamma"].reshape(self._bshape(dy.ndim))
        return standardize_backward(dxhat, self._cache)

    def engine_forward(self, E, params: dict, x):
        nd = len(x.shape)
        xhat = _engine_standardize(E, x, self._axes(nd), self.eps)
        shape = (1, params["gamma"].shape[0]) + (1,) * (nd - 2)
        return xhat * E.reshape(params["gamma"], shape) + E.reshape(params["beta"], shape)
