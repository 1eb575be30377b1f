"""Differential testing of one spec: every backend pair, and finite differences, compared.

:func:`agreement` computes a spec's value, its VJP along a seeded random
cotangent ``u`` and its JVP along seeded random tangents ``v`` with each
backend, then compares them pairwise with the one comparison core
(:func:`gradverify.compare_gradients`, the dtype-keyed tolerance), and checks
each backend's VJP against finite differences with :func:`gradverify.check`
(central differences with Richardson extrapolation in float64 of the
reference engine's forward pass -- the spec's function; its value is
compared with every backend's first). The result is a plain record:
per pair and per quantity the verdict and the largest errors, plus a
reproduction snippet.

Rounding allowance: where a gradient cancels to zero (``f - f``, a
``logsumexp`` of a ``log_softmax``) two exact implementations differ by the
rounding of the terms they summed, ~1e-17 here and ~1e-15 there, and a
comparison against a zero reference has no scale to measure that against.
The comparison core's rounding term, ``ulps * eps * m`` with ``m`` the size
of the summed terms, is what covers it in :func:`gradverify.check`;
:func:`gradverify.compare_gradients` has no ``m`` parameter, so this module
measures ``m`` with the reference engine
(:meth:`~gradverify.backends.reference.ReferenceBackend.term_scale`: the
largest adjoint times the largest value of one backward sweep) and passes
the core's own ``ulps * eps * m`` (``ulps``, ``eps`` from
:func:`gradverify.tolerance_for`) as ``atol`` -- to the finite-difference
checks as well, whose own allowance scales with the size of the *outputs*
(zero for a function that cancels to zero). It is ~1e-15 of the problem's
scale: no real disagreement hides under it.

Finite differences are evaluated once per case: the reference forward pass
is memoised on its input bytes, so the checks of the second and third
backends (same seed, same perturbations) reuse the first one's evaluations.

Layering note: this module wires backends to the comparison stage (it imports
``gradverify.compare`` and ``gradverify.api`` inside its function), which is
one stage to the right of the backends; it lives here because the tests, the
campaign script and the report all need the same wiring.

Cost: per backend one forward, one backward and one forward-mode pass; per
finite-difference check 2 to 4 reference forward passes per array element
(2 on arrays of at least 64 elements, see ``gradverify.numeric.projected_gradients``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable
from .base import as_dtype

__all__ = ["PairResult", "Agreement", "agreement", "term_sizes", "FD"]

#: The name finite differences go by in pair labels.
FD = "fd"


@dataclasses.dataclass(frozen=True)
class PairResult:
    """One comparison: ``a`` checked against ``b`` on one quantity.

    Attributes:
        a, b: backend names (``b`` may be ``"fd"``).
        quantity: ``"value"``, ``"vjp"`` (the gradients ``u^T J``), ``"jvp"``
            (``J v``) or ``"fd"`` (``a``'s VJP against finite differences).
        status: the comparison core's status (``"pass"``, ``"fail"``, ``"nondiff"``).
        max_abs_err: largest ``|a - b|`` over all elements.
        max_rel_err: largest relative error (the core's definition: per
            element, ``|a - b| / max(|b|, floor * max|b|)``; huge where a
            whole tensor's true gradient is zero).
        scaled_err: ``max|a - b| / max(max|b|, m)`` over all the compared
            tensors together, ``m`` the size of the summed terms: the error
            relative to the problem's scale.
        ratio: the worst element's error over its tolerance (above 1 fails).
        worst: where the worst element is (``"0.W[1, 2]"``), empty if none.
        detail: ``str()`` of the failing CheckResult, empty when it passed.
        worst_a, worst_b: ``a``'s and ``b``'s values at the worst element
            (NaN when nothing was compared).
    """

    a: str
    b: str
    quantity: str
    status: str
    max_abs_err: float
    max_rel_err: float
    ratio: float
    scaled_err: float = 0.0
    worst: str = ""
    detail: str = ""
    worst_a: float = math.nan
    worst_b: float = math.nan

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    @property
    def pair(self) -> str:
        """``"a~b"``."""
        return f"{self.a}~{self.b}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("max_abs_err", "max_rel_err", "ratio", "scaled_err", "worst_a", "worst_b"):
            d[k] = d[k] if math.isfinite(d[k]) else str(d[k])
        return d


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Every comparison made for one spec.

    Attributes:
        spec: the spec compared.
        dtype: the dtype the backends computed in.
        backends: the backends that ran.
        skipped: ``(name, reason)`` for requested backends that could not run.
        results: one :class:`PairResult` per pair and quantity.
        seed: seed of the cotangent and tangents.
        seconds: wall time.
    """

    spec: Any
    dtype: str
    backends: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    results: tuple[PairResult, ...]
    seed: int
    seconds: float

    @property
    def passed(self) -> bool:
        """True when no comparison failed."""
        return all(r.passed for r in self.results)

    def failures(self) -> tuple[PairResult, ...]:
        """The failing comparisons."""
        return tuple(r for r in self.results if not r.passed)

    def max_errors(self) -> dict[str, dict[str, float]]:
        """Pair label (``"reference~torch"``, ``"fd~jax"``...) -> largest errors and err/tol ratio over quantities."""
        out: dict[str, dict[str, float]] = {}
        for r in self.results:
            label = f"{r.b}~{r.a}" if r.quantity == "fd" else r.pair
            cur = out.setdefault(label, {"max_abs_err": 0.0, "max_rel_err": 0.0, "scaled_err": 0.0, "ratio": 0.0})
            for k in cur:
                cur[k] = max(cur[k], getattr(r, k))
        return out

    def snippet(self) -> str:
        """A runnable script reproducing this comparison."""
        from ..spec import snippet

        return snippet(self.spec, backends=self.backends, dtype=self.dtype, seed=self.seed)

    def summary(self) -> str:
        """A short table: one line per comparison, failures with their detail."""
        lines = [f"agreement {'PASS' if self.passed else 'FAIL'}: {type(self.spec).__name__}, {self.dtype}, "
                 f"backends {', '.join(self.backends)}, seed={self.seed}, {self.seconds:.2f}s"]
        for name, why in self.skipped:
            lines.append(f"  skipped {name}: {why}")
        for r in self.results:
            lines.append(f"  {r.quantity:<5} {r.pair:<20} {r.status:<7} max abs {r.max_abs_err:9.2e}  "
                         f"scaled {r.scaled_err:9.2e}  err/tol {r.ratio:7.2g}  worst {r.worst}")
        for r in self.failures():
            lines.append(f"--- {r.quantity} {r.pair} ---\n{r.detail}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the spec as its JSON dict and its repr)."""
        return {
            "spec": self.spec.to_dict(),
            "repr": repr(self.spec),
            "dtype": self.dtype,
            "backends": list(self.backends),
            "skipped": [list(s) for s in self.skipped],
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
            "seed": self.seed,
            "seconds": self.seconds,
        }


def _scaled(res: Any, scale: dict[str, np.ndarray], terms: float) -> float:
    """``max|a - b| / max(max|b|, terms)`` over all compared tensors: the error relative to the problem's scale.

    ``terms`` (the size of the summed terms, see the module docstring) keeps the ratio
    meaningful where the true result is identically zero.
    """
    err = max((s.max_abs_err for s in res.inputs if s.checked), default=0.0)
    m = max([float(np.max(np.abs(v))) for v in scale.values() if np.size(v)] + [terms])
    return err / m if m > 0 else (0.0 if err == 0 else math.inf)


def _pair_result(a: str, b: str, quantity: str, res: Any, scale: dict[str, np.ndarray],
                 terms: float = 0.0) -> PairResult:
    max_abs = max((s.max_abs_err for s in res.inputs if s.checked), default=0.0)
    max_rel = max((s.max_rel_err for s in res.inputs if s.checked), default=0.0)
    w = res.worst
    where = "" if w is None else f"{w.input}[{', '.join(str(i) for i in w.index)}]"
    ratio = 0.0 if w is None else w.ratio
    return PairResult(a, b, quantity, res.status, float(max_abs), float(max_rel), float(ratio),
                      _scaled(res, scale, terms), where, "" if res.passed else str(res),
                      math.nan if w is None else float(w.analytic), math.nan if w is None else float(w.numeric))


def term_sizes(spec: Any, cotangent: Any, tangents: dict[str, Any] | None = None) -> dict[str, float]:
    """The size of the terms summed for the value, the VJP along ``cotangent`` and the JVP along ``tangents``.

    Measured by the reference engine in float64
    (:meth:`~gradverify.backends.reference.ReferenceBackend.term_scale`); the
    JVP's is the VJP's rescaled from ``max|cotangent|`` to ``max|tangents|``.
    ``ulps * eps * size`` (the comparison core's rounding term, ``ulps`` and
    ``eps`` from :func:`gradverify.tolerance_for` of the dtype under test) is
    the ``atol`` :func:`agreement` passes to the comparisons. Cost: one traced
    forward and one backward pass.
    """
    from . import get_backend

    u = np.asarray(cotangent, dtype=np.float64)
    scale = get_backend("reference").term_scale(spec, u, dtype=np.float64)
    vmax = max((float(np.max(np.abs(t))) for t in (tangents or {}).values() if np.size(t)), default=0.0)
    umax = float(np.max(np.abs(u))) if u.size else 0.0
    return {"value": scale.value, "vjp": scale.vjp, "jvp": scale.vjp * (vmax / umax if umax > 0 else 1.0)}


def agreement(spec: Any, *, backends: Sequence[str] = ("reference", "torch", "jax"), dtype: Any = "float64",
              fd: bool | Sequence[str] = True, jvp: bool = True, seed: int = 0, device: str = "cpu",
              require: bool = False) -> Agreement:
    """Compare ``spec`` across ``backends`` (values, VJPs, JVPs) and against finite differences.

    Args:
        spec: a :class:`~gradverify.spec.Network` or :class:`~gradverify.spec.Expression`.
        backends: registry names; unavailable ones are skipped (listed in
            ``skipped``) unless ``require`` is True.
        dtype: what the backends compute in (``"float64"`` or ``"float32"``).
        fd: check each backend's VJP against finite differences (True), none
            (False), or those named (a sequence of backend names).
        jvp: also compare the JVPs.
        seed: seeds the cotangent ``u``, the tangents ``v`` and the
            finite-difference check.
        device: the backends' device.
        require: raise :class:`~gradverify.BackendUnavailable` for a missing backend.

    Returns:
        An :class:`Agreement`. Pairs ``(a, b)`` follow the order of
        ``backends`` (``b`` is the reference side of the comparison).

    Cost: see the module docstring.
    """
    from .. import check, compare_gradients, tolerance_for
    from . import get_backend

    start = time.perf_counter()
    dt = as_dtype(dtype)
    runs: dict[str, Any] = {}
    skipped = []
    for name in backends:
        try:
            runs[name] = get_backend(name, device=device)
        except BackendUnavailable as exc:
            if require:
                raise
            skipped.append((name, str(exc)))
    arrays = spec.arrays(dt)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x646966]))
    ref = get_backend("reference")
    shape = ref.value(spec, dtype=np.float64).shape
    u = rng.standard_normal(shape)
    v = {k: rng.standard_normal(a.shape) for k, a in arrays.items()}
    terms = term_sizes(spec, u, v)
    tol = tolerance_for(dt)
    atol = {k: tol.ulps * tol.eps * m for k, m in terms.items()}
    got = {}
    for name, b in runs.items():
        value, grads = b.vjp(spec, u, dtype=dt)
        tangent = b.jvp(spec, v, dtype=dt)[1] if jvp else None
        got[name] = (value, grads, tangent)
    results = []
    names = list(got)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (va, ga, ta), (vb, gb, tb) = got[a], got[b]
            results.append(_pair_result(a, b, "value", compare_gradients(
                {"output": va}, {"output": vb}, reference_name=b, atol=atol["value"]), {"output": vb},
                terms["value"]))
            results.append(_pair_result(a, b, "vjp", compare_gradients(
                ga, gb, reference_name=b, atol=atol["vjp"]), gb, terms["vjp"]))
            if jvp:
                results.append(_pair_result(a, b, "jvp", compare_gradients(
                    {"jvp": ta}, {"jvp": tb}, reference_name=b, atol=atol["jvp"]), {"jvp": tb}, terms["jvp"]))
    fd_names = list(runs) if fd is True else [n for n in (fd or ()) if n in runs]
    if fd_names:
        memo: dict[tuple, np.ndarray] = {}

        def fn(**kw):
            key = tuple(np.asarray(a, dtype=np.float64).tobytes() for a in kw.values())
            if key not in memo:
                memo[key] = ref.value(spec, kw, dtype=np.float64)
            return memo[key].copy()

        for name in fd_names:
            b = runs[name]

            def vjp(dout, _b=b, **kw):
                return _b.vjp(spec, dout, kw, dtype=dt)[1]

            res = check(fn, dict(arrays), vjp=vjp, seed=seed, atol=atol["vjp"])
            results.append(_pair_result(name, FD, "fd", res, got[name][1], terms["vjp"]))
    return Agreement(spec, dt.name, tuple(names), tuple(skipped), tuple(results), seed,
                     time.perf_counter() - start)
