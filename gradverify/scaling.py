"""Cost measurements: reverse mode vs forward mode vs finite differences, as the parameter count grows.

The question this module answers with a stopwatch: what does one full
gradient of a scalar loss cost, as a multiple of one forward evaluation, when
the loss has P parameters? The answer the theory gives:

* ``reverse`` -- reverse mode (:func:`gradverify.engine.value_and_grad`):
  one forward pass and one backward sweep, a small constant times the
  forward pass whatever P is (the "cheap gradient principle");
* ``forward_mode`` -- forward mode (:func:`gradverify.engine.jvp`): one
  Jacobian-vector product per parameter, P forward-mode passes;
* ``forward_diff`` -- per-parameter forward differences
  ``(f(θ + h e_i) - f(θ)) / h``: P + 1 forward evaluations;
* ``central_diff`` -- per-parameter central differences
  ``(f(θ + h e_i) - f(θ - h e_i)) / 2h``: 2P forward evaluations.

So the cost relative to one forward pass grows like P^0 for ``reverse`` and
P^1 for the other three: :func:`fit_slope` fits that exponent on log-log
axes. Every method differentiates the same function, a tanh MLP with two
hidden layers (:func:`make_problem`), evaluated by the reference engine
(:func:`gradverify.engine.numpy_pair` for the plain forward pass).

The two finite-difference methods are the textbook loops (one stencil per
parameter, steps from :func:`gradverify.numeric.default_step`), not
:func:`gradverify.numeric.gradient`, on purpose: that function also
evaluates each stencil at ``h/2`` for its error estimate, which doubles the
counts (2P + 1 and 4P), and the point of this measurement is the textbook
count. The checks never use these loops.

Timing (:func:`time_calls`): a warm-up call, then ``repeats`` samples,
each a loop calibrated to last about ``min_sample`` seconds, and the median
per call. The forward pass, the reverse-mode gradient and one JVP of a size
are sampled in turn (round-robin), so a change of machine load hits all
three alike and their ratios stay meaningful. Every sample is read on two
clocks, wall time and the process's CPU time; ``clock="cpu"`` (the default)
reports CPU time, which time spent descheduled by other processes on a busy
machine does not inflate -- with every thread pool pinned to one thread the
two agree on an idle machine, and both are kept in the rows. A
whole-gradient loop whose predicted cost (its evaluation count times the
measured cost of one evaluation) is over the per-measurement budget is not
run: its row says ``measured: False`` and why, and no number is made up
for it. :func:`pin_threads` pins BLAS, PyTorch and XLA to one thread and
:func:`tune_allocator` keeps large temporary arrays off fresh ``mmap``
pages (see its docstring) -- both are reported with the results.

Nothing here imports torch or jax at module level; :func:`cheap_gradient_ratios`
imports them inside, when asked for.

Cost: about ``len(sizes) * 4`` measurements, each bounded by ``budget``
seconds (plus the calibration of the single-evaluation timings).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import importlib.util
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from . import engine as E
from .errors import install_hint
from .numeric import default_step

__all__ = [
    "METHODS", "EVALUATIONS", "Problem", "make_problem", "width_for", "mlp_loss",
    "CLOCKS", "Timing", "time_call", "time_calls", "measure_scaling", "fit_line", "fit_slope", "slopes", "lines",
    "cheap_gradient_ratios", "pin_threads", "tune_allocator", "thread_settings",
]

#: The methods measured, in the order they are reported.
METHODS = ("reverse", "forward_mode", "forward_diff", "central_diff")

#: Method -> (number of function evaluations for P parameters, what they are).
EVALUATIONS: dict[str, tuple[Callable[[int], int], str]] = {
    "reverse": (lambda p: 1, "1 forward pass + 1 backward sweep"),
    "forward_mode": (lambda p: p, "P forward-mode passes (one JVP per parameter)"),
    "forward_diff": (lambda p: p + 1, "P + 1 forward passes"),
    "central_diff": (lambda p: 2 * p, "2P forward passes"),
}

#: Rows in a batch of inputs to the MLP.
BATCH = 8

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")


# ---------------------------------------------------------------------------
# The function being differentiated
# ---------------------------------------------------------------------------

def mlp_loss(x, target, W1, b1, W2, b2, W3, b3):
    """Mean squared error of a tanh MLP with two hidden layers; engine primitives (Tensors or arrays)."""
    a1 = E.tanh(x @ W1 + b1)
    a2 = E.tanh(a1 @ W2 + b2)
    y = a2 @ W3 + b3
    return E.mean(E.square(y - target))


def width_for(p: int) -> int:
    """The hidden width h whose parameter count ``2h^2 + 3h + 1`` is closest to ``p``; O(1)."""
    if p < 1:
        raise ValueError(f"parameter count must be positive, got {p}")
    h = max(1, round((-3 + math.sqrt(9 + 8 * (p - 1))) / 4))
    return min((w for w in (h - 1, h, h + 1) if w > 0), key=lambda w: abs(2 * w * w + 3 * w + 1 - p))


@dataclasses.dataclass(frozen=True)
class Problem:
    """One instance of the benchmark function.

    Attributes:
        params: the parameter count P (``2h^2 + 3h + 1``).
        width: the hidden (and input) width h.
        batch: rows of input.
        theta: every parameter in one float64 vector; ``params_arrays`` are views of it.
        x, target: the data (not differentiated).
        params_arrays: ``(W1, b1, W2, b2, W3, b3)``, views into ``theta``.
    """

    params: int
    width: int
    batch: int
    theta: np.ndarray
    x: np.ndarray
    target: np.ndarray
    params_arrays: tuple[np.ndarray, ...]

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """``(x, target, W1, b1, W2, b2, W3, b3)``: the arguments of :func:`mlp_loss`."""
        return (self.x, self.target, *self.params_arrays)


def make_problem(p: int, *, batch: int = BATCH, seed: int = 0) -> Problem:
    """A tanh MLP with about ``p`` parameters (input width = hidden width = h, one output), float64.

    Weights are drawn ``N(0, 1/h)`` (biases ``N(0, 0.01)``) from
    ``np.random.default_rng(seed)`` so the tanh units are not saturated.
    Cost: O(P) memory and time.
    """
    h = width_for(p)
    rng = np.random.default_rng(np.random.SeedSequence([seed, h]))
    shapes = [(h, h), (h,), (h, h), (h,), (h, 1), (1,)]
    scales = [1 / math.sqrt(h), 0.1, 1 / math.sqrt(h), 0.1, 1 / math.sqrt(h), 0.1]
    theta = np.concatenate([rng.standard_normal(int(np.prod(s))) * c for s, c in zip(shapes, scales)])
    views, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        views.append(theta[start:start + n].reshape(s))
        start += n
    x = rng.standard_normal((batch, h))
    target = rng.standard_normal((batch, 1))
    return Problem(int(theta.size), h, batch, theta, x, target, tuple(views))


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

#: The clocks a measurement can be reported in.
CLOCKS = ("cpu", "wall")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call seconds of a timed callable, on both clocks.

    Attributes:
        median: median over the samples on the chosen clock (what is reported).
        min, max: the spread of the samples on that clock.
        loops: calls per sample.
        repeats: samples taken.
        wall: median wall-clock seconds (``time.perf_counter``).
        cpu: median process CPU seconds (``time.process_time``).
        clock: which of the two ``median`` is.
    """

    median: float
    min: float
    max: float
    loops: int
    repeats: int
    wall: float
    cpu: float
    clock: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _timing(walls: list[float], cpus: list[float], loops: int, clock: str) -> Timing:
    samples = cpus if clock == "cpu" else walls
    return Timing(statistics.median(samples), min(samples), max(samples), loops, len(samples),
                  statistics.median(walls), statistics.median(cpus), clock)


