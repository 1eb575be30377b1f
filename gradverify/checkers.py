"""Gradient checkers side by side: gradverify against ``torch.autograd.gradcheck``, ``jax.test_util.check_grads``,
``tf.test.compute_gradient`` and ``pytensor.gradient.verify_grad``.

The measuring library behind ``benchmarks/checkers.py`` and the report's
checker comparison. Every function returns plain dicts (JSON-ready rows);
nothing here asserts a time.

The function measured is one tanh MLP (the one of ``benchmarks/engine_speed.py``):
input width ``h``, two tanh hidden layers of width ``h``, one linear output,
a batch of 8, loss ``mean((y - target)**2)``, float64, so the parameter count
is ``P = 2 h**2 + 3 h + 1`` (``x`` and ``target`` are constants). It is built
from the same seeded numpy arrays as a torch function and as a JAX function
of ``(W1, b1, W2, b2, W3, b3)``.

* :func:`time_checkers` -- seconds per check of each method at each ``P``:
  a warm-up run, then repeated runs taken round-robin across the methods
  (so a load spike hits all of them alike), median / min / max of wall
  time and of process CPU time. Each method has a time budget per size; a
  method whose predicted or warm-up time exceeds it is marked ``"not
  measured"`` (never extrapolated), as is every larger size after it.
* :func:`detection_table` -- which checkers catch (a) a 0.1% error in one
  element of ``dW2`` and (b) a ~1e-3 relative approximation mismatch in the
  tanh derivative, both injected through a custom ``torch.autograd.Function``
  / ``jax.custom_vjp``, and which pass the same custom code without the bug.
* :func:`localisation` -- gradverify fast mode on one wrong element among
  ~20,000 parameters: the element it reports and the evaluations it used.
* :func:`pin_threads` pins the thread pools and says what it pinned;
  :func:`run_all` runs everything and :func:`targets` compares the results
  with the issue's targets.

torch and JAX are imported inside the functions that need them (``import
gradverify`` never imports them); a method whose framework is missing is
skipped with a note.

Cost: at the defaults (P from ~100 to ~20,000, 5 runs, 8 s budget per
method and size) :func:`run_all` takes about 1.5 minutes of CPU time (2-3
minutes of wall time on a busy two-core machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "BATCH", "DEFAULT_PARAMS", "DEFAULT_BUDGET_S", "METHODS", "MLP", "make_mlp", "width_for", "param_count",
    "torch_mlp", "jax_mlp", "tf_mlp", "pytensor_mlp",
    "pin_threads", "time_checkers", "detection_table", "localisation", "targets", "run_all",
]

BATCH = 8
#: Parameter counts measured by default (widths 7, 15, 31, 49, 99).
DEFAULT_PARAMS = (100, 500, 2000, 5000, 20000)
#: Seconds each method may spend at each size (warm-up included).
DEFAULT_BUDGET_S = 8.0
#: The single-element bug: this relative error in one element of dW2.
ELEMENT_ERROR = 1e-3
#: The approximation bug: the tanh derivative is off by up to this, relative.
APPROX_ERROR = 1e-3
BUGS = ("element", "approx")


#: Input width of the narrow-input MLP ``NARROW_INPUTS -> H -> H -> 2`` (most parameters in the H x H
#: weight); None: the square MLP ``H -> H -> H -> 1`` of the module docstring. ``make_mlp(..., narrow=True)``
#: builds the narrow one whatever this says; ``benchmarks/checkers.py --narrow`` sets it for a whole run.
NARROW_INPUTS: int | None = None
#: Output width of the narrow-input MLP.
NARROW_OUTPUTS = 2


def param_count(h: int, narrow: bool = False) -> int:
    """Parameters of the MLP of width ``h``: ``2 h**2 + 3 h + 1`` (narrow: ``h**2 + (i + o + 2) h + o``)."""
    if narrow:
        i, o = NARROW_INPUTS or 4, NARROW_OUTPUTS
        return h * h + (i + o + 2) * h + o
    return 2 * h * h + 3 * h + 1


def width_for(p: int, narrow: bool = False) -> int:
    """The width whose parameter count is closest to ``p``."""
    h = max(1, round((-3 + math.sqrt(max(9 + 8 * (p - 1), 0))) / 4))
    if narrow:
        h = max(1, round(math.sqrt(p)))
    cands = [w for w in range(max(1, h - 8), h + 9)]
    return min(cands, key=lambda w: abs(param_count(w, narrow) - p))


@dataclasses.dataclass
class MLP:
    """The seeded arrays of one MLP, and where the single-element bug goes.

    Attributes:
        width: ``h``.
        x, target: the constant input ``(8, h)`` and target ``(8, 1)``.
        params: ``[W1, b1, W2, b2, W3, b3]`` (float64).
        bug_index: the element of ``W2`` whose gradient the ``"element"`` bug
            scales by ``1 + ELEMENT_ERROR``: the one whose ``|dW2|`` is the
            median of ``W2``'s (a typical element, neither tiny nor dominant).
    """

    width: int
    x: np.ndarray
    target: np.ndarray
    params: list
    bug_index: tuple

    @property
    def size(self) -> int:
        return sum(p.size for p in self.params)


PARAM_NAMES = ("W1", "b1", "W2", "b2", "W3", "b3")


def make_mlp(params: int, seed: int = 0, narrow: bool | None = None) -> MLP:
    """The MLP with about ``params`` parameters (see the module docstring), from ``default_rng(seed)``.

    ``narrow`` (default: whether :data:`NARROW_INPUTS` is set) builds the
    narrow-input MLP ``4 -> H -> H -> 2`` instead.
    """
    narrow = NARROW_INPUTS is not None if narrow is None else narrow
    h = width_for(params, narrow)
    i, o = ((NARROW_INPUTS or 4), NARROW_OUTPUTS) if narrow else (h, 1)
    rng = np.random.default_rng(seed)
    s = 1.0 / math.sqrt(h)
    x, target = rng.standard_normal((BATCH, i)), rng.standard_normal((BATCH, o))
    ps = [rng.standard_normal((i, h)) / math.sqrt(i), rng.standard_normal(h) * 0.1, rng.standard_normal((h, h)) * s,
          rng.standard_normal(h) * 0.1, rng.standard_normal((h, o)) * s, rng.standard_normal(o) * 0.1]
    g = np.abs(_numpy_grads(x, target, ps)[2])
    flat = np.argsort(g, axis=None)[g.size // 2]
    return MLP(h, x, target, ps, tuple(int(i) for i in np.unravel_index(flat, g.shape)))


def _numpy_grads(x, target, ps):
    """Hand-written backward of the MLP loss (to place the bug on a typical element)."""
    W1, b1, W2, b2, W3, b3 = ps
    a1 = np.tanh(x @ W1 + b1)
    a2 = np.tanh(a1 @ W2 + b2)
    r = a2 @ W3 + b3 - target
    dy = r * (2.0 / r.size)
    d2 = (dy @ W3.T) * (1 - a2 * a2)
    d1 = (d2 @ W2.T) * (1 - a1 * a1)
    return [x.T @ d1, d1.sum(0), a1.T @ d2, d2.sum(0), a2.T @ dy, dy.sum(0)]


def _approx_factor(z, lib, error):
    """The approximation bug's derivative factor, ``1 + error * sin(3 z)`` (a smooth relative error up to ``error``)."""
    return 1.0 + error * lib.sin(3.0 * z)


