"""Verdicts: frozen, JSON-ready values that say what was checked and how it went.

A :class:`CheckResult` is what every check returns. It says whether the
gradients agree, and if not, *where* (which input or parameter, which index)
and *by how much* (both values, absolute and relative error, the tolerance),
plus how the check ran (mode, evaluations, seed, tolerances) so it can be
reproduced. ``str(result)`` is a short table a person can act on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["Worst", "Location", "InputSummary", "CheckResult"]


def _num(x: float) -> float | str:
    """JSON-safe float: non-finite values become strings."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


@dataclasses.dataclass(frozen=True)
class Worst:
    """The element with the largest error relative to its tolerance.

    Attributes:
        input: name of the input or parameter (``"x"``, ``"W"``...).
        index: the element's index in that array (a tuple; ``()`` for 0-d).
        analytic: the gradient under test at that element.
        numeric: the reference value (finite differences or another method).
        abs_err: ``|analytic - numeric|``.
        rel_err: ``abs_err / max(|numeric|, noise floor of the tensor)``.
        tolerance: the allowed ``abs_err`` at that element (including the
            allowance for the reference's own error).
        reference_error: the estimated error of ``numeric`` itself.
        projection: True when this is a fast-mode projection ``<g, v>`` of
            the whole tensor rather than one element (``index`` is then ``()``).
    """

    input: str
    index: tuple
    analytic: float
    numeric: float
    abs_err: float
    rel_err: float
    tolerance: float
    reference_error: float = 0.0
    projection: bool = False

    @property
    def ratio(self) -> float:
        """``abs_err / tolerance``: above 1 means the element fails."""
        if self.tolerance > 0:
            return self.abs_err / self.tolerance
        return 0.0 if self.abs_err == 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "index": list(self.index),
            "analytic": _num(self.analytic),
            "numeric": _num(self.numeric),
            "abs_err": _num(self.abs_err),
            "rel_err": _num(self.rel_err),
            "tolerance": _num(self.tolerance),
            "reference_error": _num(self.reference_error),
            "projection": self.projection,
        }


@dataclasses.dataclass(frozen=True)
class Location:
    """A non-differentiable point met during a check (a kink or a tie).

    ``left`` and ``right`` are the one-sided derivatives there; the analytic
    value passed because it lies between them (a valid subgradient).
    """

    input: str
    index: tuple
    left: float
    right: float
    analytic: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "index": list(self.index),
            "left": _num(self.left),
            "right": _num(self.right),
            "analytic": _num(self.analytic),
        }


