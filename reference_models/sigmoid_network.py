"""Fully connected sigmoid network with quadratic cost, trained by mini-batch SGD.

The classic network of Nielsen's *Neural Networks and Deep Learning*, chapter 2,
with the four backprop equations written out one by one in :meth:`backward`.

Conventions (Nielsen's, column vectors): an input batch ``x`` has shape
``(sizes[0], m)``, one column per example; layer ``l`` (1-based) has weights
``W{l}`` of shape ``(sizes[l], sizes[l-1])`` and biases ``b{l}`` of shape
``(sizes[l], 1)``; ``z_l = W_l a_{l-1} + b_l`` and ``a_l = sigma(z_l)``.

The cost is the quadratic cost **averaged over the batch**::

    C = 1/(2m) * sum_over_columns ||a_L - y||^2

so its gradient is already an average and SGD steps by ``eta * grad`` (the
same update as Nielsen's ``eta/m * sum of per-example gradients``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._base import Layer

__all__ = [
    "sigmoid",
    "sigmoid_prime",
    "SigmoidNetwork",
    "quadratic_cost_forward",
    "quadratic_cost_backward",
    "quadratic_cost_engine",
    "make_toy_problem",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """sigma(z) = 1 / (1 + exp(-z)), computed as (1 + tanh(z/2)) / 2.

    The tanh form is the same function and never overflows. Cost: one tanh per
    element.
    """
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def sigmoid_prime(z: np.ndarray) -> np.ndarray:
    """sigma'(z) = sigma(z) * (1 - sigma(z)). Cost: one sigmoid per element."""
    s = sigmoid(z)
    return s * (1.0 - s)


# -- the cost, as a function pair (usable with gradverify.check_pair) ---------


def quadratic_cost_forward(a: np.ndarray, y: np.ndarray):
    """C = 1/(2m) ||a - y||^2 with m the number of columns (examples).

    ``a`` and ``y`` have shape ``(n_out, m)``; a 1-D pair counts as one example.
    Cost: O(a.size).

    Returns:
        ``(C, cache)`` with ``C`` a 0-d array in ``a``'s dtype.
    """
    a = np.asarray(a)
    y = np.asarray(y)
    m = a.shape[-1] if a.ndim >= 2 else 1
    diff = a - y                                  # forward: diff = a - y
    C = 0.5 * np.sum(diff * diff) / m             # forward: C = sum(diff^2) / 2m
    return np.asarray(C, dtype=np.result_type(a, y)), (diff, m)


def quadratic_cost_backward(dC, cache):
    """Local derivatives of the quadratic cost: dC/da = (a - y)/m, dC/dy = -(a - y)/m.

    Cost: O(a.size).

    Returns:
        ``(da, dy)``, the cotangent ``dC`` pulled back to ``a`` and to ``y``.
    """
    diff, m = cache
    ddiff = np.asarray(dC) * diff / m             # dC/ddiff = diff / m
    da = ddiff                                    # ddiff/da = +1
    dy = -ddiff                                   # ddiff/dy = -1
    return da, dy


def quadratic_cost_engine(E, a, y):
    """The same cost written with engine primitives (for the engine cross-check)."""
    m = a.shape[-1] if len(a.shape) >= 2 else 1
    diff = a - y
    return E.sum(diff * diff) * (0.5 / m)


# -- the network ----------------------------------------------------------------


