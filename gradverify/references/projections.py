"""Directional finite differences: random projections ``<g, v>`` (fast mode) and the Taylor-remainder test.

:func:`directional_mismatches` compares ``<g, v>`` with the directional
derivative of ``<u, f>`` along each ``v`` at a cost independent of the
tensor's size; :func:`taylor_test` is the eps-free second opinion on a
failing or borderline verdict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Callable, Sequence

import numpy as np

from ..memory import chunk_for
from .screen import jumps as jump_pair
from .stencils import OK, Projector, _eps, default_step
from .stepwalk import richardson, settle

__all__ = ["Projection", "directional_mismatch", "directional_mismatches", "directional_mismatches_together",
           "TaylorTest", "taylor_test",
           "direction_blocks", "UnitDirection", "ROWS_BYTES", "GROUP_BYTES"]


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
    rows_bytes: int | None = None,
    hold_bytes: int = 0,
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
    direction also counts ``y0`` if it is not given). Memory: one copy of
    ``arr`` (to restore it) and chunks of a 64th of it at most -- a
    direction is read a chunk at a time (:func:`direction_blocks`), so one
    that is drawn again on demand is never held whole, unless its float64
    values take at most ``hold_bytes`` (then it is drawn once per direction
    and held while its levels run: faster). The points of every direction
    are stored together only for ``evaluate_rows`` and within
    ``rows_bytes`` (default :data:`ROWS_BYTES`), counting the directions and
    displacements that path holds; otherwise one point at a time, in place.
    """
    scan = _scan(evaluate, arr, directions, grad, cotangent, eval_dtype=eval_dtype, y0=y0, judge=judge,
                 max_refinements=max_refinements, together=evaluate_rows is not None, noise=noise,
                 rows_bytes=rows_bytes, hold_bytes=hold_bytes)
    rows = next(scan)
    return _finish(scan, None if rows is None else evaluate_rows(rows))


def directional_mismatches_together(
    evaluate: Callable[[], np.ndarray],
    evaluate_rows: Callable[[str, np.ndarray], np.ndarray] | None,
    evaluate_points: Callable[[dict], np.ndarray] | None,
    probes: Sequence[tuple],
    cotangent: np.ndarray,
    *,
    eval_dtype=np.float64,
    y0: np.ndarray,
    max_refinements: int = 20,
    noise: float = 0.0,
    rows_bytes: int | None = None,
    hold_bytes: Callable[[np.ndarray], int] | int = 0,
    group_bytes: int = 0,
) -> list[list[Projection]]:
    """:func:`directional_mismatches` for several tensors, the first levels of small ones in one call.

    ``probes`` holds ``(name, arr, directions, grad, judge)`` per tensor;
    the result, the projections of each, in that order. The tensors are
    taken smallest first and gathered while the group's tensors take at
    most ``group_bytes`` (default :data:`GROUP_BYTES`) and the rows of the
    whole group (every row carries each of the group's tensors: at the
    point, or displaced for its own probes) and each member's own rows fit
    ``rows_bytes``; ``evaluate_points(rows, moved)`` (``rows[name]`` of shape
    ``(B, *arr.shape)``, one ``B`` for all, ``moved`` the name each row
    moves: a vectorised call moving several tensors, see
    :meth:`~gradverify.batching.BatchedEvaluation.evaluate_points`)
    evaluates a group's rows at once; without it, every tensor is a group
    of its own. A tensor alone is evaluated as :func:`directional_mismatches`
    does it (``evaluate_rows(name, rows)``; None: one point at a time), a
    tensor whose rows do not fit one point at a time. So a
    network's biases and small weights cost one call, not one each. The
    verdicts are those of :func:`directional_mismatches` per tensor: the
    same rows, the same arithmetic on their outputs.
    """
    limit = ROWS_BYTES if rows_bytes is None else rows_bytes
    group_bytes = group_bytes or GROUP_BYTES
    order = sorted(range(len(probes)), key=lambda i: probes[i][1].nbytes)
    groups: list[list[int]] = []
    for i in order:
        arr, k = probes[i][1], len(probes[i][2])
        own = rows_bytes_of(arr, k)
        g = groups[-1] if groups else None
        if g is not None and evaluate_points is not None and own <= limit:
            members = g + [i]
            width = sum(probes[j][1].nbytes for j in members)
            rows = 4 * sum(len(probes[j][2]) for j in members)
            if sum(rows_bytes_of(probes[j][1], len(probes[j][2])) for j in members) + rows * width <= limit and \
                    width <= group_bytes:
                g.append(i)
                continue
        groups.append([i])
    out: list = [None] * len(probes)
    for g in groups:
        scans = []
        for i in g:
            name, arr, directions, grad, judge = probes[i]
            hold = hold_bytes(arr) if callable(hold_bytes) else hold_bytes
            scans.append(_scan(evaluate, arr, directions, grad, cotangent, eval_dtype=eval_dtype, y0=y0, judge=judge,
                               max_refinements=max_refinements, together=evaluate_rows is not None, noise=noise,
                               rows_bytes=limit, hold_bytes=hold, limit_checked=len(g) > 1))
        asked = [next(scan) for scan in scans]
        ys = _group_outputs(evaluate_rows, evaluate_points, [probes[i] for i in g], asked)
        for i, scan, y in zip(g, scans, ys):
            out[i] = _finish(scan, y)
    return out


