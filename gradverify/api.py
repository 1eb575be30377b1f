"""The public checks: ``check``, ``check_layer``, ``check_pair`` and their ``assert_*`` twins.

Each is a thin wiring of the stages: adapt the code under test to a
:class:`~gradverify.layers.Target`, draw a seeded random cotangent ``u``
(never all-ones, so a backward that ignores its incoming gradient is
caught), run the analytic backward in the caller's dtype, ask the
references ``against=`` chooses for the gradient of ``<u, f>`` (an exact one
where it follows the code, finite differences in float64 otherwise; see
:mod:`gradverify.references`), and let the comparison core
(:class:`~gradverify.compare.Comparison`) give the verdict. The stages are
listed in :func:`_pipeline`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .compare import Comparison, _maxabs, tolerance_for
from .errors import (GradientMismatch, NoDifferentiableInputs, NondeterministicError, ProtocolError, SpecError,
                     raised_at_call)
from .layers import FunctionTarget, LayerTarget, Target, _check_output, _to_array, draw_input, pair_callables
from .references import EXACT, Declined, parse_against
from .references.elementwise import projected_gradients
from .references.exact import TRACE_AGREEMENT, exact_gradients, rounding_scale
from .references.noise import Noise, function_noise
from .references.stencils import FAIL
from .verdict import CheckResult

__all__ = ["check", "check_layer", "check_pair", "assert_gradients", "assert_layer", "assert_pair", "MODES",
           "DEFAULT_BUDGET", "FAST_PROBES", "PROGRESS_AFTER", "SlowCheckWarning"]

#: Accepted values of ``mode=`` (they govern finite differences; an exact
#: reference compares every element whatever the mode): ``"full"`` checks
#: every element; ``"fast"`` compares :data:`FAST_PROBES` random projections
#: per input and parameter, then bisects to the wrong element on failure;
#: ``"auto"`` runs full where its predicted time fits ``budget=``, fast beyond.
MODES = ("auto", "full", "fast")

#: Seconds ``mode="auto"`` may spend on finite differences of every element
#: (``budget=``): the time of one evaluation, measured, times the
#: evaluations a full check needs (about 2 per element of tensors the screen
#: takes, 4 of smaller ones), divided by the rows a batched call evaluates.
DEFAULT_BUDGET = 5.0

#: A check predicted to run longer than this many seconds shows a progress
#: bar on stderr when stderr is a terminal (``progress=`` overrides).
PROGRESS_AFTER = 2.0


class SlowCheckWarning(UserWarning):
    """A full check predicted to take longer than its ``budget=`` (the message gives the estimate)."""

#: Signed Gaussian probes per input/parameter in fast mode. A single
#: element wrong by ``d`` in a tensor is missed by one probe with
#: probability ``P(|Z| < tol / |d|)`` (``Z`` standard normal, ``tol`` the
#: projection tolerance per unit direction), so by all probes with that
#: probability to the power ``FAST_PROBES``: for a 0.1% error in one of 12
#: weights (``tol / |d|`` about 0.1) that is ``0.08 ** 4 = 4e-5``.
FAST_PROBES = 4


def _validate(mode: str, seed: Any) -> tuple[np.random.Generator, np.random.Generator]:
    """Validate options; return the generators for drawn inputs and for the cotangent.

    Both are spawned from ``seed``, so neither equals the stream a user gets
    from ``np.random.default_rng(seed)`` (a cotangent equal to the user's
    own input would make ``x.T @ dy`` symmetric and hide a transposed
    weight gradient).
    """
    if mode not in MODES:
        raise SpecError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer, got {seed!r}")
    inputs, cotangent = np.random.SeedSequence([int(seed), 0x6772616476]).spawn(2)
    return np.random.default_rng(inputs), np.random.default_rng(cotangent)


def _budget(budget: Any) -> float:
    """``budget=`` validated: seconds, a positive finite number (None: :data:`DEFAULT_BUDGET`)."""
    if budget is None:
        return DEFAULT_BUDGET
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)) or \
            not np.isfinite(budget) or budget <= 0:
        raise SpecError(f"budget must be a positive number of seconds, got {budget!r}")
    return float(budget)


def _lowest_precision(arrays) -> np.dtype:
    floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
    if not floats:
        return np.dtype(np.float64)
    return min(floats, key=lambda d: np.finfo(d).bits)


def _run(target: Target, *, rng: np.random.Generator, seed: int, mode: str, rtol, atol,
         against: tuple[str, ...] = ("auto",), budget: float = DEFAULT_BUDGET,
         progress: bool | None = None) -> CheckResult:
    check = _Check(target, seed=seed, mode=mode, rtol=rtol, atol=atol, against=against, budget=budget,
                   progress=progress)
    try:
        with target.session():
            return _pipeline(check, rng)
    except KeyboardInterrupt:
        done = f"after {check.evaluations} evaluations" + (
            f" of about {check.predicted[0]}" if check.predicted else "")
        print(f"gradverify: check interrupted (Ctrl-C) {done}; the code under test was left as it was (every "
              "perturbed value put back)", file=sys.stderr)
        raise
    finally:
        target.random.release()


@dataclasses.dataclass
class _Check:
    """What one check carries from stage to stage (see :func:`_pipeline`)."""

    target: Target
    seed: int
    mode: str
    rtol: float | None
    atol: float | None
    against: tuple[str, ...]
    budget: float = DEFAULT_BUDGET
    progress: bool | None = None
    start: float = dataclasses.field(default_factory=time.perf_counter)
    seconds_per_evaluation: float = 0.0
    predicted: tuple[int, float] | None = None  # a full check's (evaluations, seconds), once predicted
    evaluations: int = 0
    y0: np.ndarray | None = None          # the float64 evaluation at the point
    eval_dtype: Any = np.float64          # the precision the finite differences evaluate in
    u: np.ndarray | None = None           # the cotangent, in the lowest precision involved
    u64: np.ndarray | None = None
    analytic: dict | None = None          # the gradient under test, in the caller's dtype
    analytic64: dict | None = None        # the same formula run in float64, where the code does that
    grad_dtype: Any = np.float64
    tol: Any = None
    widened: str = ""
    rng: np.random.Generator | None = None  # the cotangent's stream; fast mode draws its probes after it
    probe_output: np.ndarray | None = None  # the mutation probe's output, where the determinism re-run was it
    _noise: Noise | None = None
    exact_values: dict | None = None       # the exact reference's gradients, once one followed the code

    def noise(self) -> Noise:
        """The function's measured noise along a random direction (:mod:`gradverify.references.noise`), once."""
        if self._noise is None:
            size = sum(a.nbytes for a in self.target.point.values())
            self._noise = function_noise(self.target.evaluate, self.target.point, self.u64,
                                         rng=np.random.default_rng([self.seed, 0x6E6F6973]),
                                         significant=NOISY * self.eps,
                                         evaluate_points=self.target.evaluate_points
                                         if getattr(self.target, "points_batched", False) else None,
                                         rows_bytes=_rows_budget(size))
            self.evaluations += self._noise.evaluations
            if self.noisy:
                self.target._warn(
                    f"the function is noisy: its output carries noise of {self._noise.relative:.2g} relative "
                    f"(measured from a difference table; rounding of {np.dtype(self.eval_dtype).name} alone would be "
                    f"about {np.finfo(np.float64).eps:.1g}) -- a lower-precision accumulator inside "
                    "(torch.zeros(...) without a dtype, a float32 constant)? Finite differences carry it in their "
                    "error estimate; an exact reference (against=...) or a float32 tolerance (rtol=) suits such code")
        return self._noise

    @property
    def eps(self) -> float:
        """The machine epsilon of the evaluation dtype."""
        dt = np.dtype(self.eval_dtype)
        return float(np.finfo(dt if dt.kind == "f" else np.float64).eps)

    @property
    def noisy(self) -> bool:
        """Whether the measured noise is well above the rounding of the evaluation dtype."""
        return self._noise is not None and self._noise.relative > NOISY * self.eps

    def warnings(self) -> tuple[str, ...]:
        """The code's hazards so far, then the constants that were not checked."""
        return tuple(self.target.warnings) + tuple(
            f"input {k!r} ({v.dtype}) is a constant: its gradient is not checked"
            for k, v in self.target.constants.items() if isinstance(v, np.ndarray))

    def meta(self, **extra) -> dict:
        """The bookkeeping every result carries."""
        return dict(evaluations=self.evaluations, seed=self.seed, seconds=time.perf_counter() - self.start, **extra)


def _pipeline(c: _Check, rng: np.random.Generator) -> CheckResult:
    """The stages of every check, in order (each a function below).

    1. :func:`_first_evaluation` -- the float64 forward, replayed randomness, determinism;
    2. :func:`_draw_cotangent` -- a seeded random ``u`` (never all-ones);
    3. :func:`_analytic_pass` -- the gradient under test (twice: reproducibility), its tolerance;
    4. :func:`_exact_verdict` -- each exact reference ``against=`` allows, until one follows the code
       (it is then checked itself on a finite-difference sample);
    5. :func:`_fd_verdict` -- finite differences, where no exact reference decided or ``"fd"`` was asked;
    6. :func:`_second_opinion` -- a Taylor-remainder rate on failing or borderline verdicts
       (inside the finite-difference stage, where it reads the same evaluations).
    """
    _first_evaluation(c)
    _draw_cotangent(c, rng)
    _analytic_pass(c)
    if not c.y0.size or not any(a.size for a in c.target.point.values()):
        return _nothing_to_compare(c)
    result = None
    for name in _exact_candidates(c):
        result = _exact_verdict(c, name)
        if result is not None:
            break
    if result is None or "fd" in c.against:
        fd_result, cross = _fd_verdict(c, cross=result is not None)
        result = fd_result if result is None else _both(c, result, fd_result, cross)
    return result


