"""Element-wise finite differences of ``<u, f>``: the workhorse of full-mode checks.

:func:`projected_gradients` gives, for every element of every input, the
derivative of ``<u, f>`` with an error estimate, one-sided
differences for kink diagnosis, and the evaluation count; it combines the
stencils (:mod:`.stencils`), the batched first pass and the screen
(:mod:`.screen`), and the step walk (:mod:`.stepwalk`). It returns the
results as arrays the tensors' size, or hands each element's result to a
``sink`` as soon as it is settled (full mode's
:class:`~gradverify.compare.ComparisonStream`), holding none.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

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


#: A settled element's record before it is stored: value, error, sensitivity, left, right, kink, side error.
_UNSET = (0.0, 0.0, 0.0, np.nan, np.nan, False, 0.0)

#: The screen takes the rest of a tensor (after its sample) in this many parts where elements are evaluated one
#: by one (16 where calls are batched: rows enough to vectorise).
_SCREEN_PARTS = 128

#: At most this many elements evaluated one by one have their steps computed together, and a sink receives
#: together (:func:`_block`).
_BLOCK = 1024


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
    sink=None,
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

    ``sink`` (not with ``indices``), when given, receives each element's
    result as soon as it is settled instead of arrays the tensors' size:
    ``sink.add(name, flat_indices, value, error, sensitivity, kink=mask,
    left=..., right=..., slack=side_error)`` a batch of elements at a time,
    in any order, every element once, then ``sink.done(name)``
    (:class:`~gradverify.compare.ComparisonStream` is one); the returned
    dict is then empty.

    Cost: 4 evaluations per element (2 for elements the screen settles, 6
    for sampled ones), +2 per refinement, +1 for the base point. Memory:
    the result arrays (none with a ``sink``), a random permutation of the
    tensor's flat indices while the screen draws its sample, each element's
    scale and first step computed where it is evaluated, the screen's
    arrays over a 128th of the tensor at a time, and the rows of outputs a
    screen or batched chunk holds at once (at most ``batch_bytes``).
    Returns the per-name results and the evaluation count.
    """
    if sink is not None and indices is not None:
        raise ValueError("projected_gradients: sink= hands over every element; it does not take indices=")
    proj = Projector(evaluate, cotangent, eval_dtype, noise)
    phi_out, diff = proj.output, proj.diff
    y0 = phi_out()

    out: dict[str, ElementDerivative] = {}
    for name, arr in point.items():
        chosen = None if indices is None or name not in indices else list(indices[name])
        if indices is not None and chosen is None:
            continue
        small = compact and chosen is not None and len(chosen) < _screens.SCREEN_MIN_SIZE
        steps = _Steps(arr, eval_dtype, step_scale)
        if small:  # only the chosen elements are held, indexed by flat index like a whole tensor's arrays
            sc, h = steps.at(np.asarray(chosen, dtype=np.int64))
            scale, first_steps = _Chosen(chosen, sc), _Chosen(chosen, h)
            results = _Whole(*(_Chosen(chosen, scale, fill, dtype=bool if fill is False else np.float64)
                               for fill in _UNSET))
        else:
            scale, first_steps = steps.scale, steps.first
            results = _Sunk(name, sink, _block(arr.size)) if sink is not None else _Whole(
                *(np.full(arr.size, fill, dtype=bool if fill is False else np.float64) for fill in _UNSET))
        order = range(arr.size) if chosen is None else chosen
        if arr.dtype.kind == "f" and not all(bool(np.isfinite(c).all()) for c in _pieces(arr)):
            # A coordinate at +-inf or NaN does not move under a perturbation (-inf + h == -inf): its
            # derivative is taken as 0, exactly, as torch.autograd.gradcheck's differences take it
            finite = np.isfinite(arr.reshape(-1))
            if chosen is None:
                order = np.flatnonzero(finite)
                if sink is not None:
                    skipped = np.flatnonzero(~finite)
                    results.put_many(skipped, *(np.full(skipped.size, v) for v in _UNSET[:5]))
            else:
                order = [i for i in order if finite[i]]

        # the judge's array form for this tensor (None without a judge)
        many = None
        if judge_many is not None:
            many = lambda idx, v, e: judge_many(name, idx, v, e)  # noqa: E731
        elif judge is not None:
            many = lambda idx, v, e: np.array(  # noqa: E731
                [judge(name, int(i), a, b) for i, a, b in zip(idx, v, e)])

        def standard(i, h, scale_i, rec=None, levels=None):
            """Element ``i``: Richardson at ``h``, ``h/2`` (unless its ``levels`` came batched), then the walk."""
            rec = list(_UNSET) if rec is None else rec
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

            held = []  # the levels whose outputs are still kept: the two newest (a walk's outputs, not forty)

            def level(h):
                yp, tp = at(h)
                ym, tm = at(-h)
                d, n, mag = diff(yp, ym, tp, tm)
                rows = _Rows(yp, ym)
                held.append((rows, tp, tm))
                if len(held) > 2:  # the oldest keeps only what the kink diagnosis would read of it
                    old, otp, otm = held.pop(0)
                    old.release(diff, y0, otp, otm)
                return (rows, tp, None, tm, d, n, mag, not np.array_equal(yp, ym))

            def first_levels_settle(levels):
                """A jump beside the point (a kink, settled) or a locally constant function (zero, settled).

                The same rules as the batched first pass (:func:`~gradverify.references.screen.first_pass_batched`).
                """
                (yp1, ym1), (yp2, ym2) = _outputs(levels[0]), _outputs(levels[1])
                tp2, tm2 = levels[1][1], levels[1][3]
                r2, _, _ = diff(yp2, y0, tp2, 0.0)
                l2, _, _ = diff(y0, ym2, 0.0, tm2)
                flat_y0 = y0.reshape(-1)
                jr_, jl_ = _screens.jumps(yp1.reshape(1, -1), ym1.reshape(1, -1), yp2.reshape(1, -1),
                                          ym2.reshape(1, -1), flat_y0, proj)
                jr, jl = bool(jr_[0]), bool(jl_[0])
                if jr or jl:
                    lft, rgt = _screens.jump_interval(l2, r2, jl, jr)
                    rec[3], rec[4], rec[5] = float(lft), float(rgt), True
                    return True
                flat = all(np.array_equal(y, y0) for y in (yp1, ym1, yp2, ym2))
                if flat and judge is not None and judge(name, i, 0.0, 0.0) == OK:
                    rec[0] = 0.0
                    rec[3] = rec[4] = 0.0
                    return True
                return False

            def diagnose(levels):
                # Kink diagnosis from the two smallest steps tried (no new
                # evaluations): at a kink each one-sided derivative is stable
                # while the gap between them stays; for a smooth function the
                # gap halves with the step (where nothing is stable, no kink).
                gaps = []
                for lv in levels[-2:]:
                    r, rn, lft, ln = _one_sided(lv, diff, y0)
                    gaps.append((r, lft, rn + ln))
                (r1, l1, _), (r2, l2, n2) = gaps
                rec[3], rec[4] = l2, r2
                g1, g2 = abs(r1 - l1), abs(r2 - l2)
                stable = abs(r1 - r2) <= 0.1 * g2 + 4 * n2 and abs(l1 - l2) <= 0.1 * g2 + 4 * n2
                rec[5] = g2 > 4 * n2 and g2 > 0.75 * g1 and stable
                if rec[5]:
                    q = abs(levels[-2][1] / levels[-1][1]) if levels[-1][1] else 2.0
                    rec[3], rec[4], rec[6] = _screens.one_sided_extrapolated(l1, l2, r1, r2, q, n2)

            def walk():
                if levels is None:
                    lv = [level(h), level(h / 2)]
                    rec[0], rec[1] = richardson(lv[0], lv[1])
                    rec[2] = lv[1][6] / scale_i
                    if first_levels_settle(lv):
                        return
                else:
                    lv = levels
                if judge is None:
                    return
                verdict = judge(name, i, rec[0], rec[1])
                if verdict == OK:
                    diagnose(lv)  # a valid subgradient at a kink still names the kink
                    return
                # Not clearly settled: walk a whole step sequence (see settle()).
                floor_h = 64 * _eps(arr.dtype if arr.dtype.kind == "f" else np.float64) * max(abs(x0f), 1e-300)
                rec[0], rec[1], lv = settle(level, lv, h, floor_h, lambda v, e: judge(name, i, v, e), max_refinements)
                diagnose(lv)

            walk()
            results.put(i, rec)

        def run_standard(order):
            """Richardson at h, h/2 for ``order`` (batched where possible), then the walk where unsettled."""
            if evaluate_batch is not None:
                # First pass over whole chunks as array arithmetic; only elements the judge does not
                # settle keep their levels for the walk, a chunk at a time.
                for settled in _screens.first_pass_batched(evaluate_batch, name, arr, order, first_steps, y0.shape,
                                                           batch_bytes, proj, scale, many, y0):
                    unsettled = []
                    for i, (v, e, sens, levels, one_sided) in settled.items():
                        rec = [v, e, sens, *one_sided]
                        if levels is None:
                            results.put(i, rec)
                        else:
                            unsettled.append((i, rec, levels))
                    del settled
                    for i, rec, levels in unsettled:
                        standard(i, first_steps[i], None, rec, levels)
                return
            for lo, hi in _ranges(len(order), _block(arr.size)):
                block = np.asarray(order[lo:hi], dtype=np.int64)
                sc, h = (scale[block], first_steps[block]) if not small else \
                    (np.array([scale[int(i)] for i in block]), np.array([first_steps[int(i)] for i in block]))
                for k, i in enumerate(block.tolist()):
                    standard(i, h[k], sc[k])

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

            pick = _sample_positions(len(order))
            sample = [int(order[k]) for k in pick]
            sc = screened(sample)
            results.watch(sample)
            run_standard(sample)
            k_s = np.flatnonzero(sc["settled"])
            value_s, error_s = results.get(sample)
            ref, ref_err = value_s[k_s], error_s[k_s]
            trusted = 2 * len(k_s) >= len(sample) and bool(np.all(np.isfinite(ref_err)) and np.all(
                np.abs(sc["value"][k_s] - ref)
                <= np.asarray(tolerance(name, ref)) / 4 + 2 * (ref_err + sc["noise"][k_s])))
            rest = _Rest(order, pick)
            if not trusted:
                run_standard(rest)  # (batched: chunks as large as batch_bytes allows)
            else:
                # The rest screened a part at a time: a 128th of the tensor, so the screen's arrays stay small
                # beside it. Where calls are batched, larger parts, so that their rows vectorise: up to a 16th,
                # their arrays (about 32 float64 an element with the comparison's temporaries) within the
                # batch's own share of memory, as large as their rows of outputs (two per element, each with at
                # least 16 outputs). Elements it does not settle run Richardson: after each part, or all at once
                # after the last where calls are batched.
                batched = evaluate_batch is not None
                part = max(_screens.SCREEN_MIN_SIZE, len(rest) // _SCREEN_PARTS,
                           min(len(rest) // 16, batch_bytes // 256) if batched else 0)
                unsettled = []
                for lo, hi in _ranges(len(rest), part):
                    seg = rest[lo:hi]
                    sc = screened(seg)
                    ok = sc["settled"]
                    results.put_many(seg[ok], sc["value"][ok], sc["noise"][ok], sc["sensitivity"][ok],
                                     sc["left"][ok], sc["right"][ok])
                    left_over = seg[~ok]
                    del sc, ok
                    if batched:
                        unsettled.append(left_over)
                    else:
                        run_standard(left_over)
                if unsettled:
                    run_standard(np.concatenate(unsettled))
        else:
            run_standard(order)
        if sink is not None:
            results.finish()
            continue
        shape = arr.shape if not small else None
        out[name] = ElementDerivative(*(results.arrays(shape)))
    return out, proj.evaluations


def _ranges(n: int, step: int | None = None):
    """``(lo, hi)`` bounds of a pass over ``n`` elements, ``step`` at a time (a 64th of them, bounded, by default)."""
    from ..memory import chunk_for

    step = chunk_for(n) if step is None else step
    return ((i, min(i + step, n)) for i in range(0, n, step))


def _pieces(arr: np.ndarray):
    """``arr``'s elements in flat order, a chunk at a time (views where ``arr`` is contiguous)."""
    flat = arr.reshape(-1) if arr.flags.c_contiguous else None
    for lo, hi in _ranges(arr.size):
        yield flat[lo:hi] if flat is not None else _screens._take(arr, np.arange(lo, hi))


def _block(size: int) -> int:
    """Elements evaluated one by one whose steps are computed together, and settled elements a sink receives
    together (four times as many the screen settled): a 256th of the tensor, between 64 and 1024 (their
    records stay small beside the tensor)."""
    return max(64, min(_BLOCK, size // 256))


def _sample_positions(n: int) -> np.ndarray:
    """The screen's sample: the first :data:`~gradverify.references.screen.SCREEN_SAMPLES` positions of
    ``default_rng(n).permutation(n)``, sorted.

    Shuffled as the narrowest unsigned integers that hold ``n`` positions
    (two bytes each below 65,536 elements, not eight): a shuffle moves
    items whatever their width, so the permutation is the same (a test
    holds it to ``permutation``), and lives only here.
    """
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32, np.int64) if n <= int(np.iinfo(d).max) + 1)
    perm = np.arange(n, dtype=dtype)
    np.random.default_rng(n).shuffle(perm)
    return np.sort(perm[:_screens.SCREEN_SAMPLES].astype(np.int64))


class _Rows:
    """The outputs at ``x + h`` and ``x - h`` of one level of an element's step walk.

    Released once two newer levels exist: the walk itself reads a level's
    quotients only, and the kink diagnosis reads the one-sided quotients of
    the two smallest steps, computed here before the outputs go.
    """

    __slots__ = ("yp", "ym", "sided")

    def __init__(self, yp, ym):
        self.yp, self.ym, self.sided = yp, ym, None

    def release(self, diff, y0, tp, tm) -> None:
        self.sided = _one_sided((self, tp, None, tm), diff, y0)
        self.yp = self.ym = None


def _outputs(lv) -> tuple:
    """The outputs at ``x + h`` and ``x - h`` of a level (a walk's, or the batched first pass's arrays)."""
    return (lv[0].yp, lv[0].ym) if isinstance(lv[0], _Rows) else (lv[0], lv[2])


def _one_sided(lv, diff, y0) -> tuple:
    """A level's one-sided quotients and their noise: ``(right, its noise, left, its noise)``."""
    if isinstance(lv[0], _Rows) and lv[0].sided is not None:
        return lv[0].sided
    (yp, ym), tp, tm = _outputs(lv), lv[1], lv[3]
    r, rn, _ = diff(yp, y0, tp, 0.0)
    lft, ln, _ = diff(y0, ym, 0.0, tm)
    return r, rn, lft, ln


class _Rest:
    """The flat indices of ``order`` but those at positions ``pick`` (sorted): ``len`` and slices (int64 arrays),
    without the whole list (the screen's sample taken out of a tensor's elements)."""

    def __init__(self, order, pick: np.ndarray):
        self.order, self.pick = order, np.asarray(pick, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.order) - self.pick.size

    def __getitem__(self, sl: slice) -> np.ndarray:
        lo, hi, _ = sl.indices(len(self))
        if hi <= lo:
            return np.empty(0, dtype=np.int64)
        # rest position p is order position p + (picks at or before it): the span to read, then the picks out
        start = lo + int(np.searchsorted(self.pick - np.arange(self.pick.size), lo, side="right"))
        stop = hi + int(np.searchsorted(self.pick - np.arange(self.pick.size), hi - 1, side="right"))
        span = np.arange(start, stop, dtype=np.int64) if isinstance(self.order, range) else \
            np.asarray(self.order[start:stop], dtype=np.int64)
        drop = self.pick[(self.pick >= start) & (self.pick < stop)] - start
        if isinstance(self.order, range):
            span = span * self.order.step + self.order.start
        return np.delete(span, drop) if drop.size else span


class _Steps:
    """Each element's scale (``coordinate_scale``, through the Richardson step) and first step, computed where read.

    The same numbers as ``default_step(arr) / default_step(1)`` and the
    first step of :func:`projected_gradients` (at least 8 ulps of the
    storage), elementwise from the element's value and the tensor's rms
    (one chunked pass): nothing the tensor's size is held. The caller
    reads them while the element is at its base value.
    """

    def __init__(self, arr: np.ndarray, eval_dtype, step_scale: float):
        self.arr, self.step_scale = arr, step_scale
        self.base = default_step(np.ones(1), eval_dtype, "richardson")[0]
        ss, count = 0.0, 0
        for c in _pieces(arr):
            c = np.asarray(c, dtype=np.float64)
            fin = np.isfinite(c)
            if not fin.all():
                c = c[fin]
            ss += float(np.dot(c, c))
            count += c.size
        rms = float(np.sqrt(ss / count)) if count else 0.0
        self.floor = 0.1 * rms if rms > 0 else 1.0
        self.scale, self.first = _StepIndex(self, 0), _StepIndex(self, 1)
        self._last: tuple = (None, None)

    def at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scales and first steps of elements ``idx`` (flat indices; the last answer kept for the same array,
        which the callers read for both)."""
        if idx is self._last[0]:
            return self._last[1]
        out = self._compute(idx)
        self._last = (idx, out)
        return out

    def _compute(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _screens._take(self.arr, idx)
        x64 = x.astype(np.float64)
        s = np.maximum(np.abs(x64), self.floor)
        s[~np.isfinite(x64)] = 1.0
        steps = self.base * s
        h = np.maximum(steps * self.step_scale, 0)
        h[h == 0] = 1e-3
        if self.arr.dtype.kind == "f":
            with np.errstate(invalid="ignore"):  # at least a few ulps of the storage, or float16 rounds the step away
                h = np.fmax(h, 8.0 * np.spacing(np.abs(x).astype(self.arr.dtype)).astype(np.float64))
        return steps / self.base, h


class _StepIndex:
    """``steps.scale[i]`` / ``steps.first[i]``: read like an array by flat index (an int or an int array)."""

    def __init__(self, steps: _Steps, which: int):
        self.steps, self.which = steps, which

    def __getitem__(self, i):
        if isinstance(i, np.ndarray) and i.dtype == np.int64:
            return self.steps.at(i)[self.which]
        if np.ndim(i):
            return self.steps.at(np.asarray(i, dtype=np.int64))[self.which]
        return self.steps._compute(np.array([int(i)], dtype=np.int64))[self.which][0]


class _Whole:
    """Per-element results held as arrays the tensor's size (or :class:`_Chosen` arrays of a few elements)."""

    def __init__(self, value, error, sensitivity, left, right, kink, side_error):
        self.columns = (value, error, sensitivity, left, right, kink, side_error)

    def put(self, i: int, rec) -> None:
        for col, v in zip(self.columns, rec):
            col[i] = v

    def put_many(self, idx, value, error, sensitivity, left, right) -> None:
        """Elements settled by the screen (no kink there)."""
        for col, v in zip(self.columns, (value, error, sensitivity, left, right)):
            col[idx] = v

    def watch(self, idx) -> None:
        pass

    def get(self, idx):
        """Values and errors of elements ``idx`` (a list)."""
        return self.columns[0][idx], self.columns[1][idx]

    def arrays(self, shape):
        """value, error, left, right, kink, sensitivity, side_error: shaped like the tensor (None: as held)."""
        value, error, sensitivity, left, right, kink, side_error = (
            c.data if isinstance(c, _Chosen) else c.reshape(shape) for c in self.columns)
        return value, error, left, right, kink, sensitivity, side_error


class _Sunk:
    """Per-element results handed to a sink as they settle (a batch at a time): none held.

    Elements :meth:`watch`\\ ed keep their value and error for :meth:`get`
    (the screen's sample, read back once Richardson settled it).
    """

    def __init__(self, name: str, sink, block: int = _BLOCK):
        self.name, self.sink, self.block = name, sink, block
        self.pending: tuple[list, ...] = tuple([] for _ in range(8))  # index, then a record's columns
        self.screened: list[tuple] = []  # arrays of elements the screen settled
        self.screened_count = 0
        self.watched: dict[int, tuple] = {}

    def put(self, i: int, rec) -> None:
        if i in self.watched:
            self.watched[i] = (rec[0], rec[1])
        # (columns, not a tuple per element: CPython keeps freed small tuples on a free list, still allocated)
        for col, v in zip(self.pending, (i, *rec)):
            col.append(v)
        if len(self.pending[0]) >= self.block:
            self.flush()

    def put_many(self, idx, value, error, sensitivity, left, right) -> None:
        """Elements settled by the screen (no kink there): handed over a few screened parts at a time."""
        self.screened.append((idx, value, error, sensitivity))
        self.screened_count += len(idx)
        if self.screened_count >= 4 * self.block:
            self.flush()

    def flush(self) -> None:
        if self.screened:
            idx, value, error, sens = (np.concatenate(c) for c in zip(*self.screened))
            self.screened, self.screened_count = [], 0
            self.sink.add(self.name, idx, value, error, sens)
        if self.pending[0]:
            i, value, error, sens, left, right, kink, side = (np.array(c) for c in self.pending)
            for col in self.pending:
                col.clear()
            self.sink.add(self.name, i.astype(np.int64), value.astype(np.float64), error.astype(np.float64),
                          sens.astype(np.float64), kink=kink.astype(bool), left=left.astype(np.float64),
                          right=right.astype(np.float64), slack=side.astype(np.float64))

    def watch(self, idx) -> None:
        self.watched.update((int(i), None) for i in idx)

    def get(self, idx):
        value, error = zip(*(self.watched[int(i)] for i in idx))
        return np.array(value, dtype=np.float64), np.array(error, dtype=np.float64)

    def finish(self) -> None:
        self.flush()
        self.sink.done(self.name)


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
