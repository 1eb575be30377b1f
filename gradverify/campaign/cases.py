"""One campaign case: its identity, how it is drawn, and how a worker runs it.

A case is identified by its **index** in the campaign; everything else
follows from ``(campaign seed, index)``:

* its seed: :func:`case_seed` (``numpy.random.SeedSequence([seed, index])``);
* its kind: the campaign's kinds taken in turn (``index % len(kinds)``), so a
  budget cut leaves every kind represented;
* its spec: :func:`draw_spec` draws it from the kind's Hypothesis strategy
  with that seed -- the same spec on any machine, in any process, at any
  time, which is what makes ``--resume`` and worker retries give the same
  set of cases as an uninterrupted run.

:func:`run_case` is the Dask task: it takes a small plain dict (index, seed,
kind, backends, dtype -- a few hundred bytes) and returns one JSON-ready
record. A disagreement is shrunk on the worker (:mod:`.shrink`) before the
record goes back. Cost: drawing a spec is ~70 ms (a short seeded Hypothesis
run); a case is then one :func:`gradverify.backends.agreement.agreement`.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["KINDS", "PAIRS", "case_seed", "kind_of", "draw_spec", "run_case", "make_task", "pair_verdicts",
           "reproduction"]

#: Spec kinds a differential campaign draws from.
KINDS = ("networks", "expressions")

#: Pair labels in report order (``fd~x``: backend ``x`` against finite differences).
PAIRS = ("reference~torch", "reference~jax", "torch~jax", "fd~reference", "fd~torch", "fd~jax")

_SETUP_DONE: dict[str, Any] = {}


def case_seed(campaign_seed: int, index: int) -> int:
    """The seed of case ``index`` of a campaign seeded ``campaign_seed`` (a 31-bit integer)."""
    state = np.random.SeedSequence([int(campaign_seed), int(index)]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def kind_of(kinds: Sequence[str], index: int) -> str:
    """The kind of case ``index``: the kinds taken in turn."""
    return kinds[index % len(kinds)]


def make_task(cfg: dict[str, Any], index: int) -> dict[str, Any]:
    """The plain dict sent to a worker for case ``index`` (see :func:`run_case`)."""
    task = {"index": index, "seed": case_seed(cfg["seed"], index), "backends": list(cfg["backends"]),
            "dtype": cfg.get("dtype", "float64"), "jax_cache": cfg.get("jax_cache"), "shrink": cfg.get("shrink", True)}
    if cfg.get("target"):
        task.update(kind="target", target=cfg["target"], input_shape=list(cfg["input_shape"]), cwd=cfg.get("cwd"))
    else:
        task["kind"] = kind_of(cfg["kinds"], index)
    return task


def _strategy(kind: str) -> Any:
    from ..strategies import expressions, networks

    if kind == "networks":
        return networks()
    if kind == "expressions":
        return expressions(max_leaves=8, max_depth=5)
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")


_DRAW_LOCK = threading.Lock()
_OWN_CONSTANTS: dict = {}


@contextlib.contextmanager
def _without_local_constants() -> Iterator[None]:
    """Hypothesis without the constants it collects from the modules loaded in this process.

    Hypothesis (6.1xx) sometimes draws a literal found in any "local" module
    that happens to be imported, so the same seed would draw different specs
    in the campaign's client, a Dask worker and a test process. A case must be
    the same everywhere, so while a case is drawn the pool of local constants
    is empty (and the cache built from it is this module's own). Where
    Hypothesis has no such pool, nothing is changed.
    """
    try:
        from hypothesis.internal.conjecture import providers as P

        empty = type(P._local_constants)(integers=type(P._local_constants.integers)(), floats=type(
            P._local_constants.floats)(key=P.float_to_int), bytes=type(P._local_constants.bytes)(),
            strings=type(P._local_constants.strings)())
        saved = (P._get_local_constants, P.CONSTANTS_CACHE)
    except Exception:  # noqa: BLE001 - another Hypothesis: no pool to empty
        yield
        return
    with _DRAW_LOCK:
        P._get_local_constants, P.CONSTANTS_CACHE = (lambda: empty), _OWN_CONSTANTS
        try:
            yield
        finally:
            P._get_local_constants, P.CONSTANTS_CACHE = saved


class _Drawn(Exception):
    """Stops the seeded Hypothesis run once the wanted example is drawn."""


def draw_spec(kind: str, seed: int) -> Any:
    """The spec of kind ``kind`` (``"networks"`` or ``"expressions"``) drawn with ``seed``: deterministic.

    Runs the kind's strategy under ``hypothesis.seed(seed)`` in the generate
    phase only (no database) and keeps its ``5 + seed % 6``-th example
    (Hypothesis starts with its simplest examples, which are skipped).
    """
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hseed

    nth = 5 + seed % 6
    got: list[Any] = []

    @hseed(seed)
    @settings(max_examples=nth + 50, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False)
    @given(_strategy(kind))
    def draw(spec: Any) -> None:
        got.append(spec)
        if len(got) >= nth:
            raise _Drawn

    with _without_local_constants():
        try:
            draw()
        except _Drawn:
            pass
    if not got:
        raise RuntimeError(f"no {kind} example could be drawn with seed {seed}")
    return got[min(nth, len(got)) - 1]


def _setup(jax_cache: str | None) -> None:
    """Once per worker process: one thread for torch and TensorFlow; the shared JAX compilation cache."""
    if _SETUP_DONE.get("done"):
        return
    import importlib.util
    import warnings

    warnings.filterwarnings("ignore")
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
    if importlib.util.find_spec("tensorflow") is not None:
        # Before TensorFlow's first op: each worker has one core, and TF's own pools would
        # oversubscribe it (set only here, in the worker, so importing gradverify costs nothing).
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    if jax_cache and importlib.util.find_spec("jax") is not None:
        import jax

        # Every compiled XLA executable kept on disk, shared by all workers that see the directory:
        # compilation is most of a cold case's time.
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(jax_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _SETUP_DONE["done"] = True


def _num(x: float) -> Any:
    x = float(x)
    return x if math.isfinite(x) else str(x)


def pair_verdicts(agreement: Any) -> dict[str, dict[str, Any]]:
    """Pair label -> ``{"status", "ratio", "max_abs_err", "scaled_err"}`` over the pair's quantities.

    The status is ``"fail"`` if any quantity failed, else ``"nondiff"`` if any
    met a kink, else ``"pass"``; the errors are the largest over quantities.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in agreement.results:
        label = f"{r.b}~{r.a}" if r.quantity == "fd" else r.pair
        cur = out.setdefault(label, {"status": "pass", "ratio": 0.0, "max_abs_err": 0.0, "scaled_err": 0.0})
        if r.status == "fail":
            cur["status"] = "fail"
        elif r.status != "pass" and cur["status"] == "pass":
            cur["status"] = r.status
        for k in ("ratio", "max_abs_err", "scaled_err"):
            cur[k] = max(cur[k], float(getattr(r, k)))
    return {k: {kk: _num(vv) if isinstance(vv, float) else vv for kk, vv in v.items()} for k, v in out.items()}


def reproduction(task: dict[str, Any], spec: Any = None) -> str:
    """A runnable snippet (or command) that reruns the case of ``task``."""
    if task["kind"] == "target":
        shape = ",".join(str(s) for s in task["input_shape"])
        return f"gradverify check {task['target']} --input-shape {shape} --seed {task['seed']}"
    from ..spec import snippet

    if spec is None:
        return ("from gradverify.campaign.cases import draw_spec\n"
                "from gradverify.backends.agreement import agreement\n"
                f"spec = draw_spec({task['kind']!r}, {task['seed']})\n"
                f"print(agreement(spec, backends={tuple(task['backends'])!r}, dtype={task['dtype']!r}, "
                f"seed={task['seed']}).summary())\n")
    return snippet(spec, backends=tuple(task["backends"]), dtype=task["dtype"], seed=task["seed"])


def _run_spec(task: dict[str, Any], rec: dict[str, Any]) -> None:
    from ..backends.agreement import agreement

    spec = draw_spec(task["kind"], task["seed"])
    rec["repr"] = repr(spec)
    rec["spec"] = spec.to_dict()
    a = agreement(spec, backends=task["backends"], dtype=task["dtype"], seed=task["seed"])
    rec["pairs"] = pair_verdicts(a)
    rec["skipped"] = [list(s) for s in a.skipped]
    rec["status"] = "pass" if a.passed else "disagree"
    if not a.passed:
        rec["failures"] = [r.to_dict() for r in a.failures()]
        rec["snippet"] = a.snippet()
        if task.get("shrink", True):
            from .shrink import shrink_disagreement

            rec["shrunk"] = shrink_disagreement(spec, a, backends=task["backends"], dtype=task["dtype"],
                                                seed=task["seed"])


def _run_target(task: dict[str, Any], rec: dict[str, Any]) -> None:
    from .. import check_layer
    from ..cli import load_layer

    if task.get("cwd") and task["cwd"] not in sys.path:
        sys.path.insert(0, task["cwd"])                  # module:NAME targets import as from the client's cwd
    target = task["target"]
    where, _, name = target.rpartition(":")
    if task.get("cwd") and (where.endswith(".py") or os.sep in where) and not os.path.isabs(where):
        target = os.path.join(task["cwd"], where) + ":" + name
    layer = load_layer(target)
    res = check_layer(layer, tuple(task["input_shape"]), seed=task["seed"])
    w = res.worst
    rec["pairs"] = {"fd~target": {"status": res.status,
                                  "ratio": _num(0.0 if w is None else w.ratio),
                                  "max_abs_err": _num(0.0 if w is None else w.abs_err), "scaled_err": 0.0}}
    rec["status"] = "pass" if res.passed else "disagree"
    rec["snippet"] = reproduction(task)
    if not res.passed:
        rec["failures"] = [{"a": "target", "b": "fd", "quantity": "fd", "status": res.status,
                            "worst": "" if w is None else f"{w.input}[{', '.join(str(i) for i in w.index)}]",
                            "worst_a": _num(math.nan if w is None else w.analytic),
                            "worst_b": _num(math.nan if w is None else w.numeric),
                            "ratio": _num(0.0 if w is None else w.ratio), "detail": str(res)}]


def run_case(task: dict[str, Any]) -> dict[str, Any]:
    """Run one case (the Dask task); never raises for a failure of the code under test.

    Args:
        task: from :func:`make_task`.

    Returns:
        The case's record: ``type`` ``"case"``, ``index``, ``seed``, ``kind``,
        ``status`` (``"pass"``, ``"disagree"`` or ``"error"``), ``pairs``
        (verdict and errors per pair), ``worst_ratio``, ``seconds``, the spec
        (``repr``, ``spec``), and for a disagreement ``failures``,
        ``snippet`` and ``shrunk``.
    """
    _setup(task.get("jax_cache"))
    start = time.perf_counter()
    rec: dict[str, Any] = {"type": "case", "index": task["index"], "seed": task["seed"], "kind": task["kind"]}
    try:
        if task["kind"] == "target":
            _run_target(task, rec)
        else:
            _run_spec(task, rec)
    except Exception as exc:  # noqa: BLE001 - a backend or the code under test raised: recorded, not lost
        rec["status"] = "error"
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc(limit=8)
        rec.setdefault("snippet", reproduction(task))
    ratios = [float(p["ratio"]) for p in rec.get("pairs", {}).values()]
    rec["worst_ratio"] = _num(max(ratios, default=0.0))
    rec["seconds"] = round(time.perf_counter() - start, 4)
    rec["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    rec["finished"] = time.time()
    return rec
