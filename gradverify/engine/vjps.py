"""Reverse-mode rules: one vector-Jacobian product per primitive argument, in one registry.

Read this file as a derivative cheat-sheet. A rule receives the output
cotangent ``g`` (the adjoint of the primitive's result), the result ``ans``,
the primitive's positional arguments and its static params, and returns the
argument's adjoint contribution ``g^T (d ans / d arg)``, shaped like the argument.

Rules are written with the engine's own primitive functions and operators, so
they run on raw ndarrays in an ordinary backward pass and on Tensors (and are
traced) when a gradient of a gradient is requested. Masks that select where a
kink or tie is (``x > 0``, ``x == max``) are constants: read from ``value(...)``.

What the engine returns *at* kinks (the same as PyTorch and JAX):

* ``relu'(0) = 0`` and ``abs'(0) = sign(0) = 0``;
* ``maximum``/``minimum`` at a tie ``x == y``: each argument gets ``g / 2``;
* ``max`` over an axis and ``max_pool2d``: tied maxima share ``g`` equally
  (JAX's reduce_max rule and ``torch.amax`` do this; ``torch.max_pool2d``
  instead picks one position);
* ``where``: the condition gets no gradient (it is not differentiable, per ops.py).

Every broadcasting primitive sums its contribution back with the one
:func:`unbroadcast` helper.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from ..errors import NoDerivativeRule
from ..ops import PRIMITIVES, is_differentiable_arg
from .tracer import (
    Tensor, broadcast_to, col2im, cos, exp, expand_dims, getitem, im2col, log, matmul, reshape,
    scatter_add, shape_of, sigmoid, sin, sum, transpose, value, where,
)

__all__ = ["VJPS", "defvjp", "defvjp_argnum", "vjp_rule", "unbroadcast"]

#: primitive name -> tuple of per-argument rules (``None``: no gradient for that
#: argument), or a single ``rule(argnum, g, ans, *args, **params)`` for variadic ones.
VJPS: dict[str, Any] = {}


def defvjp(name: str, *rules: Callable[..., Any] | None) -> None:
    """Register one VJP rule per positional argument of primitive ``name``."""
    VJPS[name] = tuple(rules)


def defvjp_argnum(name: str, rule: Callable[..., Any]) -> None:
    """Register one VJP rule taking the argument number first (variadic primitives)."""
    VJPS[name] = rule


def vjp_rule(name: str, argnum: int) -> Callable[..., Any]:
    """The rule ``(g, ans, *args, **params) -> adjoint`` for one argument; O(1).

    Raises:
        NoDerivativeRule: if the argument is differentiable per ops.py but no
            rule is registered (naming the primitive and the argument).
    """
    rules = VJPS.get(name)
    if callable(rules):
        return lambda *a, **p: rules(argnum, *a, **p)
    rule = rules[argnum] if rules is not None and argnum < len(rules) else None
    if rule is None:
        names = PRIMITIVES[name].arg_names if name in PRIMITIVES else ()
        arg = names[argnum] if argnum < len(names) else (names[0] if names else "?")
        why = "" if name not in PRIMITIVES or is_differentiable_arg(name, argnum) else \
            " (ops.py marks it non-differentiable)"
        raise NoDerivativeRule(f"no VJP rule for primitive {name!r}, argument {argnum} ({arg}){why}")
    return rule


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def unbroadcast(g: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``g`` over the axes that broadcasting added or stretched, to get ``shape``.

    The adjoint of ``broadcast_to(x, g.shape)``: leading axes that ``x`` lacked
    and axes where ``x`` had length 1 are summed. Cost O(g.size).
    """
    gshape, shape = shape_of(g), tuple(shape)
    if gshape == shape:
        return g
    if not isinstance(g, (Tensor, np.ndarray, np.generic)):
        g = np.asarray(g)                                 # a Python scalar: give it the methods
    lead = len(gshape) - len(shape)
    stretched = () if lead < 0 or 1 not in shape else \
        tuple(lead + i for i, n in enumerate(shape) if n == 1 and gshape[lead + i] != 1)
    # Methods, not engine functions: numpy's own on an ndarray (a first-order rule), the
    # engine's on a Tensor (a traced rule); the params are already canonical.
    if lead > 0 and not stretched:                        # only leading axes: sum them away
        return g.sum(axis=_leading(lead))
    axes = _leading(lead) + stretched
    return (g.sum(axis=axes, keepdims=True) if axes else g).reshape(shape)


