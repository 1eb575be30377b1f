"""The batched first pass and the one-difference screen of element-wise finite differences.

:func:`first_pass_batched` computes the first two Richardson levels of many
elements from one batched evaluation (``torch.func.vmap``/``jax.vmap``) as
array arithmetic; :func:`screen` computes one central difference per element
at ``h / SCREEN_STEP_DIVISOR`` (2 evaluations), which
:func:`~gradverify.references.elementwise.projected_gradients` trusts for a
tensor only after a sample agreed with Richardson.
"""

from __future__ import annotations

import numpy as np

from .stencils import OK, _ULPS_PER_OUTPUT

__all__ = ["SCREEN_MIN_SIZE", "SCREEN_SAMPLES", "SCREEN_STEP_DIVISOR", "screen", "first_pass_batched", "jump_side", "jumps",
           "jump_interval"]

#: Tensors of at least this many elements are screened (see
#: :func:`projected_gradients`); smaller ones go straight to Richardson.
SCREEN_MIN_SIZE = 64
#: Elements per tensor, drawn at random, that run both the screen and
#: Richardson before the rest of the tensor is screened.
SCREEN_SAMPLES = 16
#: The screening step is the Richardson step divided by this.
SCREEN_STEP_DIVISOR = 16.0


#: One-sided differences at ``h`` and ``h/2`` within this fraction of each other are a jump, not a slope
#: (a slope halves the difference with the step, a curvature quarters it). A smooth function shows
#: equal differences only where its slope is about -1.5 times its curvature times ``h`` (beside an
#: extremum of ``<u, f>``): the tighter the fraction, the narrower that window (it then reads as a kink
#: whose interval holds the right gradient: nondiff, never a failure); a jump on a slope ``s`` is
#: recognised while it exceeds about ``s h / (2 JUMP_AGREEMENT)``.
JUMP_AGREEMENT = 0.1


def jump_side(y1, y2, y0, proj):
    """Whether a jump sits on one side of each row's point, read output by output.

    ``y1``, ``y2`` are the outputs (rows of flattened outputs) at ``x + t``
    and ``x + t/2`` (or ``x - t``, ``x - t/2``), ``y0`` the outputs at the
    point, ``proj`` the :class:`~gradverify.references.stencils.Projector`
    (cotangent, rounding). An output whose change does not shrink with the
    step (within :data:`JUMP_AGREEMENT`, above its rounding), or that is
    bitwise unchanged at ``t/2`` while it moved well above its rounding at
    ``t``, jumped between the point and ``x +- t``: the differences through
    it measure the jump over the step, not a derivative. A side jumps when
    such outputs carry more of ``<u, y1 - y0>`` than its rounding noise.
    Read output by output, since the projection of many small jumps (a step
    function of many elements along a random direction) grows with the
    step as a slope does. Cost: array arithmetic, no evaluations.
    """
    y1 = np.atleast_2d(np.asarray(y1, dtype=np.float64))
    y2 = np.atleast_2d(np.asarray(y2, dtype=np.float64))
    y0 = np.asarray(y0, dtype=np.float64).reshape(1, -1)
    u = np.abs(proj.u.reshape(1, -1))
    d1, d2 = y1 - y0, y2 - y0
    n1 = proj.eps * _ULPS_PER_OUTPUT * (np.abs(y1) + np.abs(y0))
    n2 = proj.eps * _ULPS_PER_OUTPUT * (np.abs(y2) + np.abs(y0))
    constant = (np.abs(d2) > 4 * n2) & (np.abs(d1 - d2) <= JUMP_AGREEMENT * np.abs(d2))
    vanished = (d2 == 0) & (np.abs(d1) > 16 * n1)
    jumped = np.sum(u * np.abs(d1) * (constant | vanished), axis=1)
    noise = np.sum(u * n1, axis=1) + 2 * proj.noise
    return (jumped > 16 * noise) & (jumped > 0)


