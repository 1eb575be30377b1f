"""The one comparison core: tolerances, element errors, the worst element.

Every check (layers, function pairs, callables, backend-vs-backend) ends
here. For each element of each input or parameter ``T`` the gradient under
test ``a`` is compared with a reference ``n`` whose own error is estimated as
``e`` (finite-difference truncation and rounding noise; 0 for an exact
reference). The element fails when

    |a - n| > atol + tiny + rtol * |n| + floor * S_T + cross * S
              + ulps * eps * m + noise_factor * e

where ``S_T = max |n|`` over the tensor, ``S`` the largest ``S_T`` of the
check, and ``rtol``, ``floor``, ``cross`` come from :data:`TOLERANCES`, keyed
by the dtype of the gradient under test (a float32 gradient is compared with
a float64 reference, so its tolerance reflects float32 rounding only):

* ``rtol * |n|`` -- the element's own relative error;
* ``floor * S_T`` -- rounding in a tensor is relative to its largest entries,
  so near-zero entries next to large ones (a saturated unit beside an active
  one) are not held to a relative standard they cannot meet;
* ``cross * S`` -- a tensor whose true gradient is zero (a parameter the
  output ignores) may carry rounding residue of the scale of the others;
* ``ulps * eps * m`` -- the rounding of the gradient under test itself:
  ``m`` is the size of the terms a backward pass sums for the element
  (``sum |u_k| |y_k| / |x_j|`` over the outputs it moves), ``eps`` that of
  its dtype. A saturated float32 unit computes ``s * (1 - s) = 0`` exactly
  where the float64 oracle still sees 1e-9; that is float32, not a bug;
* ``tiny`` -- ``sqrt`` of the dtype's smallest normal number: values below
  it are beyond the dtype's range;
* ``noise_factor * e`` -- a gap smaller than the reference's own noise is
  not a failure.

The reported ``rel_err`` is ``|a - n| / max(|n|, floor * S_T)``, which stays
meaningful for tiny and huge gradients alike. The worst element is the one
with the largest ``|a - n| / tolerance``.

A reference given whole is compared by :meth:`Comparison.result`; one that
arrives element by element (full mode's finite differences, as each
settles) by a :class:`ComparisonStream`, which gives the same verdict while
holding only the elements it may turn on.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Mapping

import numpy as np

from .errors import ShapeMismatch, SpecError
from .verdict import CheckResult, InputSummary, Location, Worst

__all__ = ["Tolerance", "TOLERANCES", "EXACT_TOLERANCES", "tolerance_for", "Comparison", "ComparisonStream",
           "compare_gradients"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The tolerance rule for gradients of one dtype (see the module docstring)."""

    rtol: float
    floor: float
    cross: float
    atol: float = 0.0
    noise_factor: float = 2.0
    eps: float = float(np.finfo(np.float64).eps)
    ulps: float = 8.0
    tiny: float = float(np.sqrt(np.finfo(np.float64).tiny))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Keyed by the dtype of the gradient under test. float64: a 1e-3 relative
#: error in one element (a typical "almost right" derivative) is 100x over
#: rtol, while rounding in a float64 backward is ~1e-13. float32: rounding in
#: a float32 backward reaches ~1e-4 relative on reductions and cancelling
#: sums; 2e-3 keeps a 1% error five times over the line.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-5, floor=1e-8, cross=1e-11),
    "float32": Tolerance(rtol=2e-3, floor=2e-4, cross=1e-5),
    "float16": Tolerance(rtol=2e-2, floor=4e-3, cross=2e-4),
    "bfloat16": Tolerance(rtol=1e-1, floor=2e-2, cross=1e-2),
}


#: Against an *exact* reference (the reference engine or a framework's
#: autodiff of the primal, computed in float64) the reference has no
#: truncation or step noise, so a float64 gradient is held to its rounding:
#: about 1e-10 relative (a float64 backward rounds at ~1e-14 on
#: well-conditioned layers; the margin covers cancelling sums), and a formula
#: off by 1e-7 (a truncated constant, an epsilon placed differently) is 1000x
#: over the line. Lower precisions keep the table above: their own rounding
#: dominates whatever the reference is.
EXACT_TOLERANCES: dict[str, Tolerance] = {
    **TOLERANCES,
    "float64": Tolerance(rtol=1e-10, floor=1e-10, cross=1e-12),
}


def tolerance_for(dtype, *, rtol: float | None = None, atol: float | None = None, exact: bool = False) -> Tolerance:
    """The :data:`TOLERANCES` entry for ``dtype``, with ``rtol``/``atol`` overrides.

    Integer and unknown dtypes use the float64 rule. ``atol`` is absolute
    (in the gradient's units) and is added to the rule. ``exact=True``
    takes the rule for an exact reference (:data:`EXACT_TOLERANCES`).
    """
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    table = EXACT_TOLERANCES if exact else TOLERANCES
    base = table.get(name, table["float64"])
    if name in TOLERANCES and name != "bfloat16":
        info = np.finfo(np.dtype(name))
        base = dataclasses.replace(base, eps=float(info.eps), tiny=float(np.sqrt(info.tiny)))
    elif name == "bfloat16":
        base = dataclasses.replace(base, eps=2.0**-7, tiny=float(np.sqrt(np.finfo(np.float32).tiny)))
    for label, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and (not np.isfinite(value) or value < 0):
            raise SpecError(f"{label} must be a finite number >= 0, got {value!r}")
    return dataclasses.replace(
        base,
        rtol=base.rtol if rtol is None else float(rtol),
        atol=base.atol if atol is None else float(atol),
    )


