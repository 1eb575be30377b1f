"""Directional finite differences: random projections ``<g, v>`` (fast mode) and the Taylor-remainder test.

:func:`directional_mismatches` compares ``<g, v>`` with the directional
derivative of ``<u, f>`` along each ``v`` at a cost independent of the
tensor's size; :func:`taylor_test` is the eps-free second opinion on a
failing or borderline verdict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from .screen import jumps as jump_pair
from .stencils import OK, Projector, _eps, default_step
from .stepwalk import richardson, settle

__all__ = ["Projection", "directional_mismatch", "directional_mismatches", "TaylorTest", "taylor_test"]


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
        jump: True where the probe's first steps straddle a jump of the
            function (a step function near a threshold): its differences
            are no derivative, and ``error`` is infinite.
    """

    analytic: float
    numeric: float
    mismatch: float
    error: float
    magnitude: float
    evaluations: int
    jump: bool = False


def _moved(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The displacement ``a - b`` in float64, coordinates at +-inf or NaN (which do not move) set to zero."""
    with np.errstate(invalid="ignore"):
        disp = a.astype(np.float64, copy=False) - b.astype(np.float64, copy=False)
    return disp if np.all(np.isfinite(disp)) else np.where(np.isfinite(disp), disp, 0.0)


def _moved(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The displacement ``a - b`` in float64, coordinates at +-inf or NaN (which do not move) set to zero."""
    with np.errstate(invalid="ignore"):
        disp = a.astype(np.float64, copy=False) - b.astype(np.float64, copy=False)
    return disp if np.all(np.isfinite(disp)) else np.where(np.isfinite(disp), disp, 0.0)


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
    noise: float = 0.0,
) -> Projection:
    """Compare ``<grad, v>`` with the directional derivative of ``<u, evaluate()>`` along ``v``.

    ``arr`` is moved in place to ``arr + t v`` (restored bit for bit). The
    displacement actually stored (float32 storage rounds it) enters the
    analytic side too: at each step ``t`` the mismatch
    ``(phi(+) - phi(-) - <g, d+ - d->) / s`` is formed, ``s`` the step along
    ``v``, and the mismatches at ``t`` and ``t/2`` are Richardson-extrapolated,
    so rounding of the displacement cancels exactly and only the gradient's
    error remains. Where ``judge(mismatch, error)`` is not :data:`OK`, the
    step sequence of :func:`~gradverify.references.elementwise.projected_gradients` settles the value.

    Cost: 4 evaluations (more where unsettled; +1 if ``y0`` is not given),
    independent of the size of ``arr``. :func:`directional_mismatches` does
    several directions at once.
    """
    (p,) = directional_mismatches(
        evaluate, arr, [direction], grad, cotangent, eval_dtype=eval_dtype, y0=y0,
        judge=None if judge is None else (lambda k, m, e: judge(m, e)), max_refinements=max_refinements,
        noise=noise,
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
    noise: float = 0.0,
) -> list[Projection]:
    """:func:`directional_mismatch` along each of ``directions``, the first levels evaluated together.

    The four displaced points of every direction (``+-t``, ``+-t/2``) are
    formed first; ``evaluate_rows(rows)``, when given, evaluates them in one
    call (row ``b`` is a whole value of ``arr``; ``torch.func.vmap`` /
    ``jax.vmap`` behind it), otherwise ``arr`` is moved in place for each.
    ``judge(k, mismatch, error)`` (``k`` the direction's position) decides
    which directions walk the step sequence, one evaluation at a time.

    ``noise`` is the measured noise of one value of ``<u, f>``, as in
    :func:`~gradverify.references.elementwise.projected_gradients`.

    Cost: 4 evaluations per direction (more where unsettled; the first
    direction also counts ``y0`` if it is not given). Memory: the points of
    every direction are stored together only for ``evaluate_rows`` and
    within :data:`ROWS_BYTES`; otherwise one copy of ``arr`` (to restore
    it) and one direction at a time -- a direction may be any object
    ``np.asarray`` draws on demand.
    """
    proj = Projector(evaluate, cotangent, eval_dtype, noise)
    if y0 is None:
        y0 = proj.output()
    counted = proj.evaluations  # y0's evaluation goes to the first direction's count
    g = np.asarray(grad, dtype=np.float64)
    x0 = arr.copy()
    x064 = x0 if x0.dtype == np.float64 else x0.astype(np.float64)
    all_finite = bool(np.isfinite(x064).all())
    finite = None if all_finite else np.isfinite(x064)
    if all_finite:
        rms = float(np.sqrt(np.vdot(x064, x064) / x064.size)) if x064.size else 0.0
        top = max(float(np.max(x064)), -float(np.min(x064))) if x064.size else 0.0
    else:  # non-finite entries (a -inf mask) neither move nor set the step
        fin = x064[finite]
        rms = float(np.sqrt(np.mean(fin * fin))) if fin.size else 0.0
        top = float(np.max(np.abs(fin))) if fin.size else 0.0
    scale = rms if rms > 0 else 1.0
    floor = 64 * _eps(arr.dtype if arr.dtype.kind == "f" else np.float64) * max(top, 1e-300)

    def plan(direction):
        v = np.asarray(direction, dtype=np.float64)
        if not all_finite:
            v = np.where(finite, v, 0.0)  # a coordinate at +-inf or NaN does not move (see projected_gradients)
        vv = float(np.vdot(v, v))
        if vv == 0.0:
            return None
        t = default_step(np.ones(1), eval_dtype, "richardson")[0] * scale / float(np.sqrt(vv / v.size))
        if arr.dtype.kind == "f":
            t = max(t, 16.0 * _eps(arr.dtype) * scale / float(np.sqrt(vv / v.size)))
        return v, vv, t

    def place(v, step):
        """``arr`` moved in place to ``x + step v`` as stored in its dtype (float64 arithmetic, no temporary)."""
        if arr.dtype == np.float64:
            np.multiply(v, step, out=arr)
            np.add(arr, x064, out=arr)
        else:
            for sl in _chunks(arr.size):
                a = arr.reshape(-1)
                a[sl] = v.reshape(-1)[sl] * step + x064.reshape(-1)[sl]

    def displaced(v):
        """``<v, d>`` and ``<g, d>`` for the displacement ``d = arr - x`` actually stored (chunked)."""
        a, flat_v, flat_g, flat_x = arr.reshape(-1), v.reshape(-1), g.reshape(-1), x064.reshape(-1)
        dv = dg = 0.0
        for sl in _chunks(a.size):
            d = a[sl].astype(np.float64) - flat_x[sl] if all_finite else _moved(a[sl], flat_x[sl])
            dv += float(np.dot(flat_v[sl], d))
            dg += float(np.dot(flat_g[sl], d))
        return dv, dg

    def level(step, v, vv):
        # x + step v and x - step v one at a time, in place: memory one copy of the tensor (x0)
        sides = []
        for st in (step, -step):
            place(v, st)
            try:
                y = proj.output()
                sides.append((y, *displaced(v)))
            finally:
                arr[...] = x0
        (yp, vp, gp), (ym, vm, gm) = sides
        if collect:
            seen.append((yp, ym))
        s = (vp - vm) / vv  # the step along v actually stored (float32 storage rounds x + s v)
        num, noise_, mag = proj.diff(yp, ym, s, 0.0)
        ana = (gp - gm) / s
        # the level tuple settle() reads: [1], [3] the steps, [4] the quotient, [5] its noise,
        # [7] whether any output moved
        return (None, s, None, -s, num - ana, noise_, mag, not np.array_equal(yp, ym))

    together = evaluate_rows is not None and 4 * len(directions) * max(arr.nbytes, 8 * arr.size) <= ROWS_BYTES
    first_levels = {}  # direction -> its levels at t and t/2
    jumps = {}  # direction -> whether its first steps straddle a jump
    seen: list = []  # the outputs (y+, y-) of levels computed one at a time, while ``collect`` is set
    collect = False
    base = np.asarray(y0, dtype=np.float64).reshape(-1)
    plans = []
    if together:
        plans = [plan(d) for d in directions]
        steps = [(k, s) for k, p in enumerate(plans) if p is not None
                 for s in (p[2], -p[2], p[2] / 2, -p[2] / 2)]
        if steps:
            first_levels, jumps = _first_levels_together(arr, x064, g, plans, steps, evaluate_rows, proj, y0)
    out = []
    for k, direction in enumerate(directions):
        before = proj.evaluations
        p = plans[k] if together else plan(direction)  # one direction at a time: drawn again where lazy
        if p is None:
            out.append(Projection(0.0, 0.0, 0.0, 0.0, 0.0, counted))
            counted = 0
            continue
        v, vv, t = p
        first = first_levels.get(k)
        if first is None:
            first = [level(t, v, vv), level(t / 2, v, vv)]
            if judge is not None and judge(k, *richardson(*first)) != OK:
                # Only a probe that looks wrong is looked at for a jump beside the point (see
                # screen.jump_side): its first levels again, their outputs kept (4 evaluations).
                collect = True
                seen.clear()
                level(t, v, vv)
                level(t / 2, v, vv)
                collect = False
                (yp1, ym1), (yp2, ym2) = ([np.asarray(y, dtype=np.float64).reshape(1, -1) for y in pair]
                                          for pair in seen[:2])
                seen.clear()
                jr, jl = jump_pair(yp1, ym1, yp2, ym2, base, proj)
                jumps[k] = bool(jr[0] or jl[0])
        mismatch, error = richardson(*first)
        if jumps.get(k):
            analytic = float(np.vdot(g, v))
            out.append(Projection(analytic, analytic + mismatch, mismatch, math.inf, first[1][6] / scale,
                                  counted + (4 if together else 0) + proj.evaluations - before, jump=True))
            counted = 0
            continue
        if judge is not None and judge(k, mismatch, error) != OK:
            floor_t = floor / max(float(np.max(v)), -float(np.min(v)))
            mismatch, error, _ = settle(lambda st, v=v, vv=vv: level(st, v, vv), first, t, floor_t,
                                         lambda m, e, k=k: judge(k, m, e), max_refinements)
        analytic = float(np.vdot(g, v))
        used = counted + (4 if together else 0) + proj.evaluations - before
        counted = 0
        out.append(Projection(analytic, analytic + mismatch, mismatch, error, first[1][6] / scale, used))
        if not together:
            del v, p
    return out


