"""The small base class every hand-derived layer shares.

It holds the numpy object protocol of gradverify in one place:

* ``layer.params``: ``dict[str, ndarray]`` (may be empty). ``forward`` always
  reads the arrays from this dict, so a checker may perturb them in place or
  replace them (for example with float64 copies) between calls;
* ``layer.forward(x) -> y`` caches what ``backward`` needs on ``self``;
* ``layer.backward(dy) -> dx`` also sets ``layer.grads``, one entry per
  ``params`` key. Inside one ``backward`` call gradients *accumulate* (``+=``),
  micrograd style, so a parameter or an input used along several paths sums
  its paths; each call starts from zero, so calling ``backward`` twice never
  double counts.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Layer"]


class Layer:
    """Base class: parameters, gradients and a seeded example input.

    Subclasses set ``self.params`` in ``__init__`` and ``self.input_shape`` (the
    shape of the example input used by the checks).
    """

    #: Shape of the example input drawn by :meth:`example_input`.
    input_shape: tuple[int, ...] = ()

    def __init__(self, dtype=np.float64):
        self.dtype = np.dtype(dtype)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    # -- helpers ---------------------------------------------------------------
    def _zero_grads(self) -> dict[str, np.ndarray]:
        """Fresh zero gradients, one per parameter, ready to accumulate into.

        Cost: one allocation per parameter.
        """
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        return self.grads

    @property
    def num_params(self) -> int:
        """Number of scalar parameters P (sum of the sizes of ``params``)."""
        return int(sum(np.size(v) for v in self.params.values()))

    def example_input(self, seed: int = 0) -> np.ndarray:
        """A seeded standard-normal input of shape ``input_shape``.

        Cost: one draw of ``prod(input_shape)`` normals.
        """
        rng = np.random.default_rng(seed)
        return rng.standard_normal(self.input_shape).astype(self.dtype)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"