@functools.lru_cache(maxsize=64)
def _leading(n: int) -> tuple[int, ...]:
    """``(0, 1, ..., n - 1)`` (empty for n <= 0)."""
    return tuple(range(n))


def _keep(g: Any, axis: tuple[int, ...], keepdims: bool) -> Any:
    """Put back the reduced axes of a reduction's result (as length 1), to broadcast against x.

    Reduced *leading* axes need nothing: broadcasting adds them (``sum(x)`` -> a scalar).
    """
    return g if keepdims or axis == _leading(len(axis)) else expand_dims(g, axis)


def _spread(g: Any, x: Any, axis: tuple[int, ...], keepdims: bool) -> Any:
    """A reduction's cotangent broadcast back over the reduced axes of ``x``."""
    return broadcast_to(_keep(g, axis, keepdims), shape_of(x))


def _count(x: Any, axis: tuple[int, ...]) -> int:
    """How many entries of ``x`` each reduced value averages."""
    shape = shape_of(x)
    return math.prod([shape[a] for a in axis])


def _dtype(ans: Any) -> np.dtype:
    return np.result_type(value(ans))


def _balanced_eq(x: Any, ans: Any, y: Any) -> np.ndarray:
    """Constant weight of ``x`` in ``ans = maximum(x, y)`` (or minimum): 1, 0, or 1/2 at a tie."""
    xv, av, yv = value(x), value(ans), value(y)
    w = np.where(xv == av, np.where(yv == av, 0.5, 1.0), 0.0)
    return w.astype(_dtype(ans))


def _tie_share(x: Any, ans: Any, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Constant weights selecting the maxima of each reduced slice; ties share equally."""
    av = value(ans) if keepdims else np.expand_dims(value(ans), axis)
    mask = value(x) == av
    return (mask / np.sum(mask, axis=axis, keepdims=True)).astype(_dtype(ans))


def _window_share(x: Any, ans: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Constant (N, C, Ho, Wo, kh, kw) weights selecting each pooling window's maxima."""
    return _tie_share(im2col(value(x), kernel, stride), value(ans)[..., None, None],
                      (4, 5), keepdims=True)


def _mT(x: Any) -> Any:
    """Swap the last two axes (the matrix transpose of a batch)."""
    if isinstance(x, np.ndarray):       # a first-order rule: the view transpose() would make
        return x.swapaxes(-1, -2)
    return transpose(x, _swap_last(len(shape_of(x))))


@functools.lru_cache(maxsize=64)
def _swap_last(nd: int) -> tuple[int, ...]:
    return tuple(range(nd - 2)) + (nd - 1, nd - 2)


def _matmul_vjp_a(g, ans, a, b):
    """d(a @ b)/da with numpy's 1-D promotion rules."""
    sa, sb = shape_of(a), shape_of(b)
    if len(sa) == 1 and len(sb) == 1:
        return g * b                                              # dot product
    if len(sb) == 1:
        return unbroadcast(expand_dims(g, -1) * b, sa)            # outer(g, b)
    if len(sa) == 1:
        return unbroadcast(reshape(b @ expand_dims(g, -1), sb[:-1]), sa)
    return unbroadcast(g @ _mT(b), sa)


def _matmul_vjp_b(g, ans, a, b):
    """d(a @ b)/db with numpy's 1-D promotion rules."""
    sa, sb = shape_of(a), shape_of(b)
    if len(sa) == 1 and len(sb) == 1:
        return g * a
    if len(sa) == 1:
        return unbroadcast(expand_dims(a, -1) * expand_dims(g, -2), sb)  # outer(a, g)
    if len(sb) == 1:
        return unbroadcast(reshape(_mT(a) @ expand_dims(g, -1), sa[:-2] + sb), sb)
    return unbroadcast(_mT(a) @ g, sb)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _slab(xs: tuple, i: int, axis: int) -> tuple:
    """The index of argument ``i``'s slab in ``concatenate(xs, axis)``."""
    shapes = [shape_of(x) for x in xs]
    start = int(np.sum([s[axis] for s in shapes[:i]], dtype=int))
    return (slice(None),) * axis + (slice(start, start + shapes[i][axis]),)


def _pad2d(x: Any, padding: tuple[int, int]) -> Any:
    """Zero padding of the last two axes, as a scatter into a larger zero array."""
    ph, pw = padding
    if ph == pw == 0:
        return x
    n, c, h, w = shape_of(x)
    return scatter_add(x, (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w)),
                       shape=(n, c, h + 2 * ph, w + 2 * pw))