def _check_clock(clock: str) -> None:
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose from {CLOCKS}")


def time_calls(fns: dict[str, Callable[[], Any]], *, repeats: int = 5, min_sample: float = 0.02, warmup: int = 1,
               clock: str = "cpu") -> dict[str, Timing]:
    """Median seconds per call of each of ``fns``, their samples taken in turn (round-robin).

    Each callable gets ``warmup`` calls, then a loop length calibrated so a
    sample lasts about ``min_sample`` seconds (one call when a call is longer
    than that); then ``repeats`` rounds, each taking one sample of every
    callable in turn, so a change of machine load hits them all alike and
    their ratio stays meaningful. Every sample is read on both clocks: wall
    (``time.perf_counter``) and this process's CPU time
    (``time.process_time``, which time spent descheduled by other processes
    does not inflate); ``clock`` picks the one reported as ``median``.
    Cost: about ``warmup`` calls plus ``repeats * max(min_sample, one call)``
    per callable.
    """
    _check_clock(clock)
    loops: dict[str, int] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1)):
            fn()
        one = (time.perf_counter() - t0) / max(warmup, 1)
        n = 1
        if one < min_sample:
            n = max(1, int(min_sample / max(one, 1e-9)))
            t0 = time.perf_counter()          # calibrate on a real loop: the first calls are often slow
            for _ in range(n):
                fn()
            n = max(1, int(min_sample / max((time.perf_counter() - t0) / n, 1e-9)))
        loops[name] = n
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(repeats, 1)):
        for name, fn in fns.items():
            n = loops[name]
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            walls[name].append((time.perf_counter() - w0) / n)
            cpus[name].append((time.process_time() - c0) / n)
    return {k: _timing(walls[k], cpus[k], loops[k], clock) for k in fns}