def _nothing_to_compare(c: _Check) -> CheckResult:
    """An empty output or empty inputs: every reference value is zero, so the gradient under test must be too.

    The check passes trivially (what ``torch.autograd.gradcheck`` does with
    an empty Jacobian) and says so; a nonzero gradient of an empty output
    still fails.
    """
    empty = "the output is empty" if not c.y0.size else "every input to differentiate is empty"
    return Comparison(c.analytic, c.tol).result(
        {k: np.zeros(a.shape) for k, a in c.target.point.items()}, None, kind=c.target.kind, reference="none",
        constants=c.target.constants, warnings=c.warnings() + (
            f"nothing to compare: {empty} (shapes {', '.join(f'{k} {a.shape}' for k, a in c.target.point.items())}"
            f"; output {c.y0.shape}), so the check passed trivially",), **c.meta(mode=c.mode, dtype=c.grad_dtype.name))


def _first_evaluation(c: _Check) -> None:
    """Evaluate once in float64 (the caller's dtype where the code refuses it); learn and replay its randomness."""
    target = c.target
    # The oracle evaluates in float64 where the code accepts float64 input.
    # The first call also learns which random streams the code consumes;
    # they are replayed for every later call.
    try:
        y0 = target.random.watch(target.evaluate)
    except Exception as exc:  # noqa: BLE001 - fall back to the caller's dtype, then report
        if all(target.point[k].dtype == target.originals[k].dtype for k in target.point):
            raise
        for k in target.point:
            if target.point[k] is not target.originals[k]:
                target.point[k] = target.originals[k].copy()
        target._warn(f"the code refused float64 input ({type(exc).__name__}: {exc}); "
                     "finite differences ran in its own dtype, so the verdict is coarser")
        y0 = target.random.watch(target.evaluate)
    c.evaluations += 1
    if target.random.active:
        target._warn("the code draws random numbers; its random state was captured and replayed for every "
                     "evaluation, so each call saw the same draws (e.g. the same dropout mask)")
    y0 = _check_output(y0, "forward")
    # The determinism re-run doubles as the mutation probe (the code run on
    # copies of the caller's arrays) where the caller's arrays are what the
    # oracle evaluates (float64 inputs): one evaluation serves both.
    shared = isinstance(target, FunctionTarget) and all(
        target.point[k].dtype == target.originals[k].dtype for k in target.point)
    t = time.perf_counter()
    y1 = np.asarray(target.check_forward_mutation() if shared else target.evaluate())
    c.seconds_per_evaluation = time.perf_counter() - t
    c.evaluations += 1
    c.probe_output = y1 if shared else None
    spread = float(np.max(np.abs(y1.astype(np.float64) - y0.astype(np.float64)))) if y0.size else 0.0
    if y1.shape != y0.shape or spread > 16 * np.finfo(y0.dtype if y0.dtype.kind == "f" else np.float64).eps * max(
        float(np.max(np.abs(y0))) if y0.size else 0.0, 1e-300
    ):
        raise NondeterministicError(
            f"two evaluations at the same point differ (max |difference| {spread:.3g}); the function is "
            "nondeterministic (random state, dropout?) -- fix its randomness (seed it inside) before checking"
        )
    c.y0 = y0
    c.eval_dtype = y0.dtype if y0.dtype.kind == "f" else np.dtype(np.float64)


def _draw_cotangent(c: _Check, rng: np.random.Generator) -> None:
    """One cotangent, exactly representable in the lowest precision involved, shared by every reference."""
    low = _lowest_precision(list(c.target.originals.values()))
    c.u = rng.standard_normal(c.y0.shape).astype(low)
    c.rng = rng
    c.u64 = c.u.astype(np.float64)


def _analytic_pass(c: _Check) -> None:
    """The gradient under test in the caller's dtype (twice: it must reproduce), its tolerance, its float64 run."""
    target = c.target
    low = _lowest_precision(list(target.originals.values()))
    if isinstance(target, FunctionTarget):
        # the function in the caller's dtype, on copies (which must come back unchanged)
        # (the mutation probe rode on the determinism re-run where the inputs are float64)
        shared = c.probe_output is not None
        y_orig = _check_output(c.probe_output if shared else target.check_forward_mutation(), "the function")
        c.evaluations += not shared
        target.analytic_output = y_orig
        u_an = c.u.astype(y_orig.dtype if y_orig.dtype.kind == "f" else np.float64)
    else:
        u_an = c.u.astype(low if low.itemsize <= c.y0.dtype.itemsize else c.y0.dtype)
    c.evaluations += 1
    analytic = target.analytic(u_an)
    c.grad_dtype = _lowest_precision(list(analytic.values()))
    _check_backward_reproducible(target, analytic, target.analytic(u_an), c.grad_dtype)
    c.evaluations += 1
    c.analytic = analytic
    c.tol, c.widened = _widen_for_forward_error(tolerance_for(c.grad_dtype, rtol=c.rtol, atol=c.atol),
                                                target.analytic_output, c.y0, c.grad_dtype, c.eval_dtype, c.rtol)
    if c.widened:
        target._warn(c.widened)
    # Where the code's own low-precision forward is far from float64, the
    # function is ill-conditioned at that precision; its float64 run is not
    # the code's function either, so only the widened low-precision check runs.
    c.analytic64 = None if c.widened else _analytic_in_float64(target, c.u64, c.grad_dtype, c.eval_dtype)
    c.evaluations += c.analytic64 is not None


def _exact_candidates(c: _Check) -> tuple[str, ...]:
    """The exact references to try, in order: those ``against=`` names, or under ``"auto"`` those that apply."""
    if c.against == ("auto",):
        return tuple(n for n in EXACT if n in c.target.exact_references())
    return tuple(n for n in c.against if n in EXACT)


#: A function whose measured noise exceeds this many ulps of its evaluation
#: dtype is noisy: finite differences add the noise to their error estimate,
#: and an exact reference's tolerance widens to what the noise allows.
NOISY = 1000.0

#: A noisy function's gradients are held to this many times its relative
#: noise: the exact reference differentiates the same noisy operations, and
#: any formula for the gradient rounds them differently.
NOISE_TOLERANCE_FACTOR = 100.0