def _conv2d_dx(g, w, x_shape, stride, padding):
    """Adjoint of conv2d in x: each output's g times w, summed back into its window."""
    o, c, kh, kw = shape_of(w)
    n, _, ho, wo = shape_of(g)
    cols = matmul(transpose(g, (0, 2, 3, 1)), reshape(w, (o, c * kh * kw)))   # (N, Ho, Wo, C*kh*kw)
    cols = transpose(reshape(cols, (n, ho, wo, c, kh, kw)), (0, 3, 1, 2, 4, 5))
    (ph, pw), (h, wd) = padding, x_shape[2:]
    dxp = col2im(cols, (n, c, h + 2 * ph, wd + 2 * pw), stride)
    return getitem(dxp, (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + wd)))


def _conv2d_dw(g, x, w_shape, stride, padding):
    """Adjoint of conv2d in w: g correlated with the input windows."""
    o, c, kh, kw = w_shape
    n, _, ho, wo = shape_of(g)
    cols = im2col(_pad2d(x, padding), (kh, kw), stride)                       # (N, C, Ho, Wo, kh, kw)
    cols = reshape(transpose(cols, (0, 2, 3, 1, 4, 5)), (n * ho * wo, c * kh * kw))
    return reshape(matmul(reshape(transpose(g, (1, 0, 2, 3)), (o, n * ho * wo)), cols), w_shape)


# ---------------------------------------------------------------------------
# The cheat-sheet
# ---------------------------------------------------------------------------

defvjp("add",      lambda g, ans, x, y: unbroadcast(g, shape_of(x)),
                   lambda g, ans, x, y: unbroadcast(g, shape_of(y)))
defvjp("sub",      lambda g, ans, x, y: unbroadcast(g, shape_of(x)),
                   lambda g, ans, x, y: unbroadcast(-g, shape_of(y)))
defvjp("mul",      lambda g, ans, x, y: unbroadcast(g * y, shape_of(x)),
                   lambda g, ans, x, y: unbroadcast(x * g, shape_of(y)))
defvjp("div",      lambda g, ans, x, y: unbroadcast(g / y, shape_of(x)),
                   lambda g, ans, x, y: unbroadcast(-g * ans / y, shape_of(y)))
defvjp("pow",      lambda g, ans, x, y: unbroadcast(g * y * x ** (y - 1), shape_of(x)),
                   lambda g, ans, x, y: unbroadcast(g * ans * log(x), shape_of(y)))
defvjp("maximum",  lambda g, ans, x, y: unbroadcast(g * _balanced_eq(x, ans, y), shape_of(x)),
                   lambda g, ans, x, y: unbroadcast(g * _balanced_eq(y, ans, x), shape_of(y)))
defvjp("minimum",  lambda g, ans, x, y: unbroadcast(g * _balanced_eq(x, ans, y), shape_of(x)),
                   lambda g, ans, x, y: unbroadcast(g * _balanced_eq(y, ans, x), shape_of(y)))
