"""Single-head scaled dot-product self-attention with learned projections.

``x`` has shape ``(N, T, D)`` (batch, sequence, features)::

    Q = x W_q,  K = x W_k,  V = x W_v          (N, T, d_k), (N, T, d_k), (N, T, d_v)
    S = Q K^T / sqrt(d_k)                       (N, T, T) scores, query by key
    A = softmax(S) over the keys (last axis)    dA_ij/dS_ik = A_ij ([j = k] - A_ik)
    y = A V                                     (N, T, d_v)

``x`` reaches the output through the three projections, so its adjoint sums
three paths.
"""

from __future__ import annotations

import numpy as np

from ._base import Layer
from .softmax_classifier import softmax

__all__ = ["SelfAttention"]


def _T(a: np.ndarray) -> np.ndarray:
    """Transpose the last two axes (a batched matrix transpose)."""
    return np.swapaxes(a, -1, -2)


class SelfAttention(Layer):
    """Scaled dot-product attention, one head, W_q/W_k/W_v projections.

    Cost: O(N T D (2 d_k + d_v) + N T^2 (d_k + d_v)) each way.

    Args:
        d_model: input features D.
        d_k: query/key size.
        d_v: value size (the output features).
        seq_len, batch: T and N of the example input.
        seed, dtype: initialisation seed and dtype.
    """

    def __init__(self, d_model: int = 4, d_k: int = 3, d_v: int = 3, seq_len: int = 5,
                 batch: int = 2, seed: int = 0, dtype=np.float64):
        super().__init__(dtype)
        rng = np.random.default_rng(seed)
        for name, d in (("W_q", d_k), ("W_k", d_k), ("W_v", d_v)):
            self.params[name] = (rng.standard_normal((d_model, d)) / np.sqrt(d_model)).astype(self.dtype)
        self.input_shape = (batch, seq_len, d_model)

    def forward(self, x: np.ndarray) -> np.ndarray:
        W_q, W_k, W_v = self.params["W_q"], self.params["W_k"], self.params["W_v"]
        scale = float(1.0 / np.sqrt(W_q.shape[1]))   # a Python float keeps float32 float32
        Q = x @ W_q                       # dQ/dx = W_q^T, dQ/dW_q = x^T
        K = x @ W_k
        V = x @ W_v
        S = (Q @ _T(K)) * scale           # dS/dQ = K * scale, dS/dK = Q * scale
        A = softmax(S, axis=-1)           # softmax over the keys
        y = A @ V                         # dy/dA = V^T, dy/dV = A^T
        self._cache = (x, Q, K, V, A, scale)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, Q, K, V, A, scale = self._cache
        grads = self._zero_grads()
        # y = A V
        dA = dy @ _T(V)
        dV = _T(A) @ dy
        # A = softmax(S): dS = A * (dA - sum_k dA_k A_k)   (row by row)
        dS = A * (dA - np.sum(dA * A, axis=-1, keepdims=True))
        # S = Q K^T * scale
        dQ = (dS @ K) * scale
        dK = (_T(dS) @ Q) * scale
        # Q = x W_q, K = x W_k, V = x W_v; the weights are shared over N and T
        dx = np.zeros_like(x, dtype=np.result_type(x, dy))
        for name, d in (("W_q", dQ), ("W_k", dK), ("W_v", dV)):
            grads[name] += np.einsum("ntd,nte->de", x, d)
            dx += d @ self.params[name].T          # x feeds all three: three paths summed
        return dx

    def engine_forward(self, E, params: dict, x):
        scale = float(1.0 / np.sqrt(params["W_q"].shape[1]))
        Q = E.matmul(x, params["W_q"])
        K = E.matmul(x, params["W_k"])
        V = E.matmul(x, params["W_v"])
        S = E.matmul(Q, E.transpose(K, (0, 2, 1))) * scale
        return E.matmul(E.softmax(S, axis=-1), V)
