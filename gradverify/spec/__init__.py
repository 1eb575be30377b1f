"""A framework-neutral description of a computation: networks and expressions as frozen data.

Two kinds of spec, both frozen dataclasses of plain values and tuples:

* :class:`Network` -- layers (:class:`Dense`, :class:`Conv1d`, :class:`Conv2d`,
  :class:`MaxPool`, :class:`AvgPool`, :class:`RNN`, :class:`LayerNorm`,
  :class:`BatchNorm`, :class:`Attention`, :class:`Residual`,
  :class:`Activation`, :class:`Flatten`), an input shape, an optional loss
  (:class:`MSELoss`, :class:`CrossEntropyLoss`) and a seed that draws the
  input, the parameters and the loss constants;
* :class:`Expression` -- a tree of :class:`Op` nodes over the primitive table
  :data:`gradverify.ops.PRIMITIVES`, with :class:`Var` / :class:`Const` /
  :class:`Mask` / :class:`Index` leaves, and its :class:`Input` values.

Every spec round-trips through JSON (``spec.to_json()``,
``Network.from_json(text)``, or :func:`to_json` / :func:`from_json` for any
record), and its ``repr`` is a constructor call that rebuilds it in the
namespace of this module -- :func:`snippet` wraps it into a runnable script.
Nothing here imports a framework (numpy only); the backends
(:mod:`gradverify.backends`) lower a spec to the reference engine, PyTorch
or JAX.
"""

from __future__ import annotations

from typing import Sequence

from ._base import SpecRecord, from_dict, from_json, to_dict, to_json
from .expression import Const, Expression, Index, Input, Mask, Node, Op, Var
from .network import (
    RNN, Activation, Attention, AvgPool, BatchNorm, Conv1d, Conv2d, CrossEntropyLoss, Dense, Flatten, Layer,
    LayerNorm, Loss, MaxPool, MSELoss, Network, ParamInfo, Residual, activation_names,
)

__all__ = [
    "Expression", "Node", "Var", "Const", "Mask", "Index", "Op", "Input",
    "Network", "Layer", "Dense", "Conv1d", "Conv2d", "MaxPool", "AvgPool", "Activation", "Flatten", "RNN",
    "LayerNorm", "BatchNorm", "Attention", "Residual", "Loss", "MSELoss", "CrossEntropyLoss", "ParamInfo",
    "activation_names", "SpecRecord", "to_dict", "from_dict", "to_json", "from_json", "snippet",
]


def snippet(spec: SpecRecord, *, backends: Sequence[str] = ("reference", "torch", "jax"),
            dtype: str = "float64", seed: int = 0) -> str:
    """A small runnable Python script that rebuilds ``spec`` and compares it across ``backends``.

    The script prints the agreement summary of
    :func:`gradverify.backends.agreement.agreement` (values, VJPs, JVPs and
    finite differences, pairwise). Cost: O(size of the spec).
    """
    return (
        "from gradverify.spec import *\n"
        "from gradverify.backends.agreement import agreement\n"
        f"spec = {spec!r}\n"
        f"print(agreement(spec, backends={tuple(backends)!r}, dtype={dtype!r}, seed={seed}).summary())\n"
    )