def _group_outputs(evaluate_rows, evaluate_points, members, asked) -> list:
    """The outputs of each member's rows (None where it asked none), from one call moving every member's tensor."""
    given = [(m, r) for m, r in zip(members, asked) if r is not None]
    if not given:
        return [None] * len(asked)
    if len(given) == 1:
        (m, r), = given
        ys = [np.asarray(evaluate_rows(m[0], r))]
    else:
        total = sum(len(r) for _, r in given)
        rows, start, spans, moved = {}, 0, [], []
        for m, r in given:
            name, arr = m[0], m[1]
            block = np.empty((total,) + arr.shape, dtype=arr.dtype)
            block[...] = arr  # the point, but for this member's own rows
            block[start:start + len(r)] = r
            rows[name] = block
            spans.append(slice(start, start + len(r)))
            moved += [name] * len(r)
            start += len(r)
        every = np.asarray(evaluate_points(rows, moved))
        del rows
        ys = [every[sl] for sl in spans]
    it = iter(ys)
    return [None if r is None else next(it) for r in asked]


def _finish(scan, outputs):
    """Hand a :func:`_scan` the outputs of the rows it yielded (None: it evaluates one point at a time); its result."""
    try:
        scan.send(outputs)
    except StopIteration as done:
        return done.value
    raise RuntimeError("a directional scan asked for a second batch of rows")  # pragma: no cover - a bug here