def jumps(yp1, ym1, yp2, ym2, y0, proj):
    """:func:`jump_side` on both sides of each row, vetoed where the central quotients at t and t/2 agree.

    Rows: outputs at ``x + t``, ``x - t``, ``x + t/2``, ``x - t/2``. A
    smooth function whose curvature dominates the step (an extremum between
    ``x + t/2`` and ``x + t``) can take equal values at both one-sided
    points, which alone looks like a jump; its central quotients at ``t``
    and ``t/2`` still agree (exactly, for a quadratic), while across a jump
    they differ by about 2x. Returns ``(right, left)`` boolean arrays.
    """
    jr = jump_side(yp1, yp2, y0, proj)
    jl = jump_side(ym1, ym2, y0, proj)
    if not (np.any(jr) or np.any(jl)):
        return jr, jl
    rows = [np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (yp1, ym1, yp2, ym2)]
    u = proj.u.reshape(-1)
    c1 = (rows[0] - rows[1]) @ u / 2.0   # the central quotient at t, times t
    c2 = (rows[2] - rows[3]) @ u         # the central quotient at t/2, times t
    noise = proj.eps * _ULPS_PER_OUTPUT * (sum(np.abs(r) for r in rows) @ np.abs(u)) + 4 * proj.noise
    smooth = np.abs(c1 - c2) <= 0.05 * np.maximum(np.abs(c1), np.abs(c2)) + 4 * noise
    return jr & ~smooth, jl & ~smooth


def jump_interval(left, right, jump_left, jump_right):
    """One-sided values at an element beside a jump: the jump's side opens the interval towards the jump.

    A side with a jump carries no derivative: its quotient (the jump over
    the step) is replaced so that the interval ``[min, max]`` the
    comparison core accepts as subgradients runs from the other side's
    slope past the jump's quotient (both sides jumping: the widest finite
    interval the quotients span, either sign). Returns new ``(left, right)``.
    """
    left, right = np.asarray(left, dtype=np.float64).copy(), np.asarray(right, dtype=np.float64).copy()
    span = np.abs(left) + np.abs(right)
    both = jump_left & jump_right
    left = np.where(both, -span, left)
    right = np.where(both, span, right)
    return left, right


