"""The step walk: Richardson along a sequence of steps until the verdict on an element is clear.

Used by the element-wise and directional finite differences when the first
two levels (``h``, ``h/2``) do not settle an element: larger steps where
rounding dominates, halving steps down to the resolution of the storage,
a failure re-found 32x lower, rounding noise calibrated from the scatter
between levels (:func:`noise_calibration`).
"""

from __future__ import annotations

import math

import numpy as np

from .stencils import FAIL, OK, REFINE  # noqa: F401 - OK is part of the verdict vocabulary

__all__ = ["settle", "richardson", "noise_calibration"]

#: A failure found at step h is confirmed at step h / _JUMP.
_JUMP = 32.0


def settle(level, first, h, floor_h, judge, max_levels):
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
    shows (:func:`noise_calibration`), so quotients at steps under the
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
        factor = noise_calibration(sorted(lv_, key=lambda lv: -abs(lv[1] - lv[3])))
        return lv_ if factor == 1.0 else [lv[:5] + (lv[5] * factor,) + lv[6:] for lv in lv_]

    def estimates():
        """(value, error, validated, step) for each adjacent pair of usable levels."""
        lv_ = usable()
        rs = [richardson(a, b) for a, b in zip(lv_, lv_[1:])]
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
#: quotient are not rounding (see :func:`noise_calibration`).
_ROUNDING_SCATTER = 1e-3


def noise_calibration(levels) -> float:
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
        if d2 > 1.5 * d1 and 0 < d2 <= _ROUNDING_SCATTER * abs(b[4]) and b[5] + c[5] > 0:
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


def richardson(L1, L2):
    """Richardson-extrapolated value and error from two central levels."""
    d1, n1 = L1[4], L1[5]
    d2, n2 = L2[4], L2[5]
    value = d2 + (d2 - d1) / 3.0
    # |d2 - d1| / 3 estimates the truncation error of d2 (conservative for
    # the extrapolated value); the rounding noise of the combination is at
    # most (4 n2 + n1) / 3.
    error = abs(d2 - d1) / 3.0 + (4.0 * n2 + n1) / 3.0
    return value, error