def _bug_options(bug, custom, error):
    if bug not in (None,) + BUGS:
        raise ValueError(f"bug must be None or one of {BUGS}, got {bug!r}")
    custom = bug is not None if custom is None else custom
    if error is None:
        error = APPROX_ERROR if bug == "approx" else ELEMENT_ERROR
    return custom, float(error)


# ---------------------------------------------------------------------------
# torch and JAX versions of the MLP
# ---------------------------------------------------------------------------

def torch_mlp(mlp: MLP, bug: str | None = None, *, custom: bool | None = None, error: float | None = None):
    """The MLP loss as a torch function of the six parameters, and those parameters.

    ``bug`` is None, ``"element"`` or ``"approx"``; ``custom`` (default:
    whether there is a bug) builds the layers from custom
    ``torch.autograd.Function``s (linear and tanh, with ``generate_vmap_rule``
    so ``torch.func.vmap`` takes them), into whose backward the bug goes;
    ``error`` is the bug's relative size (default :data:`ELEMENT_ERROR` /
    :data:`APPROX_ERROR`).
    Returns ``(fn, [W1, b1, W2, b2, W3, b3])``, the tensors float64 with
    ``requires_grad=True``.
    """
    import torch

    custom, error = _bug_options(bug, custom, error)
    x = torch.tensor(mlp.x)
    target = torch.tensor(mlp.target)
    params = [torch.tensor(p).requires_grad_(True) for p in mlp.params]
    if not custom:
        def loss(W1, b1, W2, b2, W3, b3):
            a1 = torch.tanh(x @ W1 + b1)
            a2 = torch.tanh(a1 @ W2 + b2)
            return torch.mean((a2 @ W3 + b3 - target) ** 2)

        return loss, params

    def linear(corrupt):
        class Linear(torch.autograd.Function):
            generate_vmap_rule = True

            @staticmethod
            def forward(a, W, b):
                return a @ W + b

            @staticmethod
            def setup_context(ctx, inputs, output):
                ctx.save_for_backward(inputs[0], inputs[1])

            @staticmethod
            def backward(ctx, g):
                a, W = ctx.saved_tensors
                gW = a.T @ g
                if corrupt is not None:
                    gW = gW.clone()
                    gW[corrupt] = gW[corrupt] * (1.0 + error)
                return g @ W.T, gW, g.sum(0)

        return Linear.apply

    class Tanh(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(z):
            return torch.tanh(z)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], output)

        @staticmethod
        def backward(ctx, g):
            z, y = ctx.saved_tensors
            d = 1 - y * y
            if bug == "approx":
                d = d * _approx_factor(z, torch, error)
            return g * d

    lin1, lin3 = linear(None), linear(None)
    lin2 = linear(mlp.bug_index if bug == "element" else None)

    def loss(W1, b1, W2, b2, W3, b3):
        a1 = Tanh.apply(lin1(x, W1, b1))
        a2 = Tanh.apply(lin2(a1, W2, b2))
        return torch.mean((lin3(a2, W3, b3) - target) ** 2)

    return loss, params


def jax_mlp(mlp: MLP, bug: str | None = None, *, custom: bool | None = None, error: float | None = None):
    """The MLP loss as a JAX function of the six parameters, and those parameters (float64).

    Call it inside ``jax.enable_x64(True)`` (the arrays are made float64
    there). Bugs as in :func:`torch_mlp`, through ``jax.custom_vjp``.
    """
    import jax
    import jax.numpy as jnp

    custom, error = _bug_options(bug, custom, error)
    x = jnp.asarray(mlp.x, dtype=jnp.float64)
    target = jnp.asarray(mlp.target, dtype=jnp.float64)
    params = tuple(jnp.asarray(p, dtype=jnp.float64) for p in mlp.params)
    if not custom:
        def loss(W1, b1, W2, b2, W3, b3):
            a1 = jnp.tanh(x @ W1 + b1)
            a2 = jnp.tanh(a1 @ W2 + b2)
            return jnp.mean((a2 @ W3 + b3 - target) ** 2)

        return loss, params

    def linear(corrupt):
        @jax.custom_vjp
        def lin(a, W, b):
            return a @ W + b

        def fwd(a, W, b):
            return a @ W + b, (a, W)

        def bwd(res, g):
            a, W = res
            gW = a.T @ g
            if corrupt is not None:
                gW = gW.at[corrupt].multiply(1.0 + error)
            return g @ W.T, gW, g.sum(0)

        lin.defvjp(fwd, bwd)
        return lin

    @jax.custom_vjp
    def tanh(z):
        return jnp.tanh(z)

    def tanh_fwd(z):
        y = jnp.tanh(z)
        return y, (z, y)

    def tanh_bwd(res, g):
        z, y = res
        d = 1 - y * y
        if bug == "approx":
            d = d * _approx_factor(z, jnp, error)
        return (g * d,)

    tanh.defvjp(tanh_fwd, tanh_bwd)
    lin1, lin3 = linear(None), linear(None)
    lin2 = linear(mlp.bug_index if bug == "element" else None)

    def loss(W1, b1, W2, b2, W3, b3):
        a1 = tanh(lin1(x, W1, b1))
        a2 = tanh(lin2(a1, W2, b2))
        return jnp.mean((lin3(a2, W3, b3) - target) ** 2)

    return loss, params


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")
_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_limits: list = []  # keeps threadpoolctl's limit alive


