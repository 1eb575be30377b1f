"""Exact references: the reference engine tracing a numpy forward, a framework differentiating a primal.

:func:`exact_gradients` returns the gradient of ``<u, f>`` at the check's
float64 point from one of the exact references of
:mod:`gradverify.references`, with the reference's own evaluation of the
forward (the check compares it with the plain float64 evaluation: a traced
run that computed another function is not a reference). Anything that keeps
the reference from following the code raises :class:`Declined` with the
reason: the forward left the engine's trace (``np.asarray`` of a traced
value, a write into a plain preallocated array, an ``out=`` argument, a
numpy function without a derivative rule...), the primal is not
differentiable by its framework, or the reference does not apply to this
kind of code. Cost: one traced forward and one backward.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import Declined

__all__ = ["exact_gradients", "rounding_scale", "TRACE_AGREEMENT"]

#: The traced forward must reproduce the plain float64 evaluation to this
#: relative precision (of the output's largest entry); both compute the same
#: operations, so only a different function (a branch taken differently,
#: state read differently) departs from it.
TRACE_AGREEMENT = 1e-9


def exact_gradients(target: Any, name: str, cotangent: np.ndarray, dtype: Any = np.float64
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The exact reference ``name`` for ``target``: gradients by input name (as float64), and its forward output.

    ``dtype`` is the precision the reference computes in: float64 for the
    reference itself; float32 to measure how much its result moves with
    the rounding (:func:`rounding_scale`).

    Raises:
        Declined: the reference does not apply, or cannot follow the code (the reason says which).
    """
    if name not in target.exact_references():
        applies = target.exact_references()
        raise Declined(f"against={name!r} does not apply to {target.kind} code of this kind"
                       + (f" (its exact reference is {applies[0]!r})" if applies else
                          " (it has no exact reference: its gradient comes from its own framework)"))
    if name == "reference":
        return _engine(target, cotangent, dtype)
    return target.primal_gradients(cotangent, dtype=dtype)


def _engine(target: Any, cotangent: np.ndarray, dtype: Any = np.float64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The reference engine's reverse mode through the code's own numpy forward."""
    from ..engine import TraceLost, numpy_vjp

    leaves = {k: np.array(v, dtype=dtype) for k, v in target.point.items()}
    target.random.restore()
    try:
        out, vjp_fn = numpy_vjp(target.traced_call, leaves)
    except TraceLost as exc:
        raise Declined(exc.reason, exc.where) from exc
    except Exception as exc:  # noqa: BLE001 - the code did something the engine's arrays cannot do
        raise Declined(f"the forward raised {type(exc).__name__} on the engine's traced arrays: {exc}") from exc
    structure = getattr(target, "structure", None)
    ct = np.asarray(cotangent, dtype=dtype)
    if structure is not None:
        try:
            flat = structure.join(out)
        except Exception as exc:  # noqa: BLE001 - the traced outputs differ in structure from the plain ones
            raise Declined(f"the traced forward returned other outputs than the plain one ({exc})") from exc
        ct_tree = structure.split(ct)
    else:
        if isinstance(out, (tuple, list, dict)):
            raise Declined("the traced forward returned several outputs where the plain one returned one array")
        flat, ct_tree = np.asarray(out), ct
    if flat.shape != ct.shape:
        raise Declined(f"the traced forward returned shape {flat.shape}, the plain one {ct.shape}")
    out = flat
    try:
        grads = vjp_fn(ct_tree)
    except TraceLost as exc:
        raise Declined(exc.reason, exc.where) from exc
    return {k: np.asarray(grads[k], dtype=np.float64) for k in target.point}, out


def rounding_scale(target: Any, name: str, cotangent: np.ndarray, reference: dict[str, np.ndarray]
                   ) -> dict[str, np.ndarray] | None:
    """How far rounding alone moves each element of the reference, scaled to float64: ``|r32 - r64| * eps64 / eps32``.

    The same reference computed in float32 differs from the float64 one by
    the conditioning of the computation times float32's eps; scaled to
    float64's eps that is the rounding any correct float64 formula for the
    gradient carries (cancelling terms, saturated units), which a fixed
    relative tolerance cannot know. None where the float32 run declines.
    Cost: one more traced forward and backward.
    """
    try:
        low, _ = exact_gradients(target, name, cotangent, dtype=np.float32)
    except Declined:
        return None
    ratio = float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)
    with np.errstate(invalid="ignore"):
        return {k: np.nan_to_num(np.abs(low[k] - reference[k]) * ratio, nan=0.0, posinf=0.0) for k in reference}
