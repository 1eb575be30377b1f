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
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from .errors import ShapeMismatch, SpecError
from .verdict import CheckResult, InputSummary, Location, Worst

__all__ = ["Tolerance", "TOLERANCES", "EXACT_TOLERANCES", "tolerance_for", "Comparison", "compare_gradients"]


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

    Build it with the analytic gradients and the tolerance; feed the
    reference tensor by tensor (:meth:`base_tolerance` is available before
    the reference is complete, for adaptive finite differences); then
    :meth:`result` gives the :class:`CheckResult`. Cost: O(number of
    elements).
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
        """Compare and build the verdict.

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
        t = self.tol
        scales = {k: _maxabs(np.asarray(numeric[k])) for k in self.analytic}
        glob = max(scales.values(), default=0.0)
        if glob == 0.0 and flat_scale:
            # Every reference value is exactly zero: the function is flat at
            # this resolution and offers no scale of its own. Gradients are
            # then held to rounding residue relative to the cotangent.
            glob = flat_scale / t.cross if t.cross else 0.0
        failures = 0
        best: tuple[float, Worst] | None = None
        summaries = []
        locations = []
        weak = 0
        unverified = 0
        first_lost = None
        for name, a in self.analytic.items():
            n = np.asarray(numeric[name], dtype=np.float64)
            if n.shape != a.shape:
                raise ShapeMismatch(f"reference gradient for {name!r} has shape {n.shape}, expected {a.shape}")
            e = np.zeros_like(n) if error is None else np.asarray(error[name], dtype=np.float64)
            lost = ~np.isfinite(e)
            if lost.any():
                # finite differences never converged there: nothing to compare
                unverified += int(np.count_nonzero(lost))
                if first_lost is None:
                    first_lost = (name, tuple(int(i) for i in np.argwhere(lost)[0]))
                n = np.where(lost, a.astype(np.float64), n)
                e = np.where(lost, 0.0, e)
            a64 = a.astype(np.float64)
            gap = np.abs(a64 - n)
            sens = 0.0 if sensitivity is None else np.asarray(sensitivity[name], dtype=np.float64)
            tb = self.base_tolerance(name, n, scales[name], glob, sens)
            tol = tb + t.noise_factor * e
            ok = gap <= tol
            kink_mask = np.zeros(a.shape, dtype=bool)
            if kinks and name in kinks:
                mask, left, right = kinks[name]
                jump = np.abs(right - left)
                tk = tb if kink_slack is None or name not in kink_slack else np.maximum(tb, kink_slack[name])
                # every diagnosed kink is named, also where the analytic
                # value passed (a valid subgradient is still a kink)
                kink_mask = mask & (jump > tk)
                lo = np.minimum(left, right) - tk
                hi = np.maximum(left, right) + tk
                inside = (a64 >= lo) & (a64 <= hi)
                for idx in map(tuple, np.argwhere(kink_mask)):  # (np.nonzero refuses a 0-d mask)
                    locations.append(
                        Location(name, tuple(int(i) for i in idx), float(left[idx]), float(right[idx]), float(a64[idx]))
                    )
                # A kink with a valid subgradient is not a failure; one
                # outside the one-sided interval is measured against it.
                nearest = np.where(np.abs(a64 - left) < np.abs(a64 - right), left, right)
                n = np.where(kink_mask, nearest, n)
                gap = np.where(kink_mask, np.abs(a64 - n), gap)
                ok = np.where(kink_mask, inside, ok)
                tol = np.where(kink_mask & inside, np.maximum(tol, gap), tol)
            with np.errstate(divide="ignore", invalid="ignore"):
                denom = np.maximum(np.abs(n), t.floor * scales[name])
                rel = np.where(gap == 0, 0.0, np.where(denom > 0, gap / denom, np.inf))
                ratio = np.where(gap == 0, 0.0, np.where(tol > 0, gap / tol, np.inf))
            bad = ~ok
            nbad = int(np.count_nonzero(bad))
            failures += nbad
            weak += int(np.count_nonzero(ok & (gap > tb) & ~kink_mask))  # a kink is named as such
            summaries.append(
                InputSummary(
                    name, tuple(a.shape), a.dtype.name, True, nbad,
                    float(gap.max()) if gap.size else 0.0, float(rel.max()) if rel.size else 0.0,
                )
            )
            if a.size:
                flat = int(np.argmax(ratio))
                idx = tuple(int(i) for i in np.unravel_index(flat, a.shape))
                w = Worst(name, idx, float(a64[idx]), float(n[idx]), float(gap[idx]), float(rel[idx]),
                          float(tol[idx]), float(e[idx]))
                r = float(ratio[idx])
                if best is None or r > best[0]:
                    best = (r, w)
        for name, c in (constants or {}).items():
            dtype = c.dtype.name if isinstance(c, np.ndarray) else str(getattr(c, "dtype", type(c).__name__))
            summaries.append(InputSummary(name, tuple(np.shape(c)) if isinstance(c, np.ndarray) else (), dtype, False))
        msgs = list(warnings)
        if weak:
            msgs.append(
                f"{weak} element(s) agreed only within the reference's estimated noise; "
                "their verdict is weaker than the tolerance suggests"
            )
        if unverified:
            msgs.append(
                f"{unverified} element(s) could not be verified (first: {first_lost[0]!r}{list(first_lost[1])}): "
                "finite differences did not converge at any step down to the resolution of the storage, so the "
                "function varies faster there than differences can follow"
            )
        if failures:
            status = "fail"
        elif locations:
            status = "nondiff"
        else:
            status = "pass"
        return CheckResult(
            passed=status != "fail",
            status=status,
            kind=kind,
            worst=None if best is None else best[1],
            failures=failures,
            inputs=tuple(summaries),
            nondifferentiable=tuple(locations),
            warnings=tuple(msgs),
            reference=reference,
            tolerance=t.to_dict(),
            **meta,
        )


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


def _maxabs(a) -> float:
    a = np.asarray(a)
    if a.size == 0:
        return 0.0
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