def pin_threads() -> dict[str, str]:
    """Pin every thread pool that can be pinned to one thread; return what was pinned, and how.

    BLAS/OpenMP: environment variables (effective for pools not started
    yet; a CLI sets them before numpy is imported) and threadpoolctl where
    installed (effective at once). torch: ``set_num_threads(1)`` (and one
    inter-op thread where still allowed). JAX: ``XLA_FLAGS`` one-thread
    options, effective only if jax is not imported yet. Cost: negligible.
    """
    out: dict[str, str] = {}
    for v in _THREAD_ENV:
        os.environ.setdefault(v, "1")
    out["env"] = ", ".join(f"{v}={os.environ[v]}" for v in _THREAD_ENV)
    try:
        import threadpoolctl

        _limits.append(threadpoolctl.threadpool_limits(1))
        libs = sorted({i.get("internal_api", "?") for i in threadpoolctl.threadpool_info()})
        out["blas"] = f"threadpoolctl: 1 thread ({', '.join(libs) or 'no pool found'})"
    except ImportError:
        out["blas"] = "environment variables only (threadpoolctl not installed)"
    if "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " " + _XLA_ONE_THREAD).strip()
        out["jax"] = f"XLA_FLAGS={os.environ['XLA_FLAGS']}"
    else:
        out["jax"] = "not pinned: jax was imported before pin_threads() (set XLA_FLAGS before importing it)"
    try:
        import torch

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
            inter = ", 1 inter-op thread"
        except RuntimeError:
            inter = f", inter-op threads left at {torch.get_num_interop_threads()} (already started)"
        out["torch"] = f"set_num_threads(1){inter}"
    except ImportError:
        out["torch"] = "not installed"
    return out


# ---------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Method:
    """One checker: ``prepare(mlp, bug, seed) -> run``, ``run() -> (passed, evaluations, result)``.

    Attributes:
        name: the row label.
        framework: ``"torch"``, ``"jax"``, ``"tensorflow"`` or ``"pytensor"`` (the import it needs).
        random: whether the verdict depends on a seed (random probes).
        evaluations: what the evaluation count means.
    """

    name: str
    framework: str
    prepare: Callable[..., Callable[[], tuple]]
    random: bool
    evaluations: str


#: The benchmark asks for its mode itself: no budget, so a full check timed on purpose does not warn
#: (SlowCheckWarning) in the middle of ``gradverify report``'s progress lines.
_NO_BUDGET = 1e9  # seconds (budget= must be finite)


def _counted(fn):
    calls = [0]

    def wrapped(*a, **k):
        calls[0] += 1
        return fn(*a, **k)

    return wrapped, calls


def _gv_torch(mode):
    def prepare(mlp, bug=None, seed=0, custom=None):
        import gradverify as gv

        fn, params = torch_mlp(mlp, bug, custom=custom)

        def run():
            r = gv.check(fn, params, mode=mode, seed=seed, budget=_NO_BUDGET)
            return r.passed, r.evaluations, r

        return run

    return prepare


def _gradcheck(fast):
    def prepare(mlp, bug=None, seed=0, custom=None):
        import torch

        fn, params = torch_mlp(mlp, bug, custom=custom)
        counted, calls = _counted(fn)

        def run():
            calls[0] = 0
            torch.manual_seed(seed)
            ok = torch.autograd.gradcheck(counted, params, fast_mode=fast, raise_exception=False)
            return bool(ok), calls[0], None

        return run

    return prepare


def _gv_jax(mode):
    def prepare(mlp, bug=None, seed=0, custom=None):
        import gradverify as gv

        with _x64():
            fn, params = jax_mlp(mlp, bug, custom=custom)

        def run():
            with _x64():
                r = gv.check(fn, list(params), mode=mode, seed=seed, budget=_NO_BUDGET)
            return r.passed, r.evaluations, r

        return run

    return prepare


def _check_grads(mlp, bug=None, seed=0, custom=None):
    import jax
    from jax import test_util

    with _x64():
        fn, params = jax_mlp(mlp, bug, custom=custom)
        jitted = jax.jit(fn)
    counted, calls = _counted(jitted)

    def run():
        calls[0] = 0
        with _x64():
            try:
                test_util.check_grads(counted, params, order=1, modes=("rev",))
                ok = True
            except AssertionError:
                ok = False
        return ok, calls[0], None

    return run


@contextlib.contextmanager
def _x64():
    import jax

    cm = getattr(jax, "enable_x64", None)
    if cm is None:  # an older JAX
        from jax.experimental import enable_x64 as cm
    with cm(True):
        yield


def tf_mlp(mlp: MLP, bug: str | None = None, *, custom: bool | None = None, error: float | None = None):
    """The MLP loss as a TensorFlow function of the six parameters, and those parameters (float64 tensors).

    With a bug (or ``custom=True``) the second layer's weight and both tanh
    layers go through ``tf.custom_gradient`` functions into whose gradient
    the bug goes (``"element"``: ``dW2[bug_index]`` scaled by ``1 + error``;
    ``"approx"``: the tanh derivative times ``1 + error * sin(3 z)``).
    """
    from .backends.tensorflow import import_tensorflow

    tf = import_tensorflow()
    custom, error = _bug_options(bug, custom, error)
    x, target = tf.constant(mlp.x), tf.constant(mlp.target)
    params = [tf.constant(p) for p in mlp.params]
    scale = np.ones(mlp.params[2].shape)
    if bug == "element":
        scale[mlp.bug_index] += error
    scale_t = tf.constant(scale)

    @tf.custom_gradient
    def weight(W):
        return tf.identity(W), lambda g: g * scale_t

    @tf.custom_gradient
    def tanh(z):
        y = tf.tanh(z)
        factor = _approx_factor(z, tf.math, error) if bug == "approx" else 1.0
        return y, lambda g: g * (1 - y * y) * factor

    act = tanh if custom else tf.tanh
    wrap = weight if custom else (lambda W: W)

    def loss(W1, b1, W2, b2, W3, b3):
        a1 = act(x @ W1 + b1)
        a2 = act(a1 @ wrap(W2) + b2)
        return tf.reduce_mean(tf.square(a2 @ W3 + b3 - target))

    return loss, params


