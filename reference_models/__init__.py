"""Hand-derived backprop models: forward and backward side by side, per layer.

Each model follows gradverify's numpy object protocol (``params``,
``forward(x)``, ``backward(dy)`` setting ``grads``), is constructible with no
arguments (seeded defaults, float64 unless ``dtype=`` says otherwise) and has
an ``engine_forward(E, params, x)`` that computes the same output with the
reference engine's primitives, so the harness can compare the hand backward
with the engine's VJP. The e = (a + b) * (b + 1) graph and the quadratic cost
are function pairs instead (``forward(...) -> (out, cache)``,
``backward(dout, cache) -> grads``).

``python -m reference_models`` checks them all (finite differences and the
engine) and prints a table; :func:`run_all` returns that table as dicts.
Importing this package imports numpy only.
"""

from __future__ import annotations

from . import egraph
from .attention import SelfAttention
from .cnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, SmallCNN
from .normalization import BatchNorm, LayerNorm
from .rnn import VanillaRNN
from .sigmoid_network import (SigmoidNetwork, make_toy_problem, quadratic_cost_backward,
                              quadratic_cost_forward, sigmoid, sigmoid_prime)
from .softmax_classifier import SoftmaxClassifier

__all__ = [
    "SigmoidNetwork", "quadratic_cost_forward", "quadratic_cost_backward", "make_toy_problem",
    "sigmoid", "sigmoid_prime", "egraph", "SoftmaxClassifier",
    "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "Sequential", "SmallCNN",
    "VanillaRNN", "LayerNorm", "BatchNorm", "SelfAttention", "run_all",
]


def run_all(seed: int = 0) -> list[dict]:
    """Check every model against finite differences and the engine; one dict per model.

    See :func:`reference_models.harness.run_all` (imported lazily so that
    importing the models never imports gradverify).
    """
    from .harness import run_all as _run_all
    return _run_all(seed)