defvjp("where",    None,
                   lambda g, ans, c, x, y: unbroadcast(where(c, g, 0.0), shape_of(x)),
                   lambda g, ans, c, x, y: unbroadcast(where(c, 0.0, g), shape_of(y)))

defvjp("neg",      lambda g, ans, x: -g)
defvjp("square",   lambda g, ans, x: g * 2 * x)
defvjp("exp",      lambda g, ans, x: g * ans)
defvjp("log",      lambda g, ans, x: g / x)
defvjp("sqrt",     lambda g, ans, x: g * 0.5 / ans)
defvjp("abs",      lambda g, ans, x: g * np.sign(value(x)))          # abs'(0) = 0
defvjp("sin",      lambda g, ans, x: g * cos(x))
defvjp("cos",      lambda g, ans, x: -g * sin(x))
defvjp("tanh",     lambda g, ans, x: g * (1 - ans * ans))
defvjp("sigmoid",  lambda g, ans, x: g * ans * (1 - ans))
defvjp("relu",     lambda g, ans, x: g * (value(x) > 0))             # relu'(0) = 0
defvjp("softplus", lambda g, ans, x: g * sigmoid(x))

defvjp("sum",      lambda g, ans, x, axis, keepdims: _spread(g, x, axis, keepdims))
defvjp("mean",     lambda g, ans, x, axis, keepdims: _spread(g / _count(x, axis), x, axis, keepdims))
defvjp("max",      lambda g, ans, x, axis, keepdims: _keep(g, axis, keepdims) * _tie_share(x, ans, axis, keepdims))
defvjp("logsumexp", lambda g, ans, x, axis, keepdims:
                   _keep(g, axis, keepdims) * exp(x - _keep(ans, axis, keepdims)))
defvjp("softmax",  lambda g, ans, x, axis: ans * (g - sum(g * ans, axis, keepdims=True)))
defvjp("log_softmax", lambda g, ans, x, axis: g - exp(ans) * sum(g, axis, keepdims=True))

defvjp("reshape",  lambda g, ans, x, shape: reshape(g, shape_of(x)))
defvjp("transpose", lambda g, ans, x, axes: transpose(g, _inverse(axes)))
defvjp("broadcast_to", lambda g, ans, x, shape: unbroadcast(g, shape_of(x)))
defvjp("expand_dims", lambda g, ans, x, axis: reshape(g, shape_of(x)))
defvjp("squeeze",  lambda g, ans, x, axis: reshape(g, shape_of(x)))
defvjp("getitem",  lambda g, ans, x, index: scatter_add(g, index, shape_of(x)), None)
defvjp_argnum("concatenate", lambda i, g, ans, *xs, axis: getitem(g, _slab(xs, i, axis)))
defvjp_argnum("stack", lambda i, g, ans, *xs, axis: getitem(g, (slice(None),) * axis + (i,)))

defvjp("matmul",   _matmul_vjp_a, _matmul_vjp_b)
defvjp("conv2d",   lambda g, ans, x, w, stride, padding: _conv2d_dx(g, w, shape_of(x), stride, padding),
                   lambda g, ans, x, w, stride, padding: _conv2d_dw(g, x, shape_of(w), stride, padding))
defvjp("max_pool2d", lambda g, ans, x, kernel, stride:
                   col2im(expand_dims(g, (4, 5)) * _window_share(x, ans, kernel, stride), shape_of(x), stride))
defvjp("avg_pool2d", lambda g, ans, x, kernel, stride:
                   col2im(broadcast_to(expand_dims(g, (4, 5)) / (kernel[0] * kernel[1]),
                                       shape_of(g) + tuple(kernel)), shape_of(x), stride))

defvjp("identity", lambda g, ans, x: g)
defvjp("scatter_add", lambda g, ans, u, index, shape: getitem(g, index), None)
defvjp("im2col",   lambda g, ans, x, kernel, stride: col2im(g, shape_of(x), stride))
defvjp("col2im",   lambda g, ans, cols, shape, stride: im2col(g, shape_of(cols)[-2:], stride))