def pytensor_mlp(mlp: MLP, bug: str | None = None, *, custom: bool | None = None, error: float | None = None):
    """The MLP loss as a PyTensor graph of the six parameters: ``(inputs, cost)`` symbolic, and the numpy values.

    With a bug (or ``custom=True``) the W2 gradient / the tanh derivative go
    through ``OpFromGraph`` ops with a hand-written ``lop_overrides``, into
    which the bug goes (as in :func:`tf_mlp`).
    """
    import pytensor.tensor as pt
    from pytensor.compile.builders import OpFromGraph

    custom, error = _bug_options(bug, custom, error)
    names = PARAM_NAMES
    ins = [pt.tensor(dtype="float64", shape=p.shape, name=n) for n, p in zip(names, mlp.params)]
    x, target = pt.constant(mlp.x), pt.constant(mlp.target)
    scale = np.ones(mlp.params[2].shape)
    if bug == "element":
        scale[mlp.bug_index] += error

    def act(z):
        if not custom:
            return pt.tanh(z)
        zi = z.type()

        def lop(inputs, outputs, g):
            factor = _approx_factor(inputs[0], pt, error) if bug == "approx" else 1.0
            return [g[0] * (1 - outputs[0] ** 2) * factor]

        return OpFromGraph([zi], [pt.tanh(zi)], lop_overrides=lop)(z)

    def wrap(W):
        if not custom:
            return W
        wi = W.type()
        return OpFromGraph([wi], [wi * 1.0], lop_overrides=lambda i, o, g: [g[0] * pt.constant(scale)])(W)

    W1, b1, W2, b2, W3, b3 = ins
    a1 = act(pt.dot(x, W1) + b1)
    a2 = act(pt.dot(a1, wrap(W2)) + b2)
    cost = pt.mean((pt.dot(a2, W3) + b3 - target) ** 2)
    return ins, cost, [p.copy() for p in mlp.params]


def _gv_tf(mode):
    def prepare(mlp, bug=None, seed=0, custom=None):
        import gradverify as gv

        fn, params = tf_mlp(mlp, bug, custom=custom)

        def run():
            r = gv.check(fn, params, mode=mode, seed=seed, budget=_NO_BUDGET)
            return r.passed, r.evaluations, r

        return run

    return prepare


def _compute_gradient(mlp, bug=None, seed=0, custom=None):
    """``tf.test.compute_gradient`` (central differences, one Jacobian column per parameter element) vs the tape."""
    from .backends.tensorflow import import_tensorflow

    tf = import_tensorflow()
    fn, params = tf_mlp(mlp, bug, custom=custom)
    counted, calls = _counted(fn)

    def run():
        calls[0] = 0
        # compute_gradient returns both Jacobians and leaves the verdict to the caller: gradcheck's
        # default step and tolerances (eps 1e-6, atol 1e-5, rtol 1e-3) are used here.
        theoretical, numerical = tf.test.compute_gradient(counted, params, delta=1e-6)
        ok = all(np.allclose(t, n, rtol=1e-3, atol=1e-5) for t, n in zip(theoretical, numerical))
        return bool(ok), calls[0], None

    return run


def _verify_grad(mlp, bug=None, seed=0, custom=None):
    """``pytensor.gradient.verify_grad``: one random projection of the gradient against central differences."""
    from pytensor.gradient import GradientError, verify_grad
    from pytensor.graph.replace import graph_replace

    ins, cost, values = pytensor_mlp(mlp, bug, custom=custom)
    compiled = [0]

    def graph(*vars_):
        compiled[0] += 1
        return graph_replace(cost, dict(zip(ins, vars_)), strict=False)

    def run():
        compiled[0] = 0
        try:
            verify_grad(graph, values, rng=np.random.default_rng(seed), mode="FAST_COMPILE")
            ok = True
        except GradientError:
            ok = False
        # n_tests=2 (the default) random projections, each one analytic call and two cost calls
        return ok, 6, None

    return run


#: Every method measured, by row label.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradverify full (torch)", "torch", _gv_torch("full"), False, "function evaluations (CheckResult)"),
    Method("gradverify fast (torch)", "torch", _gv_torch("fast"), True, "function evaluations (CheckResult)"),
    Method("torch gradcheck", "torch", _gradcheck(False), False, "calls of the function"),
    Method("torch gradcheck fast", "torch", _gradcheck(True), True, "calls of the function"),
    Method("gradverify full (jax)", "jax", _gv_jax("full"), False, "function evaluations (CheckResult)"),
    Method("gradverify fast (jax)", "jax", _gv_jax("fast"), True, "function evaluations (CheckResult)"),
    # check_grads draws its probe from np.random.RandomState(0): deterministic
    Method("jax check_grads", "jax", _check_grads, False, "calls of the jitted function (traced ones included)"),
    Method("gradverify full (tensorflow)", "tensorflow", _gv_tf("full"), False, "function evaluations (CheckResult)"),
    Method("gradverify fast (tensorflow)", "tensorflow", _gv_tf("fast"), True, "function evaluations (CheckResult)"),
    Method("tf.test.compute_gradient", "tensorflow", _compute_gradient, False, "calls of the function"),
    # verify_grad: one random projection u^T J v against a central difference along v (two cost
    # evaluations per call of the compiled function; a random direction: seeded)
    Method("pytensor verify_grad", "pytensor", _verify_grad, True, "graph evaluations (3 per random probe, 2 probes)"),
)}


def _available(framework: str) -> bool:
    try:
        if framework == "tensorflow":
            from .backends.tensorflow import import_tensorflow  # quiet start-up

            import_tensorflow()
        elif framework == "pytensor":
            from .backends.pytensor import import_pytensor

            import_pytensor()
        else:
            __import__(framework)
        return True
    except ImportError:
        return False