class Comparison:
    """Element-wise comparison of gradients under test with a reference.

    Build it with the analytic gradients and the tolerance; :meth:`result`
    compares a whole reference and gives the :class:`CheckResult`, or
    :meth:`stream` takes one element by element (:meth:`base_tolerance`
    and :meth:`judge` are available before the reference is complete, for
    adaptive finite differences). Cost: O(number of elements).
    """

    def __init__(self, analytic: Mapping[str, np.ndarray], tol: Tolerance):
        self.analytic = {k: np.asarray(v) for k, v in analytic.items()}
        self.tol = tol
        # Until the reference is known, the analytic magnitude stands in for
        # the tensor scale (only used to decide where to refine).
        self._scale_est = {k: _maxabs(v) for k, v in self.analytic.items()}
        self._glob_est = max(self._scale_est.values(), default=0.0)
        self._element_tolerances: dict[str, np.ndarray] = {}  # per tensor, for projection_tolerance
        self._projections: dict[tuple, tuple] = {}  # (name, id(direction)) -> (direction, spread, rms)

    def base_tolerance(self, name: str, numeric, scale: float | None = None, glob: float | None = None,
                       sensitivity=0.0):
        """Tolerance without the noise allowance, at reference value(s) ``numeric``."""
        t = self.tol
        s = self._scale_est[name] if scale is None else scale
        g = self._glob_est if glob is None else glob
        return (t.atol + t.tiny + t.rtol * np.abs(numeric) + t.floor * s + t.cross * g
                + t.ulps * t.eps * np.asarray(sensitivity))

    def judge_many(self, name: str, flat_indices: np.ndarray, numeric: np.ndarray, error: np.ndarray) -> np.ndarray:
        """:meth:`judge` for many elements of one tensor at once (array of verdicts)."""
        from .numeric import FAIL, OK, REFINE

        a = self.analytic[name].reshape(-1)[np.asarray(flat_indices)].astype(np.float64)
        numeric = np.asarray(numeric, dtype=np.float64)
        error = np.asarray(error, dtype=np.float64)
        tb = self.base_tolerance(name, numeric)
        gap = np.abs(a - numeric)
        out = np.full(gap.shape, REFINE, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            out[(gap - tb > 10.0 * error + self.tol.noise_factor * error) & np.isfinite(error)] = FAIL
            out[(gap <= tb) & (error <= tb) & np.isfinite(error)] = OK
        return out

    def judge(self, name: str, flat_index: int, numeric: float, error: float) -> int:
        """Provisional verdict on one element, for adaptive finite differences.

        :data:`~gradverify.numeric.OK` when the gap and the reference's
        noise are both under the base tolerance;
        :data:`~gradverify.numeric.FAIL` when the gap exceeds the tolerance
        by more than ten times the noise; otherwise
        :data:`~gradverify.numeric.REFINE` (the verdict depends on the noise).
        """
        from .numeric import FAIL, OK, REFINE

        a = float(self.analytic[name].reshape(-1)[flat_index])
        tb = float(self.base_tolerance(name, numeric))
        gap = abs(a - numeric)
        if not np.isfinite(error):
            return REFINE
        if gap <= tb and error <= tb:
            return OK
        if gap - tb > 10.0 * error + self.tol.noise_factor * error:
            return FAIL
        return REFINE

    def result(
        self,
        numeric: Mapping[str, np.ndarray],
        error: Mapping[str, np.ndarray] | None = None,
        *,
        kind: str,
        reference: str = "fd",
        kinks: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
        constants: Mapping[str, np.ndarray] | None = None,
        warnings: tuple[str, ...] = (),
        sensitivity: Mapping[str, np.ndarray] | None = None,
        flat_scale: float = 0.0,
        kink_slack: Mapping[str, np.ndarray] | None = None,
        **meta,
    ) -> CheckResult:
        """Compare and build the verdict (a reference given whole; :meth:`stream` takes one element by element).

        Args:
            numeric: reference gradients by name (same names as analytic).
            error: estimated absolute error of each reference (0 if None).
            kind: what was checked (``"layer"``, ``"pair"``...).
            reference: label of the reference.
            kinks: name -> (kink mask, left, right) one-sided derivatives
                where a kink was diagnosed.
            constants: inputs that were not differentiated (shown as such).
            warnings: messages carried into the result.
            flat_scale: the absolute rounding allowance used when every
                reference value is exactly zero (``ulps * eps * max |u|``).
            sensitivity: per element, the size of the terms a backward pass
                sums (:class:`~gradverify.numeric.ElementDerivative`); it sets
                the analytic gradient's own rounding allowance,
                ``ulps * eps * sensitivity``.
            kink_slack: per tensor, how far outside the one-sided interval
                of a kink the analytic value may lie (default: the base
                tolerance); an exact reference's tolerance is far tighter
                than the one-sided differences that diagnose its kinks.
            **meta: mode, evaluations, seed, seconds, dtype.
        """
        scales = {k: _maxabs(np.asarray(numeric[k])) for k in self.analytic}
        glob = self._glob(scales, flat_scale)
        tally = _Tally()
        for name, a in self.analytic.items():
            n = np.asarray(numeric[name], dtype=np.float64)
            if n.shape != a.shape:
                raise ShapeMismatch(f"reference gradient for {name!r} has shape {n.shape}, expected {a.shape}")
            e = np.zeros_like(n) if error is None else np.asarray(error[name], dtype=np.float64)
            lost = ~np.isfinite(e)
            nlost, first_lost = 0, None
            if lost.any():
                # finite differences never converged there: nothing to compare
                nlost, first_lost = int(np.count_nonzero(lost)), int(np.flatnonzero(lost)[0])
                n = np.where(lost, a.astype(np.float64), n)
                e = np.where(lost, 0.0, e)
            a64 = a.astype(np.float64)
            sens = 0.0 if sensitivity is None else np.asarray(sensitivity[name], dtype=np.float64)
            kink = None
            if kinks and name in kinks:
                mask, left, right = kinks[name]
                kink = (mask, left, right, None if kink_slack is None or name not in kink_slack else kink_slack[name])
            el = self._elements(name, a64, n, e, sens, scales[name], glob, kink)
            tt = _TensorTally(name, a)
            tt.part(None, a64, e, el, None if kink is None else kink[1:3])
            tally.tensor(tt, lost=(nlost, first_lost))
        return tally.result(self.tol, constants, warnings, kind=kind, reference=reference, **meta)

    def stream(self, *, sensitivity: bool = True, kink_slack: bool = False,
               dense_elements: int | None = None) -> "ComparisonStream":
        """A :class:`ComparisonStream` against this comparison's gradients and tolerance.

        ``sensitivity``: whether the elements' sensitivities (given to
        :meth:`ComparisonStream.add`) widen the rounding allowance;
        ``kink_slack``: whether a kink's slack (its one-sided differences'
        error) widens the interval its analytic value may lie in;
        ``dense_elements``: up to how many elements the stream holds them
        and judges the whole arrays (default
        :attr:`ComparisonStream.dense_elements`; 0: sift from the first).
        """
        return ComparisonStream(self, sensitivity=sensitivity, kink_slack=kink_slack, dense_elements=dense_elements)

    def _glob(self, scales: Mapping[str, float], flat_scale: float) -> float:
        """``S``, the largest ``S_T`` of the check (from ``flat_scale`` where every reference value is zero)."""
        glob = max(scales.values(), default=0.0)
        if glob == 0.0 and flat_scale:
            # Every reference value is exactly zero: the function is flat at
            # this resolution and offers no scale of its own. Gradients are
            # then held to rounding residue relative to the cotangent.
            glob = flat_scale / self.tol.cross if self.tol.cross else 0.0
        return glob

    def _elements(self, name: str, a64: np.ndarray, n: np.ndarray, e: np.ndarray, sens, scale: float, glob: float,
                  kink: tuple | None = None) -> dict[str, np.ndarray]:
        """The rule of the module docstring on elements of tensor ``name`` (all of them, or some, as arrays).

        ``a64``, ``n``, ``e``, ``sens``: the gradient under test (float64),
        the reference, its error (0 where it did not converge: the
        reference is then the gradient under test) and the sensitivities
        (or 0.0); ``scale``, ``glob``: ``S_T`` and ``S``; ``kink``: ``(mask,
        left, right, slack or None)`` where kinks were diagnosed. Returns
        the arrays a verdict reads: ``gap``, ``tb`` (the base tolerance),
        ``tol``, ``ok``, ``kink`` (the kinks named), ``n`` (the reference;
        the nearer one-sided value at a kink), ``rel``, ``ratio``.
        Elementwise: some elements get exactly the numbers they get among
        all.
        """
        t = self.tol
        gap = np.abs(a64 - n)
        tb = self.base_tolerance(name, n, scale, glob, sens)
        tol = tb + t.noise_factor * e
        ok = gap <= tol
        kink_mask = np.zeros(np.shape(a64), dtype=bool)
        if kink is not None:
            mask, left, right, slack = kink
            jump = np.abs(right - left)
            tk = tb if slack is None else np.maximum(tb, slack)
            # every diagnosed kink is named, also where the analytic
            # value passed (a valid subgradient is still a kink)
            kink_mask = mask & (jump > tk)
            lo = np.minimum(left, right) - tk
            hi = np.maximum(left, right) + tk
            inside = (a64 >= lo) & (a64 <= hi)
            # A kink with a valid subgradient is not a failure; one
            # outside the one-sided interval is measured against it.
            nearest = np.where(np.abs(a64 - left) < np.abs(a64 - right), left, right)
            n = np.where(kink_mask, nearest, n)
            gap = np.where(kink_mask, np.abs(a64 - n), gap)
            ok = np.where(kink_mask, inside, ok)
            tol = np.where(kink_mask & inside, np.maximum(tol, gap), tol)
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = np.maximum(np.abs(n), t.floor * scale)
            rel = np.where(gap == 0, 0.0, np.where(denom > 0, gap / denom, np.inf))
            ratio = np.where(gap == 0, 0.0, np.where(tol > 0, gap / tol, np.inf))
        return {"gap": gap, "tb": tb, "tol": tol, "ok": ok, "kink": kink_mask, "n": n, "rel": rel, "ratio": ratio}

    def element_ratios(self, numeric: Mapping[str, np.ndarray],
                       sensitivity: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """``|a - n| / tolerance`` per element against an exact reference (no error estimate, no kinks).

        The same rule as :meth:`result`; an element fails where its ratio
        exceeds 1. Cost: O(number of elements).
        """
        scales = {k: _maxabs(np.asarray(numeric[k])) for k in self.analytic}
        glob = max(scales.values(), default=0.0)
        out = {}
        for name, a in self.analytic.items():
            n = np.asarray(numeric[name], dtype=np.float64)
            sens = 0.0 if sensitivity is None else np.asarray(sensitivity[name], dtype=np.float64)
            tol = self.base_tolerance(name, n, scales[name], glob, sens)
            gap = np.abs(a.astype(np.float64) - n)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = np.where(gap == 0, 0.0, np.where(tol > 0, gap / tol, np.inf))
        return out

    # ---- projections (fast mode) -------------------------------------

    #: A projection ``<g, v>`` is held to ``projection_sigmas`` times the
    #: root-sum-square of the element tolerances weighted by ``v``: the
    #: spread of ``<e, v>`` if every element erred by its own tolerance.
    projection_sigmas = 3.0

    def projection_tolerance(self, name: str, direction: np.ndarray, magnitude: float = 0.0) -> float:
        """Base tolerance of the projection of tensor ``name`` on ``direction``.

        The element tolerances are those of full mode with the analytic
        values standing in for the (unknown) reference ones; ``magnitude``
        (:class:`~gradverify.numeric.Projection`) adds the analytic dtype's
        rounding of the projected terms. Cost: O(size of the tensor).
        """
        cached = self._projections.get((name, id(direction)))
        if cached is not None and cached[0] is direction:
            _, spread, rms_v = cached
        else:
            # The element tolerances in chunks, never held whole: no array the size of the tensor
            # (fast mode's memory stays bounded on large tensors).
            from .references.projections import direction_blocks

            a = self.analytic[name].reshape(-1)
            ss = vv = 0.0
            for i, vb in direction_blocks(direction):  # (a direction drawn again on demand is read chunk by chunk)
                tb = self.base_tolerance(name, np.abs(a[i:i + vb.size].astype(np.float64)))
                w = tb * vb
                ss += float(np.dot(w, w))
                vv += float(np.dot(vb, vb))
            spread = float(np.sqrt(ss))
            rms_v = float(np.sqrt(vv / a.size)) if a.size else 0.0
            # keyed by the direction object, kept alive with its entry (a fast check asks up to 3 times)
            self._projections[(name, id(direction))] = (direction, spread, rms_v)
        return self.projection_sigmas * spread + self.tol.ulps * self.tol.eps * magnitude * rms_v

    def projection_judge(self, name: str, direction, mismatch: float, error: float, magnitude: float = 0.0) -> int:
        """Provisional verdict on a projection, as :meth:`judge` is for an element."""
        from .numeric import FAIL, OK, REFINE

        tb = self.projection_tolerance(name, direction, magnitude)
        gap = abs(mismatch)
        if gap <= tb and error <= tb:
            return OK
        if gap - tb > 10.0 * error + self.tol.noise_factor * error:
            return FAIL
        return REFINE

    def fast_result(
        self,
        probes: list,
        located: dict | None,
        *,
        kind: str,
        constants: Mapping[str, np.ndarray] | None = None,
        warnings: tuple[str, ...] = (),
        **meta,
    ) -> CheckResult:
        """The verdict of a fast (projected) check.

        Args:
            probes: ``(name, direction, Projection)`` for every probe.
            located: after a failed probe, the element found by bisection:
                ``{"name", "index", "numeric", "error", "sensitivity",
                "kink", "left", "right"}`` (None if no probe failed).
            kind, constants, warnings, **meta: as for :meth:`result`.
        """
        t = self.tol
        glob = max((_maxabs(a) for a in self.analytic.values()), default=0.0)
        failed_probes: dict[str, int] = {k: 0 for k in self.analytic}
        abs_err: dict[str, float] = {k: 0.0 for k in self.analytic}
        rel_err: dict[str, float] = {k: 0.0 for k in self.analytic}
        best = None
        msgs = list(warnings)
        jumps = 0
        for name, v, p in probes:
            if getattr(p, "jump", False):
                jumps += 1
                msgs.append(f"a projection of {name!r} straddles a jump of the function (a step function next to "
                            "a threshold): its finite differences are no derivative, so it was not compared")
                continue
            if not math.isfinite(p.error):
                msgs.append(f"a projection of {name!r} could not be verified: finite differences did not converge "
                            "at any step down to the resolution of the storage")
                continue
            tol = self.projection_tolerance(name, v, p.magnitude) + t.noise_factor * p.error
            gap = abs(p.mismatch)
            rel = gap / max(abs(p.numeric), t.tiny)
            abs_err[name] = max(abs_err[name], gap)
            rel_err[name] = max(rel_err[name], rel)
            if gap > tol:
                failed_probes[name] += 1
            ratio = gap / tol if tol > 0 else (0.0 if gap == 0 else np.inf)
            if best is None or ratio > best[0]:
                best = (ratio, Worst(name, (), p.analytic, p.numeric, gap, rel, tol, p.error, projection=True))
        locations = []
        failures = sum(failed_probes.values())
        worst = None if best is None else best[1]
        if located is not None:
            name = located["name"]
            a = self.analytic[name]
            idx = tuple(located["index"])
            av = float(a[idx])
            n = float(located["numeric"])
            e = float(located["error"])
            tb = float(self.base_tolerance(name, n, _maxabs(a), glob, located.get("sensitivity", 0.0)))
            tol = tb + t.noise_factor * e
            gap = abs(av - n)
            if located.get("kink") and abs(located["right"] - located["left"]) > tb:
                lo, hi = sorted((located["left"], located["right"]))
                locations.append(Location(name, idx, float(located["left"]), float(located["right"]), av))
                n = located["left"] if abs(av - located["left"]) < abs(av - located["right"]) else located["right"]
                gap = abs(av - n) if not (lo - tb <= av <= hi + tb) else 0.0
            rel = gap / max(abs(n), t.floor * _maxabs(a), t.tiny)
            worst = Worst(name, idx, av, float(n), gap, rel, tol, e)
            if gap > tol:
                failed_probes[name] = max(failed_probes[name], 1)
                msgs.append(
                    f"fast mode located one wrong element by bisection ({name!r}{list(idx)}); others may be wrong "
                    "too: run mode='full' to see them all"
                )
            else:
                msgs.append(
                    f"a projection of {name!r} failed but no single element found by bisection exceeds its own "
                    "tolerance: the error is spread over many elements; run mode='full' for the element table"
                )
        summaries = [
            InputSummary(k, tuple(a.shape), a.dtype.name, True, failed_probes[k], abs_err[k], rel_err[k])
            for k, a in self.analytic.items()
        ]
        for name, c in (constants or {}).items():
            dtype = c.dtype.name if isinstance(c, np.ndarray) else str(getattr(c, "dtype", type(c).__name__))
            summaries.append(InputSummary(name, tuple(np.shape(c)) if isinstance(c, np.ndarray) else (), dtype, False))
        status = "fail" if failures else ("nondiff" if locations or jumps else "pass")
        return CheckResult(
            passed=status != "fail", status=status, kind=kind, worst=worst, failures=failures,
            inputs=tuple(summaries), nondifferentiable=tuple(locations), warnings=tuple(msgs),
            reference="fd", tolerance=t.to_dict(), **meta,
        )


class _TensorTally:
    """One tensor's share of a verdict, from :meth:`Comparison._elements` over its elements, a part at a time.

    Parts may come in any order: the worst element is the largest ratio,
    ties (and NaN, which ``np.argmax`` takes first) going to the lowest
    flat index, as ``np.argmax`` over the whole tensor has it.
    """

    def __init__(self, name: str, a: np.ndarray):
        self.name, self.a = name, a
        self.nbad = self.weak = 0
        self.gap_max = self.rel_max = 0.0
        self.gap_nan = self.rel_nan = False
        self.locations: list[tuple] = []  # (flat index, left, right, analytic)
        self.best: tuple | None = None     # (ratio, is_nan, flat index, Worst fields)

    def part(self, idx, a64, e, el, kink=None, *, counts: bool = True) -> None:
        """Elements ``idx`` (flat indices; None: the whole tensor in order) with ``el`` from ``_elements``.

        ``counts``: whether they count towards failures, agreement within
        noise and kinks (each element counted once; parts that only
        compete for the worst element or the largest errors do not).
        """
        shape = np.shape(el["gap"])
        flat = {k: np.asarray(v).reshape(-1) for k, v in el.items()}
        gap = flat["gap"]
        if not gap.size:
            return
        where = np.arange(gap.size) if idx is None else np.asarray(idx).reshape(-1)
        a64 = np.asarray(a64).reshape(-1)
        e = (e if np.shape(e) == shape else np.broadcast_to(e, shape)).reshape(-1)
        ok, kink_mask = flat["ok"], flat["kink"]
        if counts:
            if kink is not None:
                left, right = (np.broadcast_to(v, shape).reshape(-1) for v in kink)
                for k in np.flatnonzero(kink_mask):
                    self.locations.append((int(where[k]), float(left[k]), float(right[k]), float(a64[k])))
            self.nbad += int(np.count_nonzero(~ok))
            self.weak += int(np.count_nonzero(ok & (gap > flat["tb"]) & ~kink_mask))  # a kink is named as such
        for attr, v in (("gap", gap), ("rel", flat["rel"])):
            m = float(np.max(v))
            if np.isnan(m):
                setattr(self, attr + "_nan", True)
            else:
                setattr(self, attr + "_max", max(getattr(self, attr + "_max"), m))
        ratio = flat["ratio"]
        nan = np.isnan(ratio)
        if nan.any():
            top, is_nan = np.flatnonzero(nan), True
        else:
            top, is_nan = np.flatnonzero(ratio == np.max(ratio)), False
        k = int(top[np.argmin(where[top])])
        r, i = float(ratio[k]), int(where[k])
        b = self.best
        if b is None or (is_nan and (not b[1] or i < b[2])) or (not is_nan and not b[1] and (r > b[0] or (
                r == b[0] and i < b[2]))):
            self.best = (r, is_nan, i, (float(a64[k]), float(flat["n"][k]), float(gap[k]), float(flat["rel"][k]),
                                        float(flat["tol"][k]), float(e[k])))

    def index(self, i: int) -> tuple:
        return tuple(int(j) for j in np.unravel_index(i, self.a.shape))


class _Tally:
    """The verdict assembled tensor by tensor (:class:`_TensorTally`)."""

    def __init__(self):
        self.failures = self.weak = self.unverified = 0
        self.best: tuple[float, Worst] | None = None
        self.summaries: list = []
        self.locations: list = []
        self.first_lost = None

    def tensor(self, tt: _TensorTally, *, lost=(0, None), gap_seen=(0.0, False)) -> None:
        """Add a tensor's share; ``gap_seen``: the largest gap (and whether one was NaN) of elements not in it."""
        name, a = tt.name, tt.a
        nlost, first_lost = lost
        if nlost:
            self.unverified += nlost
            if self.first_lost is None:
                self.first_lost = (name, tt.index(first_lost))
        for i, left, right, av in sorted(tt.locations):  # in index order, as the whole tensor has them
            self.locations.append(Location(name, tt.index(i), left, right, av))
        self.failures += tt.nbad
        self.weak += tt.weak
        gap_max = float("nan") if tt.gap_nan or gap_seen[1] else max(tt.gap_max, gap_seen[0])
        if not a.size:
            gap_max = 0.0
        self.summaries.append(InputSummary(name, tuple(a.shape), a.dtype.name, True, tt.nbad, gap_max,
                                           float("nan") if tt.rel_nan else tt.rel_max))
        if tt.best is not None:
            r, _, i, fields = tt.best
            w = Worst(name, tt.index(i), *fields)
            if self.best is None or r > self.best[0]:
                self.best = (r, w)

    def result(self, tol: Tolerance, constants, warnings, *, kind: str, reference: str, **meta) -> CheckResult:
        summaries = list(self.summaries)
        for name, c in (constants or {}).items():
            dtype = c.dtype.name if isinstance(c, np.ndarray) else str(getattr(c, "dtype", type(c).__name__))
            summaries.append(InputSummary(name, tuple(np.shape(c)) if isinstance(c, np.ndarray) else (), dtype, False))
        msgs = list(warnings)
        if self.weak:
            msgs.append(
                f"{self.weak} element(s) agreed only within the reference's estimated noise; "
                "their verdict is weaker than the tolerance suggests"
            )
        if self.unverified:
            msgs.append(
                f"{self.unverified} element(s) could not be verified (first: {self.first_lost[0]!r}"
                f"{list(self.first_lost[1])}): finite differences did not converge at any step down to the resolution "
                "of the storage, so the function varies faster there than differences can follow"
            )
        if self.failures:
            status = "fail"
        elif self.locations:
            status = "nondiff"
        else:
            status = "pass"
        return CheckResult(
            passed=status != "fail",
            status=status,
            kind=kind,
            worst=None if self.best is None else self.best[1],
            failures=self.failures,
            inputs=tuple(summaries),
            nondifferentiable=tuple(self.locations),
            warnings=tuple(msgs),
            reference=reference,
            tolerance=tol.to_dict(),
            **meta,
        )


#: One element's ratio must exceed another's by this much in log2 (a factor 1 + 7e-10), and its gap as well,
#: before a stream forgets the lesser: far above rounding (a ratio is exact to ~1e-15), far below any difference
#: a verdict turns on.
_MARGIN_LOG2 = 1e-9


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a.reshape(-1)[idx]`` without copying a non-contiguous ``a`` whole."""
    if a.flags.c_contiguous:
        return a.reshape(-1)[idx]
    return a[np.unravel_index(idx, a.shape)]


def _not_beaten_earlier(idx: np.ndarray, lg: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Which points no point of lower ``idx`` beats by :data:`_MARGIN_LOG2` in both ``lg`` and ``lr``.

    ``lg``, ``lr``: log2 of each element's gap and of its ratio at the
    lowest scales still possible. An element so beaten by an earlier one
    has the smaller ratio at every larger scale too (``g / (T + K)`` of
    both keeps its order for every ``K``, and the margin outlasts
    rounding), and loses ties to it by index: it can never be the worst
    element. A sweep in index order over the maxima staircase of the
    points before (a few points). Cost: a Python step per point.
    """
    keep = np.ones(idx.size, dtype=bool)
    stair_g: list[float] = []  # the maxima of the points swept so far: lg ascending, lr descending
    stair_r: list[float] = []
    for j in np.argsort(idx, kind="stable").tolist():
        x, y = float(lg[j]), float(lr[j])
        k = bisect.bisect_left(stair_g, x + _MARGIN_LOG2)
        if k < len(stair_g) and stair_r[k] >= y + _MARGIN_LOG2:
            keep[j] = False
        p = bisect.bisect_left(stair_g, x)
        if p < len(stair_g) and stair_r[p] >= y:
            continue  # matched or beaten by a maximum already: not one itself
        q = p + (p < len(stair_g) and stair_g[p] == x)  # (a maximum at the same lg with a lower lr: replaced)
        lo = p
        while lo > 0 and stair_r[lo - 1] <= y:
            lo -= 1
        stair_g[lo:q] = [x]
        stair_r[lo:q] = [y]
    return keep


def _not_matched(g: np.ndarray, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Which points no other point matches or beats in both ``g`` and ``q`` (of equal points, the first by ``idx``).

    For the largest relative error: ``g / max(|n|, F)`` is ``min(g / |n|,
    g / F)`` (rounding included), so a point matched in both has a
    relative error no larger, whatever ``F`` turns out to be.
    """
    if g.size <= 1:
        return np.ones(g.size, dtype=bool)
    order = np.lexsort((idx, -q, -g))
    qs = q[order]
    before = np.empty_like(qs)
    before[0] = -np.inf
    np.maximum.accumulate(qs[:-1], out=before[1:])
    out = np.empty(g.size, dtype=bool)
    out[order] = before < qs
    return out


class _Held:
    """Elements of one tensor a stream holds, as parts of columns (flat index, reference, error, sensitivity, ...).

    Small additions are merged into the last part until it holds ``block``
    elements, so a merge copies at most that many and the parts stay few.
    """

    def __init__(self, columns: int = 4, block: int = 1 << 10):
        self.columns, self.block = columns, block
        self.parts: list[tuple] = []
        self.count = 0

    def append(self, *arrays) -> None:
        if len(arrays[0]):
            self.count += len(arrays[0])
            last = self.parts[-1] if self.parts else None
            if last is not None and len(last[0]) + len(arrays[0]) <= self.block:
                self.parts[-1] = tuple(np.concatenate(c) for c in zip(last, arrays))
            else:
                self.parts.append(arrays)

    def arrays(self) -> tuple:
        """Every element held, as whole columns (for the few a candidate list holds)."""
        if not self.parts:
            return (np.empty(0, dtype=np.int64),) + tuple(np.empty(0) for _ in range(self.columns - 1))
        if len(self.parts) == 1:
            return self.parts[0]
        return tuple(np.concatenate(cols) for cols in zip(*self.parts))

    def chunks(self):
        """The elements held, at most ``block`` at a time (no copy of them all)."""
        for p in self.parts:
            for i in range(0, len(p[0]), self.block):
                yield tuple(c[i:i + self.block] for c in p)

    def replace(self, *arrays) -> None:
        self.parts = [arrays] if len(arrays[0]) else []
        self.count = len(arrays[0])


class _TensorStream:
    """What a :class:`ComparisonStream` keeps of one tensor: running summaries and the elements a verdict may turn on."""

    def __init__(self, name: str, a: np.ndarray):
        self.name, self.a, self.size = name, a, a.size
        self.received = 0
        self.raw_max, self.raw_nonfinite = 0.0, False  # max |n| as given (S_T; 0 where one is not finite)
        self.lost, self.lost_first = 0, None
        self.gap_max, self.gap_nan = 0.0, False  # over elements that are not kinks (their gap is final)
        # a 64th of the tensor (at least 256 elements) at a time: what a part holds, what a pass reads
        self.block = block = max(1 << 8, self.size // 64)
        self.must = _Held(4, block)   # elements whose verdict (fail, or pass within noise only) may turn on S_T, S
        self.worst = _Held(4, block)  # elements that may be the worst (largest ratio) at the scales still possible
        self.rel = _Held(4, block)    # elements that may have the largest relative error
        self.kinks = _Held(7, block)  # ... + left, right, slack
        self.has_slack = False
        self.scale: float | None = None  # S_T, once every element arrived


class ComparisonStream:
    """:meth:`Comparison.result` over reference values that arrive a batch of elements at a time, in any order.

    Full mode hands each element's finite difference over as soon as it is
    settled (:func:`~gradverify.references.elementwise.projected_gradients`
    with ``sink=``), so no array the tensors' size is held for the
    comparison. The verdict is the one :meth:`Comparison.result` gives on
    the whole arrays, number for number: every per-element quantity is
    elementwise except the scales ``S_T = max |n|`` over a tensor and
    ``S`` over the check, known only at the end. Both only raise the
    tolerances, so until they are known the stream judges each batch at
    the lowest scales still possible (``S_T = 0`` until the tensor is
    complete, ``S`` the largest ``S_T`` of the complete tensors) and keeps
    (index, reference, error, sensitivity) of the elements a verdict may
    turn on:

    * those whose gap exceeds the base tolerance there (they may fail, or
      pass only within the reference's noise), any with a non-finite
      number, element 0 (the worst where every gap is zero), and kinks;
    * those that may be the worst element (one beaten by a margin in both
      gap and ratio by an element of lower index never is:
      :func:`_not_beaten_earlier`);
    * those that may have the largest relative error (:func:`_not_matched`).

    The rest pass at every scale still possible and leave only their gap
    (a running maximum). :meth:`result` judges the kept elements exactly as
    :meth:`Comparison.result` judges every element. Memory: the kept
    elements (4 numbers each: a handful where the gradient is right, every
    element where every element is wrong) and one batch's temporaries.

    A small check (at most :attr:`dense_elements` elements in all) is held
    as given and judged on its whole arrays by :meth:`Comparison.result`
    (the same verdict, without the sifting's fixed cost per batch, which
    exceeds the comparison itself there); past that size what was held is
    fed to the sifting and the stream goes on as above.
    """

    #: Elements, over all tensors, held as given and judged whole (a few hundred KiB at most).
    dense_elements = 4096

    def __init__(self, comparison: "Comparison", *, sensitivity: bool = True, kink_slack: bool = False,
                 dense_elements: int | None = None):
        if dense_elements is not None:
            self.dense_elements = int(dense_elements)
        self.comparison = comparison
        self.use_sensitivity = sensitivity
        self.use_slack = kink_slack
        self.tensors = {name: _TensorStream(name, a) for name, a in comparison.analytic.items()}
        self.glob_lo = 0.0  # the largest S_T of the complete tensors: S is at least this
        # while the check is small: what add() and done() were given, in order (None once sifting)
        self.held: list[tuple] | None = [] if self.dense_elements > 0 else None
        self.held_count = 0

    def add(self, name: str, idx, n, e=None, sensitivity=None, *, kink=None, left=None, right=None,
            slack=None) -> None:
        """Elements ``idx`` (flat indices) of tensor ``name``: reference ``n``, its error ``e``, sensitivities.

        ``kink`` (a mask over these elements) marks diagnosed kinks, with
        their one-sided derivatives ``left``, ``right`` and the ``slack``
        of those (read where the stream was made with ``kink_slack``).
        Every element is added once, before :meth:`done`.
        """
        t = self.tensors[name]
        if t.scale is not None:
            raise RuntimeError(f"elements of {name!r} added after done({name!r})")
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if not idx.size:
            return
        if self.held is not None:
            self.held_count += idx.size
            if self.held_count <= self.dense_elements:
                t.received += idx.size
                own = lambda v: None if v is None else np.array(v).reshape(-1)  # noqa: E731 (the caller's may change)
                self.held.append(("add", name, idx.copy(), *(own(v) for v in (n, e, sensitivity, kink, left, right,
                                                                               slack))))
                return
            self._sift_held()
        self._add(name, idx, n, e, sensitivity, kink, left, right, slack)

    def _sift_held(self) -> None:
        """Past :attr:`dense_elements`: what was held, fed to the sifting in the order it came."""
        held, self.held = self.held, None
        for t in self.tensors.values():
            t.received, t.scale = 0, None
        for event in held:
            if event[0] == "add":
                self._add(*event[1:])
            else:
                self._done(event[1])

    def _add(self, name: str, idx, n, e, sensitivity, kink, left, right, slack) -> None:
        t = self.tensors[name]
        n = np.asarray(n, dtype=np.float64).reshape(-1)
        e = np.zeros(idx.size) if e is None else np.asarray(e, dtype=np.float64).reshape(-1)
        sens = np.zeros(idx.size) if sensitivity is None or not self.use_sensitivity else \
            np.asarray(sensitivity, dtype=np.float64).reshape(-1)
        t.received += idx.size
        m = float(np.max(np.abs(n)))
        if np.isfinite(m):
            t.raw_max = max(t.raw_max, m)
        else:
            t.raw_nonfinite = True
        lost = ~np.isfinite(e)
        a64 = _take(t.a, idx).astype(np.float64)
        if lost.any():
            # finite differences never converged there: nothing to compare (the reference is the gradient under test)
            t.lost += int(np.count_nonzero(lost))
            first = int(np.min(idx[lost]))
            t.lost_first = first if t.lost_first is None else min(t.lost_first, first)
            n = np.where(lost, a64, n)
            e = np.where(lost, 0.0, e)
        if kink is not None:
            k = np.asarray(kink, dtype=bool).reshape(-1)
            if k.any():
                given = slack is not None and self.use_slack
                t.has_slack = t.has_slack or given
                t.kinks.append(idx[k], n[k], e[k], sens[k], np.asarray(left, dtype=np.float64).reshape(-1)[k],
                               np.asarray(right, dtype=np.float64).reshape(-1)[k],
                               np.asarray(slack, dtype=np.float64).reshape(-1)[k] if given else np.zeros(k.sum()))
                keep = ~k
                idx, n, e, sens, a64 = idx[keep], n[keep], e[keep], sens[keep], a64[keep]
                if not idx.size:
                    return
        gap = np.abs(a64 - n)
        del a64
        if np.isnan(gap).any():
            t.gap_nan = True
        else:
            t.gap_max = max(t.gap_max, float(np.max(gap)))
        self._sift(t, idx, n, e, sens, gap)

    def _lowest(self, t: _TensorStream) -> tuple[float, float]:
        """The lowest ``S_T`` and ``S`` still possible for tensor ``t``."""
        s = 0.0 if t.scale is None else t.scale
        return s, max(self.glob_lo, s)

    def _tolerances(self, t: _TensorStream, n, e, sens):
        """Base tolerance and tolerance at the lowest scales still possible."""
        comp = self.comparison
        s, g = self._lowest(t)
        tb = comp.base_tolerance(t.name, n, s, g, sens if self.use_sensitivity else 0.0)
        return tb, tb + comp.tol.noise_factor * e

    def _sift(self, t: _TensorStream, idx, n, e, sens, gap) -> None:
        """Keep, of these elements, those a verdict may turn on at the scales still possible (see the class)."""
        tb, tol = self._tolerances(t, n, e, sens)
        finite = np.isfinite(gap) & np.isfinite(n) & np.isfinite(tol)
        with np.errstate(invalid="ignore"):
            must = ~finite | (gap > tb) | (idx == 0)
        if must.any():
            t.must.append(idx[must], n[must], e[must], sens[must])
        rank = np.flatnonzero(finite & (gap > 0))
        if rank.size:
            idx, n, e, sens, gap, tol = (x[rank] for x in (idx, n, e, sens, gap, tol))
            self._worst(t, idx, n, e, sens, gap, tol)
            self._rel(t, idx, n, e, sens, gap)

    def _worst(self, t: _TensorStream, idx, n, e, sens, gap, tol) -> None:
        """Merge elements (finite, gap > 0) into the tensor's candidates for the worst element."""
        lg = np.log2(gap)
        lr = lg - np.log2(tol)
        fi, fn, fe, fs = t.worst.arrays()
        if fi.size:
            # first what the strongest candidates so far beat (arrays), then a sweep over the rest and them
            with np.errstate(divide="ignore"):
                fg = np.log2(np.abs(_take(t.a, fi).astype(np.float64) - fn))
                fr = fg - np.log2(self._tolerances(t, fn, fe, fs)[1])
            keep = np.ones(idx.size, dtype=bool)
            for p in set(np.argsort(fr)[-4:].tolist() + np.argsort(fg)[-4:].tolist()):
                keep &= ~((fi[p] < idx) & (fg[p] >= lg + _MARGIN_LOG2) & (fr[p] >= lr + _MARGIN_LOG2))
            sub = np.flatnonzero(keep)
            idx, n, e, sens = (np.concatenate((f, x[sub])) for f, x in ((fi, idx), (fn, n), (fe, e), (fs, sens)))
            lg, lr = np.concatenate((fg, lg[sub])), np.concatenate((fr, lr[sub]))
        keep = _not_beaten_earlier(idx, lg, lr)
        t.worst.replace(idx[keep], n[keep], e[keep], sens[keep])

    def _rel(self, t: _TensorStream, idx, n, e, sens, gap) -> None:
        """Merge elements (finite, gap > 0) into the tensor's candidates for the largest relative error."""
        absn = np.abs(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(absn > 0, gap / absn, np.inf)
        fi, fn, fe, fs = t.rel.arrays()
        if fi.size:
            fg = np.abs(_take(t.a, fi).astype(np.float64) - fn)
            fa = np.abs(fn)
            with np.errstate(divide="ignore", invalid="ignore"):
                fq = np.where(fa > 0, fg / fa, np.inf)
            keep = np.ones(idx.size, dtype=bool)
            for p in set(np.argsort(fq)[-4:].tolist() + np.argsort(fg)[-4:].tolist()):
                keep &= ~((fg[p] >= gap) & (fq[p] >= q))  # matched or beaten: never the largest alone
            sub = np.flatnonzero(keep)
            idx, n, e, sens = (np.concatenate((f, x[sub])) for f, x in ((fi, idx), (fn, n), (fe, e), (fs, sens)))
            gap, q = np.concatenate((fg, gap[sub])), np.concatenate((fq, q[sub]))
        keep = _not_matched(gap, q, idx)
        t.rel.replace(idx[keep], n[keep], e[keep], sens[keep])

    def done(self, name: str) -> None:
        """Every element of tensor ``name`` was added: its scale is known, and what the stream keeps shrinks."""
        t = self.tensors[name]
        if t.received != t.size:
            raise RuntimeError(f"the stream of {name!r} received {t.received} of its {t.size} elements")
        if self.held is not None:
            t.scale = 0.0  # (complete; its scale is computed on the whole arrays)
            self.held.append(("done", name))
            return
        self._done(name)

    def _done(self, name: str) -> None:
        t = self.tensors[name]
        t.scale = 0.0 if t.raw_nonfinite else t.raw_max
        self.glob_lo = max(self.glob_lo, t.scale)
        for u in self.tensors.values():  # (S rose for every complete tensor)
            if u.scale is not None:
                self._resift(u)

    def _resift(self, t: _TensorStream) -> None:
        """Sift what ``t`` keeps again at the (higher) lowest scales now known.

        The elements that may fail are judged again, a part at a time; the
        candidates for the worst element are compared again (one beaten
        stays beaten at any higher scale, and every element met them when
        it arrived).
        """
        parts, t.must.parts, t.must.count = t.must.parts, [], 0
        while parts:
            idx, n, e, sens = parts.pop(0)
            for i in range(0, idx.size, t.block):
                sl = slice(i, i + t.block)
                gap = np.abs(_take(t.a, idx[sl]).astype(np.float64) - n[sl])
                tb, tol = self._tolerances(t, n[sl], e[sl], sens[sl])
                finite = np.isfinite(gap) & np.isfinite(n[sl]) & np.isfinite(tol)
                with np.errstate(invalid="ignore"):
                    must = ~finite | (gap > tb) | (idx[sl] == 0)
                t.must.append(idx[sl][must], n[sl][must], e[sl][must], sens[sl][must])
        idx, n, e, sens = t.worst.arrays()
        if idx.size:
            t.worst.replace(*(x[:0] for x in (idx, n, e, sens)))
            gap = np.abs(_take(t.a, idx).astype(np.float64) - n)
            self._worst(t, idx, n, e, sens, gap, self._tolerances(t, n, e, sens)[1])

    def result(self, *, kind: str, reference: str = "fd", constants: Mapping[str, np.ndarray] | None = None,
               warnings: tuple[str, ...] = (), flat_scale: float = 0.0, **meta) -> CheckResult:
        """The verdict, once :meth:`done` was called for every tensor (the one :meth:`Comparison.result` gives)."""
        comp = self.comparison
        for t in self.tensors.values():
            if t.scale is None:
                raise RuntimeError(f"the stream of {t.name!r} is not done")
        if self.held is not None:
            return self._whole(kind=kind, reference=reference, constants=constants, warnings=warnings,
                               flat_scale=flat_scale, **meta)
        scales = {k: t.scale for k, t in self.tensors.items()}
        glob = comp._glob(scales, flat_scale)
        tally = _Tally()
        for name, t in self.tensors.items():
            tt = _TensorTally(name, t.a)
            scale = scales[name]
            # every element that may fail, pass within noise only, or sit on a kink: counted
            for idx, n, e, sens in t.must.chunks():
                a64 = _take(t.a, idx).astype(np.float64)
                tt.part(idx, a64, e, comp._elements(name, a64, n, e, sens if self.use_sensitivity else 0.0, scale,
                                                    glob))
            for idx, n, e, sens, left, right, slack in t.kinks.chunks():
                a64 = _take(t.a, idx).astype(np.float64)
                kink = (np.ones(idx.size, dtype=bool), left, right, slack if t.has_slack else None)
                tt.part(idx, a64, e, comp._elements(name, a64, n, e, sens if self.use_sensitivity else 0.0, scale,
                                                    glob, kink), (left, right))
            # the candidates for the worst element and the largest relative error (counted above if at all)
            for held in (t.worst, t.rel):
                for idx, n, e, sens in held.chunks():
                    a64 = _take(t.a, idx).astype(np.float64)
                    tt.part(idx, a64, e, comp._elements(name, a64, n, e, sens if self.use_sensitivity else 0.0,
                                                        scale, glob), counts=False)
            tally.tensor(tt, lost=(t.lost, t.lost_first), gap_seen=(t.gap_max, t.gap_nan))
        return tally.result(comp.tol, constants, warnings, kind=kind, reference=reference, **meta)

    def _whole(self, **kw) -> CheckResult:
        """The verdict of a small check: what was held, as whole arrays, to :meth:`Comparison.result`."""
        numeric, error, sens, kinks, slack = {}, {}, {}, {}, {}
        for name, t in self.tensors.items():
            numeric[name], error[name], sens[name] = np.zeros(t.size), np.zeros(t.size), np.zeros(t.size)
        for event in self.held:
            if event[0] != "add":
                continue
            name, idx, n, e, s, kink, left, right, sl = event[1:]
            numeric[name][idx] = np.asarray(n, dtype=np.float64).reshape(-1)
            if e is not None:
                error[name][idx] = np.asarray(e, dtype=np.float64).reshape(-1)
            if s is not None and self.use_sensitivity:
                sens[name][idx] = np.asarray(s, dtype=np.float64).reshape(-1)
            k = None if kink is None else np.asarray(kink, dtype=bool).reshape(-1)
            if k is not None and k.any():
                size = self.tensors[name].size
                mask, lft, rgt = kinks.setdefault(name, (np.zeros(size, dtype=bool), np.zeros(size), np.zeros(size)))
                mask[idx[k]] = True
                lft[idx[k]] = np.asarray(left, dtype=np.float64).reshape(-1)[k]
                rgt[idx[k]] = np.asarray(right, dtype=np.float64).reshape(-1)[k]
                if sl is not None and self.use_slack:
                    slack.setdefault(name, np.zeros(size))[idx[k]] = np.asarray(sl, dtype=np.float64).reshape(-1)[k]
        shapes = {name: t.a.shape for name, t in self.tensors.items()}
        shaped = lambda d: {k: v.reshape(shapes[k]) for k, v in d.items()}  # noqa: E731
        return self.comparison.result(
            shaped(numeric), shaped(error), kinks={k: tuple(v.reshape(shapes[k]) for v in m) for k, m in kinks.items()}
            or None, sensitivity=shaped(sens) if self.use_sensitivity else None, kink_slack=shaped(slack) or None,
            **kw)


def _maxabs(a) -> float:
    """``max |a|`` (0 where ``a`` is empty or holds a non-finite value), a 64th of a contiguous ``a`` at a time."""
    a = np.asarray(a)
    if a.size == 0:
        return 0.0
    if a.flags.c_contiguous and a.size > 1 << 10:
        flat, step = a.reshape(-1), max(1 << 10, a.size // 64)
        m = float(np.max([np.max(np.abs(flat[i:i + step])) for i in range(0, flat.size, step)]))
    else:
        m = float(np.max(np.abs(a)))
    return m if np.isfinite(m) else 0.0


def compare_gradients(
    analytic: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    reference_name: str = "reference",
    rtol: float | None = None,
    atol: float | None = None,
) -> CheckResult:
    """Compare two gradient sets computed by exact methods (no finite differences).

    For example a hand-written backward against the reference engine, or
    PyTorch against JAX. Uses the same tolerance rule as every check, with a
    zero noise allowance, keyed by the dtype of ``analytic``. Cost: O(number
    of elements).
    """
    from .layers import validate_gradients

    names = list(analytic)
    if set(names) != set(reference):
        missing = sorted(set(reference) - set(names))
        extra = sorted(set(names) - set(reference))
        raise SpecError(f"gradient sets name different inputs: missing {missing}, unexpected {extra}")
    ref = {k: np.asarray(reference[k]) for k in names}
    ana = validate_gradients({k: analytic[k] for k in names}, {k: v for k, v in ref.items()}, what="analytic")
    ref = validate_gradients(ref, ref, what=reference_name)
    dtype = np.result_type(*[v.dtype for v in ana.values()]) if ana else np.dtype(np.float64)
    comp = Comparison(ana, tolerance_for(dtype, rtol=rtol, atol=atol))
    return comp.result(ref, None, kind="gradients", reference=reference_name, mode="exact", evaluations=0,
                       seed=None, dtype=np.dtype(dtype).name)
