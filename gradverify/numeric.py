"""Numerical differentiation: stencils, Richardson extrapolation, complex step.

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

:func:`projected_gradients` is the workhorse of the checks: the gradient of
``<u, f(point)>`` for a fixed cotangent ``u``, element by element, with
adaptive step refinement, one-sided differences for kink diagnosis, and an
evaluation count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import SpecError

__all__ = [
    "METHODS",
    "MEMORY_BUDGET",
    "Derivative",
    "ElementDerivative",
    "default_step",
    "derivative",
    "jacobian",
    "gradient",
    "projected_gradients",
    "directional_mismatch",
    "directional_mismatches",
    "Projection",
    "taylor_test",
    "TaylorTest",
]

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
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    scale = np.maximum(np.abs(x), 0.1 * rms if rms > 0 else 1.0)
    return base * scale


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


# --------------------------------------------------------------------------
# The checks' workhorse.


@dataclasses.dataclass
class ElementDerivative:
    """Per-element result of :func:`projected_gradients` for one tensor.

    Attributes:
        value: numerical gradient of ``<u, f>`` (float64, the tensor's shape).
        error: estimated absolute error of ``value``.
        left, right: one-sided derivatives at the smallest step tried
            (NaN where not computed); they differ at a kink.
        kink: True where one-sided differences disagree at every step tried.
        sensitivity: ``sum_k |u_k| |y_k| / scale`` over the outputs the
            element moves (all outputs if it moves none), ``scale`` being the
            element's magnitude as used for the step: the size of the terms
            a backward pass sums for this element, which sets the rounding
            error of an analytic gradient computed in low precision.
    """

    value: np.ndarray
    error: np.ndarray
    left: np.ndarray
    right: np.ndarray
    kink: np.ndarray
    sensitivity: np.ndarray


def projected_gradients(
    evaluate: Callable[[], np.ndarray],
    point: Mapping[str, np.ndarray],
    cotangent: np.ndarray,
    *,
    eval_dtype=np.float64,
    judge: Callable[[str, int, float, float], int] | None = None,
    max_refinements: int = 20,
    step_scale: float = 1.0,
    indices: Mapping[str, Sequence[int]] | None = None,
    evaluate_batch: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None = None,
    batch_bytes: int = 64 * 2**20,
    judge_many: Callable[[str, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    tolerance: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> tuple[dict[str, ElementDerivative], int]:
    """Gradient of ``phi = <u, evaluate()>`` with respect to every element of ``point``.

    ``eval_dtype`` is the precision ``evaluate`` computes in (it sets the
    step and the rounding-noise estimate). ``point`` maps names to the
    arrays ``evaluate`` reads; each element is
    perturbed *in place* (and restored bit for bit), so layer parameters are
    checked in their own storage. Richardson-extrapolated central differences
    at ``h`` and ``h/2`` give each element's value and error estimate:
    ``|D(h) - D(h/2)| / 3`` plus the rounding noise of the outputs
    (``eps * ulps * sum |u| |y|`` over those the perturbation changed, one
    ulp of each of the others, divided by the step). The difference is
    taken output by output before projecting, so outputs the element does
    not touch cancel exactly rather than through a rounded sum.

    ``judge(name, flat_index, value, error)`` returns :data:`OK`,
    :data:`REFINE` or :data:`FAIL`. Elements not judged ``OK`` at the
    first two levels walk a whole step sequence (see :func:`_settle`:
    larger steps where rounding dominates, halving steps down to the
    resolution of the storage, a failure re-found 32x lower, unconverged
    elements returned with an infinite error). For every element,
    one-sided differences ``(phi(h) - phi(0)) / h`` and
    ``(phi(0) - phi(-h)) / h`` at the two smallest steps (no extra
    evaluations) decide whether it sits on a kink (their gap does not
    shrink with the step).

    ``indices`` (name -> flat indices) restricts the work to those elements
    of those arrays (others are left at zero and absent names skipped).

    ``evaluate_batch(name, flat_indices, values)``, when given, evaluates
    many single-element perturbations in one call (row ``b``: element
    ``flat_indices[b]`` of ``point[name]`` set to ``values[b]``, all else at
    the base point) and returns the stacked outputs; the first four
    evaluations of every element go through it in chunks of at most
    ``batch_bytes`` of output (``torch.func.vmap``, ``jax.vmap``...), judged
    a chunk at a time by ``judge_many(name, flat_indices, values, errors)``
    when given (the array form of ``judge``).

    ``tolerance(name, values)``, when given (with a judge, evaluating in
    float64), is the base tolerance at reference ``values``; it turns on
    the *screen* for tensors of at least :data:`SCREEN_MIN_SIZE` elements:
    one central difference per element at ``h / SCREEN_STEP_DIVISOR``
    (2 evaluations). An element is settled by it when the judge says OK
    with four times its rounding noise as the error, and its one-sided
    slopes agree to the tolerance (a kink, or curvature that one difference
    cannot resolve, goes on to Richardson, so kinks are still named).
    First :data:`SCREEN_SAMPLES` elements drawn at random (seeded by the
    tensor size) run both the screen and Richardson; the rest of the tensor
    is screened only if the screen settles at least half of them and each
    one it settles agrees with its Richardson value to a quarter of the
    tolerance (plus both error estimates) -- otherwise the tensor runs
    Richardson, at a cost of 2 evaluations per sampled element.
    The step is small (its truncation, ``(h / SCREEN_STEP_DIVISOR)**2``
    times the third derivative over 6, is 256x below that of Richardson's
    first level), so a gradient the screen passes differs from the true one
    by less than the tolerance plus that truncation, and the sample checks
    the truncation where it could matter: a tensor whose elements share a
    length scale. What the screen
    cannot see is a single element whose truncation alone exceeds the
    tolerance *and* a gradient wrong by exactly that amount (an analytic
    side that is itself a central difference with this step); an element
    whose truncation exceeds the tolerance fails the screen when its
    gradient is right, and goes on to Richardson.

    Cost: 4 evaluations per element (2 for elements the screen settles, 6
    for sampled ones), +2 per refinement, +1 for the base point. Returns
    the per-name results and the evaluation count.
    """
    proj = _Projector(evaluate, cotangent, eval_dtype)
    phi_out, diff = proj.output, proj.diff
    y0 = phi_out()

    out: dict[str, ElementDerivative] = {}
    for name, arr in point.items():
        chosen = None if indices is None or name not in indices else list(indices[name])
        if indices is not None and chosen is None:
            continue
        steps = default_step(arr, eval_dtype, "richardson")
        scale = (steps / default_step(np.ones(1), eval_dtype, "richardson")[0]).reshape(-1)
        steps = np.maximum(steps * step_scale, 0).reshape(-1)
        sensitivity = np.zeros(arr.size)
        value = np.zeros(arr.size)
        error = np.zeros(arr.size)
        left = np.full(arr.size, np.nan)
        right = np.full(arr.size, np.nan)
        kink = np.zeros(arr.size, dtype=bool)
        order = list(range(arr.size)) if chosen is None else chosen
        first_steps = {}
        for i in order:
            h = float(steps[i]) or 1e-3
            if arr.dtype.kind == "f":
                # at least a few ulps of the storage, or float16 rounds the step away
                h = max(h, 8.0 * float(np.spacing(np.abs(arr.flat[i]).astype(arr.dtype))))
            first_steps[i] = h

        # the judge's array form for this tensor (None without a judge)
        many = None
        if judge_many is not None:
            many = lambda idx, v, e: judge_many(name, idx, v, e)  # noqa: E731
        elif judge is not None:
            many = lambda idx, v, e: np.array(  # noqa: E731
                [judge(name, int(i), a, b) for i, a, b in zip(idx, v, e)])

        def run_standard(order):
            """Richardson at h, h/2 for ``order`` (batched where possible), then the walk where unsettled."""
            batched = {}
            if evaluate_batch is not None:
                # First pass over whole chunks as array arithmetic; only elements
                # the judge does not settle keep their levels for the walk.
                settled = _first_pass_batched(evaluate_batch, name, arr, order, first_steps, y0.shape, batch_bytes,
                                              proj, scale, many, y0)
                for i, (v, e, sens, levels, one_sided) in settled.items():
                    value[i], error[i], sensitivity[i] = v, e, sens
                    left[i], right[i], kink[i] = one_sided
                    if levels is not None:
                        batched[i] = levels
                order = list(batched)
            for i in order:
                idx = np.unravel_index(i, arr.shape)
                x0 = arr[idx].copy()
                x0f = float(x0)

                def at(t):
                    arr[idx] = x0f + t
                    ta = float(arr[idx]) - x0f
                    try:
                        y = phi_out()
                    finally:
                        arr[idx] = x0
                    return y, ta

                def level(h):
                    yp, tp = at(h)
                    ym, tm = at(-h)
                    d, n, mag = diff(yp, ym, tp, tm)
                    return (yp, tp, ym, tm, d, n, mag, not np.array_equal(yp, ym))

                def diagnose(levels):
                    # Kink diagnosis from the two smallest steps tried (no new
                    # evaluations): at a kink each one-sided derivative is stable
                    # while the gap between them stays; for a smooth function the
                    # gap halves with the step (where nothing is stable, no kink).
                    gaps = []
                    for lv in levels[-2:]:
                        yp, tp, ym, tm = lv[:4]
                        r, rn, _ = diff(yp, y0, tp, 0.0)
                        lft, ln, _ = diff(y0, ym, 0.0, tm)
                        gaps.append((r, lft, rn + ln))
                    (r1, l1, _), (r2, l2, n2) = gaps
                    left[i], right[i] = l2, r2
                    g1, g2 = abs(r1 - l1), abs(r2 - l2)
                    stable = abs(r1 - r2) <= 0.1 * g2 + 4 * n2 and abs(l1 - l2) <= 0.1 * g2 + 4 * n2
                    kink[i] = g2 > 4 * n2 and g2 > 0.75 * g1 and stable

                h = first_steps[i]
                levels = batched.pop(i, None)
                if levels is None:
                    levels = [level(h), level(h / 2)]
                    value[i], error[i] = _richardson(levels[0], levels[1])
                    sensitivity[i] = levels[1][6] / scale[i]
                if judge is None:
                    continue
                verdict = judge(name, i, value[i], error[i])
                if verdict == OK:
                    diagnose(levels)  # a valid subgradient at a kink still names the kink
                    continue
                # Not clearly settled: walk a whole step sequence (see _settle).
                floor_h = 64 * _eps(arr.dtype if arr.dtype.kind == "f" else np.float64) * max(abs(x0f), 1e-300)
                value[i], error[i], levels = _settle(
                    level, levels, h, floor_h, lambda v, e: judge(name, i, v, e), max_refinements
                )
                diagnose(levels)

        if (tolerance is not None and many is not None and len(order) >= SCREEN_MIN_SIZE
                and np.dtype(eval_dtype) == np.float64):
            # Screen: one central difference per element at a small step.
            # A random sample runs both the screen and Richardson first; the
            # rest of the tensor is screened only if the screen settles at
            # least half of the sample and agrees with Richardson on each
            # element it settles. Elements the screen does not settle run
            # Richardson.
            def screened(elements):
                sc = _screen(evaluate_batch, name, arr, elements, first_steps, proj, y0, batch_bytes, scale)
                idx = np.asarray(elements, dtype=np.int64)
                verdicts = np.asarray(many(idx, sc["value"], 4.0 * sc["noise"]))
                tb = np.asarray(tolerance(name, sc["value"]), dtype=np.float64)
                # one-sided slopes apart by more than the tolerance at this small step: a kink, or
                # curvature too strong for one central difference
                sc["settled"] = (verdicts == OK) & (np.abs(sc["right"] - sc["left"]) <= tb) & np.isfinite(
                    sc["value"])
                return sc

            pick = np.random.default_rng(len(order)).permutation(len(order))[:SCREEN_SAMPLES]
            sample = [order[k] for k in sorted(pick)]
            sc = screened(sample)
            run_standard(sample)
            k_s = np.flatnonzero(sc["settled"])
            ref, ref_err = value[sample][k_s], error[sample][k_s]
            trusted = 2 * len(k_s) >= len(sample) and bool(np.all(np.isfinite(ref_err)) and np.all(
                np.abs(sc["value"][k_s] - ref)
                <= np.asarray(tolerance(name, ref)) / 4 + 2 * (ref_err + sc["noise"][k_s])))
            taken = set(sample)
            order = [i for i in order if i not in taken]
            if trusted:
                sc = screened(order)
                done = np.asarray(order, dtype=np.int64)[sc["settled"]]
                value[done], error[done] = sc["value"][sc["settled"]], sc["noise"][sc["settled"]]
                sensitivity[done] = sc["sensitivity"][sc["settled"]]
                left[done], right[done] = sc["left"][sc["settled"]], sc["right"][sc["settled"]]
                order = [i for i, ok in zip(order, sc["settled"]) if not ok]
        run_standard(order)
        shape = arr.shape
        out[name] = ElementDerivative(
            value.reshape(shape), error.reshape(shape), left.reshape(shape), right.reshape(shape),
            kink.reshape(shape), sensitivity.reshape(shape)
        )
    return out, proj.evaluations


#: Tensors of at least this many elements are screened (see
#: :func:`projected_gradients`); smaller ones go straight to Richardson.
SCREEN_MIN_SIZE = 64
#: Elements per tensor, drawn at random, that run both the screen and
#: Richardson before the rest of the tensor is screened.
SCREEN_SAMPLES = 16
#: The screening step is the Richardson step divided by this.
SCREEN_STEP_DIVISOR = 16.0


def _screen(evaluate_batch, name, arr, order, first_steps, proj, y0, batch_bytes, scale) -> dict[str, np.ndarray]:
    """One central difference per element at ``h / SCREEN_STEP_DIVISOR``: value, noise, one-sided slopes.

    Returns arrays over ``order``: ``value`` (the central quotient),
    ``noise`` (its rounding noise), ``left``/``right`` (the one-sided
    quotients), ``sensitivity`` (as in :class:`ElementDerivative`).
    Evaluations go through ``evaluate_batch`` in chunks where given, else
    ``arr`` is moved in place; they are counted on ``proj``.
    """
    x = np.ascontiguousarray(arr).reshape(-1).astype(np.float64)
    idx_all = np.asarray(order, dtype=np.int64)
    h = np.array([first_steps[int(i)] for i in order]) / SCREEN_STEP_DIVISOR
    if arr.dtype.kind == "f":
        h = np.maximum(h, 8.0 * np.spacing(np.abs(x[idx_all]).astype(arr.dtype)).astype(np.float64))
    x0 = x[idx_all]
    values = np.stack([x0 + h, x0 - h], axis=1).astype(arr.dtype)  # (n, 2) as stored
    actual = values.astype(np.float64) - x0[:, None]
    out_size = int(np.prod(y0.shape))
    base = y0.reshape(-1)
    u = proj.u.reshape(-1)
    out = {k: np.empty(len(order)) for k in ("value", "noise", "left", "right", "sensitivity")}
    # a chunk of outputs at a time (at most batch_bytes), reduced before the next
    chunk = max(1, batch_bytes // max(1, 8 * out_size * 2))
    for start in range(0, len(order), chunk):
        sl = slice(start, start + chunk)
        n = len(idx_all[sl])
        if evaluate_batch is not None:
            ys = np.asarray(evaluate_batch(name, np.repeat(idx_all[sl], 2), values[sl].reshape(-1)),
                            dtype=np.float64).reshape(n, 2, out_size)
            proj.evaluations += 2 * n
        else:
            ys = np.empty((n, 2, out_size))
            for k, i in enumerate(idx_all[sl]):
                where = np.unravel_index(int(i), arr.shape)
                keep = arr[where].copy()
                for side in (0, 1):
                    arr[where] = values[start + k, side]
                    try:
                        ys[k, side] = np.asarray(proj.output(), dtype=np.float64).reshape(-1)
                    finally:
                        arr[where] = keep
        a = actual[sl]
        out["value"][sl], out["noise"][sl], mags, _ = proj.diff_many(ys[:, 0], ys[:, 1], a[:, 0] - a[:, 1])
        out["sensitivity"][sl] = mags / scale[idx_all[sl]]
        out["right"][sl] = ((ys[:, 0] - base) @ u) / a[:, 0]
        out["left"][sl] = ((base - ys[:, 1]) @ u) / -a[:, 1]
    return out


def _first_pass_batched(evaluate_batch, name, arr, order, first_steps, out_shape, batch_bytes, proj, scale, judge,
                        y0):
    """The first two levels of every element from batched evaluations, as array arithmetic.

    Row ``b`` of each batch sets one element to ``x0 +- h`` or ``x0 +- h/2``
    (the stored value fixes the step actually taken). Returns flat index ->
    ``(value, error, sensitivity, levels, (left, right, kink))`` where ``levels`` (the tuples of
    :func:`projected_gradients`) is kept only for elements that ``judge(i,
    value, error)`` does not settle as OK, so memory stays one chunk of
    outputs. Counts the evaluations on ``proj``.
    """
    per_element = 4
    out_size = int(np.prod(out_shape))
    chunk = max(1, batch_bytes // max(1, 8 * out_size * per_element))
    x = np.ascontiguousarray(arr).reshape(-1).astype(np.float64)
    u = proj.u.reshape(-1)
    absu = proj.absu.reshape(-1)
    signs = np.array([1.0, -1.0, 0.5, -0.5])
    shape = tuple(out_shape)
    out = {}
    for start in range(0, len(order), chunk):
        part = np.asarray(order[start:start + chunk], dtype=np.int64)
        n = len(part)
        idx = np.repeat(part, per_element)
        x0 = x[idx]
        h = np.repeat([first_steps[int(i)] for i in part], per_element)
        values = (x0 + np.tile(signs, n) * h).astype(arr.dtype)
        actual = (values.astype(np.float64) - x0).reshape(n, per_element)
        ys = np.asarray(evaluate_batch(name, idx, values), dtype=np.float64).reshape(n, per_element, out_size)
        proj.evaluations += len(idx)
        quot, noise, mags = [], [], []
        for a, b in ((0, 1), (2, 3)):
            q, n_, m, _ = proj.diff_many(ys[:, a], ys[:, b], actual[:, a] - actual[:, b])
            quot.append(q)
            noise.append(n_)
            mags.append(m)
        val = quot[1] + (quot[1] - quot[0]) / 3.0
        err = np.abs(quot[1] - quot[0]) / 3.0 + (4.0 * noise[1] + noise[0]) / 3.0
        sens = mags[1] / scale[part]
        # one-sided differences at both steps (the kink diagnosis of projected_gradients)
        base = y0.reshape(-1)
        sides = []
        for a, b in ((0, 1), (2, 3)):
            right = ((ys[:, a] - base) @ u) / actual[:, a]
            left = ((base - ys[:, b]) @ u) / -actual[:, b]
            n_lr = proj.eps * _ULPS_PER_OUTPUT * ((np.abs(ys[:, a]) + np.abs(ys[:, b]) + 2 * np.abs(base)) @ absu) \
                / np.abs(actual[:, a])
            sides.append((right, left, n_lr))
        (r1, l1, _), (r2, l2, n2) = sides
        g1, g2 = np.abs(r1 - l1), np.abs(r2 - l2)
        stable = (np.abs(r1 - r2) <= 0.1 * g2 + 4 * n2) & (np.abs(l1 - l2) <= 0.1 * g2 + 4 * n2)
        kinks = (g2 > 4 * n2) & (g2 > 0.75 * g1) & stable
        verdicts = judge(part, val, err) if judge is not None else np.full(n, OK)
        for k, i in enumerate(part.tolist()):
            levels = None
            if verdicts[k] != OK:
                levels = [
                    (ys[k, a].reshape(shape).copy(), actual[k, a], ys[k, b].reshape(shape).copy(), actual[k, b],
                     quot[lv][k], noise[lv][k], mags[lv][k], bool(np.any(ys[k, a] != ys[k, b])))
                    for lv, (a, b) in enumerate(((0, 1), (2, 3)))
                ]
            out[i] = (float(val[k]), float(err[k]), float(sens[k]), levels, (float(l2[k]), float(r2[k]), bool(kinks[k])))
    return out


class _Projector:
    """Evaluates ``<u, f>`` differences output by output, with their rounding noise."""

    def __init__(self, evaluate: Callable[[], np.ndarray], cotangent, eval_dtype):
        self.evaluate = evaluate
        self.u = np.asarray(cotangent, dtype=np.float64)
        self.absu = np.abs(self.u)
        self.eps = _eps(eval_dtype)
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
        noise = self.eps * (_ULPS_PER_OUTPUT * moved + 0.5 * still) / abs(dt)
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
        noise = self.eps * (_ULPS_PER_OUTPUT * moved + 0.5 * still) / np.abs(dt)
        return (d @ self.u.reshape(-1)) / dt, noise, np.where(any_moved, moved, still) / 2.0, any_moved


@dataclasses.dataclass(frozen=True)
class Projection:
    """A directional check of one tensor: analytic ``<g, v>`` against finite differences.

    Attributes:
        analytic: ``<g, v>`` from the gradient under test.
        numeric: the finite-difference directional derivative of ``<u, f>``
            along ``v`` (``analytic + mismatch``).
        mismatch: Richardson-extrapolated ``numeric - analytic``.
        error: estimated error of ``mismatch`` (truncation + rounding).
        magnitude: ``sum |u_k| |y_k| / t`` over the outputs the probe moved,
            ``t`` the step: the size of the terms the projection sums.
        evaluations: function evaluations used.
    """

    analytic: float
    numeric: float
    mismatch: float
    error: float
    magnitude: float
    evaluations: int


def directional_mismatch(
    evaluate: Callable[[], np.ndarray],
    arr: np.ndarray,
    direction: np.ndarray,
    grad: np.ndarray,
    cotangent: np.ndarray,
    *,
    eval_dtype=np.float64,
    y0: np.ndarray | None = None,
    judge: Callable[[float, float], int] | None = None,
    max_refinements: int = 20,
) -> Projection:
    """Compare ``<grad, v>`` with the directional derivative of ``<u, evaluate()>`` along ``v``.

    ``arr`` is moved in place to ``arr + t v`` (restored bit for bit). The
    displacement actually stored (float32 storage rounds it) enters the
    analytic side too: at each step ``t`` the mismatch
    ``(phi(+) - phi(-) - <g, d+ - d->) / s`` is formed, ``s`` the step along
    ``v``, and the mismatches at ``t`` and ``t/2`` are Richardson-extrapolated,
    so rounding of the displacement cancels exactly and only the gradient's
    error remains. Where ``judge(mismatch, error)`` is not :data:`OK`, the
    step sequence of :func:`projected_gradients` settles the value.

    Cost: 4 evaluations (more where unsettled; +1 if ``y0`` is not given),
    independent of the size of ``arr``. :func:`directional_mismatches` does
    several directions at once.
    """
    (p,) = directional_mismatches(
        evaluate, arr, [direction], grad, cotangent, eval_dtype=eval_dtype, y0=y0,
        judge=None if judge is None else (lambda k, m, e: judge(m, e)), max_refinements=max_refinements,
    )
    return p


def directional_mismatches(
    evaluate: Callable[[], np.ndarray],
    arr: np.ndarray,
    directions: Sequence[np.ndarray],
    grad: np.ndarray,
    cotangent: np.ndarray,
    *,
    eval_dtype=np.float64,
    y0: np.ndarray | None = None,
    judge: Callable[[int, float, float], int] | None = None,
    max_refinements: int = 20,
    evaluate_rows: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Projection]:
    """:func:`directional_mismatch` along each of ``directions``, the first levels evaluated together.

    The four displaced points of every direction (``+-t``, ``+-t/2``) are
    formed first; ``evaluate_rows(rows)``, when given, evaluates them in one
    call (row ``b`` is a whole value of ``arr``; ``torch.func.vmap`` /
    ``jax.vmap`` behind it), otherwise ``arr`` is moved in place for each.
    ``judge(k, mismatch, error)`` (``k`` the direction's position) decides
    which directions walk the step sequence, one evaluation at a time.

    Cost: 4 evaluations per direction (more where unsettled; the first
    direction also counts ``y0`` if it is not given).
    """
    proj = _Projector(evaluate, cotangent, eval_dtype)
    if y0 is None:
        y0 = proj.output()
    counted = proj.evaluations  # y0's evaluation goes to the first direction's count
    g = np.asarray(grad, dtype=np.float64)
    x0 = arr.copy()
    x064 = x0.astype(np.float64)
    rms = float(np.sqrt(np.mean(x064 * x064))) if x064.size else 0.0
    scale = rms if rms > 0 else 1.0
    floor = 64 * _eps(arr.dtype if arr.dtype.kind == "f" else np.float64) * max(
        float(np.max(np.abs(x064))) if x064.size else 0.0, 1e-300)
    plans = []
    for direction in directions:
        v = np.asarray(direction, dtype=np.float64)
        vv = float(np.vdot(v, v))
        if vv == 0.0:
            plans.append(None)
            continue
        t = default_step(np.ones(1), eval_dtype, "richardson")[0] * scale / float(np.sqrt(vv / v.size))
        if arr.dtype.kind == "f":
            t = max(t, 16.0 * _eps(arr.dtype) * scale / float(np.sqrt(vv / v.size)))
        plans.append((v, vv, t))
    steps = [(k, s) for k, plan in enumerate(plans) if plan is not None
             for s in (plan[2], -plan[2], plan[2] / 2, -plan[2] / 2)]
    first_levels = {}  # direction -> its levels at t and t/2
    if steps:
        # Every displaced point x + s v at once, as stored in arr's dtype (in
        # place: large temporaries cost more than the arithmetic).
        stored = np.empty((len(steps),) + arr.shape, dtype=arr.dtype)
        row = np.empty(arr.shape) if arr.dtype != np.float64 else None
        for b, (k, st) in enumerate(steps):
            out_row = stored[b] if row is None else row
            np.multiply(plans[k][0], st, out=out_row)
            np.add(out_row, x064, out=out_row)
            if row is not None:
                stored[b] = row
        if evaluate_rows is not None:
            ys = np.asarray(evaluate_rows(stored)).astype(np.float64).reshape((len(stored),) + y0.shape)
            proj.evaluations += len(stored)
        else:
            ys = []
            for point in stored:
                arr[...] = point
                try:
                    ys.append(proj.output())
                finally:
                    arr[...] = x0
        # The first two levels of every direction as array arithmetic: the
        # displacement actually stored (float32 storage rounds x + s v) of
        # each pair of rows, its step along v and the analytic <g, d>.
        pairs = len(steps) // 2
        disp = (stored[0::2].astype(np.float64, copy=False) - stored[1::2].astype(np.float64, copy=False)).reshape(
            pairs, -1)
        vrows = np.stack([plans[k][0].reshape(-1) for k, _ in steps[0::4]])
        vvs = np.array([plans[k][1] for k, _ in steps[0::4]])
        along = np.einsum("kpj,kj->kp", disp.reshape(len(vrows), 2, -1), vrows).reshape(-1) / np.repeat(vvs, 2)
        ana = (disp @ g.reshape(-1)) / along
        flat = np.asarray(ys).reshape(len(steps), -1)
        quot, noise, mag, moved = proj.diff_many(flat[0::2], flat[1::2], along)
        for p_, (k, _) in enumerate(steps[0::2]):
            s_ = float(along[p_])
            first_levels.setdefault(k, []).append(
                (None, s_, None, -s_, float(quot[p_] - ana[p_]), float(noise[p_]), float(mag[p_]), bool(moved[p_])))
    out = []
    for k, plan in enumerate(plans):
        if plan is None:
            out.append(Projection(0.0, 0.0, 0.0, 0.0, 0.0, counted))
            counted = 0
            continue
        v, vv, t = plan

        def at(step, v=v):
            arr[...] = x064 + step * v
            point = arr.copy()
            try:
                y = proj.output()
            finally:
                arr[...] = x0
            return y, point

        def level(step, v=v, vv=vv):
            (yp, xp), (ym, xm) = at(step), at(-step)
            # the displacement actually stored (float32 storage rounds x + s v)
            disp = xp.astype(np.float64) - xm.astype(np.float64)
            s = float(np.vdot(v, disp)) / vv
            num, noise, mag = proj.diff(yp, ym, s, 0.0)
            ana = float(np.vdot(g, disp)) / s
            # the level tuple _settle reads: [1], [3] the steps, [4] the quotient, [5] its noise,
            # [7] whether any output moved
            return (None, s, None, -s, num - ana, noise, mag, not np.array_equal(yp, ym))

        before = proj.evaluations
        first = first_levels[k]
        mismatch, error = _richardson(*first)
        if judge is not None and judge(k, mismatch, error) != OK:
            floor_t = floor / float(np.max(np.abs(v)))
            mismatch, error, _ = _settle(level, first, t, floor_t, lambda m, e, k=k: judge(k, m, e),
                                         max_refinements)
        analytic = float(np.vdot(g, v))
        used = counted + 4 + proj.evaluations - before
        counted = 0
        out.append(Projection(analytic, analytic + mismatch, mismatch, error, first[1][6] / scale, used))
    return out


@dataclasses.dataclass(frozen=True)
class TaylorTest:
    """Taylor-remainder convergence along one direction: a verdict with no tolerance.

    ``R(h) = |phi(x + h v) - phi(x) - h <g, v>|`` shrinks like ``h**2`` when
    ``g`` is the gradient and like ``h`` when it is not.

    Attributes:
        steps: the steps ``h`` tried (halving).
        remainders: ``R(h)`` at each step.
        rates: ``log2(R(h) / R(h/2))`` between successive steps (~2 right,
            ~1 wrong); steps whose remainder sank under rounding are dropped.
        rate: the median of the last three rates (None if none is usable).
        evaluations: function evaluations used.
    """

    steps: tuple
    remainders: tuple
    rates: tuple
    rate: float | None
    evaluations: int

    def to_dict(self) -> dict:
        return {"steps": list(self.steps), "remainders": list(self.remainders), "rates": list(self.rates),
                "rate": self.rate, "evaluations": self.evaluations}


def taylor_test(
    evaluate: Callable[[], np.ndarray],
    arr: np.ndarray,
    direction: np.ndarray,
    grad: np.ndarray,
    cotangent: np.ndarray,
    *,
    eval_dtype=np.float64,
    y0: np.ndarray | None = None,
    levels: int = 12,
) -> TaylorTest:
    """Taylor-remainder convergence rate of ``<u, f>`` along ``direction`` (eps-free second opinion).

    Starts at a displacement of 1% of the tensor's scale and halves it
    ``levels - 1`` times; ``arr`` is moved in place and restored bit for
    bit, and the displacement actually stored enters ``<g, d>``. A wrong
    gradient shows rate 1 once ``h`` is small enough for the linear error
    to beat the curvature; a right one keeps rate 2 until rounding. Cost:
    ``levels`` evaluations (+1 if ``y0`` is not given).
    """
    proj = _Projector(evaluate, cotangent, eval_dtype)
    if y0 is None:
        y0 = proj.output()
    v = np.asarray(direction, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    x0 = arr.copy()
    x064 = x0.astype(np.float64)
    vmax = float(np.max(np.abs(v))) if v.size else 0.0
    if vmax == 0.0:
        return TaylorTest((), (), (), None, proj.evaluations)
    nz = np.abs(x064[v != 0])
    scale = float(np.max(nz)) if nz.size and np.max(nz) > 0 else 1.0
    h = 1e-2 * scale / vmax
    steps, rems, noise = [], [], []
    for _ in range(levels):
        arr[...] = x064 + h * v
        d = arr.astype(np.float64) - x064
        try:
            y = proj.output()
        finally:
            arr[...] = x0
        num, n, _ = proj.diff(y, y0, 1.0, 0.0)
        steps.append(h)
        rems.append(abs(num - float(np.vdot(g, d))))
        noise.append(n)
        h /= 2
    rates = []
    for k in range(len(rems) - 1):
        if rems[k + 1] <= 8 * noise[k + 1] or rems[k] <= 0:
            break
        rates.append(math.log2(rems[k] / rems[k + 1]))
    rate = float(np.median(rates[-3:])) if rates else None
    return TaylorTest(tuple(steps), tuple(rems), tuple(rates), rate, proj.evaluations)


#: A failure found at step h is confirmed at step h / _JUMP.
_JUMP = 32.0


def _settle(level, first, h, floor_h, judge, max_levels):
    """Richardson along a sequence of steps; the estimate whose neighbours agree best.

    ``first`` holds the central-difference levels at ``h`` and ``h/2``.
    Levels at ``8h, 4h, 2h`` are added (up to ``4096h`` where the
    differences grow as the step shrinks, i.e. rounding already dominates at
    ``h``; discarded if the function is not finite there), then ``h/4,
    h/8, ...``. Each adjacent pair gives a
    Richardson value ``R_k``; its error is the larger gap to its two
    neighbours ``R_{k-1}, R_{k+1}`` plus its rounding noise, so a value
    counts only where three extrapolations in a row agree (steps outside
    the asymptotic range, as on an oscillating function, rarely do). The
    walk stops once the verdict on an estimate with both neighbours is
    clear: ``judge`` says OK, or says FAIL again after the walk restarted
    ``_JUMP`` times lower (a failure is never taken from one scale alone
    where a smaller one is available); or once rounding in the newest step
    dwarfs the best error, the steps fall under the resolution of what they
    perturb, or at ``floor_h`` or ``max_levels``. A failure found again
    with a different value (a wrong gradient is off by the same amount at
    every step) is not reported: the element is unverifiable. Every level's
    rounding noise is first raised to what the scatter between the levels
    shows (:func:`_noise_calibration`), so quotients at steps under the
    resolution of an intermediate, which settle on a biased plateau, do not
    pass for converged ones.

    Returns ``(value, error, levels)`` (levels in order of decreasing step).
    """
    big = []

    def above(factor):
        try:
            with np.errstate(all="ignore"):
                lv = level(h * factor)
        except Exception:  # noqa: BLE001 - outside the domain: not usable
            return None
        return lv if np.isfinite(lv[4]) else None

    for factor in (8.0, 4.0, 2.0):
        lv = above(factor)
        big = [] if lv is None else big + [lv]
    # Where the differences grow as the step shrinks, rounding dominates
    # already at h (the step was sized from a coordinate far smaller than
    # the scale it acts on, or intermediates are ill-conditioned): the walk
    # reaches further up, until truncation takes over or up to 4096 h.
    seq = big + list(first)
    if len(big) == 3 and abs(seq[-1][4] - seq[-2][4]) > abs(seq[0][4] - seq[1][4]):
        for k in range(4, 13):
            lv = above(2.0 ** k)
            if lv is None:
                break
            growing = abs(lv[4] - big[0][4]) > abs(big[0][4] - big[1][4])
            big.insert(0, lv)
            if growing:
                break
    levels = big + list(first)
    # Levels where no output moved carry no information once larger steps
    # did move something: the step fell under the resolution of the
    # intermediates it is added to (a bias of 1e-3 added to 3e4).
    flat = not any(lv[7] for lv in levels)

    def usable():
        lv_ = levels if flat else [lv for lv in levels if lv[7]]
        # Rounding can be coarser than the outputs show (a perturbation
        # added to a much larger intermediate): the noise of every level is
        # scaled by what the differences between levels reveal.
        factor = _noise_calibration(sorted(lv_, key=lambda lv: -abs(lv[1] - lv[3])))
        return lv_ if factor == 1.0 else [lv[:5] + (lv[5] * factor,) + lv[6:] for lv in lv_]

    def estimates():
        """(value, error, validated, step) for each adjacent pair of usable levels."""
        lv_ = usable()
        rs = [_richardson(a, b) for a, b in zip(lv_, lv_[1:])]
        out = []
        for k, (r, e) in enumerate(rs):
            gaps = [abs(r - rs[j][0]) for j in (k - 1, k + 1) if 0 <= j < len(rs)]
            err = max(gaps + [e])
            # lv_[k + 1] ends this pair; the three differences before it
            # must shrink geometrically (or sit at the rounding level).
            valid = len(gaps) == 2 and _asymptotic(lv_[: k + 3][-4:])
            out.append((r, err, valid, abs(lv_[k + 1][1] - lv_[k + 1][3]) / 2, len(gaps) == 2,
                        valid and _geometric(lv_[: k + 3][-4:])))
        return out

    step = h / 2
    coarse = None
    budget = 2 + max_levels + len(big)
    valid = []
    while True:
        ests = estimates()
        valid = [t for t in ests if t[2]]
        if valid:
            best = min(valid, key=lambda t: t[1])
            verdict = judge(best[0], best[1])
            target = max(best[3] / _JUMP, 16 * floor_h)
            if verdict == FAIL and coarse is None and target <= best[3] / 4:
                # A function can look smooth at one scale and differ below it
                # (a fast oscillation averages out over a large step). A
                # failure must be found again by a walk starting _JUMP times
                # lower (or as low as the storage allows).
                coarse = best
                step = target
                levels = [level(step), level(step / 2)]
                step /= 2
                flat = not any(lv[7] for lv in levels)
                budget = len(levels) + max_levels
                continue
            if verdict != REFINE:
                break
            if levels[-1][7] and usable()[-1][5] > 10 * best[1]:
                break  # rounding dominates the newest step: smaller ones only add noise
        if len(levels) >= budget:
            break
        step /= 2
        if step < floor_h:
            break
        levels.append(level(step))
        if not flat and not levels[-1][7]:
            break  # under the resolution of the intermediates: nothing more to learn
    if coarse is not None and (not valid or judge(best[0], best[1]) == REFINE):
        # The walk below the coarse failure reached no verdict of its own. If
        # what it saw agrees with the coarse value (only noisier: rounding
        # grows as steps shrink), the coarse failure stands; if it saw
        # something else, the function varies below the coarse scale faster
        # than differences can follow, and the element is unverifiable.
        seen = [t for t in estimates() if t[4]] or estimates()
        r_f, e_f = min(((t[0], t[1]) for t in seen), key=lambda t: t[1]) if seen else (coarse[0], math.inf)
        if math.isfinite(e_f) and abs(r_f - coarse[0]) <= 3.0 * (e_f + coarse[1]):
            return coarse[0], coarse[1], levels
        return r_f, math.inf, levels
    if coarse is not None and valid and not best[5] and judge(best[0], best[1]) == FAIL \
            and abs(best[0] - coarse[0]) > 3.0 * (best[1] + coarse[1]):
        # Both scales fail, with different values, and the lower one only
        # sits at its rounding level (it does not converge geometrically): a
        # wrong gradient is off by the same amount at every step, and a
        # plateau of quotients under the resolution of an intermediate can
        # look converged. Not a failure to report; the element is
        # unverifiable.
        return best[0], math.inf, levels
    if valid:
        return best[0], best[1], levels
    # Nothing converged geometrically. In the rounding regime the
    # differences scatter without converging, but three extrapolations in a
    # row that agree to 1e-6 of their value still measure the derivative (a
    # plateau), with their scatter as the error. Otherwise the
    # function varies faster than finite differences can follow at this
    # resolution: the error is infinite and the element is unverifiable.
    ests = [t for t in estimates() if t[4]]
    if ests:
        r, e = min(ests, key=lambda t: t[1])[:2]
        if e <= 1e-6 * abs(r):
            return r, 2.0 * e, levels
    return (estimates() or [(0.0,)])[0][0], math.inf, levels


#: Differences between central quotients above this fraction of the
#: quotient are not rounding (see :func:`_noise_calibration`).
_ROUNDING_SCATTER = 1e-3


def _noise_calibration(levels) -> float:
    """How many times the rounding-noise model understates the scatter of ``levels`` (at least 1).

    ``levels`` run from large steps to small. Where the difference between
    successive central quotients grows as the step shrinks while staying a
    small fraction of the quotient (at most :data:`_ROUNDING_SCATTER`; a
    function that oscillates at the scale of the step changes its
    quotients by their own size), rounding dominates, and there the
    differences should stay within a few times the modelled noise. The
    model counts a few ulps of each output; an element added to a much
    larger intermediate (a bias next to a 1e4 pre-activation) is rounded at
    that intermediate's resolution, which the outputs do not show, and the
    quotients at small steps then settle on a biased plateau. The factor is
    the largest such excess.
    """
    factor = 1.0
    for a, b, c in zip(levels, levels[1:], levels[2:]):
        d1, d2 = abs(a[4] - b[4]), abs(b[4] - c[4])
        if d2 > 1.5 * d1 and 0 < d2 <= _ROUNDING_SCATTER * abs(b[4]):
            factor = max(factor, d2 / (4.0 * (b[5] + c[5])))
    return factor


def _asymptotic(levels) -> bool:
    """True when the central differences of ``levels`` converge like ``h**p``.

    Successive differences of central quotients at ``h, h/2, h/4, h/8``
    shrink by 4 in the asymptotic range (by 2 where the second derivative
    jumps inside the stencil, as for ELU at 0): two ratios in ``[1.7, 5.5]``
    in a row (chance agreement of steps outside that range, as on an
    oscillating function, rarely gives two), or differences at the rounding
    level, count as converged.
    """
    if len(levels) < 3:
        return False
    noise = max(lv[5] for lv in levels)
    d = [lv[4] for lv in levels]
    steps = [abs(a - b) for a, b in zip(d, d[1:])]
    if all(st <= 4 * noise for st in steps[-2:]):
        return True
    return _geometric(levels)


def _geometric(levels) -> bool:
    """The truncation-range half of :func:`_asymptotic`: differences well above the noise, shrinking by 1.7-5.5."""
    if len(levels) < 4:
        return False
    noise = max(lv[5] for lv in levels)
    d = [lv[4] for lv in levels]
    steps = [abs(a - b) for a, b in zip(d, d[1:])]
    # each difference well above the rounding noise (a drift under rounding
    # can shrink geometrically by chance)
    return all(b > 4 * noise and 1.7 <= a / b <= 5.5 for a, b in zip(steps[-3:], steps[-2:]))


def _richardson(L1, L2):
    """Richardson-extrapolated value and error from two central levels."""
    d1, n1 = L1[4], L1[5]
    d2, n2 = L2[4], L2[5]
    value = d2 + (d2 - d1) / 3.0
    # |d2 - d1| / 3 estimates the truncation error of d2 (conservative for
    # the extrapolated value); the rounding noise of the combination is at
    # most (4 n2 + n1) / 3.
    error = abs(d2 - d1) / 3.0 + (4.0 * n2 + n1) / 3.0
    return value, error