def time_call(fn: Callable[[], Any], *, repeats: int = 5, min_sample: float = 0.02, warmup: int = 1,
              clock: str = "cpu") -> Timing:
    """Median seconds per call of ``fn``: :func:`time_calls` of one callable."""
    return time_calls({"fn": fn}, repeats=repeats, min_sample=min_sample, warmup=warmup, clock=clock)["fn"]


# ---------------------------------------------------------------------------
# The four gradients
# ---------------------------------------------------------------------------

def _gradient_fns(prob: Problem) -> dict[str, Callable[[], np.ndarray]]:
    """Method -> a zero-argument callable returning the full gradient (length-P vector)."""
    fwd, _ = E.numpy_pair(mlp_loss)
    vg = E.value_and_grad(mlp_loss, argnums=tuple(range(2, 8)))
    arrays = prob.arrays
    theta = prob.theta
    P = prob.params

    def reverse() -> np.ndarray:
        _, grads = vg(*arrays)
        return np.concatenate([np.ravel(g) for g in grads])

    tau = np.zeros(P)
    t_views, start = [], 0
    for a in prob.params_arrays:
        t_views.append(tau[start:start + a.size].reshape(a.shape))
        start += a.size
    tangents = (None, None, *t_views)

    def forward_mode() -> np.ndarray:
        g = np.empty(P)
        for i in range(P):
            tau[i] = 1.0
            g[i] = E.jvp(mlp_loss, arrays, tangents)[1]
            tau[i] = 0.0
        return g

    h_fwd = default_step(theta, np.float64, "forward")
    h_cen = default_step(theta, np.float64, "central")

    def forward_diff() -> np.ndarray:
        f0 = float(fwd(*arrays))
        g = np.empty(P)
        for i in range(P):
            old = theta[i]
            theta[i] = old + h_fwd[i]
            step = theta[i] - old
            g[i] = (float(fwd(*arrays)) - f0) / step
            theta[i] = old
        return g

    def central_diff() -> np.ndarray:
        g = np.empty(P)
        for i in range(P):
            old = theta[i]
            theta[i] = old + h_cen[i]
            up, fp = theta[i], float(fwd(*arrays))
            theta[i] = old - h_cen[i]
            down, fm = theta[i], float(fwd(*arrays))
            g[i] = (fp - fm) / (up - down)
            theta[i] = old
        return g

    return {"reverse": reverse, "forward_mode": forward_mode, "forward_diff": forward_diff,
            "central_diff": central_diff}