def _scan(evaluate, arr, directions, grad, cotangent, *, eval_dtype, y0, judge, max_refinements, together, noise,
          rows_bytes, hold_bytes, limit_checked: bool = False):
    """:func:`directional_mismatches` as a generator: it yields the rows of its first levels (or None), then is sent
    their outputs (row for row; None where it yielded None) and returns the projections.

    So the rows of several tensors' scans can be evaluated in one call
    (:func:`directional_mismatches_together`). The scan moves ``arr`` in
    place only after its outputs are sent, never before it yields.
    ``limit_checked``: the caller has already counted these rows within its
    memory (a group's); otherwise they go together only within
    ``rows_bytes``.
    """
    proj = Projector(evaluate, cotangent, eval_dtype, noise)
    if y0 is None:
        y0 = proj.output()
    counted = proj.evaluations  # y0's evaluation goes to the first direction's count
    flat = _Flat(arr)
    x0 = arr.copy().reshape(-1)  # the values to restore (C order, as directions are read)
    g = _flat_view(grad)
    size = x0.size
    all_finite = all(bool(np.isfinite(x0[sl]).all()) for sl in _chunks(size))
    if all_finite and x0.dtype == np.float64:
        rms = float(np.sqrt(np.vdot(x0, x0) / size)) if size else 0.0
        top = max(float(np.max(x0)), -float(np.min(x0))) if size else 0.0
    else:  # chunk by chunk in float64; non-finite entries (a -inf mask) neither move nor set the step
        ss, count, top = 0.0, 0, 0.0
        for sl in _chunks(size):
            c = x0[sl].astype(np.float64)
            if not all_finite:
                c = c[np.isfinite(c)]
            ss += float(np.dot(c, c))
            count += c.size
            top = max(top, float(np.max(np.abs(c)))) if c.size else top
        rms = float(np.sqrt(ss / count)) if count else 0.0
    scale = rms if rms > 0 else 1.0
    floor = 64 * _eps(arr.dtype if arr.dtype.kind == "f" else np.float64) * max(top, 1e-300)

    def blocks(direction):
        """The direction's chunks ``(slice, float64 values)``, zero where ``x`` is not finite."""
        for start, vb in direction_blocks(direction):
            sl = slice(start, start + vb.size)
            if not all_finite:
                vb = np.where(np.isfinite(x0[sl]), vb, 0.0)  # a coordinate at +-inf or NaN does not move
            yield sl, vb

    def plan(direction):
        if 0 < size and 8 * size <= hold_bytes and not isinstance(direction, np.ndarray):
            # held while its levels run: drawn once (a direction drawn on demand that can hold its values keeps
            # them until the next direction's turn, so what else reads it, its tolerance, draws nothing either)
            keep = getattr(direction, "hold", None)
            direction = keep() if keep is not None else np.asarray(direction, dtype=np.float64)
        vv = gv = vmax = 0.0
        for sl, vb in blocks(direction):
            vv += float(np.dot(vb, vb))
            gv += float(np.dot(g[sl].astype(np.float64, copy=False), vb))
            vmax = max(vmax, float(np.max(np.abs(vb)))) if vb.size else vmax
        if vv == 0.0:
            return None
        t = default_step(np.ones(1), eval_dtype, "richardson")[0] * scale / float(np.sqrt(vv / size))
        if arr.dtype.kind == "f":
            t = max(t, 16.0 * _eps(arr.dtype) * scale / float(np.sqrt(vv / size)))
        return direction, vv, t, vmax, gv

    def place(direction, step, touched):
        """``arr`` moved in place to ``x + step v`` as stored in its dtype; ``<v, d>``, ``<g, d>`` of the stored ``d``.

        Chunk by chunk (float64 arithmetic, no temporary the size of the
        tensor); the chunks written are recorded in ``touched``.
        """
        dv = dg = 0.0
        in_place = flat.flat is not None and arr.dtype == np.float64
        for sl, vb in blocks(direction):
            touched.append(sl)
            x = x0[sl].astype(np.float64, copy=False)
            if in_place:  # (the same float64 operations, written straight into the tensor: no temporaries)
                stored = flat.get(sl)
                np.multiply(vb, step, out=stored)
                np.add(stored, x, out=stored)
            else:
                flat.set(sl, vb * step + x)
                stored = flat.get(sl)
            d = (stored - x if in_place else stored.astype(np.float64) - x) if all_finite else _moved(stored, x0[sl])
            dv += float(np.dot(vb, d))
            dg += float(np.dot(g[sl].astype(np.float64, copy=False), d))
        return dv, dg

    def level(step, p):
        # x + step v and x - step v one at a time, in place: memory one copy of the tensor (x0)
        direction, vv = p[0], p[1]
        sides = []
        for st in (step, -step):
            touched: list = []
            try:
                moved = place(direction, st, touched)
                sides.append((proj.output(), *moved))
            finally:
                for sl in touched:
                    flat.set(sl, x0[sl])
        (yp, vp, gp), (ym, vm, gm) = sides
        if collect:
            seen.append((yp, ym))
        s = (vp - vm) / vv  # the step along v actually stored (float32 storage rounds x + s v)
        num, noise_, mag = proj.diff(yp, ym, s, 0.0)
        ana = (gp - gm) / s
        # the level tuple settle() reads: [1], [3] the steps, [4] the quotient, [5] its noise,
        # [7] whether any output moved
        return (None, s, None, -s, num - ana, noise_, mag, not np.array_equal(yp, ym))

    limit = ROWS_BYTES if rows_bytes is None else rows_bytes
    together = together and (limit_checked or rows_bytes_of(arr, len(directions)) <= limit)
    first_levels = {}  # direction -> its levels at t and t/2
    jumps = {}  # direction -> whether its first steps straddle a jump
    seen: list = []  # the outputs (y+, y-) of levels computed one at a time, while ``collect`` is set
    collect = False
    base = np.asarray(y0, dtype=np.float64).reshape(-1)
    plans = []
    steps_asked = False
    if together:
        plans = [plan(np.asarray(d, dtype=np.float64)) for d in directions]
        steps = [(k, s) for k, p in enumerate(plans) if p is not None
                 for s in (p[2], -p[2], p[2] / 2, -p[2] / 2)]
        if steps:
            steps_asked = True
            x064 = x0.astype(np.float64, copy=False).reshape(arr.shape)
            vs = [None if p is None else (p[0] if all_finite else np.where(np.isfinite(x064), p[0], 0.0))
                  for p in plans]
            stored = _first_rows(arr, x064, vs, steps)
            ys = yield stored
            first_levels, jumps = _first_levels_from(stored, ys, np.asarray(grad, dtype=np.float64), vs, plans,
                                                     steps, proj, y0)
            del x064, vs, stored, ys
    if not steps_asked:
        yield None  # (no rows: the caller sends None)
    out = []
    for k, direction in _in_turn(directions):
        before = proj.evaluations
        p = plans[k] if together else plan(direction)  # one direction at a time
        if p is None:
            out.append(Projection(0.0, 0.0, 0.0, 0.0, 0.0, counted))
            counted = 0
            continue
        t, vmax, analytic = p[2], p[3], p[4]
        first = first_levels.get(k)
        if first is None:
            first = [level(t, p), level(t / 2, p)]
            if judge is not None and judge(k, *richardson(*first)) != OK:
                # Only a probe that looks wrong is looked at for a jump beside the point (see
                # screen.jump_side): its first levels again, their outputs kept (4 evaluations).
                collect = True
                seen.clear()
                level(t, p)
                level(t / 2, p)
                collect = False
                (yp1, ym1), (yp2, ym2) = ([np.asarray(y, dtype=np.float64).reshape(1, -1) for y in pair]
                                          for pair in seen[:2])
                seen.clear()
                jr, jl = jump_pair(yp1, ym1, yp2, ym2, base, proj)
                jumps[k] = bool(jr[0] or jl[0])
        mismatch, error = richardson(*first)
        if jumps.get(k):
            out.append(Projection(analytic, analytic + mismatch, mismatch, math.inf, first[1][6] / scale,
                                  counted + (4 if together else 0) + proj.evaluations - before, jump=True))
            counted = 0
            continue
        if judge is not None and judge(k, mismatch, error) != OK:
            floor_t = floor / vmax
            mismatch, error, _ = settle(lambda st, p=p: level(st, p), first, t, floor_t,
                                         lambda m, e, k=k: judge(k, m, e), max_refinements)
        used = counted + (4 if together else 0) + proj.evaluations - before
        counted = 0
        out.append(Projection(analytic, analytic + mismatch, mismatch, error, first[1][6] / scale, used))
        if not together:
            del p
    return out


