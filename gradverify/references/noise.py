"""Computational noise of a function, measured from a difference table (Moré and Wild, 2011).

A forward that rounds coarser than its dtype (a float32 accumulator inside
float64 code, a reduction whose order changes with the values) adds noise
that no model keyed by the output's dtype can see, and finite differences
divide that noise by their step. :func:`estimate_noise` measures it the way
Moré and Wild's ECnoise does ("Estimating computational noise", SIAM J.
Sci. Comput. 33(3), 2011): ``m + 1`` values of ``phi(t) = <u, f(x + t v)>``
at equally spaced tiny steps; the ``j``-th differences of a smooth function
shrink like ``step**j`` while those of noise keep its size, scaled by
``gamma_j = (j!)**2 / (2j)!``; the noise level is the first ``sigma_j`` that
agrees within a factor of 4 with the next two and whose differences change
sign. :func:`function_noise` applies it to a check's point along a random
direction. The finite-difference references add ``2 * sigma / step`` to
every quotient's error, so a gap the noise explains is never a failure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from ..memory import chunk_for
from .stencils import coordinate_scale

__all__ = ["Noise", "estimate_noise", "function_noise", "NOISE_POINTS", "NOISE_STEP"]

#: Evaluations in the difference table (Moré and Wild use 7 to 9).
NOISE_POINTS = 9
#: The table's spacing, relative to each element's magnitude: small enough
#: that a smooth function's 6th differences vanish, large enough that a
#: float32 intermediate of float64 code moves by several of its ulps.
NOISE_STEP = 1e-6


@dataclasses.dataclass(frozen=True)
class Noise:
    """The measured noise of ``phi``.

    Attributes:
        sigma: standard deviation of the noise of one value of ``phi``
            (absolute; 0 when the table showed none: every value equal, or
            smooth differences).
        relative: ``sigma`` divided by the magnitude of the terms ``phi``
            sums (``sum |u| |y|``), comparable to a dtype's eps.
        level: the difference order that gave ``sigma`` (0 if none).
        evaluations: function evaluations used.
    """

    sigma: float
    relative: float
    level: int
    evaluations: int


def estimate_noise(values) -> tuple[float, int]:
    """ECnoise on equally spaced values: ``(sigma, level)``; ``(0.0, 0)`` where no noise shows.

    ``level`` is the difference order whose scaled size was taken. No
    noise shows when every value is equal (the noise is below the values'
    resolution) or when no three consecutive orders agree with a sign
    change (the differences are those of a smooth function).
    """
    f = np.asarray(values, dtype=np.float64)
    if f.size < 4 or not np.all(np.isfinite(f)) or np.all(f == f[0]):
        return 0.0, 0
    gamma = 1.0
    levels, signs = [], []
    d = f.copy()
    for j in range(1, f.size):
        d = np.diff(d)
        gamma *= 0.5 * j / (2 * j - 1)
        levels.append(math.sqrt(gamma * float(np.mean(d * d))))
        signs.append(bool(d.min() * d.max() < 0))
    for k in range(len(levels) - 2):
        window = levels[k:k + 3]
        if signs[k] and max(window) <= 4 * min(window):
            return levels[k], k + 1
    return 0.0, 0


def function_noise(evaluate: Callable[[], np.ndarray], point: Mapping[str, np.ndarray], cotangent: np.ndarray, *,
                   rng: np.random.Generator, step: float = NOISE_STEP, points: int = NOISE_POINTS,
                   significant: float = 0.0,
                   evaluate_points: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
                   rows_bytes: int = 0) -> Noise:
    """The noise of ``<u, evaluate()>`` at ``point`` along one random direction over every input.

    Each element moves by ``t * step * max(|x_i|, rms / 10)`` for ``t`` in
    ``-(points // 2) .. points // 2``, in place, restored bit for bit; or,
    where ``evaluate_points`` is given and the table's points of every input
    take at most ``rows_bytes``, all of them in one vectorised call (the
    same points, bit for bit).
    Noise keeps its size whatever the spacing, while a kink inside the
    table (``relu`` at 0) makes differences that shrink with it: where the
    first table shows relative noise above ``significant``, a second one at
    1/16 of the spacing must show at least a quarter of it, or no noise is
    reported. Cost: ``points`` evaluations (twice that for a noisy table).
    """
    # (as int8: the table's memory stays about one copy of the point, its saved values, whatever its size)
    signs = {k: _signs(rng, a.shape) for k, a in point.items()}
    together = evaluate_points is not None and points * sum(a.nbytes for a in point.values()) <= rows_bytes
    table = _table_together if together else _table
    first = table(evaluate_points if together else evaluate, point, cotangent, signs, step, points)
    if first.relative <= significant or first.sigma == 0.0:
        return first
    again = table(evaluate_points if together else evaluate, point, cotangent, signs, step / 16.0, points)
    n = first.evaluations + again.evaluations
    if again.sigma < first.sigma / 4.0:
        return Noise(0.0, 0.0, 0, n)  # shrinks with the spacing: a kink or curvature, not noise
    worse = max(first, again, key=lambda z: z.sigma)
    return Noise(worse.sigma, worse.relative, worse.level, n)


def _signs(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """``rng.choice((-1, 1), size=shape)`` as int8, drawn a chunk at a time (the same values, no int64 temporary)."""
    out = np.empty(shape, dtype=np.int8)
    flat = out.reshape(-1)
    step = chunk_for(flat.size)
    for i in range(0, flat.size, step):
        part = rng.integers(0, 2, size=min(step, flat.size - i))  # what choice draws: indices into (-1, 1)
        np.multiply(part, 2, out=part)
        np.subtract(part, 1, out=part)
        flat[i:i + part.size] = part
    return out


def _floors(point) -> dict:
    """Name -> the floor of each element's scale in the table (a tenth of the rms), None for a tensor with
    non-finite entries (those move by :func:`~gradverify.references.stencils.coordinate_scale`)."""
    scales = {}
    for k, a in point.items():
        if np.isfinite(a).all():
            x = a if a.dtype == np.float64 else a.astype(np.float64)
            rms = float(np.sqrt(np.vdot(x, x) / x.size)) if x.size else 0.0
            scales[k] = 0.1 * rms if rms > 0 else 1.0
            del x
        else:  # non-finite entries (a -inf mask) do not move
            scales[k] = None
    return scales


def _noise_of(values, mags, points) -> Noise:
    sigma, level = estimate_noise(values)
    mag = max(mags) if mags else 0.0
    return Noise(sigma, sigma / mag if mag > 0 else 0.0, level, points)


def _table_together(evaluate_points, point, cotangent, signs, step, points) -> Noise:
    """:func:`_table` with every point of the table evaluated in one vectorised call (``evaluate_points``).

    The rows are the values :func:`_table` stores, computed with the same
    float64 operations in the same order, so the table is the same.
    """
    u = np.asarray(cotangent, dtype=np.float64)
    half = points // 2
    ts = range(-half, points - half)
    rows = {}
    for k, a in point.items():
        x = a.astype(np.float64)
        floor = _floors({k: a})[k]
        r = np.empty((points,) + a.shape)  # (one allocation: fresh pages cost more than the arithmetic)
        if floor is None:
            d = signs[k] * coordinate_scale(a) * step
            for i, t in enumerate(ts):
                np.multiply(d, t, out=r[i, ...])  # (a view, also of a 0-d tensor)
        else:
            d = np.abs(x, out=np.empty(a.shape))  # (an array, also for a 0-d tensor)
            np.maximum(d, floor, out=d)
            np.multiply(d, signs[k], out=d)
            np.multiply(d, step, out=d)
            for i, t in enumerate(ts):
                np.multiply(d, t, out=r[i, ...])  # (a view, also of a 0-d tensor)
        np.add(r, x, out=r)
        rows[k] = r.astype(a.dtype, copy=False)
    ys = np.asarray(evaluate_points(rows), dtype=np.float64).reshape((points,) + u.shape)
    # (the sums of _table, row by row)
    return _noise_of([float(np.sum(u * y)) for y in ys], [float(np.sum(np.abs(u) * np.abs(y))) for y in ys], points)


def _table(evaluate, point, cotangent, signs, step, points) -> Noise:
    """One difference table along the direction ``signs * step * scale``.

    Each tensor is moved in place a chunk at a time from its saved copy
    (the direction is formed per chunk, never held whole): memory one copy
    of the point and the int8 signs.
    """
    u = np.asarray(cotangent, dtype=np.float64)
    saved = {k: a.copy() for k, a in point.items()}
    scales = _floors(point)  # name -> the floor of each element's scale (finite tensors), None for coordinate_scale

    def move(k, a, t):
        """``a`` set to ``saved + t * signs * step * max(|saved|, floor)`` (float64 arithmetic), chunk by chunk."""
        x0, sg = saved[k].reshape(-1), signs[k].reshape(-1)
        flat = a.reshape(-1) if a.flags.c_contiguous else None
        if scales[k] is None:
            d = signs[k] * coordinate_scale(a) * step  # (a tensor with non-finite entries: as given)
            a[...] = saved[k].astype(np.float64) + t * d
            return
        step_ = chunk_for(x0.size)
        for i in range(0, x0.size, step_):
            x = x0[i:i + step_].astype(np.float64)
            d = np.abs(x)
            np.maximum(d, scales[k], out=d)
            np.multiply(d, sg[i:i + step_], out=d)
            np.multiply(d, step, out=d)
            np.multiply(d, t, out=d)
            np.add(d, x, out=d)
            if flat is not None:
                flat[i:i + step_] = d
            else:
                a[np.unravel_index(np.arange(i, i + d.size), a.shape)] = d

    values, mags = [], []
    half = points // 2
    try:
        for t in range(-half, points - half):
            for k, a in point.items():
                move(k, a, t)
            y = np.asarray(evaluate(), dtype=np.float64)
            values.append(float(np.sum(u * y)))
            mags.append(float(np.sum(np.abs(u) * np.abs(y))))
    finally:
        for k, a in point.items():
            a[...] = saved[k]
    return _noise_of(values, mags, points)