def measure_scaling(sizes: Sequence[int], *, methods: Sequence[str] = METHODS, budget: float = 30.0,
                    repeats: int = 5, min_sample: float = 0.02, seed: int = 0, clock: str = "cpu",
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time every method's full gradient at every size; rows of plain data.

    For each requested size a :func:`make_problem` instance is built and
    three short calls are timed together by :func:`time_calls` (samples
    taken in turn): one forward pass -- the unit everything is measured
    against --, one reverse-mode gradient, and one JVP (the unit of forward
    mode). The per-parameter loops then run only when their predicted cost,
    evaluations x one evaluation, fits in ``budget`` seconds, with as many
    samples (at most ``repeats``) as fit in a third of the budget; the short
    timings served as their warm-up. Each measured gradient is compared
    with the reverse-mode one (``max_rel_diff_vs_reverse``: largest
    ``|g - g_rev|`` over ``max|g_rev|``).

    Args:
        sizes: approximate parameter counts (the actual P is reported).
        methods: a subset of :data:`METHODS`.
        budget: seconds allowed per (method, size) measurement.
        repeats: samples per timing (medians are reported).
        min_sample: seconds per sample of the short timings.
        seed: seeds the problems.
        clock: ``"cpu"`` (process CPU time) or ``"wall"``: which clock
            ``seconds`` and ``relative`` are read on (both medians are kept,
            as ``cpu_seconds`` and ``wall_seconds``).
        progress: called with a short description after each measurement
            (``len(sizes) * (len(methods) + 1)`` calls in all).

    Returns:
        One dict per (size, method) and one ``method="forward"`` row per
        size: ``method``, ``params``, ``width``, ``seconds`` (median, None
        when not measured), ``wall_seconds``, ``cpu_seconds``,
        ``evaluations``, ``passes``, ``forward_seconds``, ``relative``
        (seconds / forward_seconds), ``measured``, ``reason``, ``repeats``,
        ``min``, ``max``, ``max_rel_diff_vs_reverse``.

    Cost: bounded by about ``len(sizes) * len(methods) * budget`` seconds
    (much less in practice: see the module docstring).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown scaling method(s) {unknown}; choose from {METHODS}")
    _check_clock(clock)
    rows: list[dict[str, Any]] = []
    for p_req in sizes:
        prob = make_problem(int(p_req), seed=seed)
        P = prob.params
        fwd, _ = E.numpy_pair(mlp_loss)
        arrays = prob.arrays
        fns = _gradient_fns(prob)
        short: dict[str, Callable[[], Any]] = {"forward": lambda: fwd(*arrays), "reverse": fns["reverse"]}
        if "forward_mode" in methods:
            zero = (None, None, *(np.zeros_like(a) for a in prob.params_arrays))
            short["jvp"] = lambda: E.jvp(mlp_loss, arrays, zero)
        timings = time_calls(short, repeats=repeats, min_sample=min_sample, clock=clock)
        t_fwd = timings["forward"].median
        base = {"params": P, "width": prob.width, "batch": prob.batch, "forward_seconds": t_fwd, "clock": clock}
        rows.append({"method": "forward", **base, "evaluations": 1, "passes": "1 forward pass (no graph recorded)",
                     "relative": 1.0, "measured": True, "reason": "", **_spread(timings["forward"]),
                     "max_rel_diff_vs_reverse": None})
        if progress:
            progress(f"P={P:,} forward pass {_fmt_s(t_fwd)}")
        g_rev = fns["reverse"]()
        scale = float(np.max(np.abs(g_rev))) or 1.0
        for method in methods:
            count, passes = EVALUATIONS[method]
            evals = count(P)
            row = {"method": method, **base, "evaluations": evals, "passes": passes}
            if method == "reverse":
                t = timings["reverse"]
                diff = 0.0
            else:
                unit = timings["jvp" if method == "forward_mode" else "forward"].wall
                predicted = unit * evals
                if predicted > budget:
                    row.update(seconds=None, wall_seconds=None, cpu_seconds=None, relative=None, measured=False,
                               reason=f"predicted {_fmt_s(predicted)} ({evals:,} evaluations of "
                                      f"{_fmt_s(unit)}) is over the budget of {_fmt_s(budget)}",
                               repeats=0, loops=0, min=None, max=None, max_rel_diff_vs_reverse=None)
                    rows.append(row)
                    if progress:
                        progress(f"P={P:,} {method} not measured (over budget)")
                    continue
                # As many samples as fit in a third of the budget (at least one): long loops get one or two.
                n = max(1, min(repeats, int(budget / (3 * max(predicted, 1e-12)))))
                walls, cpus, g = [], [], None
                for _ in range(n):
                    w0, c0 = time.perf_counter(), time.process_time()
                    g = fns[method]()
                    walls.append(time.perf_counter() - w0)
                    cpus.append(time.process_time() - c0)
                t = _timing(walls, cpus, 1, clock)
                diff = float(np.max(np.abs(g - g_rev))) / scale
            row.update(relative=t.median / t_fwd, measured=True, reason="", **_spread(t),
                       max_rel_diff_vs_reverse=diff)
            rows.append(row)
            if progress:
                progress(f"P={P:,} {method} {_fmt_s(t.median)}")
    return rows


def _spread(t: Timing) -> dict[str, Any]:
    return {"seconds": t.median, "wall_seconds": t.wall, "cpu_seconds": t.cpu, "repeats": t.repeats,
            "loops": t.loops, "min": t.min, "max": t.max}


def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


# ---------------------------------------------------------------------------
# Slopes
# ---------------------------------------------------------------------------

def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares line ``log10(y) = intercept + slope * log10(x)``: ``(slope, intercept)``.

    Pairs with a missing or non-positive value are skipped; None with fewer
    than two distinct x. Cost: O(n).
    """
    pts = [(math.log10(x), math.log10(y)) for x, y in zip(xs, ys)
           if x is not None and y is not None and x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    lx = np.array([p[0] for p in pts])
    ly = np.array([p[1] for p in pts])
    dx = lx - lx.mean()
    slope = float(np.dot(dx, ly - ly.mean()) / np.dot(dx, dx))
    return slope, float(ly.mean() - slope * lx.mean())


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The slope of :func:`fit_line` (log-log least squares); None with fewer than two distinct x."""
    line = fit_line(xs, ys)
    return None if line is None else line[0]


def slopes(rows: Sequence[dict[str, Any]], *, key: str = "relative") -> dict[str, float | None]:
    """Method -> fitted log-log slope of ``row[key]`` against P over the measured rows of :func:`measure_scaling`.

    With ``key="relative"`` (time / one forward pass) the expected slopes are
    about 0 for ``reverse`` and about 1 for the others; ``key="seconds"``
    gives the slopes of the raw times. Cost: O(len(rows)).
    """
    return {m: (None if line is None else line[0]) for m, line in lines(rows, key=key).items()}


def lines(rows: Sequence[dict[str, Any]], *, key: str = "relative") -> dict[str, tuple[float, float] | None]:
    """Method -> :func:`fit_line` ``(slope, intercept)`` of ``row[key]`` against P (measured rows only)."""
    out: dict[str, tuple[float, float] | None] = {}
    for m in METHODS:
        pts = [(r["params"], r[key]) for r in rows if r["method"] == m and r.get("measured")]
        out[m] = fit_line([p for p, _ in pts], [v for _, v in pts])
    return out


# ---------------------------------------------------------------------------
# (forward + backward) / forward, per framework
# ---------------------------------------------------------------------------

def _torch_pair(prob: Problem) -> tuple[Callable[[], Any], Callable[[], Any]]:
    import torch

    x, target, *params = (torch.tensor(np.array(a), dtype=torch.float64) for a in prob.arrays)
    for p in params:
        p.requires_grad_(True)
    W1, b1, W2, b2, W3, b3 = params

    def loss():
        a1 = torch.tanh(x @ W1 + b1)
        a2 = torch.tanh(a1 @ W2 + b2)
        return torch.mean(torch.square(a2 @ W3 + b3 - target))

    def fwd():
        with torch.no_grad():
            return loss()

    def fwd_bwd():
        return torch.autograd.grad(loss(), params)

    return fwd, fwd_bwd


def _jax_pair(prob: Problem) -> tuple[Callable[[], Any], Callable[[], Any]]:
    import jax
    import jax.numpy as jnp

    def loss(W1, b1, W2, b2, W3, b3, x, target):
        a1 = jnp.tanh(x @ W1 + b1)
        a2 = jnp.tanh(a1 @ W2 + b2)
        return jnp.mean(jnp.square(a2 @ W3 + b3 - target))

    with jax.enable_x64(True):
        args = [jnp.asarray(np.array(a), dtype=jnp.float64) for a in (*prob.params_arrays, prob.x, prob.target)]
        f = jax.jit(loss)
        g = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6))))

    def fwd():
        with jax.enable_x64(True):
            return jax.block_until_ready(f(*args))

    def fwd_bwd():
        with jax.enable_x64(True):
            return jax.block_until_ready(g(*args))

    return fwd, fwd_bwd