def screen(evaluate_batch, name, arr, order, first_steps, proj, y0, batch_bytes, scale) -> dict[str, np.ndarray]:
    """One central difference per element at ``h / SCREEN_STEP_DIVISOR``: value, noise, one-sided slopes.

    Returns arrays over ``order``: ``value`` (the central quotient),
    ``noise`` (its rounding noise), ``left``/``right`` (the one-sided
    quotients), ``sensitivity`` (as in :class:`ElementDerivative`),
    ``flat`` (no output moved on either side: locally constant).
    ``first_steps`` and ``scale`` are read by flat index (arrays, or
    anything indexed by an index array). Evaluations go through
    ``evaluate_batch`` in chunks where given, else ``arr`` is moved in
    place; they are counted on ``proj``.
    """
    idx_all = np.asarray(order, dtype=np.int64)
    x0 = _take(arr, idx_all).astype(np.float64)
    h = np.asarray(first_steps[idx_all], dtype=np.float64) / SCREEN_STEP_DIVISOR
    scales = np.asarray(scale[idx_all], dtype=np.float64)
    if arr.dtype.kind == "f":
        h = np.fmax(h, 8.0 * np.spacing(np.abs(x0).astype(arr.dtype)).astype(np.float64))  # inf: no spacing
    values = np.stack([x0 + h, x0 - h], axis=1).astype(arr.dtype)  # (n, 2) as stored
    actual = values.astype(np.float64) - x0[:, None]
    out_size = int(np.prod(y0.shape))
    base = y0.reshape(-1)
    u = proj.u.reshape(-1)
    out = {k: np.empty(len(order)) for k in ("value", "noise", "left", "right", "sensitivity")}
    out["flat"] = np.zeros(len(order), dtype=bool)  # no output moved on either side
    # a chunk of outputs at a time (at most batch_bytes), reduced before the next; evaluated one by one, a
    # chunk gains nothing from size: a few rows, at most a 64th of the tensor's bytes in outputs
    row = 8 * out_size * 2
    chunk = max(1, batch_bytes // max(1, row)) if evaluate_batch is not None else \
        max(1, min(64, batch_bytes // max(1, row), (8 * arr.size) // (64 * max(1, row))))
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
        out["sensitivity"][sl] = mags / scales[sl]
        out["right"][sl] = ((ys[:, 0] - base) @ u) / a[:, 0]
        out["left"][sl] = ((base - ys[:, 1]) @ u) / -a[:, 1]
        out["flat"][sl] = ~np.any(ys != base[None, None, :], axis=(1, 2))
    return out


def one_sided_extrapolated(l1, l2, r1, r2, q, noise):
    """One-sided derivatives at a kink from steps ``h`` and ``h / q``: first-order Richardson, and their error.

    A one-sided difference ``(f(x + h) - f(x)) / h`` errs by ``c h + O(h^2)``,
    so ``(q d(h/q) - d(h)) / (q - 1)`` removes the first-order term; what
    remains is bounded here by the change the extrapolation made plus the
    differences' rounding ``noise`` (conservative: it is the error of the
    finer difference itself). Works elementwise on arrays.
    """
    left = (q * l2 - l1) / (q - 1.0)
    right = (q * r2 - r1) / (q - 1.0)
    err = np.maximum(np.abs(left - l2), np.abs(right - r2)) + 4.0 * noise
    return left, right, err


def first_pass_batched(evaluate_batch, name, arr, order, first_steps, out_shape, batch_bytes, proj, scale, judge,
                        y0):
    """The first two levels of every element from batched evaluations, as array arithmetic, a chunk at a time.

    Row ``b`` of each batch sets one element to ``x0 +- h`` or ``x0 +- h/2``
    (the stored value fixes the step actually taken). Yields, per chunk of
    at most ``batch_bytes`` of outputs, a dict flat index ->
    ``(value, error, sensitivity, levels, (left, right, kink, side_error))`` where ``levels`` (the tuples of
    :func:`projected_gradients`) is kept only for elements that ``judge(i,
    value, error)`` does not settle as OK, so memory stays one chunk of
    outputs (the caller walks a chunk's unsettled elements before asking
    for the next). Counts the evaluations on ``proj``.
    """
    per_element = 4
    out_size = int(np.prod(out_shape))
    chunk = max(1, batch_bytes // max(1, 8 * out_size * per_element))
    u = proj.u.reshape(-1)
    absu = proj.absu.reshape(-1)
    signs = np.array([1.0, -1.0, 0.5, -0.5])
    shape = tuple(out_shape)
    for start in range(0, len(order), chunk):
        out = {}
        part = np.asarray(order[start:start + chunk], dtype=np.int64)
        n = len(part)
        idx = np.repeat(part, per_element)
        x0 = _take(arr, idx).astype(np.float64)
        h = np.repeat(np.asarray(first_steps[part], dtype=np.float64), per_element)
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
        (r1, l1, n1), (r2, l2, n2) = sides
        g1, g2 = np.abs(r1 - l1), np.abs(r2 - l2)
        stable = (np.abs(r1 - r2) <= 0.1 * g2 + 4 * n2) & (np.abs(l1 - l2) <= 0.1 * g2 + 4 * n2)
        kinks = (g2 > 4 * n2) & (g2 > 0.75 * g1) & stable
        # A jump beside the point (a step function near its threshold): the quotients straddling it
        # are no derivative. The element is a non-differentiable point, settled without a walk.
        jr, jl = jumps(ys[:, 0], ys[:, 1], ys[:, 2], ys[:, 3], base, proj)
        jumped = jr | jl
        # at a kink the one-sided differences are first order in the step: extrapolated from h and h/2,
        # with what remains of their error (a jump keeps its own interval, below)
        le, re_, side_err = one_sided_extrapolated(l1, l2, r1, r2, 2.0, n2)
        l2, r2 = np.where(kinks, le, l2), np.where(kinks, re_, r2)
        side_err = np.where(kinks & ~jumped, side_err, 0.0)
        l2, r2 = jump_interval(l2, r2, jl, jr)
        kinks = kinks | jumped
        # Locally constant (a step function away from its thresholds): no output moved at any of the four
        # steps; where the gradient under test is zero too, the element is settled at once.
        flat = ~np.any(ys != base[None, None, :], axis=(1, 2))
        verdicts = judge(part, val, err) if judge is not None else np.full(n, OK)
        if judge is not None and flat.any():
            verdicts = np.where(flat & (np.asarray(judge(part, np.zeros(n), np.zeros(n))) == OK), OK, verdicts)
        verdicts = np.where(jumped, OK, verdicts)
        for k, i in enumerate(part.tolist()):
            levels = None
            if verdicts[k] != OK:
                levels = [
                    (ys[k, a].reshape(shape).copy(), actual[k, a], ys[k, b].reshape(shape).copy(), actual[k, b],
                     quot[lv][k], noise[lv][k], mags[lv][k], bool(np.any(ys[k, a] != ys[k, b])))
                    for lv, (a, b) in enumerate(((0, 1), (2, 3)))
                ]
            out[i] = (float(val[k]), float(err[k]), float(sens[k]), levels,
                      (float(l2[k]), float(r2[k]), bool(kinks[k]), float(side_err[k])))
        del ys
        yield out


def _take(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``arr.reshape(-1)[idx]`` without copying a non-contiguous ``arr`` whole."""
    if arr.flags.c_contiguous:
        return arr.reshape(-1)[idx]
    return arr[np.unravel_index(idx, arr.shape)]