class SigmoidNetwork(Layer):
    """A fully connected sigmoid network (default sizes 3-4-2).

    ``forward(x)`` returns the output activations ``a_L``; ``backward(dy)``
    takes ``dy = dC/da_L`` for any cost C and returns ``dC/dx``, setting
    ``grads["W1"], grads["b1"], ...``. One forward costs O(sum_l n_l n_{l-1} m)
    and one backward about twice that.

    Args:
        sizes: neurons per layer, input first.
        seed: seed of the standard-normal initialisation (Nielsen's).
        dtype: floating dtype of the parameters and of the computation.
        batch: number of columns of the example input.
    """

    def __init__(self, sizes: Sequence[int] = (3, 4, 2), seed: int = 0,
                 dtype=np.float64, batch: int = 5):
        super().__init__(dtype)
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output layer, got {sizes!r}")
        self.sizes = tuple(int(n) for n in sizes)
        self.num_layers = len(self.sizes) - 1
        rng = np.random.default_rng(seed)
        for l in range(1, len(self.sizes)):
            n_out, n_in = self.sizes[l], self.sizes[l - 1]
            self.params[f"W{l}"] = rng.standard_normal((n_out, n_in)).astype(self.dtype)
            self.params[f"b{l}"] = rng.standard_normal((n_out, 1)).astype(self.dtype)
        self.input_shape = (self.sizes[0], batch)

    # forward: z_l = W_l a_{l-1} + b_l ; a_l = sigma(z_l)
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Feed ``x`` (shape ``(sizes[0], m)``) forward; cache every z_l and a_l."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] != self.sizes[0]:
            raise ValueError(f"x must have shape ({self.sizes[0]}, m) (one column per "
                             f"example), got {x.shape}")
        a = x
        self._activations = [a]            # a_0 = x, a_1, ..., a_L
        self._zs = [None]                  # z_1, ..., z_L (index 0 unused)
        for l in range(1, self.num_layers + 1):
            z = self.params[f"W{l}"] @ a + self.params[f"b{l}"]
            a = sigmoid(z)
            self._zs.append(z)
            self._activations.append(a)
        return a

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Backpropagate ``dy = dC/da_L`` by the four backprop equations.

        Cost: about two forward passes.
        """
        grads = self._zero_grads()
        L = self.num_layers
        a, z = self._activations, self._zs
        # (BP1) output error: delta_L = grad_a C (*) sigma'(z_L).
        #       For the quadratic cost grad_a C = (a_L - y)/m, so this is
        #       delta_L = (a_L - y)/m (*) sigma'(z_L).
        delta = np.asarray(dy) * sigmoid_prime(z[L])
        for l in range(L, 0, -1):
            # (BP3) dC/db_l = delta_l   (summed over the examples = columns)
            grads[f"b{l}"] += delta.sum(axis=1, keepdims=True)
            # (BP4) dC/dW_l = delta_l a_{l-1}^T   (the sum over columns is the matmul)
            grads[f"W{l}"] += delta @ a[l - 1].T
            if l > 1:
                # (BP2) delta_{l-1} = (W_l^T delta_l) (*) sigma'(z_{l-1})
                delta = (self.params[f"W{l}"].T @ delta) * sigmoid_prime(z[l - 1])
        # The input has no activation: the error reaching x is W_1^T delta_1.
        return self.params["W1"].T @ delta

    # -- cost and training ---------------------------------------------------------
    def cost(self, x: np.ndarray, y: np.ndarray) -> float:
        """Quadratic cost of the network on ``(x, y)``, averaged over columns."""
        C, _ = quadratic_cost_forward(self.forward(x), y)
        return float(C)

    def backprop(self, x: np.ndarray, y: np.ndarray):
        """Cost and its gradient on one mini-batch: forward, cost, BP1-BP4.

        Cost: one forward and one backward pass.

        Returns:
            ``(C, grads)`` with ``grads`` a fresh dict ``{"W1": ..., "b1": ...}``.
        """
        C, cache = quadratic_cost_forward(self.forward(x), y)
        da, _ = quadratic_cost_backward(1.0, cache)   # grad_a C = (a_L - y)/m
        self.backward(da)
        return float(C), {k: v.copy() for k, v in self.grads.items()}

    def sgd(self, training_data, epochs: int, mini_batch_size: int, eta: float,
            seed: int = 0) -> list[float]:
        """Mini-batch stochastic gradient descent; returns the cost after each epoch.

        Each epoch shuffles the examples (seeded), splits them into mini-batches
        and steps every parameter by ``-eta * dC/dparam`` on each. Cost per epoch:
        one forward and backward over the data plus one forward for the
        reported training cost.

        Args:
            training_data: ``(X, Y)`` with ``X`` of shape ``(sizes[0], n)`` and
                ``Y`` of shape ``(sizes[-1], n)``, one column per example.
            epochs: number of passes over the data.
            mini_batch_size: columns per step (the last batch may be smaller).
            eta: learning rate.
            seed: seed of the shuffling.

        Returns:
            The quadratic cost on the whole training set after each epoch.
        """
        X, Y = (np.asarray(t, dtype=self.dtype) for t in training_data)
        n = X.shape[1]
        rng = np.random.default_rng(seed)
        costs = []
        for _ in range(epochs):
            order = rng.permutation(n)
            for k in range(0, n, mini_batch_size):
                idx = order[k:k + mini_batch_size]
                _, grads = self.backprop(X[:, idx], Y[:, idx])
                for key, g in grads.items():
                    self.params[key] -= eta * g
            costs.append(self.cost(X, Y))
        return costs

    # -- the engine cross-check --------------------------------------------------------
    def engine_forward(self, E, params: dict, x):
        """The same forward pass with engine primitives: a_l = sigmoid(W_l a_{l-1} + b_l)."""
        a = x
        for l in range(1, self.num_layers + 1):
            a = E.sigmoid(E.matmul(params[f"W{l}"], a) + params[f"b{l}"])
        return a


def make_toy_problem(n: int = 200, seed: int = 0, n_in: int = 3, n_out: int = 2):
    """A small seeded classification problem for the 3-4-2 network.

    Inputs are standard normal; a fixed linear score of the inputs is cut into
    ``n_out`` equally populated bands (for two outputs: above or below its
    median) and the band is one-hot encoded as the target. Cost: O(n log n).

    Returns:
        ``(X, Y)`` with ``X`` of shape ``(n_in, n)`` and ``Y`` of shape ``(n_out, n)``.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_in, n))
    w = np.linspace(1.0, -1.0, n_in) + 0.5
    score = w @ X
    edges = np.quantile(score, np.linspace(0, 1, n_out + 1)[1:-1])
    cls = np.searchsorted(edges, score)
    Y = np.zeros((n_out, n))
    Y[cls, np.arange(n)] = 1.0
    return X, Y