def _methods(names: Sequence[str] | None) -> list[Method]:
    names = list(METHODS) if names is None else list(names)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return [METHODS[n] for n in names]


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def _timed(run):
    w, c = time.perf_counter(), time.process_time()
    passed, evaluations, _ = run()
    return time.perf_counter() - w, time.process_time() - c, passed, evaluations


def time_checkers(params: Sequence[int] = DEFAULT_PARAMS, methods: Sequence[str] | None = None, *,
                  repeats: int = 5, budget_s: float = DEFAULT_BUDGET_S, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> list[dict]:
    """Seconds per check of each method at each size, side by side in this process.

    For each size: every method gets a warm-up run (compilation, caches),
    then up to ``repeats`` timed runs, taken round-robin across the methods.
    A method stops repeating once its time at this size would exceed
    ``budget_s`` (it always gets one timed run after a warm-up that fits);
    a method whose warm-up alone exceeds ``budget_s``, or whose time
    predicted from the previous size (scaled like ``P``, a lower bound
    for every method here) does, is marked ``"not measured"`` at this size and every larger one.

    Returns one row per (method, size): ``method``, ``framework``,
    ``params``, ``width``, ``status`` (``"measured"``/``"not measured"``/
    ``"skipped"``), ``seconds`` (median wall time), ``min``, ``max``,
    ``cpu_seconds`` (median process CPU time, less disturbed by other load),
    ``first`` (the warm-up: the first, cold check of a fresh function, compilations included), ``runs``, ``evaluations`` (of the last run; what it counts is in
    ``evaluations_are``), ``passed`` (every run's verdict on this correct
    MLP), ``note``. Cost: about ``len(params) * len(methods) * budget_s``
    at most.
    """
    chosen = _methods(methods)
    rows: list[dict] = []
    last: dict[str, tuple[int, float]] = {}
    stopped: dict[str, str] = {}
    say = progress or (lambda s: None)
    for p in params:
        mlp = make_mlp(p, seed)
        live = []
        for m in chosen:
            row = {"method": m.name, "framework": m.framework, "params": mlp.size, "width": mlp.width,
                   "status": "measured", "seconds": None, "min": None, "max": None, "cpu_seconds": None, "first": None,
                   "runs": 0, "evaluations": None, "evaluations_are": m.evaluations, "passed": None, "note": ""}
            rows.append(row)
            if not _available(m.framework):
                row.update(status="skipped", note=f"{m.framework} is not installed")
                continue
            if m.name in stopped:
                row.update(status="not measured", note=stopped[m.name])
                continue
            if m.name in last:
                p0, t0 = last[m.name]
                predicted = t0 * mlp.size / p0  # a lower bound for every method here
                if predicted > budget_s:
                    stopped[m.name] = f"predicted at least {predicted:.3g} s per run > budget {budget_s:g} s"
                    row.update(status="not measured", note=stopped[m.name])
                    continue
            say(f"P={mlp.size:>6} {m.name}: warm-up")
            run = m.prepare(mlp, None, seed)
            wall, _, passed, evals = _timed(run)
            row["first"] = wall
            if wall > budget_s:
                stopped[m.name] = f"warm-up took {wall:.3g} s > budget {budget_s:g} s"
                row.update(status="not measured", note=stopped[m.name], passed=passed, evaluations=evals)
                continue
            live.append({"row": row, "run": run, "walls": [], "cpus": [], "spent": 0.0, "verdicts": [],
                         "evals": evals, "est": wall})
        for r in range(max(1, repeats)):
            for st in live:
                if st["walls"] and st["spent"] + max(st["est"], min(st["walls"])) > budget_s:
                    continue
                wall, cpu, passed, evals = _timed(st["run"])
                st["walls"].append(wall)
                st["cpus"].append(cpu)
                st["spent"] += wall
                st["verdicts"].append(passed)
                st["evals"] = evals
        for st in live:
            w, row = st["walls"], st["row"]
            row.update(seconds=statistics.median(w), min=min(w), max=max(w),
                       cpu_seconds=statistics.median(st["cpus"]), runs=len(w), evaluations=st["evals"],
                       passed=all(st["verdicts"]))
            if len(w) < repeats:
                row["note"] = f"{len(w)} of {repeats} runs within the {budget_s:g} s budget"
            last[row["method"]] = (row["params"], row["seconds"])
            say(f"P={row['params']:>6} {row['method']}: {row['seconds']:.4g} s (median of {len(w)})")
    return rows


# ---------------------------------------------------------------------------
# detection and localisation
# ---------------------------------------------------------------------------

def detection_table(params: int = 5000, methods: Sequence[str] | None = None, *, seeds: int = 3, seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """Which checkers catch the two injected bugs, and which pass the same code without them.

    Cases: ``"correct"`` (the custom Function / custom_vjp layers, no bug),
    ``"element"`` (0.1% error in one element of dW2), ``"approx"`` (tanh
    derivative off by up to 1e-3 relative). Checkers with random probes run
    at ``seeds`` seeds; deterministic ones once. Returns one row per
    (method, case): ``failed`` runs out of ``runs`` (for a bug: caught; for
    ``"correct"``: false alarms), and for gradverify where it located the
    worst element (``located``; the bug is at ``expected``). Cost: a few
    full checks at ``params`` per method.
    """
    chosen = _methods(methods)
    mlp = make_mlp(params, seed)
    say = progress or (lambda s: None)
    rows = []
    expected = f"W2[{', '.join(map(str, mlp.bug_index))}]"
    for m in chosen:
        for case in ("correct",) + BUGS:
            row = {"method": m.name, "framework": m.framework, "params": mlp.size, "case": case, "runs": 0,
                   "failed": 0, "located": [], "expected": expected if case == "element" else None, "note": ""}
            rows.append(row)
            if not _available(m.framework):
                row["note"] = f"{m.framework} is not installed"
                continue
            say(f"detection P={mlp.size} {m.name}: {case}")
            for s in range(seeds if m.random else 1):
                run = m.prepare(mlp, None if case == "correct" else case, seed + s, True)
                passed, _, result = run()
                row["runs"] += 1
                row["failed"] += not passed
                if result is not None and not passed and result.worst is not None:
                    w = result.worst
                    row["located"].append(_where(w.input, w.index))
    return rows


def _where(name, index) -> str:
    label = PARAM_NAMES[int(name)] if str(name).isdigit() else str(name)
    return f"{label}[{', '.join(str(int(i)) for i in index)}]"


#: Relative sizes of the single wrong element in :func:`localisation`.
LOCALISATION_ERRORS = (1e-3, 1e-2, 1e-1)


def localisation(params: int = 20000, errors: Sequence[float] = LOCALISATION_ERRORS, *,
                 frameworks: Sequence[str] = ("torch", "jax"), seed: int = 0) -> list[dict]:
    """gradverify fast mode on one wrong element among ``params`` parameters.

    The ``"element"`` bug (one element of dW2 scaled by ``1 + error``) for
    each of ``errors`` (localisation needs a failed projection first, and
    how small an error fast mode detects among this many parameters is part
    of the measurement). Returns one row per (framework, error): whether
    fast mode failed (``detected``), the element it reports (``reported``)
    against ``expected``, ``correct``, the check's ``evaluations`` (probes
    and localisation together) and ``seconds``. Cost: one fast check each.
    """
    import gradverify as gv

    mlp = make_mlp(params, seed)
    expected = f"W2[{', '.join(map(str, mlp.bug_index))}]"
    rows = []
    for fw in frameworks:
        for err in errors:
            row = {"framework": fw, "params": mlp.size, "error": err, "expected": expected, "detected": None,
                   "reported": None, "correct": None, "evaluations": None, "seconds": None, "note": ""}
            rows.append(row)
            if not _available(fw):
                row["note"] = f"{fw} is not installed"
                continue
            with _x64() if fw == "jax" else contextlib.nullcontext():
                fn, ps = (torch_mlp if fw == "torch" else jax_mlp)(mlp, "element", error=err)
                t = time.perf_counter()
                r = gv.check(fn, list(ps), mode="fast", seed=seed)
                row["seconds"] = time.perf_counter() - t
            row["detected"] = not r.passed
            row["evaluations"] = r.evaluations
            if r.worst is not None and not r.passed:
                row["reported"] = _where(r.worst.input, r.worst.index)
            row["correct"] = row["reported"] == expected
    return rows


# ---------------------------------------------------------------------------
# the targets, and everything at once
# ---------------------------------------------------------------------------

def _cell(rows, method, near):
    cands = [r for r in rows if r["method"] == method and r["status"] == "measured"]
    if not cands:
        return None
    r = min(cands, key=lambda r: abs(math.log(r["params"] / near)))
    return r if abs(math.log(r["params"] / near)) < 0.3 else None


def targets(timing: list[dict], detection: list[dict] | None = None, located: list[dict] | None = None) -> list[dict]:
    """The issue's targets against the measurements (ratios of medians, wall and CPU time).

    * full check of the torch MLP at P~5000 <= 0.3x ``gradcheck(fast_mode=False)``;
    * fast mode at P~20000 <= 3x ``gradcheck(fast_mode=True)`` (and, from
      ``detection``, fast mode's catches);
    * localisation at P~20000 within 200 evaluations, at the right element.
    """
    out = []
    for label, num, den, near, limit in (
        ("full check <= 0.3x gradcheck slow at P~5000", "gradverify full (torch)", "torch gradcheck", 5000, 0.3),
        ("fast mode <= 3x gradcheck fast at P~20000", "gradverify fast (torch)", "torch gradcheck fast", 20000, 3.0),
    ):
        a, b = _cell(timing, num, near), _cell(timing, den, near)
        row = {"target": label, "limit": limit, "ratio": None, "cpu_ratio": None, "met": None, "params": None}
        if a and b:
            row.update(ratio=a["seconds"] / b["seconds"], cpu_ratio=a["cpu_seconds"] / b["cpu_seconds"],
                       params=a["params"])
            row["met"] = row["ratio"] <= limit
        out.append(row)
    if detection:
        fast = [r for r in detection if r["method"].startswith("gradverify fast")]
        caught = all(r["failed"] == r["runs"] for r in fast if r["case"] != "correct" and r["runs"])
        clean = all(r["failed"] == 0 for r in fast if r["case"] == "correct")
        out.append({"target": "(informational) fast mode catches both MLP bugs at every seed, no false alarm",
                    "met": caught and clean if fast else None})
    if located:
        rows = [r for r in located if r["detected"]]
        p = located[0]["params"]
        out.append({"target": f"localisation of a detected wrong element within 200 evaluations (P={p})",
                    "limit": 200, "evaluations": max((r["evaluations"] for r in rows), default=None),
                    "smallest_detected_error": min((r["error"] for r in rows), default=None),
                    "met": all(r["correct"] and r["evaluations"] <= 200 for r in rows) if rows else None})
    return out


def environment() -> dict:
    """Versions and machine, for reproducing a table."""
    env = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "platform": platform.platform()}
    for mod in ("torch", "jax"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    try:
        env["load_average"] = os.getloadavg()
    except OSError:
        pass
    return env


def run_all(*, params: Sequence[int] = DEFAULT_PARAMS, methods: Sequence[str] | None = None, repeats: int = 5,
            budget_s: float = DEFAULT_BUDGET_S, detection_params: int = 5000, seeds: int = 3,
            localisation_params: int = 20000, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Threads pinned, then :func:`time_checkers`, :func:`detection_table`, :func:`localisation`, :func:`targets`.

    Returns ``{"pinned", "environment", "timing", "detection",
    "localisation", "targets", "seconds"}``. Cost: see the module docstring.
    """
    start = time.perf_counter()
    pinned = pin_threads()
    timing = time_checkers(params, methods, repeats=repeats, budget_s=budget_s, seed=seed, progress=progress)
    detection = detection_table(detection_params, methods, seeds=seeds, seed=seed, progress=progress)
    fws = sorted({m.framework for m in _methods(methods)})
    located = localisation(localisation_params, frameworks=fws, seed=seed)
    return {"pinned": pinned, "environment": environment(), "timing": timing, "detection": detection,
            "localisation": located, "targets": targets(timing, detection, located),
            "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------
# small checks: a sweep of small operators, and where a check's time goes
# ---------------------------------------------------------------------------

def _small_ops():
    """``(name, fn, shapes)`` of small torch operators (inputs drawn where each is smooth)."""
    import torch

    un = [("sin", torch.sin), ("cos", torch.cos), ("tanh", torch.tanh), ("exp", torch.exp),
          ("sigmoid", torch.sigmoid), ("softplus", torch.nn.functional.softplus), ("atan", torch.atan),
          ("log1p_sq", lambda x: torch.log1p(x * x)), ("sqrt_sq", lambda x: torch.sqrt(1 + x * x)),
          ("erf", torch.erf), ("sinh", torch.sinh), ("square", torch.square), ("cumsum", lambda x: x.cumsum(-1)),
          ("cumprod", lambda x: x.cumprod(-1)), ("softmax", lambda x: torch.softmax(x, -1)),
          ("log_softmax", lambda x: torch.log_softmax(x, -1)), ("logsumexp", lambda x: x.logsumexp(-1)),
          ("norm", lambda x: x.norm()), ("mean_sq", lambda x: (x * x).mean(-1)), ("prod", lambda x: x.prod(-1)),
          ("flip", lambda x: x.flip(-1)), ("roll", lambda x: x.roll(1, -1)), ("pow3", lambda x: x ** 3),
          ("reciprocal_sq", lambda x: 1 / (1 + x * x)), ("gelu", torch.nn.functional.gelu),
          ("silu", torch.nn.functional.silu), ("layer_norm", lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:]))]
    bi = [("add", torch.add), ("mul", torch.mul), ("div_sq", lambda a, b: a / (1 + b * b)),
          ("atan2_sq", lambda a, b: torch.atan2(a, 1 + b * b)), ("hypot_sq", lambda a, b: torch.hypot(a, 1 + b * b)),
          ("max_smooth", lambda a, b: torch.logaddexp(a, b))]
    mm = [("mm", torch.mm), ("linear", lambda a, b: torch.nn.functional.linear(a, b))]
    out = []
    for shape in ((10,), (3, 4), (2, 3, 5), (100,)):
        out += [(f"{n}{list(shape)}", f, [shape]) for n, f in un]
        out += [(f"{n}{list(shape)}", f, [shape, shape]) for n, f in bi]
    out += [("mm[3x4 @ 4x5]", mm[0][1], [(3, 4), (4, 5)]), ("linear[6x4, 3x4]", mm[1][1], [(6, 4), (3, 4)]),
            ("mm[8x8 @ 8x8]", mm[0][1], [(8, 8), (8, 8)])]
    return out


def _as_function(fn, arity):
    """``fn`` wrapped in an old-style ``torch.autograd.Function`` (``forward(ctx, ...)``, no vmap rule).

    Its backward differentiates ``fn`` with torch autograd, so the gradient is
    right; vmap refuses the Function, so a check's batched evaluations run
    along the batch axis where ``fn`` broadcasts over a leading axis, else
    one by one (:mod:`gradverify.batching`).
    """
    import torch

    class Wrapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            return fn(*xs)

        @staticmethod
        def backward(ctx, g):
            xs = [x.detach().requires_grad_(True) for x in ctx.saved_tensors]
            with torch.enable_grad():
                y = fn(*xs)
            return torch.autograd.grad(y, xs, g, allow_unused=True)

    return Wrapped.apply


def small_sweep(*, repeats: int = 5, wrapped: bool = True, seed: int = 0,
                progress: Callable[[str], None] | None = None, options: dict | None = None) -> list[dict]:
    """The default check against ``gradcheck`` (slow and fast) on each small operator sample, side by side.

    For every sample of :func:`_small_ops` (and, with ``wrapped``, the same
    operators wrapped in an old-style ``autograd.Function`` without a vmap
    rule: no vmap, the batch axis or the loop), one warm-up of each checker, then
    ``repeats`` rounds taking the three checkers in turn. Returns one row
    per sample: ``name``, ``kind`` (``"op"``/``"Function"``), ``size``
    (elements checked), median seconds of ``gradverify`` (the default
    ``check``, or with ``options``: ``{"mode": "full", "against": "fd"}``
    times finite differences of every element, where batching shows),
    ``gradcheck`` and ``gradcheck_fast``, gradverify's ``evaluations``,
    ``passed`` and ``reference``. Cost: a few seconds.
    """
    import torch

    import gradverify as gv

    rng = np.random.default_rng(seed)
    say = progress or (lambda s: None)
    rows = []
    samples = [(n, f, s, "op") for n, f, s in _small_ops()]
    if wrapped:
        samples += [(n, _as_function(f, len(s)), s, "Function") for n, f, s in _small_ops() if "100" not in n]
    for name, fn, shapes, kind in samples:
        xs = [torch.tensor(rng.standard_normal(s) * 0.8, requires_grad=True) for s in shapes]
        runs = {"gradverify": lambda: gv.check(fn, xs, **(options or {})),
                "gradcheck": lambda: torch.autograd.gradcheck(fn, xs, raise_exception=False),
                "gradcheck_fast": lambda: torch.autograd.gradcheck(fn, xs, fast_mode=True, raise_exception=False)}
        times = {k: [] for k in runs}
        result = runs["gradverify"]()
        for k in ("gradcheck", "gradcheck_fast"):
            runs[k]()
        for _ in range(max(1, repeats)):
            for k, run in runs.items():
                t = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - t)
        row = {"name": name, "kind": kind, "size": sum(int(np.prod(s)) for s in shapes),
               **{k: statistics.median(v) for k, v in times.items()}, "evaluations": result.evaluations,
               "passed": result.passed, "reference": result.reference, "mode": result.mode}
        rows.append(row)
        say(f"{kind:<8} {name:<24} gv {row['gradverify'] * 1e3:.3g} ms, gradcheck {row['gradcheck'] * 1e3:.3g} ms")
    return rows


def small_summary(rows: list[dict]) -> list[dict]:
    """Per kind (and all together): median of per-sample ratios gradverify / gradcheck, and the ratio of totals."""
    out = []
    for kind in sorted({r["kind"] for r in rows}) + ["all"]:
        sel = [r for r in rows if kind in ("all", r["kind"])]
        ratios = [r["gradverify"] / r["gradcheck"] for r in sel]
        out.append({"kind": kind, "samples": len(sel), "median_ratio": statistics.median(ratios),
                    "min_ratio": min(ratios), "max_ratio": max(ratios),
                    "total_ratio": sum(r["gradverify"] for r in sel) / sum(r["gradcheck"] for r in sel),
                    "total_ratio_fast": sum(r["gradverify"] for r in sel) / sum(r["gradcheck_fast"] for r in sel),
                    "gradverify_s": sum(r["gradverify"] for r in sel), "gradcheck_s": sum(r["gradcheck"] for r in sel),
                    "all_passed": all(r["passed"] for r in sel)})
    return out


#: The stages :func:`stage_breakdown` times: ``(module attribute, label)``; nested stages are subtracted from
#: the stage that calls them (exclusive times).
STAGES = (
    ("callable_target", "adapt the code (target, inputs copied)"),
    ("_first_evaluation", "first evaluation, determinism re-run (+ mutation probe)"),
    ("_draw_cotangent", "cotangent"),
    ("_analytic_pass", "analytic pass (backward twice: reproducibility)"),
    ("_exact_verdict", "exact reference"),
    ("_check_reference", "exact reference checked by finite differences"),
    ("_predict_full", "prediction of a full check (one batched call timed)"),
    ("function_noise", "noise measurement"),
    ("projected_gradients", "finite differences (screens, Richardson, step walks; full mode's comparison fed)"),
    ("_fast", "fast mode (projections, localisation)"),
    ("_second_opinion", "second opinion (Taylor test)"),
    ("_fd_run", "verdict (comparison, result)"),  # (full mode compares as the differences settle: above)
)


def stage_breakdown(fn, inputs, *, repeats: int = 20, **options) -> dict:
    """Where the time of ``gradverify.check(fn, inputs, **options)`` goes, stage by stage.

    Each stage of the pipeline (:data:`STAGES`) is wrapped, for the
    duration, in a timer that keeps exclusive time (a nested stage's time
    is not also counted in its caller's); ``other`` is the rest of the
    check. Returns ``{"total": median seconds, "stages": {label: median
    seconds}, "evaluations": ...}`` over ``repeats`` runs after a warm-up.
    """
    import gradverify as gv
    from gradverify import api, frameworks

    spent: dict[str, float] = {}
    stack: list[list] = []

    def timed(label, f):
        def wrapper(*a, **k):
            frame = [label, 0.0]
            stack.append(frame)
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                d = time.perf_counter() - t
                stack.pop()
                spent[label] = spent.get(label, 0.0) + d - frame[1]
                if stack:
                    stack[-1][1] += d
        return wrapper

    owners = {"callable_target": frameworks}
    saved = []
    for attr, label in STAGES:
        mod = owners.get(attr, api)
        if hasattr(mod, attr):
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, timed(label, getattr(mod, attr)))
    per: dict[str, list] = {label: [] for _, label in STAGES}
    per["other"] = []
    totals = []
    try:
        result = gv.check(fn, inputs, **options)
        for _ in range(max(1, repeats)):
            spent.clear()
            t = time.perf_counter()
            result = gv.check(fn, inputs, **options)
            total = time.perf_counter() - t
            totals.append(total)
            for _, label in STAGES:
                per[label].append(spent.get(label, 0.0))
            per["other"].append(total - sum(spent.values()))
    finally:
        for mod, attr, f in reversed(saved):
            setattr(mod, attr, f)
    return {"total": statistics.median(totals), "min": min(totals), "max": max(totals),
            "stages": {k: statistics.median(v) for k, v in per.items()}, "evaluations": result.evaluations,
            "reference": result.reference, "mode": result.mode, "passed": result.passed}


# ---------------------------------------------------------------------------
# scale: time and peak memory as P grows
# ---------------------------------------------------------------------------

#: Parameter counts of :func:`scale_sweep`.
SCALE_PARAMS = (20_000, 100_000, 500_000, 2_000_000, 8_000_000)


def _peak_rss_reset() -> bool:
    """Reset the process's peak resident size (Linux ``/proc/self/clear_refs``); whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def scale_sweep(params: Sequence[int] = SCALE_PARAMS, *, budget_s: float = DEFAULT_BUDGET_S, seed: int = 0,
                methods: Sequence[str] = ("gradverify fast (torch)", "torch gradcheck fast"),
                progress: Callable[[str], None] | None = None) -> list[dict]:
    """Seconds and peak memory of one check per method as ``P`` grows (the square MLP, float64).

    Peak memory is the growth of the process's peak resident size during
    the check (``VmHWM`` after resetting it through ``/proc/self/clear_refs``;
    None where the system does not offer that), beside the size of the
    parameters checked (``inputs_mib``). A method is skipped at the sizes
    after one whose run exceeded ``budget_s``. Returns one row per (method,
    size). Cost: one check per method and size (plus the MLP's setup).
    """
    chosen = _methods(methods)
    say = progress or (lambda s: None)
    rows, stopped = [], {}
    for p in params:
        mlp = make_mlp(p, seed, narrow=False)
        inputs_mib = mlp.size * 8 / 2**20
        for m in chosen:
            row = {"method": m.name, "params": mlp.size, "seconds": None, "peak_mib": None,
                   "inputs_mib": inputs_mib, "peak_ratio": None, "passed": None, "note": ""}
            rows.append(row)
            if not _available(m.framework):
                row["note"] = f"{m.framework} is not installed"
                continue
            if m.name in stopped:
                row["note"] = stopped[m.name]
                continue
            run = m.prepare(mlp, None, seed)
            say(f"P={mlp.size} {m.name}")
            import gc

            gc.collect()
            ok = _peak_rss_reset()
            before = _rss_kib("VmRSS")
            t = time.perf_counter()
            passed, _, _ = run()
            row["seconds"] = time.perf_counter() - t
            peak = _rss_kib("VmHWM")
            row["passed"] = passed
            if ok and before is not None and peak is not None:
                row["peak_mib"] = max(0, peak - before) / 1024
                row["peak_ratio"] = row["peak_mib"] / inputs_mib
            if row["seconds"] > budget_s:
                stopped[m.name] = f"a smaller size took {row['seconds']:.3g} s > budget {budget_s:g} s"
            del run
    return rows
