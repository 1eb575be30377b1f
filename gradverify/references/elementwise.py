"""Element-wise finite differences of ``<u, f>``: the workhorse of full-mode checks.

:func:`projected_gradients` gives, for every element of every input, the
derivative of ``<u, f(point)>`` with an error estimate, one-sided
differences for kink diagnosis, and the evaluation count; it combines the
stencils (:mod:`.stencils`), the batched first pass and the screen
(:mod:`.screen`), and the step walk (:mod:`.stepwalk`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from ..memory import chunk_for
from . import screen as _screens
from .stencils import OK, Projector, _eps, default_step
from .stepwalk import richardson, settle

__all__ = ["ElementDerivative", "projected_gradients"]


@dataclasses.dataclass
class ElementDerivative:
    """Per-element result of :func:`projected_gradients` for one tensor.

    Attributes:
        value: numerical gradient of ``<u, f>`` (float64, the tensor's shape).
        error: estimated absolute error of ``value``.
        left, right: one-sided derivatives from the two smallest steps tried
            (first-order Richardson extrapolation where a kink is diagnosed;
            NaN where not computed); they differ at a kink.
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
    #: estimated error of ``left``/``right`` where a kink was diagnosed (the one-sided differences,
    #: extrapolated from two steps, still carry truncation error); None where not estimated
    side_error: np.ndarray | None = None


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
    noise: float = 0.0,
    compact: bool = False,
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
    first two levels walk a whole step sequence (see :func:`~gradverify.references.stepwalk.settle`:
    larger steps where rounding dominates, halving steps down to the
    resolution of the storage, a failure re-found 32x lower, unconverged
    elements returned with an infinite error). For every element,
    one-sided differences ``(phi(h) - phi(0)) / h`` and
    ``(phi(0) - phi(-h)) / h`` at the two smallest steps (no extra
    evaluations) decide whether it sits on a kink (their gap does not
    shrink with the step).

    ``indices`` (name -> flat indices) restricts the work to those elements
    of those arrays (others are left at zero and absent names skipped);
    with ``compact`` as well, each result array holds only those elements,
    in the order given (memory independent of the tensor's size, where
    fewer than :data:`~gradverify.references.screen.SCREEN_MIN_SIZE` are
    chosen).

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
    the *screen* for tensors of at least :data:`~gradverify.references.screen.SCREEN_MIN_SIZE` elements:
    one central difference per element at ``h / SCREEN_STEP_DIVISOR``
    (2 evaluations). An element is settled by it when the judge says OK
    with four times its rounding noise as the error, and its one-sided
    slopes agree to the tolerance (a kink, or curvature that one difference
    cannot resolve, goes on to Richardson, so kinks are still named).
    First :data:`~gradverify.references.screen.SCREEN_SAMPLES` elements drawn at random (seeded by the
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

    ``noise``, the measured noise of one value of ``<u, f>``
    (:func:`~gradverify.references.noise.function_noise`), adds ``2 * noise /
    step`` to every quotient's error, so steps are chosen and verdicts
    weighed with the function's real noise, not only its dtype's rounding.

    Cost: 4 evaluations per element (2 for elements the screen settles, 6
    for sampled ones), +2 per refinement, +1 for the base point. Memory:
    the result arrays, each element's scale and first step (float64 arrays
    the tensor's size, computed a chunk at a time), and the rows of
    outputs a screen or batched chunk holds at once (at most
    ``batch_bytes``). Returns the per-name results and the evaluation count.
    """
    proj = Projector(evaluate, cotangent, eval_dtype, noise)
    phi_out, diff = proj.output, proj.diff
    y0 = phi_out()

    out: dict[str, ElementDerivative] = {}
    for name, arr in point.items():
        chosen = None if indices is None or name not in indices else list(indices[name])
        if indices is not None and chosen is None:
            continue
        small = compact and chosen is not None and len(chosen) < _screens.SCREEN_MIN_SIZE
        scale, first_steps = _first_steps(arr, eval_dtype, step_scale, chosen if small else None)
        if small:  # only the chosen elements are held, indexed by flat index like a whole tensor's arrays
            sensitivity, value, error = (_Chosen(chosen, scale, 0.0) for _ in range(3))
            left, right = _Chosen(chosen, scale, np.nan), _Chosen(chosen, scale, np.nan)
            kink = _Chosen(chosen, scale, False, dtype=bool)
            side_error = _Chosen(chosen, scale, 0.0)
        else:
            sensitivity = np.zeros(arr.size)
            value = np.zeros(arr.size)
            error = np.zeros(arr.size)
            left = np.full(arr.size, np.nan)
            right = np.full(arr.size, np.nan)
            kink = np.zeros(arr.size, dtype=bool)
            side_error = np.zeros(arr.size)
        order = range(arr.size) if chosen is None else chosen
        if arr.dtype.kind == "f" and not all(bool(np.isfinite(arr.reshape(-1)[sl]).all())
                                             for sl in _slices(arr.size)):
            # A coordinate at +-inf or NaN does not move under a perturbation (-inf + h == -inf): its
            # derivative is taken as 0, exactly, as torch.autograd.gradcheck's differences take it
            finite = np.isfinite(arr.reshape(-1))
            order = [i for i in order if finite[i]]
        order = list(order) if len(order) < _screens.SCREEN_MIN_SIZE or not isinstance(order, range) else order

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
                settled = _screens.first_pass_batched(evaluate_batch, name, arr, order, first_steps, y0.shape, batch_bytes,
                                              proj, scale, many, y0)
                for i, (v, e, sens, levels, one_sided) in settled.items():
                    value[i], error[i], sensitivity[i] = v, e, sens
                    left[i], right[i], kink[i], side_error[i] = one_sided
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

                def first_levels_settle(levels):
                    """A jump beside the point (a kink, settled) or a locally constant function (zero, settled).

                    The same rules as the batched first pass (:func:`~gradverify.references.screen.first_pass_batched`).
                    """
                    (yp1, _, ym1, _), (yp2, tp2, ym2, tm2) = levels[0][:4], levels[1][:4]
                    r2, _, _ = diff(yp2, y0, tp2, 0.0)
                    l2, _, _ = diff(y0, ym2, 0.0, tm2)
                    flat_y0 = y0.reshape(-1)
                    jr_, jl_ = _screens.jumps(yp1.reshape(1, -1), ym1.reshape(1, -1), yp2.reshape(1, -1),
                                              ym2.reshape(1, -1), flat_y0, proj)
                    jr, jl = bool(jr_[0]), bool(jl_[0])
                    if jr or jl:
                        lft, rgt = _screens.jump_interval(l2, r2, jl, jr)
                        left[i], right[i], kink[i] = float(lft), float(rgt), True
                        return True
                    flat = all(np.array_equal(y, y0) for y in (yp1, ym1, yp2, ym2))
                    if flat and judge is not None and judge(name, i, 0.0, 0.0) == OK:
                        value[i] = 0.0
                        left[i] = right[i] = 0.0
                        return True
                    return False

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
                    if kink[i]:
                        q = abs(levels[-2][1] / levels[-1][1]) if levels[-1][1] else 2.0
                        left[i], right[i], side_error[i] = _screens.one_sided_extrapolated(l1, l2, r1, r2, q, n2)

                h = first_steps[i]
                levels = batched.pop(i, None)
                if levels is None:
                    levels = [level(h), level(h / 2)]
                    value[i], error[i] = richardson(levels[0], levels[1])
                    sensitivity[i] = levels[1][6] / scale[i]
                    if first_levels_settle(levels):
                        continue
                if judge is None:
                    continue
                verdict = judge(name, i, value[i], error[i])
                if verdict == OK:
                    diagnose(levels)  # a valid subgradient at a kink still names the kink
                    continue
                # Not clearly settled: walk a whole step sequence (see settle()).
                floor_h = 64 * _eps(arr.dtype if arr.dtype.kind == "f" else np.float64) * max(abs(x0f), 1e-300)
                value[i], error[i], levels = settle(
                    level, levels, h, floor_h, lambda v, e: judge(name, i, v, e), max_refinements
                )
                diagnose(levels)

        if (tolerance is not None and many is not None and len(order) >= _screens.SCREEN_MIN_SIZE
                and np.dtype(eval_dtype) == np.float64):
            # Screen: one central difference per element at a small step.
            # A random sample runs both the screen and Richardson first; the
            # rest of the tensor is screened only if the screen settles at
            # least half of the sample and agrees with Richardson on each
            # element it settles. Elements the screen does not settle run
            # Richardson.
            def screened(elements):
                sc = _screens.screen(evaluate_batch, name, arr, elements, first_steps, proj, y0, batch_bytes, scale)
                idx = np.asarray(elements, dtype=np.int64)
                verdicts = np.asarray(many(idx, sc["value"], 4.0 * sc["noise"]))
                tb = np.asarray(tolerance(name, sc["value"]), dtype=np.float64)
                # one-sided slopes apart by more than the tolerance at this small step: a kink, or
                # curvature too strong for one central difference
                sc["settled"] = (verdicts == OK) & (np.abs(sc["right"] - sc["left"]) <= tb) & np.isfinite(
                    sc["value"])
                if sc["flat"].any():
                    # locally constant (no output moved) and a zero gradient under test: settled at once
                    zero = np.zeros(len(idx))
                    sc["settled"] |= sc["flat"] & (np.asarray(many(idx, zero, zero)) == OK)
                return sc

            pick = np.random.default_rng(len(order)).permutation(len(order))[:_screens.SCREEN_SAMPLES]
            sample = [order[k] for k in sorted(pick)]
            sc = screened(sample)
            run_standard(sample)
            k_s = np.flatnonzero(sc["settled"])
            ref, ref_err = value[sample][k_s], error[sample][k_s]
            trusted = 2 * len(k_s) >= len(sample) and bool(np.all(np.isfinite(ref_err)) and np.all(
                np.abs(sc["value"][k_s] - ref)
                <= np.asarray(tolerance(name, ref)) / 4 + 2 * (ref_err + sc["noise"][k_s])))
            rest = np.ones(len(order), dtype=bool)
            rest[sorted(pick)] = False
            order = np.asarray(order, dtype=np.int64)[rest]  # (an index array: no Python int per element)
            if trusted:
                # a 16th of the tensor at a time: the screen's own arrays stay small beside the results
                unsettled = []
                part = max(_screens.SCREEN_MIN_SIZE, len(order) // 16)
                for start in range(0, len(order), part):
                    seg = order[start:start + part]
                    sc = screened(seg)
                    ok = sc["settled"]
                    done = seg[ok]
                    value[done], error[done] = sc["value"][ok], sc["noise"][ok]
                    sensitivity[done] = sc["sensitivity"][ok]
                    left[done], right[done] = sc["left"][ok], sc["right"][ok]
                    unsettled.append(seg[~ok])
                    del sc, done
                order = [int(i) for i in np.concatenate(unsettled)] if unsettled else []
        run_standard(order)
        if small:
            out[name] = ElementDerivative(value.data, error.data, left.data, right.data, kink.data, sensitivity.data,
                                          side_error.data)
            continue
        shape = arr.shape
        out[name] = ElementDerivative(
            value.reshape(shape), error.reshape(shape), left.reshape(shape), right.reshape(shape),
            kink.reshape(shape), sensitivity.reshape(shape), side_error.reshape(shape)
        )
    return out, proj.evaluations


def _slices(n: int):
    step = chunk_for(n)
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def _first_steps(arr: np.ndarray, eval_dtype, step_scale: float, chosen=None):
    """Each element's scale (``coordinate_scale``, through the Richardson step) and first step, chunk by chunk.

    The same numbers as ``default_step(arr) / default_step(1)`` and the
    first step of :func:`projected_gradients` (at least 8 ulps of the
    storage), without temporaries the size of the tensor. With ``chosen``
    (flat indices), :class:`_Chosen` arrays over those elements only.
    """
    base = default_step(np.ones(1), eval_dtype, "richardson")[0]
    flat = arr.reshape(-1) if arr.flags.c_contiguous else np.ravel(arr)
    ss, count = 0.0, 0
    for sl in _slices(flat.size):
        c = flat[sl].astype(np.float64)
        fin = np.isfinite(c)
        if not fin.all():
            c = c[fin]
        ss += float(np.dot(c, c))
        count += c.size
    rms = float(np.sqrt(ss / count)) if count else 0.0
    floor = 0.1 * rms if rms > 0 else 1.0

    def fill(x):
        x64 = x.astype(np.float64)
        s = np.maximum(np.abs(x64), floor)
        s[~np.isfinite(x64)] = 1.0
        steps = base * s
        h = np.maximum(steps * step_scale, 0)
        h[h == 0] = 1e-3
        if arr.dtype.kind == "f":
            with np.errstate(invalid="ignore"):  # at least a few ulps of the storage, or float16 rounds the step away
                h = np.fmax(h, 8.0 * np.spacing(np.abs(x).astype(arr.dtype)).astype(np.float64))
        return steps / base, h

    if chosen is not None:
        sc, h = fill(flat[np.asarray(chosen, dtype=np.int64)])
        return _Chosen(chosen, sc), _Chosen(chosen, h)
    scale, first = np.empty(flat.size), np.empty(flat.size)
    for sl in _slices(flat.size):
        scale[sl], first[sl] = fill(flat[sl])
    return scale, first


class _Chosen:
    """Per-element values of a few chosen elements of a tensor, read and written by flat index like a whole array."""

    def __init__(self, chosen, like, fill=None, dtype=np.float64):
        self.pos = like.pos if isinstance(like, _Chosen) else {int(i): k for k, i in enumerate(chosen)}
        self.data = np.asarray(like, dtype=dtype).copy() if fill is None else np.full(len(self.pos), fill, dtype=dtype)

    def __getitem__(self, i):
        if np.ndim(i):
            return self.data[[self.pos[int(j)] for j in np.asarray(i).reshape(-1)]]
        return self.data[self.pos[int(i)]]

    def __setitem__(self, i, v):
        self.data[self.pos[int(i)]] = v