@dataclasses.dataclass(frozen=True)
class InputSummary:
    """Per input/parameter summary of a check.

    ``checked`` is False for constants (integer inputs such as indices).
    """

    name: str
    shape: tuple
    dtype: str
    checked: bool
    failed: int = 0
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "checked": self.checked,
            "failed": self.failed,
            "max_abs_err": _num(self.max_abs_err),
            "max_rel_err": _num(self.max_rel_err),
        }


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The verdict of one gradient check.

    Attributes:
        passed: True unless some element's gradient is wrong (a ``"nondiff"``
            verdict passes: every kink met had a valid subgradient).
        status: ``"pass"``, ``"fail"``, ``"nondiff"``, or ``"unverified"``
            (low-precision code whose own forward is already far from the
            float64 function: its gradient cannot be checked in that dtype;
            ``passed`` is False, but no gradient was found wrong).
        kind: what was checked: ``"layer"``, ``"pair"``, ``"function"`` or
            ``"gradients"`` (two given gradient sets).
        worst: the element with the largest error relative to its
            tolerance (also when everything passed); None if nothing was
            compared.
        failures: the number of elements that failed (in fast mode: of
            projections).
        inputs: one :class:`InputSummary` per input/parameter.
        nondifferentiable: kinks met (:class:`Location`), in order.
        warnings: hazards that are not gradient errors (in-place mutation
            of inputs or of ``dy``, constants skipped, weak verdicts).
        mode: how the check ran (``"full"``: every element).
        evaluations: function evaluations the check used.
        reference: what gave the verdict: ``"fd"`` (finite differences),
            ``"reference"`` (the reference engine tracing the numpy forward),
            ``"torch"``/``"jax"`` (the framework's autodiff of the primal); see
            :mod:`gradverify.references`.
        dtype: dtype of the gradients under test.
        tolerance: the rule used, e.g. ``{"rtol":..., "floor":..., "noise_factor":...}``.
        seed: the seed of the cotangent (and of drawn inputs).
        seconds: wall time of the check.
        taylor: for failing or borderline verdicts, the eps-free second
            opinion along the worst element (or projection): the
            Taylor-remainder convergence ``rate`` (about 2 for a right
            gradient, 1 for a wrong one), its ``rates`` and ``where``.
        examples: how many drawn inputs were checked (``examples=``; 1 for
            a single check); for a failure, the example that first failed.
        counterexample: for a failing property check, the shrunk input
            that fails (input name -> nested lists); None otherwise.
    """

    passed: bool
    status: str
    kind: str
    worst: Worst | None
    failures: int = 0
    inputs: tuple[InputSummary, ...] = ()
    nondifferentiable: tuple[Location, ...] = ()
    warnings: tuple[str, ...] = ()
    mode: str = "full"
    evaluations: int = 0
    reference: str = "fd"
    dtype: str = "float64"
    tolerance: dict = dataclasses.field(default_factory=dict)
    seed: int | None = 0
    seconds: float = 0.0
    taylor: dict | None = None
    examples: int = 1
    counterexample: dict | None = None

    def __bool__(self) -> bool:  # pragma: no cover - convenience
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become strings)."""
        return {
            "passed": self.passed,
            "status": self.status,
            "kind": self.kind,
            "worst": None if self.worst is None else self.worst.to_dict(),
            "failures": self.failures,
            "inputs": [s.to_dict() for s in self.inputs],
            "nondifferentiable": [loc.to_dict() for loc in self.nondifferentiable],
            "warnings": list(self.warnings),
            "mode": self.mode,
            "evaluations": self.evaluations,
            "reference": self.reference,
            "dtype": self.dtype,
            "tolerance": {k: _num(v) if isinstance(v, float) else v for k, v in self.tolerance.items()},
            "seed": self.seed,
            "seconds": _num(self.seconds),
            "taylor": self.taylor,
            "examples": self.examples,
            "counterexample": self.counterexample,
        }

    def __str__(self) -> str:
        head = {"pass": "PASS", "fail": "FAIL", "nondiff": "PASS (non-differentiable points met)",
                "unverified": "UNVERIFIED (see the warnings)"}.get(
            self.status, self.status.upper()
        )
        w = self.worst
        at = ""
        if self.status == "fail" and w is not None:
            at = f" at <grad {w.input!r}, v>" if w.projection else \
                f" at {w.input!r}[{', '.join(str(i) for i in w.index)}] (rel err {w.rel_err:.3g})"
        lines = [f"gradient check {head}{at}: {self.kind}, {self.dtype}, reference={self.reference}, "
                 f"mode={self.mode}, {self.evaluations} evaluations, seed={self.seed}"]
        if w is not None:
            where = f"{w.input!r}[{', '.join(str(i) for i in w.index)}]"
            label = "mismatch at" if self.status == "fail" else "worst element"
            if w.projection:
                where = f"<grad {w.input!r}, v> (a random projection)"
                label = "mismatch in" if self.status == "fail" else "worst projection"
            unit = "projections" if self.mode == "fast" else "elements"
            lines.append(f"  {label} input {where}" + (f" ({self.failures} {unit} failed)" if self.failures else ""))
            lines.append(f"    analytic:  {w.analytic:.10g}")
            if self.reference == "fd" or w.reference_error:
                lines.append(f"    numeric:   {w.numeric:.10g}  (estimated error {w.reference_error:.2g})")
            else:
                source = {"reference": "the reference engine", "torch": "torch autograd of the primal",
                          "jax": "jax.vjp of the primal"}.get(self.reference, self.reference)
                lines.append(f"    reference: {w.numeric:.10g}  ({source}, exact)")
            lines.append(f"    abs err:   {w.abs_err:.3g}   rel err: {w.rel_err:.3g}   tolerance: {w.tolerance:.3g}")
        if self.inputs:
            lines.append("  input        shape          dtype     failed   max abs err   max rel err")
            for s in self.inputs:
                if not s.checked:
                    lines.append(f"  {s.name:<12} {str(s.shape):<14} {s.dtype:<9} (constant, not checked)")
                    continue
                lines.append(
                    f"  {s.name:<12} {str(s.shape):<14} {s.dtype:<9} {s.failed:>6}   {s.max_abs_err:>11.3g}   {s.max_rel_err:>11.3g}"
                )
        for loc in self.nondifferentiable[:5]:
            lines.append(
                f"  kink at {loc.input!r}[{', '.join(str(i) for i in loc.index)}]: one-sided derivatives "
                f"{loc.left:.6g} / {loc.right:.6g}, analytic {loc.analytic:.6g}"
            )
        if len(self.nondifferentiable) > 5:
            lines.append(f"  ... and {len(self.nondifferentiable) - 5} more non-differentiable points")
        tol = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.tolerance.items())
        if tol:
            lines.append(f"  tolerance: {tol}")
        if self.taylor and self.taylor.get("rate") is not None:
            lines.append(
                f"  second opinion: Taylor remainder along {self.taylor['where']} shrinks at rate "
                f"{self.taylor['rate']:.2f} (2 = right gradient, 1 = wrong; no tolerance involved)"
            )
        if self.counterexample is not None:
            for name, value in self.counterexample.items():
                text = np.array2string(np.asarray(value), precision=6, threshold=64, separator=", ")
                lines.append(f"  counterexample {name} = " + text.replace("\n", "\n" + " " * (19 + len(name))))
        for msg in self.warnings:
            lines.append(f"  warning: {msg}")
        return "\n".join(lines)