#: The displaced points of all directions are formed and evaluated in one
#: vectorised call while they take at most this many bytes; beyond, one
#: point at a time in place (memory: one copy of the tensor, whatever the
#: number of directions).
ROWS_BYTES = 32 * 2**20

_CHUNK = 1 << 16


def _chunks(n: int):
    return (slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK))


def _first_levels_together(arr, x064, g, plans, steps, evaluate_rows, proj, y0) -> dict:
    """The first two levels of every direction from one vectorised call, and which directions straddle a jump."""
    # Every displaced point x + s v at once, as stored in arr's dtype (in
    # place: large temporaries cost more than the arithmetic).
    stored = np.empty((len(steps),) + arr.shape, dtype=arr.dtype)
    row = np.empty(arr.shape) if arr.dtype != np.float64 else None
    for b, (k, st) in enumerate(steps):
        out_row = stored[b, ...] if row is None else row  # a view, also for a 0-d arr
        np.multiply(plans[k][0], st, out=out_row)
        np.add(out_row, x064, out=out_row)
        if row is not None:
            stored[b] = row
    ys = np.asarray(evaluate_rows(stored)).astype(np.float64).reshape((len(stored),) + y0.shape)
    proj.evaluations += len(stored)
    # The first two levels of every direction as array arithmetic: the
    # displacement actually stored (float32 storage rounds x + s v) of
    # each pair of rows, its step along v and the analytic <g, d>.
    pairs = len(steps) // 2
    disp = _moved(stored[0::2], stored[1::2]).reshape(pairs, -1)
    vrows = np.stack([plans[k][0].reshape(-1) for k, _ in steps[0::4]])
    vvs = np.array([plans[k][1] for k, _ in steps[0::4]])
    along = np.einsum("kpj,kj->kp", disp.reshape(len(vrows), 2, -1), vrows).reshape(-1) / np.repeat(vvs, 2)
    ana = (disp @ g.reshape(-1)) / along
    flat = ys.reshape(len(steps), -1)
    quot, noise, mag, moved = proj.diff_many(flat[0::2], flat[1::2], along)
    first_levels: dict = {}
    for p_, (k, _) in enumerate(steps[0::2]):
        s_ = float(along[p_])
        first_levels.setdefault(k, []).append(
            (None, s_, None, -s_, float(quot[p_] - ana[p_]), float(noise[p_]), float(mag[p_]), bool(moved[p_])))
    # One-sided differences of each direction at t and t/2 (rows +t, -t, +t/2, -t/2): a jump beside the
    # point (see screen.jump_side) makes the directional quotients no derivative.
    base = np.asarray(y0, dtype=np.float64).reshape(-1)
    rows4 = flat.reshape(-1, 4, flat.shape[1])
    jr, jl = jump_pair(rows4[:, 0], rows4[:, 1], rows4[:, 2], rows4[:, 3], base, proj)
    return first_levels, {k: bool(jr[j] or jl[j]) for j, (k, _) in enumerate(steps[0::4])}


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
    noise: float = 0.0,
) -> TaylorTest:
    """Taylor-remainder convergence rate of ``<u, f>`` along ``direction`` (eps-free second opinion).

    Starts at a displacement of 1% of the tensor's scale and halves it
    ``levels - 1`` times; ``arr`` is moved in place and restored bit for
    bit, and the displacement actually stored enters ``<g, d>``. A wrong
    gradient shows rate 1 once ``h`` is small enough for the linear error
    to beat the curvature; a right one keeps rate 2 until rounding. Cost:
    ``levels`` evaluations (+1 if ``y0`` is not given).
    """
    proj = Projector(evaluate, cotangent, eval_dtype, noise)
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