def cheap_gradient_ratios(sizes: Sequence[int], *, frameworks: Sequence[str] = ("reference", "torch", "jax"),
                          repeats: int = 5, min_sample: float = 0.02, seed: int = 0, clock: str = "cpu",
                          progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The measured ratio (forward + backward) / forward of each framework on :func:`make_problem`.

    ``reference``: :func:`gradverify.engine.value_and_grad` over the plain
    forward evaluation; ``torch``: eager float64, ``torch.autograd.grad`` of
    the loss over the loss under ``no_grad``; ``jax``: ``jit`` of
    ``value_and_grad`` over ``jit`` of the loss, float64, compiled during the
    warm-up. The two calls are timed together (:func:`time_calls`, samples
    in turn) on ``clock``. A framework that is not installed gives one row
    with ``available: False``.

    Returns:
        Rows ``framework, params, forward_seconds, gradient_seconds, ratio,
        wall_ratio, cpu_ratio, clock, available, reason``. Cost:
        ``len(sizes) * len(frameworks)`` calls of :func:`time_calls`.
    """
    unknown = [f for f in frameworks if f not in ("reference", "torch", "jax")]
    if unknown:
        raise ValueError(f"unknown framework(s) {unknown}; choose from reference, torch, jax")
    rows: list[dict[str, Any]] = []
    for name in frameworks:
        if name != "reference" and importlib.util.find_spec(name) is None:
            rows.append({"framework": name, "params": None, "forward_seconds": None, "gradient_seconds": None,
                         "ratio": None, "wall_ratio": None, "cpu_ratio": None, "clock": clock, "available": False,
                         "reason": f"{name} is not installed ({install_hint(name)})"})
            if progress:
                for _ in sizes:
                    progress(f"{name} not installed")
            continue
        for p_req in sizes:
            prob = make_problem(int(p_req), seed=seed)
            if name == "reference":
                fwd0, _ = E.numpy_pair(mlp_loss)
                vg = E.value_and_grad(mlp_loss, argnums=tuple(range(2, 8)))
                arrays = prob.arrays
                fwd, fwd_bwd = (lambda: fwd0(*arrays)), (lambda: vg(*arrays))
            elif name == "torch":
                fwd, fwd_bwd = _torch_pair(prob)
            else:
                fwd, fwd_bwd = _jax_pair(prob)
            t = time_calls({"fwd": fwd, "grad": fwd_bwd}, repeats=repeats, min_sample=min_sample, warmup=3,
                           clock=clock)
            tf, tg = t["fwd"], t["grad"]
            rows.append({"framework": name, "params": prob.params, "forward_seconds": tf.median,
                         "gradient_seconds": tg.median, "ratio": tg.median / tf.median,
                         "wall_ratio": tg.wall / tf.wall, "cpu_ratio": tg.cpu / tf.cpu, "clock": clock,
                         "available": True, "reason": ""})
            if progress:
                progress(f"{name} P={prob.params:,} ratio {tg.median / tf.median:.2f}")
    return rows


# ---------------------------------------------------------------------------
# Thread pinning and the allocator
# ---------------------------------------------------------------------------

def _openblas() -> tuple[Any, str] | None:
    """The loaded OpenBLAS library (ctypes) and its symbol prefix, found in /proc/self/maps; Linux only."""
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                               ("openblas_", "")):
            if hasattr(lib, f"{prefix}set_num_threads{suffix}"):
                return lib, prefix + "{}" + suffix
    return None


def _blas_threads(n: int | None = None) -> str:
    """Set (when ``n``) and report numpy's BLAS thread count: threadpoolctl, else OpenBLAS via ctypes."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        pass
    else:
        if n:
            threadpool_limits(n, user_api="blas")
        return ", ".join(f"{d.get('internal_api')}={d.get('num_threads')}" for d in threadpool_info()
                         if d.get("user_api") == "blas") or "unknown"
    found = _openblas()
    if found is None:
        return "unknown (no threadpoolctl; OpenBLAS not found)"
    lib, pattern = found
    if n:
        getattr(lib, pattern.format("set_num_threads"))(int(n))
    get = getattr(lib, pattern.format("get_num_threads"), None)
    if get is None:
        return "openblas (count unknown)"
    get.restype = ctypes.c_int
    return f"openblas={get()}"


def pin_threads(n: int = 1) -> dict[str, Any]:
    """Pin BLAS, PyTorch and XLA to ``n`` threads, as far as each can still be changed; report what holds.

    * the usual environment variables (``OMP_NUM_THREADS``...) -- for
      libraries loaded later and for child processes;
    * numpy's BLAS now: threadpoolctl when installed, else OpenBLAS's own
      ``set_num_threads`` through ctypes;
    * PyTorch: ``torch.set_num_threads(n)`` (imported here when installed);
    * XLA: ``XLA_FLAGS`` gains ``--xla_cpu_multi_thread_eigen=false
      intra_op_parallelism_threads=n``, which only takes effect when JAX
      has not been imported yet (the report says so otherwise).

    Returns :func:`thread_settings`. Cost: milliseconds (plus importing torch).
    """
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    _blas_threads(n)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(n)
    if "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        extra = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " " + extra).strip()
    return thread_settings()


def thread_settings() -> dict[str, Any]:
    """The thread settings in force: environment variables, BLAS, torch, XLA; nothing is changed.

    Cost: milliseconds; imports nothing new.
    """
    info: dict[str, Any] = {var: os.environ.get(var) for var in _THREAD_VARS[:3]}
    info["blas"] = _blas_threads(None)
    torch = sys.modules.get("torch")
    info["torch"] = (f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"
                     if torch is not None else "not loaded")
    info["XLA_FLAGS"] = os.environ.get("XLA_FLAGS")
    info["cpu_count"] = os.cpu_count()
    return info


def tune_allocator(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 256 * 2**20) -> str:
    """Keep large temporary arrays on glibc's heap instead of fresh ``mmap`` pages; returns what was done.

    Why: with glibc's defaults, an array of more than a few hundred KiB is
    ``mmap``-ed when allocated and unmapped when freed, so every call that
    allocates one pays a page fault per 4 KiB page on first touch. A gradient
    writes P fresh numbers and a forward pass of the benchmark MLP only
    O(batch * h), so at P >= 3e5 those faults alone made (forward +
    backward) / forward about 8 instead of about 2.5 -- the hand-written
    numpy backward too: an allocator effect, not reverse mode's cost.
    ``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)`` keep
    such blocks on the heap for reuse. Process-wide; a no-op (and says so)
    off glibc. Cost: microseconds.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default allocator (mallopt not available)"
    m_trim, m_mmap = -1, -3
    ok = mallopt(m_mmap, int(mmap_threshold)) == 1 and mallopt(m_trim, int(trim_threshold)) == 1
    if not ok:
        return "default allocator (mallopt refused)"
    return (f"glibc mallopt: M_MMAP_THRESHOLD={mmap_threshold // 2**20} MiB, "
            f"M_TRIM_THRESHOLD={trim_threshold // 2**20} MiB")