#: Fast mode gathers the probes of tensors taking at most this many bytes
#: together into one vectorised call. A call batches every operation
#: downstream of any tensor it moves, for all its rows: a network's last
#: bias alone batches one addition, grouped with the first layer's bias the
#: whole network. So a group pays where its tensors are small enough that
#: this work stays under a call's fixed cost (a vmap call, its
#: verification, the Python around it). Fast checks of the benchmark's
#: tanh MLPs of 5,000 and 20,000 parameters, both shapes (median of 11,
#: policies interleaved in one process, two rounds): with groups up to
#: 16 KiB, 0-18% faster than without groups, never slower, under torch and
#: JAX; with groups bounded by the rows' memory only, a JAX check of the
#: 5,000-parameter MLP (every tensor in one group) was 20-31% slower than
#: without groups.
GROUP_BYTES = 16 * 2**10

#: The displaced points of all directions are formed and evaluated in one
#: vectorised call while they take at most this many bytes; beyond, one
#: point at a time in place (memory: one copy of the tensor, whatever the
#: number of directions).
ROWS_BYTES = 32 * 2**20

def _chunks(n: int):
    """The chunks of a pass over ``n`` elements (:func:`~gradverify.memory.chunk_for`: a 64th of them, bounded)."""
    step = chunk_for(n)
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def direction_blocks(direction) -> Iterator[tuple[int, np.ndarray]]:
    """A direction's flat values (C order) as ``(start, float64 chunk)`` pairs, in the chunks of :func:`_chunks`.

    An object with a ``blocks()`` method gives its own (drawn again on
    demand, or nonzero only on part of the tensor: the elements it skips
    are zero); anything else is read through ``np.asarray``.
    """
    own = getattr(direction, "blocks", None)
    if own is not None:
        yield from own()
        return
    v = np.asarray(direction, dtype=np.float64).reshape(-1)
    for sl in _chunks(v.size):
        yield sl.start, v[sl]