def _exact_verdict(c: _Check, name: str) -> CheckResult | None:
    """Compare the gradient under test with exact reference ``name``; None when it declines or is refuted.

    The tolerance is rounding alone (:data:`~gradverify.compare.EXACT_TOLERANCES`).
    Where the code runs its formula in float64 too, that run is held to the
    float64 rule and the caller's-dtype gradients to their dtype's. Then
    finite differences check the reference itself on random projections
    (:func:`_check_reference`).
    """
    target = c.target
    try:
        ref, out = exact_gradients(target, name, c.u64)
    except Declined as why:
        if why.applies or c.against != ("auto",):
            target._warn(f"the exact reference ({name}) declined: {why}; finite differences gave the verdict instead")
        return None
    c.evaluations += 1
    c.exact_values = ref
    y0 = np.asarray(c.y0, dtype=np.float64)
    if out.shape != y0.shape or not np.allclose(out, y0, rtol=0, atol=TRACE_AGREEMENT * max(_maxabs(y0), 1e-300)):
        dev = float(np.max(np.abs(out - y0))) if out.shape == y0.shape and y0.size else float("inf")
        target._warn(f"the exact reference ({name}) declined: its run of the forward differs from the plain float64 "
                     f"evaluation (max |difference| {dev:.3g}), so it computed another function; finite differences "
                     "gave the verdict instead")
        return None
    flat_scale = 4 * c.tol.ulps * c.tol.eps * _maxabs(c.u64)
    # Held to the rounding of the lowest precision the code computed in: a float64 gradient of float32 inputs
    # carries float32 rounding.
    precision = _lowest_precision([*c.analytic.values(), *target.originals.values()])
    tol = c.tol if c.widened else tolerance_for(precision, rtol=c.rtol, atol=c.atol, exact=True)
    sens = _rounding_sensitivity(c)
    kinks: dict = {}
    slack: dict = {}

    def verdict(analytic, tolerance, dtype, warnings=()):
        return Comparison(analytic, tolerance).result(
            ref, None, kind=target.kind, reference=name, constants=target.constants, flat_scale=flat_scale,
            sensitivity=sens, kinks=kinks or None, kink_slack=slack or None,
            warnings=c.warnings() + tuple(warnings), **c.meta(mode="full", dtype=np.dtype(dtype).name))

    result = verdict(c.analytic, tol, c.grad_dtype)
    if not result.passed:
        # How far rounding alone moves the reference (cancelling terms,
        # saturated units): measured by running it in float32 and scaled to
        # the float64 eps, it widens the rounding allowance of those elements.
        moved = rounding_scale(target, name, c.u64, ref)
        if moved is not None:
            sens = {k: sens[k] + ROUNDING_SAFETY * moved[k] / (tol.ulps * tol.eps) for k in sens}
            result = verdict(c.analytic, tol, c.grad_dtype)
    if not result.passed:
        # The reference is one subgradient where the function has a kink; a
        # failing element there is judged by one-sided finite differences.
        kinks, slack = _kinks_at_failures(c, Comparison(c.analytic, tol).element_ratios(ref, sens))
        if kinks:
            result = verdict(c.analytic, tol, c.grad_dtype)
    if not result.passed and not c.widened and c.rtol is None and c.noise() and c.noisy:
        # The forward is noisier than its dtype (a low-precision accumulator
        # inside): the reference differentiates the same noisy operations, and
        # no gradient of it is exact to better than its noise.
        need = NOISE_TOLERANCE_FACTOR * c._noise.relative
        tol = dataclasses.replace(tol, rtol=max(tol.rtol, need), floor=max(tol.floor, need))
        c.tol = dataclasses.replace(c.tol, rtol=max(c.tol.rtol, need), floor=max(c.tol.floor, need))
        result = verdict(c.analytic, tol, c.grad_dtype, (
            f"tolerances widened to rtol={need:.2g}: a gradient of a function this noisy cannot be checked tighter "
            "(pass rtol= to override)",))
    if c.analytic64 is not None:
        tol64 = tolerance_for(np.float64, rtol=c.rtol, atol=c.atol, exact=True)
        if tol.rtol > tol64.rtol and c.noisy:
            tol64 = dataclasses.replace(tol64, rtol=tol.rtol, floor=max(tol64.floor, tol.floor))
        hi = verdict(c.analytic64, tol64, np.float64, (
            f"the code computes in float64 when given float64 inputs, so its gradient formula was checked in "
            f"float64 (this verdict); its {np.dtype(c.grad_dtype).name} gradients were checked too",))
        if not hi.passed:
            result = hi
        elif not result.passed:
            w = result.worst
            result = dataclasses.replace(hi, warnings=hi.warnings + (
                f"its {np.dtype(c.grad_dtype).name} gradients deviate from the exact reference by up to "
                f"{w.rel_err:.2g} relative (at {w.input!r}{list(w.index)}: {w.analytic:.6g} vs {w.numeric:.6g}), "
                f"beyond the {np.dtype(c.grad_dtype).name} tolerance: saturated or cancelling terms lose that much "
                "precision in this dtype",))
        else:
            result = dataclasses.replace(result, warnings=hi.warnings[:-1])
    if c.widened and not result.passed:
        return dataclasses.replace(result, status="unverified", warnings=result.warnings + (
            f"could not verify: the {np.dtype(c.grad_dtype).name} forward deviates from the float64 function too "
            "much for its gradients to be checked in this dtype; check it in float64",))
    if "fd" in c.against:
        return result  # finite differences check every element anyway (see _both)
    return _check_reference(c, name, ref, result)


#: The rounding allowance of an exact verdict covers this many times what
#: rounding moved the reference (measured in float32, scaled to float64).
ROUNDING_SAFETY = 16.0

#: At most this many failing elements of an exact verdict are examined for kinks.
KINK_CANDIDATES = 32


def _rounding_sensitivity(c: _Check) -> dict[str, np.ndarray]:
    """The size of the terms a backward sums for each element, for the rounding allowance ``ulps * eps * m``.

    ``m = 4 max|u| + sum_k |u_k| |y_k| / scale_j``, ``scale_j = max(|x_j|,
    rms(x) / 10)``: the residue a function flat at this resolution leaves,
    and a bound over every output (finite differences count only those the
    element moves). A saturated sigmoid's ``s * (1 - s)`` computed by any
    correct formula differs from another by rounding of this size.
    """
    total = float(np.sum(np.abs(c.u64) * np.abs(np.asarray(c.y0, dtype=np.float64))))
    residue = 4.0 * _maxabs(c.u64)  # what a flat function's gradient leaves, relative to the cotangent
    out = {}
    for k, arr in c.target.point.items():
        x = np.abs(np.asarray(arr, dtype=np.float64))
        rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
        out[k] = residue + total / np.maximum(x, 0.1 * rms if rms > 0 else 1.0)
    return out


