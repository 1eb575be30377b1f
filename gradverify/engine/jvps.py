"""Forward-mode rules: one Jacobian-vector product per primitive argument, in one registry.

A rule receives the tangent ``t`` of one argument, the primitive's result
``ans``, its positional arguments and static params, and returns that
argument's contribution ``(d ans / d arg) t`` to the result's tangent. The
contributions of all arguments with a tangent are summed (and broadcast to
``ans``'s shape) by ``core.jvp``.

Primitives that are linear in their differentiable arguments (``ops.py`` says
``linear=True``: add, sum, reshape, getitem, conv's im2col ...) need no rule of
their own: their JVP is the primitive applied to the tangents, with zeros for
arguments that have none (:func:`linear_jvp`).

Kink conventions match vjps.py (relu'(0) = abs'(0) = 0, ties share equally),
so ``<J v, u> == <v, J^T u>`` holds at every point, kinks included.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import NoDerivativeRule
from ..ops import PRIMITIVES
from .tracer import apply, conv2d, cos, exp, im2col, log, matmul, sigmoid, sin, sum, value, where
from .vjps import _balanced_eq, _keep, _tie_share, _window_share

__all__ = ["JVPS", "defjvp", "jvp_contribution"]

#: primitive name -> tuple of per-argument rules (None: no tangent flows), or
#: the string "linear" for primitives whose JVP is the primitive itself.
JVPS: dict[str, Any] = {}


def defjvp(name: str, *rules: Callable[..., Any] | None) -> None:
    """Register one JVP rule per positional argument of primitive ``name``."""
    JVPS[name] = tuple(rules)


def _zeros_like(a: Any) -> Any:
    if isinstance(a, (bool, int, float, complex)):
        return 0.0
    return np.zeros_like(value(a))


def linear_jvp(name: str, tangents: list[Any], args: tuple, params: dict) -> Any:
    """JVP of a linear primitive: apply it to the tangents (zeros where there is none)."""
    diff = PRIMITIVES[name].differentiable_args
    ins = [a if diff is not None and i not in diff else (t if t is not None else _zeros_like(a))
           for i, (a, t) in enumerate(zip(args, tangents))]
    return apply(name, *ins, **params)


def jvp_contribution(name: str, tangents: list[Any], ans: Any, args: tuple, params: dict) -> Any:
    """The tangent of a primitive's result given the tangents of its arguments.

    ``tangents[i]`` is ``None`` where argument ``i`` carries no tangent.

    Raises:
        NoDerivativeRule: if an argument has a tangent but no JVP rule.
    """
    rules = JVPS.get(name)
    if rules == "linear":
        return linear_jvp(name, tangents, args, params)
    total = None
    for i, t in enumerate(tangents):
        if t is None:
            continue
        rule = rules[i] if rules is not None and i < len(rules) else None
        if rule is None:
            names = PRIMITIVES[name].arg_names if name in PRIMITIVES else ()
            arg = names[i] if i < len(names) else "?"
            raise NoDerivativeRule(f"no JVP rule for primitive {name!r}, argument {i} ({arg})")
        c = rule(t, ans, *args, **params)
        total = c if total is None else total + c
    return total


for _name, _p in PRIMITIVES.items():
    if _p.linear:
        JVPS[_name] = "linear"

# The cheat-sheet (non-linear primitives).
defjvp("mul",      lambda t, ans, x, y: t * y,
                   lambda t, ans, x, y: x * t)
defjvp("div",      lambda t, ans, x, y: t / y,
                   lambda t, ans, x, y: -t * ans / y)
defjvp("pow",      lambda t, ans, x, y: t * y * x ** (y - 1),
                   lambda t, ans, x, y: t * ans * log(x))
defjvp("maximum",  lambda t, ans, x, y: t * _balanced_eq(x, ans, y),
                   lambda t, ans, x, y: t * _balanced_eq(y, ans, x))
defjvp("minimum",  lambda t, ans, x, y: t * _balanced_eq(x, ans, y),
                   lambda t, ans, x, y: t * _balanced_eq(y, ans, x))
defjvp("where",    None,
                   lambda t, ans, c, x, y: where(c, t, 0.0),
                   lambda t, ans, c, x, y: where(c, 0.0, t))

defjvp("square",   lambda t, ans, x: t * 2 * x)
defjvp("exp",      lambda t, ans, x: t * ans)
defjvp("log",      lambda t, ans, x: t / x)
defjvp("sqrt",     lambda t, ans, x: t * 0.5 / ans)
defjvp("abs",      lambda t, ans, x: t * np.sign(value(x)))
defjvp("sin",      lambda t, ans, x: t * cos(x))
defjvp("cos",      lambda t, ans, x: -t * sin(x))
defjvp("tanh",     lambda t, ans, x: t * (1 - ans * ans))
defjvp("sigmoid",  lambda t, ans, x: t * ans * (1 - ans))
defjvp("relu",     lambda t, ans, x: t * (value(x) > 0))
defjvp("softplus", lambda t, ans, x: t * sigmoid(x))

defjvp("max",      lambda t, ans, x, axis, keepdims:
                   sum(t * _tie_share(x, ans, axis, keepdims), axis, keepdims))
defjvp("logsumexp", lambda t, ans, x, axis, keepdims:
                   sum(t * exp(x - _keep(ans, axis, keepdims)), axis, keepdims))
defjvp("softmax",  lambda t, ans, x, axis: ans * (t - sum(ans * t, axis, keepdims=True)))
defjvp("log_softmax", lambda t, ans, x, axis: t - sum(exp(ans) * t, axis, keepdims=True))

defjvp("matmul",   lambda t, ans, a, b: matmul(t, b),
                   lambda t, ans, a, b: matmul(a, t))
defjvp("conv2d",   lambda t, ans, x, w, stride, padding: conv2d(t, w, stride, padding),
                   lambda t, ans, x, w, stride, padding: conv2d(x, t, stride, padding))
defjvp("max_pool2d", lambda t, ans, x, kernel, stride:
                   sum(im2col(t, kernel, stride) * _window_share(x, ans, kernel, stride), axis=(4, 5)))
del _name, _p