class UnitDirection:
    """The direction of one element (flat ``index``) of a tensor of ``shape``, never held as a dense array."""

    def __init__(self, shape: tuple, index: int):
        self.shape = tuple(shape)
        self.index = int(index)

    def blocks(self):
        yield self.index, np.ones(1)

    def __array__(self, dtype=None, copy=None):
        v = np.zeros(self.shape)
        v.reshape(-1)[self.index] = 1.0
        return v if dtype is None else v.astype(dtype, copy=False)


def _flat_view(a: np.ndarray) -> np.ndarray:
    """``a``'s elements in C order, a view where ``a`` is C-contiguous (a copy otherwise)."""
    a = np.asarray(a)
    return a.reshape(-1) if a.flags.c_contiguous else np.ravel(a)


class _Flat:
    """Chunked reads and writes of an array's elements in C order, whatever its memory layout."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr
        self.flat = arr.reshape(-1) if arr.flags.c_contiguous else None

    def get(self, sl: slice) -> np.ndarray:
        if self.flat is not None:
            return self.flat[sl]
        return self.arr[np.unravel_index(np.arange(sl.start, sl.stop), self.arr.shape)]

    def set(self, sl: slice, values) -> None:
        if self.flat is not None:
            self.flat[sl] = values
        else:
            self.arr[np.unravel_index(np.arange(sl.start, sl.stop), self.arr.shape)] = values


def _in_turn(directions):
    """``(k, direction)`` in turn; a direction that was asked to hold its values (``hold()``) releases them when
    the next one is asked for, or when the loop ends."""
    for k, d in enumerate(directions):
        try:
            yield k, d
        finally:
            release = getattr(d, "release", None)
            if release is not None:
                release()


def rows_bytes_of(arr: np.ndarray, directions: int) -> int:
    """Bytes the first levels of ``directions`` probes of ``arr`` take when evaluated together: their rows (4 per
    direction, in ``arr``'s dtype), the directions and the displacements in float64."""
    return 4 * directions * max(arr.nbytes, 8 * arr.size) + 3 * directions * 8 * arr.size


def _first_rows(arr, x064, vs, steps) -> np.ndarray:
    """Every displaced point ``x + s v`` of the first levels at once, as stored in ``arr``'s dtype.

    (In place: large temporaries cost more than the arithmetic.)
    """
    stored = np.empty((len(steps),) + arr.shape, dtype=arr.dtype)
    row = np.empty(arr.shape) if arr.dtype != np.float64 else None
    for b, (k, st) in enumerate(steps):
        out_row = stored[b, ...] if row is None else row  # a view, also for a 0-d arr
        np.multiply(vs[k], st, out=out_row)
        np.add(out_row, x064, out=out_row)
        if row is not None:
            stored[b] = row
    return stored


def _first_levels_from(stored, ys, g, vs, plans, steps, proj, y0) -> tuple[dict, dict]:
    """The first two levels of every direction from the outputs ``ys`` of its rows ``stored``, and which
    directions straddle a jump."""
    ys = np.asarray(ys).astype(np.float64).reshape((len(stored),) + y0.shape)
    proj.evaluations += len(stored)
    # The first two levels of every direction as array arithmetic: the
    # displacement actually stored (float32 storage rounds x + s v) of
    # each pair of rows, its step along v and the analytic <g, d>.
    pairs = len(steps) // 2
    disp = _moved(stored[0::2], stored[1::2]).reshape(pairs, -1)
    vrows = np.stack([vs[k].reshape(-1) for k, _ in steps[0::4]])
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
    bit, and the displacement actually stored enters ``<g, d>``. Memory:
    the direction (read through :func:`direction_blocks`: a
    :class:`UnitDirection` is one element) and the values it moves. A wrong
    gradient shows rate 1 once ``h`` is small enough for the linear error
    to beat the curvature; a right one keeps rate 2 until rounding. Cost:
    ``levels`` evaluations (+1 if ``y0`` is not given).
    """
    proj = Projector(evaluate, cotangent, eval_dtype, noise)
    if y0 is None:
        y0 = proj.output()
    flat, g = _Flat(arr), _flat_view(grad)
    # the direction's chunks and the values they move, saved to restore (the direction's support only:
    # one element for a UnitDirection)
    parts = [(slice(start, start + vb.size), vb, flat.get(slice(start, start + vb.size)).copy())
             for start, vb in direction_blocks(direction)]
    vmax = max((float(np.max(np.abs(vb))) for _, vb, _ in parts if vb.size), default=0.0)
    if vmax == 0.0:
        return TaylorTest((), (), (), None, proj.evaluations)
    scale = max((float(np.max(np.abs(x0[vb != 0].astype(np.float64)))) for _, vb, x0 in parts if np.any(vb != 0)),
                default=0.0) or 1.0
    h = 1e-2 * scale / vmax
    steps, rems, noise = [], [], []
    for _ in range(levels):
        gd = 0.0
        try:
            for sl, vb, x0 in parts:
                x = x0.astype(np.float64)
                flat.set(sl, x + h * vb)
                gd += float(np.dot(g[sl].astype(np.float64, copy=False), flat.get(sl).astype(np.float64) - x))
            y = proj.output()
        finally:
            for sl, _, x0 in parts:
                flat.set(sl, x0)
        num, n, _ = proj.diff(y, y0, 1.0, 0.0)
        steps.append(h)
        rems.append(abs(num - gd))
        noise.append(n)
        h /= 2
    rates = []
    for k in range(len(rems) - 1):
        if rems[k + 1] <= 8 * noise[k + 1] or rems[k] <= 0:
            break
        rates.append(math.log2(rems[k] / rems[k + 1]))
    rate = float(np.median(rates[-3:])) if rates else None
    return TaylorTest(tuple(steps), tuple(rems), tuple(rates), rate, proj.evaluations)


