"""JAX code with every ``custom_vjp``/``custom_jvp`` inside it replaced by its primal.

The exact reference for JAX code that *calls* custom-derivative functions
(a model whose activation or attention is a ``jax.custom_vjp``, a library
layer) is ``jax.vjp`` of the same code in which each custom call runs its
undecorated function: JAX then differentiates the primal's own operations,
independently of the hand-written rule. The code is traced once to a jaxpr
(:func:`jax.make_jaxpr`) and interpreted: a ``custom_vjp_call`` or
``custom_jvp_call`` equation evaluates its ``call_jaxpr`` (the primal),
``jit`` and ``checkpoint`` calls are entered, and higher-order primitives
(``scan``, ``cond``, ``while``) get their inner jaxprs rewritten the same way.
:class:`InlinedPrimal` records the names of the custom functions it
replaced, so a caller can tell code that calls none (plain JAX: no
independent reference exists) from code that does.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from ._common import NestedPrimal

__all__ = ["InlinedPrimal", "CUSTOM_CALLS", "calls_custom"]

#: Primitive names of custom-derivative calls whose ``call_jaxpr`` is the primal.
CUSTOM_CALLS = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr", "custom_jvp_call"})
#: Call primitives entered (their body interpreted in place); rematerialisation changes memory, not values.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint"})


class InlinedPrimal(NestedPrimal):
    """``fn`` with every custom-derivative call inside it run through its primal (see the module docstring).

    ``intercepted`` lists the names of the custom functions replaced so far
    (over every call). Non-array arguments (Python numbers, strings) are
    held static, as ``jax.jit(static_argnums=...)`` would.
    """

    def __call__(self, *args, **kwargs):
        leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
        dynamic = [i for i, v in enumerate(leaves) if _is_array(v)]

        def flat_fn(*values):
            full = list(leaves)
            for i, v in zip(dynamic, values):
                full[i] = v
            a, k = jax.tree_util.tree_unflatten(tree, full)
            return self.fn(*a, **k)

        values = [leaves[i] for i in dynamic]
        closed, shapes = jax.make_jaxpr(flat_fn, return_shape=True)(*values)
        out = _eval(closed.jaxpr, closed.consts, values, self._seen)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), out)


def _is_array(v: Any) -> bool:
    return isinstance(v, (jax.Array, np.ndarray, np.generic)) or hasattr(v, "aval")


def _eval(jaxpr: Any, consts: list, args: list, seen: list[str]) -> list:
    """Evaluate ``jaxpr`` with custom-derivative calls replaced by their primal (recording them in ``seen``)."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in CUSTOM_CALLS:
            body = eqn.params["call_jaxpr"]
            info = getattr(_open(body)[0], "debug_info", None)
            seen.append(str(eqn.params.get("name") or getattr(info, "func_name", None) or name))
            outs = _eval(*_open(body), invals, seen)
        elif name in _CALLS and _has_custom(eqn):
            body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            outs = _eval(*_open(body), invals, seen)
        else:
            params = _rewritten(eqn.params, seen) if _has_custom(eqn) else eqn.params
            bind = eqn.primitive.get_bind_params(params)  # a dict; (subfuns, dict) before JAX 0.7
            subfuns, bind = bind if isinstance(bind, tuple) else ((), bind)
            ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
            if ctx is None:
                outs = eqn.primitive.bind(*subfuns, *invals, **bind)
            else:
                with ctx:
                    outs = eqn.primitive.bind(*subfuns, *invals, **bind)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars]


def calls_custom(jaxpr: Any) -> bool:
    """Whether a custom-derivative call occurs in ``jaxpr`` (a ``Jaxpr``), its calls and control flow included."""
    return any(e.primitive.name in CUSTOM_CALLS or _has_custom(e) for e in jaxpr.eqns)


def _open(body: Any) -> tuple[Any, list]:
    """``(jaxpr, consts)`` of a ``ClosedJaxpr`` or an open ``Jaxpr``."""
    if isinstance(body, jcore.ClosedJaxpr):
        return body.jaxpr, list(body.consts)
    return body, []


def _has_custom(eqn: Any) -> bool:
    """Whether a custom-derivative call occurs anywhere inside ``eqn``'s sub-jaxprs."""
    for sub in jcore.jaxprs_in_params(eqn.params):
        for inner in sub.eqns:
            if inner.primitive.name in CUSTOM_CALLS or _has_custom(inner):
                return True
    return False


def _rewritten(params: dict, seen: list[str]) -> dict:
    """``params`` with each ``ClosedJaxpr`` (or tuple of them) inside re-traced through the primal interpreter."""
    def one(value):
        if isinstance(value, jcore.ClosedJaxpr):
            avals = [v.aval for v in value.jaxpr.invars]
            specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
            return jax.make_jaxpr(lambda *a: _eval(value.jaxpr, value.consts, list(a), seen))(*specs)
        if isinstance(value, tuple) and value and all(isinstance(x, jcore.ClosedJaxpr) for x in value):
            return tuple(one(x) for x in value)
        return value

    out = {k: one(v) for k, v in params.items()}
    for k, v in out.items():
        if isinstance(v, jcore.Jaxpr) and any(e.primitive.name in CUSTOM_CALLS for e in v.eqns):
            raise NotImplementedError(f"a custom-derivative call inside an open jaxpr parameter {k!r}")
    return out