def _kinks_at_failures(c: _Check, ratios: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """One-sided finite differences at the worst failing elements of an exact verdict: kinks found there.

    Returns ``kinks`` (name -> (mask, left, right), as :meth:`Comparison.result`
    takes them) and the slack of each tensor's kink test (the finite
    differences' float64 tolerance plus twice their error, at least). Cost:
    about 4 evaluations per examined element (at most
    :data:`KINK_CANDIDATES`).
    """
    failing = [(float(r.flat[i]), k, int(i)) for k, r in ratios.items() for i in np.flatnonzero(r > 1)]
    if not failing:
        return {}, {}
    failing.sort(reverse=True)
    indices: dict[str, list[int]] = {}
    for _, k, i in failing[:KINK_CANDIDATES]:
        indices.setdefault(k, []).append(i)
    fd_comp = Comparison(c.analytic, tolerance_for(np.float64))
    noise = 0.0 if c._noise is None else c._noise.sigma
    fd, n = projected_gradients(c.target.evaluate, c.target.point, c.u64, eval_dtype=c.eval_dtype,
                                judge=fd_comp.judge, indices=indices, noise=noise)
    c.evaluations += n
    kinks, slack = {}, {}
    for k, idx in indices.items():
        d = fd[k]
        mask = np.zeros(d.kink.shape, dtype=bool)
        mask.flat[idx] = d.kink.flat[idx]
        if not mask.any():
            continue
        kinks[k] = (mask, d.left, d.right)
        tb = fd_comp.base_tolerance(k, d.value)
        slack[k] = np.asarray(tb + 2.0 * np.where(np.isfinite(d.error), d.error, 0.0), dtype=np.float64)
    return kinks, slack


def _predict_full(c: _Check) -> tuple[int, float]:
    """Evaluations and seconds a full finite-difference check needs, from the measured cost of one evaluation.

    About 2.25 evaluations per element of tensors the screen takes (64
    elements and more), 4 of smaller ones. Where the code evaluates
    perturbations in batches, one batched call of up to 64 rows of the
    largest tensor (fewer where their outputs would exceed the target's
    ``batch_output_bytes``) is timed (and counted) for the cost of a row -- only
    where the one-by-one estimate (an upper bound) exceeds the budget or
    the progress bar's threshold, so a small check spends nothing on it.
    """
    from .references import screen as _screen

    evals = sum(int((2.25 if a.size >= _screen.SCREEN_MIN_SIZE else 4.0) * a.size) for a in c.target.point.values())
    per = c.seconds_per_evaluation
    batch = getattr(c.target, "evaluate_batch", None)
    # A batched call is timed only where the answer can change something:
    # one-by-one, the check would exceed its budget (auto mode: full or
    # fast; full mode: the warning) or show a progress bar. Below that the
    # unbatched estimate, an upper bound, already decides.
    matters = evals * per > min(c.budget, PROGRESS_AFTER if c.progress is not False else c.budget)
    if batch is not None and evals > 64 and matters:
        name, arr = max(c.target.point.items(), key=lambda kv: kv[1].size)
        # (its outputs within what the target allows a batched request: numpy code keeps to its inputs' size)
        cap = getattr(c.target, "batch_output_bytes", None) or 64 * 2**20
        k = min(arr.size, 64, max(1, cap // (8 * max(1, int(np.size(c.y0))))))
        idx = np.arange(k, dtype=np.int64)
        t = time.perf_counter()
        try:
            batch(name, idx, np.asarray(arr, dtype=np.float64).reshape(-1)[:k].astype(arr.dtype))
            per = min(per, (time.perf_counter() - t) / k)
        except Exception:  # noqa: BLE001 - the check's own batched pass reports it; the estimate stays unbatched
            pass
        c.evaluations += k
    return evals, evals * per


def _duration(seconds: float) -> str:
    return f"{seconds:.2g} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _progress_of(c: _Check, size: int):
    """The evaluation callables of a full check, counting on a progress bar when it is predicted to be long."""
    import contextlib

    target = c.target
    batch = getattr(target, "evaluate_batch", None)
    enabled = c.progress if c.progress is not None else (
        _stderr_is_terminal() and c.predicted is not None and c.predicted[1] > PROGRESS_AFTER)
    if not enabled:
        return contextlib.nullcontext((target.evaluate, batch))

    @contextlib.contextmanager
    def counting():
        from .progress import progress

        with progress(f"full check ({size} elements)", c.predicted[0] if c.predicted else 4 * size,
                      enabled=True) as bar:
            def evaluate():
                bar.step()
                return target.evaluate()

            def evaluate_batch(name, idx, vals):
                bar.step(n=len(idx))
                return batch(name, idx, vals)

            yield evaluate, (None if batch is None else evaluate_batch)

    return counting()


def _stderr_is_terminal() -> bool:
    """Progress bars go to a terminal only: not in CI logs, pipes or captured test output."""
    import os

    try:
        return sys.stderr.isatty() and not os.environ.get("CI")
    except (AttributeError, ValueError):
        return False


def _check_reference(c: _Check, name: str, ref: dict, result: CheckResult) -> CheckResult | None:
    """Finite differences check the exact reference itself; None (and a warning) if they refute it.

    One random projection per tensor (4 evaluations each, every element
    weighted in), and for a failing verdict its worst element too: where
    the reference differs from finite differences by more than their
    tolerance and error (a kink, where one-sided differences disagree, is
    no evidence), the reference is refuted and the check rests on finite
    differences, with a warning naming both values. A disagreement at the
    level rounding alone moves the reference (measured by running it in
    float32) refutes nothing, and refutation is re-examined with the
    function's measured noise (:meth:`_Check.noise`) before it is believed.
    """
    target = c.target
    comp = Comparison(ref, tolerance_for(np.float64))
    rng = np.random.default_rng([c.seed, 0x726566])
    y0 = np.asarray(c.y0, dtype=np.float64)
    moved: list = []

    def rounding() -> dict[str, np.ndarray]:
        """What rounding alone moves the reference by (a reference at rounding level is not refuted by it)."""
        if not moved:
            scale = rounding_scale(target, name, c.u64, ref)
            # and the residue a flat function leaves, relative to the cotangent (as the comparison allows it)
            flat = 4 * comp.tol.ulps * comp.tol.eps * _maxabs(c.u64)
            moved.append({k: flat + ROUNDING_SAFETY * (np.zeros(np.shape(v)) if scale is None else scale[k])
                          for k, v in ref.items()})
        return moved[0]

    def refutation(noise: float) -> str | None:
        from .references.projections import directional_mismatches

        rows = getattr(target, "evaluate_rows", None)
        for k, arr in target.point.items():
            if not arr.size:
                continue
            v = rng.standard_normal(arr.shape)
            (p,) = directional_mismatches(target.evaluate, arr, [v], ref[k], c.u64, eval_dtype=c.eval_dtype, y0=y0,
                                          judge=lambda _, m, e, k=k, v=v: comp.projection_judge(k, v, m, e),
                                          noise=noise,
                                          evaluate_rows=None if rows is None else (lambda r, k=k: rows(k, r)))
            c.evaluations += p.evaluations
            allowed = comp.projection_tolerance(k, v, p.magnitude) + comp.tol.noise_factor * p.error
            # the rounding allowance costs a float32 run of the reference: measured only when needed
            if np.isfinite(p.error) and abs(p.mismatch) > allowed and \
                    abs(p.mismatch) > allowed + float(np.sum(np.abs(v) * rounding()[k])):
                return (f"along a random direction of {k!r}: {name} {p.analytic:.10g}, finite differences "
                        f"{p.numeric:.10g} (estimated error {p.error:.2g})")
        w = result.worst
        if result.passed or w is None or w.projection:
            return None
        arr = target.point[w.input]
        i = int(np.ravel_multi_index(w.index, arr.shape)) if arr.ndim else 0
        fd, n = projected_gradients(target.evaluate, {w.input: arr}, c.u64, eval_dtype=c.eval_dtype,
                                    judge=comp.judge, indices={w.input: [i]}, noise=noise, compact=True)
        c.evaluations += n
        d = fd[w.input]  # (compact: the one element's values)
        value, error = float(d.value[0]), float(d.error[0])
        if not d.kink[0] and np.isfinite(error) and comp.judge(w.input, i, value, error) == FAIL and \
                abs(value - w.numeric) > float(comp.base_tolerance(w.input, value)) + 2 * error + \
                float(rounding()[w.input].flat[i]):
            return (f"at {w.input!r}[{', '.join(str(j) for j in w.index)}]: {name} {w.numeric:.10g}, finite "
                    f"differences {value:.10g} (estimated error {error:.2g})")
        return None

    why = refutation(0.0 if c._noise is None else c._noise.sigma)
    if why is not None and c._noise is None and c.noise().sigma > 0:
        why = refutation(c.noise().sigma)  # what looked like a disagreement may be the function's own noise
    if why is not None:
        primal = getattr(target, "primal", None)
        if getattr(primal()[0] if callable(primal) else None, "nested", False):
            # the reference ran the primals of custom-derivative functions the code calls: such a primal need
            # not be differentiable where its custom rule is defined (the reason the rule exists)
            cause = ("the primal of a custom-derivative function inside the code may not be differentiable at this "
                     "point (a tie in max, |x| at 0: what its custom rule is for)")
        else:
            cause = "please report this (a wrong derivative rule, or a forward the reference follows only in part)"
        target._warn(f"the exact reference ({name}) disagrees with finite differences {why}; the reference was not "
                     f"trusted and finite differences gave the verdict -- {cause}")
        return None
    result = dataclasses.replace(result, warnings=c.warnings() + tuple(w for w in result.warnings
                                                                        if w not in c.warnings()),
                                 evaluations=c.evaluations)
    # the eps-free second opinion, as for finite differences (one more independent look at the worst element)
    analytic = c.analytic64 if c.analytic64 is not None and result.dtype == "float64" else c.analytic
    result = _second_opinion(result, target, Comparison(analytic, c.tol), c.u64, c.eval_dtype, c.start,
                             0.0 if c._noise is None else c._noise.sigma)
    return dataclasses.replace(result, seconds=time.perf_counter() - c.start)


def _both(c: _Check, exact: CheckResult, fd: CheckResult, cross: CheckResult | None) -> CheckResult:
    """``against=(exact, "fd")``: the code against both, and the references against each other.

    The result is the failing verdict if either fails; references that
    disagree beyond finite differences' error make it ``"unverified"``
    with both values named, never a silent pass. ``cross``: the exact
    reference's values compared with full mode's finite differences
    (:func:`_fd_run`; None after fast mode).
    """
    result = exact if not exact.passed or fd.passed else fd
    notes = [f"also checked against {fd.reference if result is exact else exact.reference}: "
             f"{(fd if result is exact else exact).status}"]
    if cross is not None:
        if not cross.passed:
            w = cross.worst
            return dataclasses.replace(result, status="unverified", passed=False, warnings=result.warnings + tuple(
                notes) + (f"the references disagree: {exact.reference} and finite differences differ at {w.input!r}"
                          f"{list(w.index)}: {exact.reference} {w.analytic:.10g}, finite differences {w.numeric:.10g}"
                          f" (estimated error {w.reference_error:.2g}); the verdict cannot rest on either",))
    return dataclasses.replace(result, warnings=result.warnings + tuple(notes),
                               evaluations=c.evaluations, seconds=time.perf_counter() - c.start)


def _fd_verdict(c: _Check, cross: bool = False) -> tuple[CheckResult, CheckResult | None]:
    """Finite differences: every element (full mode) or random projections (fast mode), and the verdict.

    The function's noise is measured (:meth:`_Check.noise`) before fast
    mode, and in full mode only when the verdict is not a clean pass: a
    noisy forward then gets its finite differences again with the noise in
    their error estimates, so a gap the noise explains is not reported as a
    failure; a clean forward keeps its verdict (and 9 evaluations). Returns
    the result and, with ``cross`` in full mode, the exact reference's
    values (``c.exact_values``) compared with the same finite differences.
    """
    used = _choose_mode(c)
    if used == "fast":
        # measured before, never re-run: a probe's steps are chosen by it (unknown noise would leave them
        # where noise swamps the difference, and its error estimate would then hide a dropped term)
        c.noise()
    known = c._noise is not None
    result, crossed = _fd_run(c, c._noise.sigma if known else 0.0, used, cross)
    if not known and result.status in ("fail", "unverified") and c.noise().sigma > 0 and c.noisy:
        result, crossed = _fd_run(c, c._noise.sigma, used, cross)
    return result, crossed


def _choose_mode(c: _Check) -> str:
    """``"full"`` or ``"fast"``: ``mode="auto"`` by the predicted time of a full check against ``budget=``.

    A full check asked for and predicted past the budget warns
    (:class:`SlowCheckWarning`) with the estimate before it starts.
    """
    if c.mode == "fast":
        return "fast"
    if not _full_fits(c):
        return "fast"
    evals, seconds = c.predicted = _predict_full(c)
    if c.mode == "auto":
        return "full" if seconds <= c.budget else "fast"
    if seconds > c.budget:
        import warnings as _warnings

        size = sum(a.size for a in c.target.point.values())
        _warnings.warn(SlowCheckWarning(
            f"gradverify: a full check of {size} elements needs about {evals} evaluations at "
            f"{1e3 * c.seconds_per_evaluation:.3g} ms each: about {_duration(seconds)}, over budget={c.budget:g} s "
            "(mode='fast' checks random projections in seconds)"), stacklevel=5)
    return "full"


#: Bytes a full check may hold per element checked, per comparison (two where low-precision code also runs in
#: float64), at worst: where every element fails (a formula wrong everywhere) the comparison keeps index,
#: reference, error and sensitivity of each until the scales of the tolerance are known (4 numbers), and the
#: screen's parts, the permutation its sample is drawn from and the outputs of a step walk add a little more:
#: measured 40 bytes an element above the gradient under test (benchmarks/memory.py, every element of W wrong,
#: n = 200: 6.0x the inputs in all), 48 with a margin. Where the gradient is right the comparison keeps a
#: handful of elements: a passing check adds under 1x its float64 inputs (the sample's permutation, rows of
#: outputs), 2.7x with the gradient under test and its second run.
FULL_BYTES_PER_ELEMENT = 6 * 8


def _full_fits(c: _Check) -> bool:
    """Whether a full check's comparisons fit the memory available, at worst (estimated before allocating).

    ``mode="auto"`` falls back to fast mode (leaner: its memory does not
    grow with the number of elements beyond one saved tensor), with a
    warning; ``mode="full"`` raises :class:`~gradverify.InsufficientMemory`
    saying how much it would need.
    """
    from .memory import budget, mib

    size = sum(a.size for a in c.target.point.values())
    need = FULL_BYTES_PER_ELEMENT * size * (1 if c.analytic64 is None else 2)
    if c.mode == "full":
        budget(0, least=need, what=f"a full check of {size} elements",
               instead="mode='fast' checks random projections and needs about a copy of the largest tensor")
        return True
    if budget(need, what="a full check") >= need:
        return True
    c.target._warn(f"mode='auto' ran 'fast': a full check of {size} elements needs about {mib(need)} of memory, more "
                   "than is available; random projections instead")
    return False


def _fd_run(c: _Check, noise: float, used: str, cross: bool = False) -> tuple[CheckResult, CheckResult | None]:
    """One finite-difference verdict with ``noise`` (the measured noise of ``<u, f>``) in the error estimates.

    Full mode hands each element's finite difference, once settled, to the
    comparisons (:class:`~gradverify.compare.ComparisonStream`: the caller's
    dtype, its float64 run where the code has one, and with ``cross`` the
    exact reference's values), which keep only the elements a verdict may
    turn on: no per-element array the size of the inputs is held.
    """
    target, tol, u64, eval_dtype, rtol, atol = c.target, c.tol, c.u64, c.eval_dtype, c.rtol, c.atol
    grad_dtype, start, seed, mode = c.grad_dtype, c.start, c.seed, c.mode
    analytic, analytic64, widened = c.analytic, c.analytic64, c.widened
    comparison = Comparison(analytic, tol)
    size = sum(a.size for a in target.point.values())
    warnings = c.warnings()
    if used == "fast":
        probes, located, n_fast = _fast(target, comparison, u64, eval_dtype, c.rng, probes=FAST_PROBES,
                                        y0=np.asarray(c.y0, dtype=np.float64), noise=noise)
        c.evaluations += n_fast
        if used != mode and c.predicted is not None:  # (a fallback for memory says so in its own warning)
            warnings += (f"mode='auto' ran 'fast': every element of {size} would take about "
                         f"{_duration(c.predicted[1])} by finite differences, over budget={c.budget:g} s; "
                         f"{FAST_PROBES} random projections per input instead (pass mode='full', a larger budget=, "
                         "or code with an exact reference to check every element)",)
        return comparison.fast_result(
            probes, located, kind=target.kind, constants=target.constants, warnings=warnings + tuple(
                w for w in target.warnings if w not in warnings),
            mode="fast", evaluations=c.evaluations, seed=seed, seconds=time.perf_counter() - start,
            dtype=grad_dtype.name,
        ), None
    comp64 = Comparison(analytic64, tolerance_for(np.float64, rtol=rtol, atol=atol)) if analytic64 else None

    def judge(name, i, value, error):
        verdict = comparison.judge(name, i, value, error)
        return verdict if comp64 is None else max(verdict, comp64.judge(name, i, value, error))

    def judge_many(name, idx, values, errors):
        verdicts = comparison.judge_many(name, idx, values, errors)
        return verdicts if comp64 is None else np.maximum(verdicts, comp64.judge_many(name, idx, values, errors))

    def tolerance(name, values):
        tb = comparison.base_tolerance(name, values)
        return tb if comp64 is None else np.minimum(tb, comp64.base_tolerance(name, values))

    from .memory import budget

    # a batched call's rows of outputs: at most 64 MiB, or what the target asks (numpy code: about its inputs'
    # size, see FunctionTarget.batch_output_bytes), fewer where the memory available is short
    row = 8 * 4 * max(1, int(np.size(c.y0)))
    batch_bytes = budget(min(64 * 2**20, getattr(target, "batch_output_bytes", None) or 64 * 2**20), least=row,
                         what="one batched row of outputs")
    # the comparisons, fed element by element (a kink's one-sided derivatives are known to within their
    # truncation error, no better: that is its slack)
    streams = [comparison.stream(kink_slack=True)] + ([comp64.stream(kink_slack=True)] if comp64 else [])
    if cross and c.exact_values is not None:
        streams.append(Comparison(c.exact_values, tolerance_for(np.float64)).stream(sensitivity=False))
    with _progress_of(c, size) as (evaluate, evaluate_batch):
        _, n_fd = projected_gradients(evaluate, target.point, u64, eval_dtype=eval_dtype, judge=judge,
                                      evaluate_batch=evaluate_batch, judge_many=judge_many,
                                      tolerance=tolerance, noise=noise, batch_bytes=batch_bytes,
                                      sink=_Streams(streams))
    c.evaluations += n_fd
    evaluations = c.evaluations
    crossed = streams[-1].result(kind=target.kind) if cross and c.exact_values is not None else None
    if comp64 is not None:
        hi = streams[1].result(
            kind=target.kind, reference="fd", constants=target.constants,
            warnings=warnings + tuple(w for w in target.warnings if w not in warnings) + (
                f"the code computes in float64 when given float64 inputs, so its gradient formula was checked in "
                f"float64 (this verdict); its {grad_dtype.name} gradients were checked too",),
            mode="full", evaluations=evaluations, seed=seed, seconds=time.perf_counter() - start, dtype="float64",
        )
        if not hi.passed:
            streams.clear()  # (what the comparisons kept, freed before the second opinion runs)
            return _second_opinion(hi, target, comp64, u64, eval_dtype, start, noise), crossed
        lo = streams[0].result(
            kind=target.kind, reference="fd", constants=target.constants, mode="full", evaluations=evaluations,
            seed=seed, dtype=grad_dtype.name,
        )
        streams.clear()
        if lo.passed:
            return dataclasses.replace(lo, warnings=hi.warnings[:-1], seconds=time.perf_counter() - start), crossed
        # The formula is right (float64 run, float64 tolerance); the
        # low-precision numbers of the same code deviate further than the
        # dtype's table allows. That is the precision of the code, not its
        # derivative (1 - tanh(z)**2 near saturation is off by percents in
        # correct float32 code): reported, not failed.
        w = lo.worst
        return dataclasses.replace(hi, warnings=hi.warnings + (
            f"its {grad_dtype.name} gradients deviate from the finite differences by up to {w.rel_err:.2g} relative "
            f"(at {w.input!r}{list(w.index)}: {w.analytic:.6g} vs {w.numeric:.6g}), beyond the {grad_dtype.name} "
            "tolerance: saturated or cancelling terms lose that much precision in this dtype",),
            seconds=time.perf_counter() - start), crossed
    result = streams[0].result(
        kind=target.kind,
        reference="fd",
        constants=target.constants,
        flat_scale=4 * tol.ulps * tol.eps * float(np.max(np.abs(u64))) if u64.size else 0.0,
        warnings=warnings + tuple(w for w in target.warnings if w not in warnings),
        mode="full",
        evaluations=evaluations,
        seed=seed,
        seconds=time.perf_counter() - start,
        dtype=grad_dtype.name,
    )
    streams.clear()
    if widened and not result.passed:
        # The code's own forward is already percents away from the float64
        # function: at its precision the function is ill-conditioned and its
        # gradient has no meaningful value to check. Not a pass, not a
        # gradient bug either.
        return dataclasses.replace(result, status="unverified", warnings=result.warnings + (
            f"could not verify: the {grad_dtype.name} forward deviates from the float64 function too much for its "
            "gradients to be checked in this dtype; check it in float64",)), crossed
    return _second_opinion(result, target, comparison, u64, eval_dtype, start, noise), crossed


class _Streams:
    """One sink for several comparison streams (:func:`~gradverify.references.elementwise.projected_gradients`)."""

    def __init__(self, streams):
        self.streams = streams

    def add(self, *args, **kwargs) -> None:
        for s in self.streams:
            s.add(*args, **kwargs)

    def done(self, name: str) -> None:
        for s in self.streams:
            s.done(name)


#: Verdicts whose worst element uses more than this share of its tolerance
#: (or fail) get the Taylor-remainder second opinion.
BORDERLINE = 0.3


def _second_opinion(result: CheckResult, target: Target, comparison: Comparison, u64, eval_dtype, start,
                    noise: float = 0.0):
    """Attach a Taylor-remainder rate along the worst element to failing or borderline verdicts."""
    import dataclasses

    from .references.projections import taylor_test

    w = result.worst
    if w is None or (result.passed and w.ratio < BORDERLINE) or result.status == "nondiff":
        return result
    if w.projection:
        return result
    from .references.projections import UnitDirection

    arr = target.point[w.input]
    v = UnitDirection(arr.shape, int(np.ravel_multi_index(w.index, arr.shape)) if arr.ndim else 0)
    t = taylor_test(target.evaluate, arr, v, comparison.analytic[w.input], u64, eval_dtype=eval_dtype, noise=noise)
    where = f"{w.input!r}[{', '.join(str(i) for i in w.index)}]"
    return dataclasses.replace(
        result, taylor={"where": where, **t.to_dict()}, evaluations=result.evaluations + t.evaluations,
        seconds=time.perf_counter() - start,
    )


def _analytic_in_float64(target: Target, u64: np.ndarray, grad_dtype, eval_dtype) -> dict | None:
    """The gradient formula run in float64, where low-precision code computes in float64 given float64 inputs.

    Most numpy, torch and JAX code is written for any dtype: fed the float64
    copies of its inputs (its float32 parameters promote), it computes the
    same formula in float64. That run is checked at float64 tolerance, so a
    0.1% error in a float32 layer's derivative is caught, while its own
    float32 gradients are still checked at float32 tolerance. Returns None
    where the code keeps computing in low precision or refuses.
    """
    if np.dtype(grad_dtype) == np.float64 or np.dtype(eval_dtype) != np.float64:
        return None
    try:
        grads = target.analytic(u64, at_point=True)
    except TypeError:
        return None  # a target without a float64 analytic pass
    except Exception:  # noqa: BLE001 - the code under test refused float64; the float32 check stands
        return None
    if not grads or any(g.dtype != np.float64 for g in grads.values()):
        return None
    return grads


def _check_backward_reproducible(target: Target, first: dict, second: dict, grad_dtype) -> None:
    """Raise if two backward passes at the same point and cotangent disagree.

    Disagreement within rounding (atomics-style reordering) is reported as a
    warning with its size; beyond the tolerance of the dtype it is an error,
    never a pass.
    """
    spread = max((_max_gap(first[k], second[k]) for k in first if first[k].size), default=0.0)
    if spread == 0.0:
        return
    verdict = Comparison(second, tolerance_for(grad_dtype)).result(first, None, kind=target.kind, reference="rerun")
    if not verdict.passed:
        w = verdict.worst
        raise NondeterministicError(
            f"two backward passes at the same point disagree: {w.input!r}{list(w.index)} gave {w.numeric:.10g} "
            f"then {w.analytic:.10g}; the backward is nondeterministic (random state it draws from that gradverify "
            "cannot see, or stale state carried between calls) -- make it reproducible before checking"
        )
    target._warn(f"the backward is not bitwise reproducible (max spread {spread:.3g} between two runs), "
                 "within the tolerance of its dtype")


def _max_gap(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` in float64, a chunk at a time (one temporary of at most a 64th of the gradients, or 1024
    elements: the check holds both runs of the backward here, and little more)."""
    from .memory import chunk_for

    fa, fb = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    step = min(chunk_for(fa.size), max(1 << 10, fa.size // 64))

    def gaps():
        for i in range(0, fa.size, step):
            x, y = fa[i:i + step], fb[i:i + step]
            d = x - y if x.dtype == y.dtype == np.float64 else x.astype(np.float64) - y.astype(np.float64)
            yield float(np.max(np.abs(d, out=d)))

    return max(gaps())


#: Low-precision code whose own forward deviates from the float64
#: evaluation by a relative ``d`` cannot have its gradients checked tighter
#: than about ``FORWARD_ERROR_FACTOR * d``.
FORWARD_ERROR_FACTOR = 4.0


def _widen_for_forward_error(tol, y_low, y64, grad_dtype, eval_dtype, rtol_given):
    """Widen the tolerance to what the code's own forward precision allows.

    A float32 layer computing ``sin`` of 3e5 is correct code, but its
    output (and so its gradient) carries float32 phase errors of several
    percent against the float64 oracle; no rule keyed by dtype alone can
    tell that from a bug. The relative forward deviation
    ``max |y_low - y64| / max |y64|`` bounds what the check can resolve.
    Returns the tolerance and a warning (empty when nothing changed).
    """
    if y_low is None or rtol_given is not None or np.dtype(grad_dtype).itemsize >= np.dtype(eval_dtype).itemsize:
        return tol, ""
    y_low = np.asarray(y_low, dtype=np.float64)
    y64 = np.asarray(y64, dtype=np.float64)
    if y_low.shape != y64.shape or y64.size == 0:
        return tol, ""
    scale = float(np.max(np.abs(y64)))
    if scale == 0.0:
        return tol, ""
    dev = float(np.max(np.abs(y_low - y64))) / scale
    need = FORWARD_ERROR_FACTOR * dev
    if need <= tol.rtol:
        return tol, ""
    import dataclasses

    widened = dataclasses.replace(tol, rtol=need, floor=max(tol.floor, need))
    return widened, (
        f"the {np.dtype(grad_dtype).name} forward differs from the float64 evaluation by {dev:.2g} (relative to its "
        f"largest output): tolerances widened to rtol={need:.2g}, since an error smaller than that cannot be told "
        "from the code's own rounding (pass rtol= to override)"
    )


def _fast(target: Target, comparison: Comparison, u64: np.ndarray, eval_dtype, rng: np.random.Generator,
          *, probes: int, y0: np.ndarray | None = None, noise: float = 0.0):
    """Random projections per input, then bisection to one wrong element if a projection fails.

    Each input or parameter gets ``probes`` signed Gaussian directions
    ``v``; ``<g, v>`` is compared with the Richardson directional derivative
    (:func:`~gradverify.references.projections.directional_mismatches_together`:
    the probes of one tensor evaluated in one vectorised call where the
    target offers ``evaluate_rows``, those of several small tensors in one
    where it vectorises calls moving several, ``evaluate_points``). Failing
    probes are
    confirmed with the full step walk, worst first; the tensor of the first
    confirmed one is bisected with its direction restricted to halves of
    its elements: the mismatch is linear in the direction, so one probe per
    level tells both halves' shares. Cost: ``4 * probes`` evaluations per
    input, plus, after a failure, its confirmation, ``4 * ceil(log2(size))``
    and one element check.
    """
    from .references.projections import directional_mismatch, directional_mismatches_together
    from .references.stencils import OK

    total = 0
    if y0 is None:  # the output at the point (the check has it already)
        y0 = np.asarray(target.evaluate(), dtype=np.float64)
        total += 1
    results = []
    failing = []

    def tolerance_of(name, v, p):
        return comparison.projection_tolerance(name, v, p.magnitude) + comparison.tol.noise_factor * p.error

    from .memory import budget

    rows = getattr(target, "evaluate_rows", None)
    size = sum(a.nbytes for a in target.point.values())
    largest = max((a.nbytes for a in target.point.values()), default=0)
    budget(0, least=2 * largest, what="fast mode (a saved copy of the largest tensor, to restore it)",
           instead="check on a machine with more memory free")
    rows_bytes = _rows_budget(size)
    # (each tensor's share below, max(KEEP_DIRECTION_BYTES, size - its bytes), bounded by what this grants)
    hold = budget(max(KEEP_DIRECTION_BYTES, size), what="a fast-mode probe")
    tensors = []
    for name, arr in target.point.items():
        vs = [_Direction(rng, arr.shape) for _ in range(probes)]
        # (each probe's tolerance is computed when the scan first judges it, while the scan holds the direction
        # where it may: a large direction is not drawn once more for it; then cached by direction)
        # Scanning: all probes of a tensor in one batch where the target vectorises (those of small tensors
        # together, in one call); a clear failure is not refined here (the worst one is confirmed below with the
        # full step walk).
        tensors.append((name, arr, vs, comparison.analytic[name],
                        lambda k, m, e, name=name, vs=vs: (lambda j: OK if j == FAIL else j)(
                            comparison.projection_judge(name, vs[k], m, e))))
    # A probe's direction is held while its levels run where it and the tensor's saved copy take at most the
    # inputs' size (a tensor of at most half of them), or where it is small (KEEP_DIRECTION_BYTES: a few hundred
    # KiB are not worth redrawing a direction for every chunk read, which made fast mode 2x slower on a
    # 20,000-weight MLP), and the memory available allows; the probes of a larger one are drawn again chunk by
    # chunk (slower, leaner).
    together = directional_mismatches_together(
        target.evaluate, None if rows is None else rows,
        target.evaluate_points if getattr(target, "points_batched", False) else None, tensors, u64,
        eval_dtype=eval_dtype, y0=y0, noise=noise, rows_bytes=rows_bytes,
        hold_bytes=lambda arr: min(max(KEEP_DIRECTION_BYTES, size - arr.nbytes), hold))
    for (name, _, vs, _, _), ps in zip(tensors, together):
        for v, p in zip(vs, ps):
            total += p.evaluations
            results.append((name, v, p))
            tol = tolerance_of(name, v, p)
            ratio = abs(p.mismatch) / tol if tol > 0 else (0.0 if p.mismatch == 0 else np.inf)
            if ratio > 1:
                failing.append((ratio, len(results) - 1))
    chosen = None
    for _, k in sorted(failing, reverse=True):
        name, v, _ = results[k]
        p = directional_mismatch(target.evaluate, target.point[name], v, comparison.analytic[name], u64,
                                 eval_dtype=eval_dtype, y0=y0,
                                 judge=lambda m, e, name=name, v=v: comparison.projection_judge(name, v, m, e),
                                 noise=noise)
        total += p.evaluations
        results[k] = (name, v, p)
        if abs(p.mismatch) > tolerance_of(name, v, p):
            chosen = (name, v, p)
            break
    if chosen is None:
        return results, None, total
    name, v, p = chosen
    arr = target.point[name]
    g = comparison.analytic[name]
    lo, hi = 0, arr.size  # the elements still suspected: a range of the flat order, halved each level
    m_cur = p.mismatch
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        vh, vo = _Restricted(v, lo, mid), _Restricted(v, mid, hi)  # read chunk by chunk, never dense
        # bisection only compares the halves' shares of a confirmed mismatch
        ph = directional_mismatch(target.evaluate, arr, vh, g, u64, eval_dtype=eval_dtype, y0=y0, judge=None,
                                  noise=noise)
        total += ph.evaluations
        m_other = m_cur - ph.mismatch
        r_half = abs(ph.mismatch) / max(comparison.projection_tolerance(name, vh, ph.magnitude), 1e-300)
        r_other = abs(m_other) / max(comparison.projection_tolerance(name, vo), 1e-300)
        (lo, hi), m_cur = ((lo, mid), ph.mismatch) if r_half >= r_other else ((mid, hi), m_other)
    j = lo
    fd, n = projected_gradients(target.evaluate, {name: arr}, u64, eval_dtype=eval_dtype, judge=comparison.judge,
                                indices={name: [j]}, noise=noise, compact=True)
    total += n
    d = fd[name]  # (compact: the one element's values)
    idx = np.unravel_index(j, arr.shape)
    located = {
        "name": name, "index": tuple(int(i) for i in idx), "numeric": float(d.value[0]),
        "error": float(d.error[0]), "sensitivity": float(d.sensitivity[0]), "kink": bool(d.kink[0]),
        "left": float(d.left[0]), "right": float(d.right[0]),
    }
    return results, located, total


class _Direction:
    """A fast-mode probe: a standard normal direction from a stream of its own, held only while small.

    Its stream is seeded by one draw from the check's ``rng`` (so the
    check's stream advances by one number per probe, whatever the size,
    and the probes of a seed are the same whatever their size); a
    direction over :data:`KEEP_DIRECTION_BYTES` is not kept but drawn again
    from the start of its stream whenever it is read: whole by
    ``np.asarray``, or a chunk at a time by :meth:`blocks` (sequential
    draws continue one stream, so the chunks are those of the whole draw),
    so the probes of a large tensor never hold ``FAST_PROBES`` copies of
    it, nor need one, nor a draw of it only to advance the check's stream.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple):
        self.shape = tuple(shape)
        self.size = int(np.prod(self.shape))
        self._seed = int(rng.integers(2**63))
        self._v = self._generator().standard_normal(self.shape) if 8 * self.size <= KEEP_DIRECTION_BYTES else None
        self._held = False

    def hold(self) -> np.ndarray:
        """The direction, drawn now and kept until :meth:`release` (while a probe's levels run, where memory allows)."""
        if self._v is None:
            self._v = self._generator().standard_normal(self.shape)
            self._held = True
        return self._v

    def release(self) -> None:
        """Forget values :meth:`hold` drew (a small direction, kept from the start, stays)."""
        if self._held:
            self._v, self._held = None, False

    def _draw(self, gen: np.random.Generator):
        from .references.projections import _chunks

        for sl in _chunks(self.size):
            yield sl.start, gen.standard_normal(sl.stop - sl.start)

    def _generator(self) -> np.random.Generator:
        return np.random.default_rng(self._seed)

    def blocks(self):
        """``(start, float64 chunk)`` of the flat direction (see :func:`~gradverify.references.projections.direction_blocks`)."""
        if self._v is not None:
            from .references.projections import direction_blocks

            yield from direction_blocks(self._v)
        else:
            yield from self._draw(self._generator())

    def __array__(self, dtype=None, copy=None):
        v = self._v
        if v is None:
            v = self._generator().standard_normal(self.shape)
        return v if dtype is None else v.astype(dtype, copy=False)


class _Restricted:
    """A direction restricted to the flat elements ``[lo, hi)`` (zero elsewhere): a bisection half, never dense."""

    def __init__(self, direction, lo: int, hi: int):
        self.direction, self.lo, self.hi = direction, int(lo), int(hi)
        self.shape = tuple(np.shape(direction)) if not hasattr(direction, "shape") else tuple(direction.shape)

    def blocks(self):
        from .references.projections import direction_blocks

        for start, vb in direction_blocks(self.direction):
            if start >= self.hi:
                break
            a, b = max(start, self.lo), min(start + vb.size, self.hi)
            if a < b:
                yield a, vb[a - start:b - start]

    def __array__(self, dtype=None, copy=None):
        v = np.zeros(self.shape)
        flat = v.reshape(-1)
        for start, vb in self.blocks():
            flat[start:start + vb.size] = vb
        return v if dtype is None else v.astype(dtype, copy=False)


#: Fast-mode directions of more bytes than this are drawn again when read rather than kept.
KEEP_DIRECTION_BYTES = 2**18


def _rows_budget(size: int) -> int:
    """Bytes the rows of a vectorised call may take: at most :data:`~gradverify.references.projections.ROWS_BYTES`,
    the inputs' ``size`` (above :data:`~gradverify.memory.WORKING_FLOOR`), and a share of the memory available."""
    from .memory import WORKING_FLOOR, budget
    from .references.projections import ROWS_BYTES

    return budget(min(ROWS_BYTES, max(WORKING_FLOOR, size)), what="rows evaluated together")


@raised_at_call
def check(fn: Callable, inputs: Any, *, vjp: Callable | None = None, mode: str = "auto",
          rtol: float | None = None, atol: float | None = None, seed: int = 0, against: Any = "auto",
          examples: int | None = None, vary_batch: bool = False, budget: float | None = None,
          progress: bool | None = None, constants: Any = ()) -> CheckResult:
    """Check the gradient of ``fn(*inputs) -> out``: a numpy function with ``vjp=``, or torch/JAX code.

    ``vjp(dout, *inputs)`` returns one gradient per input (``None`` for
    constants); torch and JAX callables are differentiated by their own
    framework unless ``vjp=`` is given. Inputs may be one array, a sequence
    (named by ``fn``'s parameter names, else ``"0"``, ``"1"``...) or a dict
    (names -> arrays, passed by keyword); Python numbers, strings, dicts,
    None and tuples of ints among them are constants passed through as
    given, and ``constants=`` (names or positions) holds arrays constant
    too. ``fn`` may return several outputs (a tuple or dict of arrays):
    the cotangent covers every floating-point output and ``vjp`` gets
    ``dout`` in the same structure.

    The output is projected on a seeded random cotangent and the gradient
    under test compared element by element with a reference chosen by
    ``against=`` (see :mod:`gradverify.references`): ``"auto"`` takes the
    exact one that applies -- the reference engine tracing a numpy ``fn``,
    torch autograd of a custom Function's forward, ``jax.vjp`` of a custom
    VJP's primal -- held to rounding alone and itself checked by finite
    differences on random projections; otherwise finite differences in
    float64 (``mode="full"``: every element; ``"fast"``: random
    projections; ``"auto"``: full where its predicted time fits
    ``budget=`` seconds, :data:`DEFAULT_BUDGET` by default). A full check
    predicted to run longer than :data:`PROGRESS_AFTER` seconds shows a
    progress bar on a terminal (``progress=`` forces it on or off).
    ``examples=N`` checks N Hypothesis-drawn inputs and returns the shrunk
    failing one (:mod:`gradverify.examples`).

    Cost: with an exact reference, one traced forward and backward plus 4
    evaluations per input for its check; with finite differences about 2
    evaluations per element of inputs with at least 64 elements, 4 per
    element of smaller ones, more where the function is noisy; 9 more to
    measure its noise; one or two ``vjp`` calls. Memory (finite
    differences, fast mode): about 2.5x the inputs above what the caller
    holds -- float64 numpy inputs are perturbed in place and restored bit
    for bit, not copied (see :class:`~gradverify.layers.FunctionTarget`);
    a full check holds about 20 float64 values per element and is
    estimated against the memory available first (:mod:`gradverify.memory`).

    Returns:
        A :class:`~gradverify.CheckResult` (a value; nothing is raised for a
        wrong gradient -- see :func:`assert_gradients`).

    Raises:
        GradVerifyError: bad input, with a message that says what to fix;
            :class:`~gradverify.CodeUnderTestError` when the code under test
            itself raised; :class:`~gradverify.InsufficientMemory` before
            allocating, when even the leanest path would not fit.
    """
    rng, cot_rng = _validate(mode, seed)
    refs = parse_against(against)
    budget = _budget(budget)
    if examples is not None:
        return _property(lambda xs: check(fn, xs, vjp=vjp, mode=mode, rtol=rtol, atol=atol, seed=seed,
                                          constants=constants, against=against, budget=budget, progress=False),
                         inputs, examples, seed, vary_batch)
    from .frameworks import callable_target

    target = callable_target(fn, inputs, vjp, constants)
    if target is None:
        if vjp is None:
            raise SpecError(
                "check(fn, inputs) of a numpy function needs vjp=: a callable vjp(dout, *inputs) returning one "
                "gradient per input (torch and JAX callables are differentiated by their own framework)"
            )
        target = FunctionTarget(fn, vjp, inputs, kind="function", what="vjp", constants=constants)
    return _run(target, rng=cot_rng, seed=seed, mode=mode, rtol=rtol, atol=atol, against=refs,
                budget=budget, progress=progress)


@raised_at_call
def check_pair(forward: Callable, backward: Callable, inputs: Any, *, mode: str = "auto",
               rtol: float | None = None, atol: float | None = None, seed: int = 0,
               against: Any = "auto", examples: int | None = None, vary_batch: bool = False,
               budget: float | None = None, progress: bool | None = None, constants: Any = ()) -> CheckResult:
    """Check a function pair ``forward(*inputs) -> (out, cache)``, ``backward(dout, cache) -> grads``.

    ``backward`` returns a tuple with one gradient per input, in order
    (``None`` for constants); ``out`` may be several outputs (a tuple or
    dict), and ``dout`` then comes in the same structure. ``forward`` is
    re-run right before ``backward``, as in a network. Same options,
    references and cost as :func:`check` (the engine traces ``forward``).
    """
    rng, cot_rng = _validate(mode, seed)
    refs = parse_against(against)
    budget = _budget(budget)
    if examples is not None:
        return _property(lambda xs: check_pair(forward, backward, xs, mode=mode, rtol=rtol, atol=atol, seed=seed,
                                               constants=constants,
                                               against=against, budget=budget, progress=False), inputs, examples, seed,
                         vary_batch)
    if not callable(forward) or not callable(backward):
        raise ProtocolError("check_pair needs two callables: forward(*inputs) -> (out, cache) and "
                            "backward(dout, cache) -> one gradient per input")

    fn, vjp = pair_callables(forward, backward)
    target = FunctionTarget(fn, vjp, inputs, kind="pair", names_from=forward, what="backward",
                            constants=constants)
    return _run(target, rng=cot_rng, seed=seed, mode=mode, rtol=rtol, atol=atol, against=refs,
                budget=budget, progress=progress)


@raised_at_call
def check_layer(layer: Any, input_shape: int | Sequence[int] | None = None, *, inputs: Any = None,
                dtype: Any = None, mode: str = "auto", rtol: float | None = None, atol: float | None = None,
                seed: int = 0, against: Any = "auto", examples: int | None = None,
                vary_batch: bool = False, budget: float | None = None, progress: bool | None = None,
                constants: Any = (), params_attr: str = "params", grads_attr: str = "grads") -> CheckResult:
    """Check a layer for its input and every parameter: a numpy layer (object protocol) or a ``torch.nn.Module``.

    A numpy layer has ``params`` (dict name -> array, may be empty),
    ``forward(x) -> y`` and ``backward(dy) -> dx``, which also sets
    ``grads`` (one entry per params key); ``params_attr=``/``grads_attr=``
    name other attributes, ``constants=`` parameters (or ``"x"``) not to
    differentiate. The input is ``inputs`` (an array) or, given
    ``input_shape``, drawn from a seeded standard normal in ``dtype``
    (default: the dtype of the layer's params, else float64). Parameters
    are perturbed in place and restored bit for bit; the reference engine
    traces ``forward`` with the parameters swapped for traced arrays and
    puts the layer back afterwards. A forward that changes state later
    calls read (a list of cached inputs, gradients accumulated with ``+=``)
    is reset to the state it was given before every call, with a warning.

    References, options and cost as :func:`check`; backward calls: two.
    """
    rng, cot_rng = _validate(mode, seed)
    refs = parse_against(against)
    budget = _budget(budget)
    if examples is not None:
        if inputs is None:
            from .frameworks import framework_inputs

            inputs = framework_inputs(layer, input_shape, dtype=dtype, rng=rng)
            if inputs is None:
                params = getattr(layer, params_attr, None) or {}
                floats = [v.dtype for v in params.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f"] \
                    if isinstance(params, Mapping) else []
                inputs = draw_input(input_shape, None, dtype, floats[0] if floats else np.float64, rng)
        elif input_shape is not None:
            raise SpecError("give input_shape or inputs, not both")
        return _property(lambda xs: check_layer(layer, inputs=xs, mode=mode, rtol=rtol, atol=atol, seed=seed,
                                                constants=constants, params_attr=params_attr, grads_attr=grads_attr,
                                                against=against, budget=budget, progress=False), inputs, examples, seed,
                         vary_batch)
    from .frameworks import module_target

    fw_target = module_target(layer, input_shape, inputs=inputs, dtype=dtype, rng=rng)
    if fw_target is not None:
        return _run(fw_target, rng=cot_rng, seed=seed, mode=mode, rtol=rtol, atol=atol, against=refs,
                budget=budget, progress=progress)
    params = getattr(layer, params_attr, None) or {}
    floats = [v.dtype for v in params.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f"] \
        if isinstance(params, Mapping) else []
    drawn = draw_input(input_shape, inputs, dtype, floats[0] if floats else np.float64, rng)
    if drawn is not None:
        x = _to_array(drawn, "x")
    else:
        x = _to_array(inputs, "x")
        if dtype is not None:
            x = x.astype(dtype)
    target = LayerTarget(layer, x, params_attr=params_attr, grads_attr=grads_attr, constants=constants)
    if not target.point:
        raise NoDifferentiableInputs(
            f"{type(layer).__name__} has no floating-point parameter and its input is {x.dtype}: nothing to differentiate"
        )
    return _run(target, rng=cot_rng, seed=seed, mode=mode, rtol=rtol, atol=atol, against=refs,
                budget=budget, progress=progress)


def _property(run: Callable[[Any], CheckResult], inputs: Any, examples: int, seed: int,
              vary_batch: bool) -> CheckResult:
    """``examples=``: the check ``run`` on Hypothesis-drawn variants of ``inputs`` (see :mod:`gradverify.examples`).

    ``inputs`` is one array (numpy, torch or JAX), a sequence or a dict of
    them; every floating-point array is drawn anew in its shape and dtype
    and handed to ``run`` in the same structure and array type.
    """
    from .examples import property_check

    if isinstance(inputs, Mapping):
        names, values = [str(k) for k in inputs], list(inputs.values())
    elif isinstance(inputs, (list, tuple)):
        names, values = [str(i) for i in range(len(inputs))], list(inputs)
    else:
        names, values = ["x"], [inputs]
    template = {n: _as_numpy(v) for n, v in zip(names, values)}

    def rebuild(drawn: dict) -> Any:
        new = [_like(v, drawn[n]) if isinstance(template[n], np.ndarray) else v for n, v in zip(names, values)]
        if isinstance(inputs, Mapping):
            return dict(zip(inputs, new))
        if isinstance(inputs, (list, tuple)):
            return type(inputs)(new) if isinstance(inputs, list) else tuple(new)
        return new[0]

    return property_check(lambda drawn: run(rebuild(drawn)), template, examples=examples, seed=seed,
                          vary_batch=vary_batch)


def _as_numpy(value: Any) -> Any:
    """A numpy copy of a numpy, torch or JAX array (anything else unchanged)."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.split(".")[0] in ("torch", "jax", "jaxlib") and hasattr(value, "shape"):
        if hasattr(value, "detach"):
            return value.detach().cpu().numpy()
        return np.asarray(value)
    return value


def _like(original: Any, array: np.ndarray) -> Any:
    """``array`` as the array type (and device) of ``original``."""
    if isinstance(original, np.ndarray):
        return array
    root = type(original).__module__.split(".")[0]
    if root == "torch":
        import torch

        return torch.as_tensor(np.ascontiguousarray(array), dtype=original.dtype, device=original.device)
    if root in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.asarray(array, dtype=original.dtype)
    return array


def _raise_unless_passed(result: CheckResult) -> CheckResult:
    __tracebackhide__ = True
    if not result.passed:
        raise GradientMismatch(result)
    return result


@raised_at_call
def assert_gradients(fn: Callable, inputs: Any, **options) -> CheckResult:
    """:func:`check`, raising :class:`~gradverify.GradientMismatch` unless it passes."""
    __tracebackhide__ = True
    return _raise_unless_passed(check(fn, inputs, **options))


@raised_at_call
def assert_pair(forward: Callable, backward: Callable, inputs: Any, **options) -> CheckResult:
    """:func:`check_pair`, raising :class:`~gradverify.GradientMismatch` unless it passes."""
    __tracebackhide__ = True
    return _raise_unless_passed(check_pair(forward, backward, inputs, **options))


@raised_at_call
def assert_layer(layer: Any, input_shape=None, **options) -> CheckResult:
    """:func:`check_layer`, raising :class:`~gradverify.GradientMismatch` unless it passes."""
    __tracebackhide__ = True
    return _raise_unless_passed(check_layer(layer, input_shape, **options))
