"""Softmax / cross-entropy classifier: a linear layer followed by softmax CE.

Rows are examples: ``x`` has shape ``(N, n_in)``, ``W`` ``(n_in, K)``, ``b``
``(K,)``. The integer labels are constants, given at construction, so the
layer maps its input to one scalar::

    z = x W + b                                 (logits, N x K)
    log p = z - logsumexp(z, axis=1)            (log-softmax, row by row)
    L = -(1/N) sum_i log p[i, y_i]              (mean cross-entropy)

The famous local derivative: dL/dz = (softmax(z) - onehot(y)) / N.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._base import Layer

__all__ = ["log_softmax", "softmax", "SoftmaxClassifier"]


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """log softmax(z) = z - max - log sum exp(z - max): stable for any z. Cost: O(z.size)."""
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """softmax(z) = exp(z - max) / sum exp(z - max). Cost: O(z.size)."""
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


class SoftmaxClassifier(Layer):
    """Linear layer + softmax cross-entropy with fixed integer labels.

    ``forward(x)`` returns the mean cross-entropy (a 0-d array); ``backward(dL)``
    returns ``dL/dx`` and sets ``grads["W"], grads["b"]``. Cost: O(N n_in K)
    each way.

    Args:
        n_in: input features.
        n_classes: number of classes K.
        labels: integer labels, one per row of the input; default a seeded draw
            of ``batch`` labels.
        batch: number of rows when ``labels`` is not given.
        seed: seed of the initialisation (and of the default labels).
        dtype: floating dtype.
    """

    def __init__(self, n_in: int = 4, n_classes: int = 3, labels: Sequence[int] | None = None,
                 batch: int = 5, seed: int = 0, dtype=np.float64):
        super().__init__(dtype)
        rng = np.random.default_rng(seed)
        self.params["W"] = (rng.standard_normal((n_in, n_classes)) / np.sqrt(n_in)).astype(self.dtype)
        self.params["b"] = (0.1 * rng.standard_normal(n_classes)).astype(self.dtype)
        if labels is None:
            labels = rng.integers(0, n_classes, size=batch)
        self.labels = np.asarray(labels, dtype=np.intp)
        if self.labels.ndim != 1 or np.any(self.labels < 0) or np.any(self.labels >= n_classes):
            raise ValueError(f"labels must be a 1-D sequence of ints in [0, {n_classes}), got {labels!r}")
        self.n_classes = n_classes
        self.onehot = np.eye(n_classes, dtype=self.dtype)[self.labels]
        self.input_shape = (len(self.labels), n_in)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Mean cross-entropy of the linear classifier on ``x`` (``(N, n_in)``)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] != len(self.labels):
            raise ValueError(f"x must have shape ({len(self.labels)}, n_in): one row per label, got {x.shape}")
        N = x.shape[0]
        z = x @ self.params["W"] + self.params["b"]        # dz/dx = W^T, dz/dW = x^T, dz/db = 1
        logp = log_softmax(z, axis=1)                       # dlogp_ij/dz_ik = [j = k] - p_ik
        loss = -np.sum(logp[np.arange(N), self.labels]) / N  # dL/dlogp = -onehot / N
        self._cache = (x, logp)
        return np.asarray(loss, dtype=z.dtype)

    def backward(self, dL) -> np.ndarray:
        """Pull ``dL`` back through the cross-entropy, the softmax and the linear layer."""
        x, logp = self._cache
        grads = self._zero_grads()
        N = x.shape[0]
        # L = -(1/N) sum onehot * logp  and  log-softmax  together:
        # dL/dz = (softmax(z) - onehot) / N
        dz = np.asarray(dL) * (np.exp(logp) - self.onehot) / N
        grads["W"] += x.T @ dz                  # z = x W + b  ->  dL/dW = x^T dz
        grads["b"] += dz.sum(axis=0)            # b is broadcast over rows -> summed
        return dz @ self.params["W"].T          # dL/dx = dz W^T

    def engine_forward(self, E, params: dict, x):
        """The same loss with engine primitives: -sum(log_softmax(xW + b) * onehot) / N."""
        z = E.matmul(x, params["W"]) + params["b"]
        logp = E.log_softmax(z, axis=1)
        return E.sum(logp * self.onehot) * (-1.0 / len(self.labels))
