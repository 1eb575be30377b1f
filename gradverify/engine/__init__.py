"""The reference autodiff engine: reverse mode (and forward mode) over numpy arrays.

A small, readable engine to check other gradients against and to learn
backprop from. Three layers, each in its own module:

* ``tracer.py`` records the computational graph (:class:`Tensor`, one
  function per primitive of :data:`gradverify.ops.PRIMITIVES`);
* ``vjps.py`` / ``jvps.py`` hold one derivative rule per primitive argument
  (the cheat-sheet), written with the same primitive functions;
* ``core.py`` differentiates: an iterative topological order by creation id,
  one backward sweep accumulating adjoints, one forward sweep for tangents.

Functional API (``import gradverify.engine as E``)::

    out, vjp_fn = E.vjp(f, x, W)          # vjp_fn(dout) -> (dx, dW)
    dx = E.grad(f)(x)                     # scalar f; argnums=0 by default
    val, (dx, dW) = E.value_and_grad(f, argnums=(0, 1))(x, W)
    out, t = E.jvp(f, (x,), (v,))         # forward mode: J v
    fn, vjp = E.numpy_pair(f)             # for gradverify.check(fn, inputs, vjp=vjp)
    out, vjp_fn = E.numpy_vjp(lambda t: np.tanh(t["x"] @ t["W"]), {"x": x, "W": W})
                                          # unmodified numpy code; vjp_fn(dout) -> {"x": dx, "W": dW}

``f`` takes and returns Tensors; arrays passed in are wrapped, and plain
arrays or Python scalars mixed into ``f`` are constants. float32 stays float32.
Gradients of gradients work by nesting (``E.grad(E.grad(f))``).
"""

from __future__ import annotations

from .core import backward, grad, jvp, numpy_pair, toposort, value_and_grad, vjp
from .tracer import (
    Tensor, abs, add, avg_pool2d, broadcast_to, concatenate, conv2d, cos, div, exp, expand_dims,
    getitem, log, log_softmax, logsumexp, matmul, max, max_pool2d, maximum, mean, minimum, mul,
    neg, pow, relu, reshape, sigmoid, sin, softmax, softplus, sqrt, square, squeeze, stack, sub,
    sum, tanh, transpose, where,
)
from .vjps import unbroadcast
from .numpy_api import numpy_coverage, numpy_vjp
from ..errors import TraceLost

__all__ = [
    # transformations
    "vjp", "grad", "value_and_grad", "jvp", "numpy_pair", "backward", "toposort",
    # plain-numpy forwards (numpy_api.py: Tensor implements NumPy's dispatch protocols)
    "numpy_vjp", "numpy_coverage", "TraceLost",
    # the graph node and the broadcasting helper
    "Tensor", "unbroadcast",
    # primitives (see gradverify.ops.PRIMITIVES)
    "add", "sub", "mul", "div", "neg", "pow", "square", "exp", "log", "sqrt", "abs",
    "sin", "cos", "tanh", "sigmoid", "relu", "softplus", "maximum", "minimum", "where",
    "sum", "mean", "max", "logsumexp", "softmax", "log_softmax",
    "reshape", "transpose", "broadcast_to", "expand_dims", "squeeze", "getitem",
    "concatenate", "stack", "matmul", "conv2d", "max_pool2d", "avg_pool2d",
]
