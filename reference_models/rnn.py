"""Vanilla (Elman) recurrent network with full backpropagation through time.

Rows are examples. The input sequence ``x`` has shape ``(T, N, D)``; the state
starts at ``h_0 = 0`` and for t = 1..T::

    a_t = x_t W_xh^T + h_{t-1} W_hh^T + b
    h_t = tanh(a_t)                         dh_t/da_t = 1 - h_t^2

The layer outputs every state, ``(h_1, ..., h_T)`` of shape ``(T, N, H)``, so
the cotangent ``dy`` reaches each step directly and BPTT walks all T steps
back: ``h_t`` feeds both the output and ``h_{t+1}``, so its adjoint sums the two
paths, and the shared weights accumulate one term per step.
"""

from __future__ import annotations

import numpy as np

from ._base import Layer

__all__ = ["VanillaRNN"]


class VanillaRNN(Layer):
    """h_t = tanh(W_xh x_t + W_hh h_{t-1} + b), all states returned.

    Cost: O(T N H (D + H)) each way (forward and BPTT).

    Args:
        n_in: input features D.
        n_hidden: state size H.
        steps: sequence length T of the example input.
        batch: N of the example input.
        seed, dtype: initialisation seed and dtype.
    """

    def __init__(self, n_in: int = 3, n_hidden: int = 4, steps: int = 4, batch: int = 2,
                 seed: int = 0, dtype=np.float64):
        super().__init__(dtype)
        rng = np.random.default_rng(seed)
        self.params["W_xh"] = (rng.standard_normal((n_hidden, n_in)) / np.sqrt(n_in)).astype(self.dtype)
        self.params["W_hh"] = (rng.standard_normal((n_hidden, n_hidden)) / np.sqrt(n_hidden)).astype(self.dtype)
        self.params["b"] = (0.1 * rng.standard_normal(n_hidden)).astype(self.dtype)
        self.input_shape = (steps, batch, n_in)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run the recurrence over the T steps of ``x`` (``(T, N, D)``); cache the states."""
        W_xh, W_hh, b = self.params["W_xh"], self.params["W_hh"], self.params["b"]
        T, N, _ = x.shape
        H = W_hh.shape[0]
        dtype = np.result_type(x, W_xh)
        hs = np.zeros((T + 1, N, H), dtype=dtype)          # hs[0] = h_0 = 0
        for t in range(1, T + 1):
            a = x[t - 1] @ W_xh.T + hs[t - 1] @ W_hh.T + b   # da/dx = W_xh, da/dh_prev = W_hh
            hs[t] = np.tanh(a)                               # dh/da = 1 - h^2
        self._cache = (x, hs)
        return hs[1:].copy()

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Backpropagation through time over every step; returns ``dx`` (``(T, N, D)``)."""
        x, hs = self._cache
        W_xh, W_hh = self.params["W_xh"], self.params["W_hh"]
        grads = self._zero_grads()
        T = x.shape[0]
        dx = np.zeros_like(x, dtype=np.result_type(x, dy))
        dh_next = np.zeros_like(hs[0], dtype=np.result_type(hs, dy))   # from h_{T+1}: nothing
        for t in range(T, 0, -1):
            dh = dy[t - 1] + dh_next            # h_t feeds the output and h_{t+1}: sum both paths
            da = dh * (1.0 - hs[t] ** 2)        # tanh'(a_t) = 1 - h_t^2
            grads["W_xh"] += da.T @ x[t - 1]    # shared weights: one term per step, accumulated
            grads["W_hh"] += da.T @ hs[t - 1]
            grads["b"] += da.sum(axis=0)
            dx[t - 1] = da @ W_xh
            dh_next = da @ W_hh                 # the error sent back to h_{t-1}
        return dx

    def engine_forward(self, E, params: dict, x):
        """Engine version of the unrolled recurrence (h_0 = 0, so step 1 has no W_hh term)."""
        W_xh_T = E.transpose(params["W_xh"])
        W_hh_T = E.transpose(params["W_hh"])
        states = []
        h = None
        for t in range(x.shape[0]):
            a = E.matmul(x[t], W_xh_T) + params["b"]
            if h is not None:
                a = a + E.matmul(h, W_hh_T)
            h = E.tanh(a)
            states.append(h)
        return E.stack(states, axis=0)
