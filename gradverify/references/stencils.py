"""Finite-difference stencils: steps, central/forward/complex quotients, Richardson, Jacobians.

Every derivative here comes with an error estimate (as in numdifftools): the
difference between the same stencil at step ``h`` and ``h/2`` (or between a
low- and a high-order stencil), plus a rounding-noise estimate. The
comparison core (:mod:`gradverify.compare`) uses that estimate as the
allowance for the finite-difference noise itself, so a gap smaller than the
noise is never called a bug.

Steps are chosen from the dtype the function is evaluated in and the
magnitude of each coordinate: ``h = eps ** (1 / (min(order, 3) + 1)) * scale`` where
``scale`` is ``max(|x_i|, rms(x) / 10)`` (1 when ``x`` is all zeros). The step
actually taken, ``fl(x + h) - x``, is what divides the difference, so a
float32 coordinate perturbed in its own storage still gives an exact divisor.

Public functions work on plain callables ``f(x) -> array``:

* :func:`derivative` -- the directional derivative ``J v`` (one direction,
  cost independent of the size of ``x``);
* :func:`jacobian` -- every column of ``J`` (cost proportional to ``x.size``);
* :func:`gradient` -- :func:`jacobian` of a scalar function.

:class:`Projector` forms the projected differences ``<u, f(a) - f(b)>``
output by output with their rounding noise; every finite-difference
reference of the checks is built on it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..errors import SpecError

__all__ = ["METHODS", "MEMORY_BUDGET", "OK", "REFINE", "FAIL", "Derivative", "Projector", "default_step",
           "derivative", "jacobian", "gradient"]


#: Method name -> (formal order of accuracy, evaluations per derivative
#: including the error estimate).
METHODS = {
    "forward": (1, 3),
    "central": (2, 4),
    "central4": (4, 4),
    "richardson": (4, 4),
    "complex": (2, 2),
}

#: Verdicts of the ``judge`` callback of :func:`projected_gradients`.
OK, REFINE, FAIL = 0, 1, 2

# Rounding noise of one evaluated output element, in units of eps * |y|.
# A handful of ulps: each output element is a short chain of correctly
# rounded operations in any well-conditioned layer.
_ULPS_PER_OUTPUT = 4.0


def _eps(dtype) -> float:
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return float(np.finfo(dtype).eps)
    return float(np.finfo(np.float64).eps)


def default_step(x, dtype=np.float64, method: str = "richardson"):
    """Step per coordinate for ``method`` when evaluating in ``dtype``.

    ``eps ** (1 / (order + 1))`` balances truncation (``h ** order``) against
    rounding (``eps / h``); it is scaled by ``max(|x_i|, rms(x) / 10)`` so that a
    coordinate of size 1e4 and one of size 1e-4 are both moved by a similar
    *relative* amount. Cost: O(x.size), no function evaluations.
    """
    if method not in METHODS:
        raise SpecError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    order = METHODS[method][0]
    x = np.asarray(x, dtype=np.float64)
    # Richardson is formally 4th order, but its step is taken as for 3rd:
    # smaller than the textbook optimum, so the extrapolation starts inside
    # the asymptotic range more often (rounding stays ~eps**0.75).
    base = _eps(dtype) ** (1.0 / (min(order, 3) + 1))
    if method == "complex":
        base = 1e-20
    return base * coordinate_scale(x)


def coordinate_scale(x) -> np.ndarray:
    """``max(|x_i|, rms(x) / 10)`` per coordinate (1 where ``x`` is all zeros): the size a step is relative to.

    Non-finite coordinates (an ``-inf`` mask entry of a softmax input) are
    left out of the rms and get scale 1: moving them changes nothing
    (``-inf + h == -inf``), and they must not make every other step infinite.
    """
    x = np.asarray(x, dtype=np.float64)
    fin = np.isfinite(x)
    xf = x[fin] if not fin.all() else x
    rms = float(np.sqrt(np.mean(xf * xf))) if xf.size else 0.0
    scale = np.maximum(np.abs(x), 0.1 * rms if rms > 0 else 1.0)
    return np.where(fin, scale, 1.0) if not fin.all() else scale


@dataclasses.dataclass(frozen=True)
class Derivative:
    """A finite-difference result and its error estimate.

    Attributes:
        value: the derivative (array).
        error: an estimate of ``|value - true derivative|`` (same shape).
        step: the step used (scalar, or one per column for a Jacobian).
        method: the stencil name.
        evaluations: how many times the function was called.
    """

    value: np.ndarray
    error: np.ndarray
    step: object
    method: str
    evaluations: int


def _as_float64(y) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype.kind == "c":
        return arr.astype(np.complex128)
    return arr.astype(np.float64)


def _stencil(phi: Callable[[float], tuple[np.ndarray, float]], h: float, method: str, y0=None):
    """Apply ``method`` to ``phi(t) -> (y, t_actual)`` at step ``h``.

    Returns ``(value, error, evaluations)``; value and error are float64
    arrays shaped like ``y``. The error is the step-halving (or
    order-comparison) estimate plus the rounding noise of the difference,
    ``ulps * eps * (|y_a| + |y_b|) / |t_a - t_b|``. ``y0`` is ``phi(0)``
    when the caller has it.
    """
    evals = 0
    eps = _eps(np.float64) * _ULPS_PER_OUTPUT

    def at(t):
        nonlocal evals
        evals += 1
        y, ta = phi(t)
        return _as_float64(y), ta

    def quotient(ya, yb, ta, tb):
        dt = ta - tb
        return (ya - yb) / dt, eps * (np.abs(ya) + np.abs(yb)) / abs(dt)

    if method == "complex":
        y1, _ = at(1j * h)
        y2, _ = at(0.5j * h)
        d1 = np.imag(y1) / h
        d2 = np.imag(y2) / (0.5 * h)
        return d2, np.abs(d2 - d1) + eps * np.abs(d2), evals
    if method == "forward":
        if y0 is None:
            y0, _ = at(0.0)
        y0 = _as_float64(y0)
        d1, _ = quotient(*_pair(at(h), (y0, 0.0)))
        d2, n2 = quotient(*_pair(at(h / 2), (y0, 0.0)))
        return d2, np.abs(d2 - d1) + n2, evals
    (yp, tp), (ym, tm) = at(h), at(-h)
    d1, n1 = quotient(yp, ym, tp, tm)
    if method == "central4":
        (yp2, tp2), (ym2, tm2) = at(2 * h), at(-2 * h)
        d2h, n2h = quotient(yp2, ym2, tp2, tm2)
        # (8 D(h) - D(2h) * 2) / 6 with D the central quotients = the 5-point stencil
        d4 = (4.0 * d1 - d2h) / 3.0
        return d4, np.abs(d4 - d1) + (4.0 * n1 + n2h) / 3.0, evals
    (yq, tq), (yr, tr) = at(h / 2), at(-h / 2)
    d2, n2 = quotient(yq, yr, tq, tr)
    if method == "central":
        return d2, np.abs(d2 - d1) / 3.0 + n2, evals
    # Richardson: the h**2 terms of d1 and d2 cancel.
    return d2 + (d2 - d1) / 3.0, np.abs(d2 - d1) / 3.0 + (4.0 * n2 + n1) / 3.0, evals


def _pair(a, b):
    """(y_a, t_a), (y_b, t_b) -> y_a, y_b, t_a, t_b."""
    return a[0], b[0], a[1], b[1]


def _check_method(method):
    if method not in METHODS:
        raise SpecError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")


def derivative(f, x, v=None, *, method: str = "richardson", step: float | None = None) -> Derivative:
    """Directional derivative ``J(x) v`` of ``f`` by finite differences.

    ``v`` defaults to all ones (scalar ``x``: the ordinary derivative). The
    step is ``default_step`` of ``x`` scaled by ``1/|v|_inf`` unless given.
    Cost: 3-6 evaluations of ``f`` whatever the size of ``x``
    (:data:`METHODS`), computed in float64 (complex128 for ``"complex"``,
    which requires ``f`` to accept complex input and be analytic).
    """
    _check_method(method)
    x = np.asarray(x, dtype=np.float64)
    v = np.ones_like(x) if v is None else np.asarray(v, dtype=np.float64)
    if v.shape != x.shape:
        raise SpecError(f"direction v has shape {v.shape}, but x has shape {x.shape}")
    vmax = float(np.max(np.abs(v))) if v.size else 0.0
    if vmax == 0.0:
        y = _as_float64(f(x))
        return Derivative(np.zeros_like(y), np.zeros_like(y), 0.0, method, 1)
    if step is None:
        if method == "complex":
            step = 1e-20 / vmax
        else:
            step = float(np.max(default_step(x, np.float64, method))) / vmax

    vv = float(np.vdot(v, v))

    def phi(t):
        if isinstance(t, complex):
            return f(x + t * v), t
        xp = x + t * v
        # the displacement actually taken, projected on v
        return f(xp), float(np.vdot(xp - x, v)) / vv

    value, err, evals = _stencil(phi, step, method)
    return Derivative(value, err, step, method, evals)


#: Default cap, in bytes, on a dense Jacobian (value and error estimate).
MEMORY_BUDGET = 256 * 2**20


def jacobian(f, x, *, method: str = "richardson", step=None, memory_budget: int = MEMORY_BUDGET) -> Derivative:
    """Full Jacobian of ``f`` at ``x``, one finite-difference column per element.

    Returns a :class:`Derivative` whose value has shape
    ``f(x).shape + x.shape``. Cost: ``x.size`` times the per-method count of
    :data:`METHODS`; memory: the dense Jacobian and its error estimate,
    refused (``SpecError``) beyond ``memory_budget`` bytes -- the checks
    never build one: they differentiate a projection ``<u, f>`` element by
    element or along random directions.
    """
    _check_method(method)
    probe = np.asarray(f(np.array(x, dtype=np.float64)))
    need = 2 * 8 * probe.size * int(np.size(x))
    if need > memory_budget:
        raise SpecError(
            f"the Jacobian of {probe.size} outputs by {np.size(x)} inputs needs {need / 2**20:.0f} MiB, over "
            f"memory_budget={memory_budget / 2**20:.0f} MiB; use derivative() for J v products, or "
            "gradverify.check, which works on projections"
        )
    x = np.array(x, dtype=np.complex128 if method == "complex" else np.float64)
    if np.iscomplexobj(x) and method != "complex":
        raise SpecError("jacobian of a complex x is not supported")
    steps = np.broadcast_to(
        default_step(x.real, np.float64, method) if step is None else np.asarray(step, np.float64),
        x.shape,
    )
    y0 = _as_float64(f(x.real.copy()))
    cols, errs, total = [], [], 1
    flat = x.reshape(-1)
    for i in range(flat.size):
        x0 = flat[i]

        def phi(t, i=i, x0=x0):
            xp = x.copy().reshape(-1)
            xp[i] = x0 + t
            if method != "complex":
                xp = xp.real
                t = float(xp[i] - x0.real)
            return f(xp.reshape(x.shape)), t

        val, err, n = _stencil(phi, float(steps.reshape(-1)[i]), method, y0=y0)
        cols.append(val)
        errs.append(err)
        total += n
    value = np.stack(cols, axis=-1).reshape(y0.shape + x.shape) if cols else np.zeros(y0.shape + x.shape)
    error = np.stack(errs, axis=-1).reshape(y0.shape + x.shape) if errs else np.zeros(y0.shape + x.shape)
    return Derivative(value, error, steps, method, total)


def gradient(f, x, *, method: str = "richardson", step=None) -> Derivative:
    """Gradient of a scalar ``f`` at ``x`` (:func:`jacobian` of a scalar).

    Cost: ``x.size`` times the per-method count of :data:`METHODS`.
    """
    jac = jacobian(f, x, method=method, step=step)
    if jac.value.shape != np.shape(x):
        raise SpecError(
            f"gradient needs a scalar function; f returned shape {jac.value.shape[: jac.value.ndim - np.ndim(x)]}"
        )
    return jac


class Projector:
    """Evaluates ``<u, f>`` differences output by output, with their rounding noise."""

    def __init__(self, evaluate: Callable[[], np.ndarray], cotangent, eval_dtype, noise: float = 0.0):
        self.evaluate = evaluate
        self.u = np.asarray(cotangent, dtype=np.float64)
        self.absu = np.abs(self.u)
        self.eps = _eps(eval_dtype)
        #: measured noise of one value of ``<u, f>`` (:mod:`.noise`); each
        #: quotient's error gains ``2 * noise / step``
        self.noise = float(noise)
        self.evaluations = 0

    def output(self) -> np.ndarray:
        self.evaluations += 1
        y = np.asarray(self.evaluate())
        return y.astype(np.float64) if y.dtype.kind != "c" else y

    def diff(self, ya, yb, ta, tb):
        """Projected difference quotient, its rounding noise, and the output magnitude involved.

        The noise is a few ulps of each output the perturbation changed,
        plus one ulp of each output it left bitwise unchanged: a dependence
        below an output's resolution (a saturated softmax entry next to a
        1.0) hides there. The magnitude counts the changed outputs (all of
        them if none changed: the function is flat at this resolution).
        """
        d = ya - yb
        changed = d != 0
        weights = self.absu * (np.abs(ya) + np.abs(yb))
        moved = float(np.sum(weights * changed))
        still = float(np.sum(weights)) - moved
        mag = moved if changed.any() else still
        num = float(np.sum(self.u * d))
        dt = ta - tb
        noise = (self.eps * (_ULPS_PER_OUTPUT * moved + 0.5 * still) + 2.0 * self.noise) / abs(dt)
        return num / dt, noise, mag / 2.0

    def diff_many(self, ya, yb, dt):
        """:meth:`diff` for many pairs at once: rows of ``ya``, ``yb`` (flattened outputs), steps ``dt``.

        Returns arrays: quotients, noises, magnitudes, and whether any output moved.
        """
        d = ya - yb
        changed = d != 0
        w = self.absu.reshape(-1) * (np.abs(ya) + np.abs(yb))
        moved = np.sum(w * changed, axis=1)
        still = np.sum(w, axis=1) - moved
        any_moved = changed.any(axis=1)
        noise = (self.eps * (_ULPS_PER_OUTPUT * moved + 0.5 * still) + 2.0 * self.noise) / np.abs(dt)
        return (d @ self.u.reshape(-1)) / dt, noise, np.where(any_moved, moved, still) / 2.0, any_moved

