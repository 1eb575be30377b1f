"""Check every reference model twice: against finite differences and against the engine.

For each model :func:`run_all` runs

1. ``gradverify.check_layer`` (or ``check_pair`` for the function pairs):
   the hand-written backward against float64 finite differences;
2. the hand-written backward against the reference engine's VJP, computed by
   ``E.vjp`` on the model's ``engine_forward``, with the *same* seeded
   cotangent, compared by ``gradverify.compare_gradients(...,
   reference_name="engine")``; the forward values are compared the same way
   first (labelled ``"output"``), since a gradient of a different function
   proves nothing.

Cost: a finite-difference check costs O(P + input size) forward passes per
model, the engine comparison one forward and one backward of each side; the
whole suite runs in a few seconds.

The rows are plain dicts (``model``, ``params``, ``engine_rel_err``,
``fd_rel_err``, ``verdict``, ``seconds``, ``detail``) so tests, the
``__main__`` table and reports all read the same values.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable

import numpy as np

from . import egraph
from .attention import SelfAttention
from .cnn import Conv2D, Dense, MaxPool2D, ReLU, SmallCNN
from .normalization import BatchNorm, LayerNorm
from .rnn import VanillaRNN
from .sigmoid_network import (SigmoidNetwork, make_toy_problem, quadratic_cost_backward,
                              quadratic_cost_engine, quadratic_cost_forward)
from .softmax_classifier import SoftmaxClassifier

__all__ = ["layer_cases", "run_all", "engine_gradients_layer", "engine_gradients_pair",
           "hand_gradients_layer", "hand_gradients_pair", "train_demo", "format_table", "main"]

SEED = 0


def layer_cases() -> list[tuple[str, Any]]:
    """The layer-protocol models checked by :func:`run_all`: ``(name, layer)`` pairs."""
    return [
        ("sigmoid_net_3_4_2", SigmoidNetwork()),
        ("softmax_ce", SoftmaxClassifier()),
        ("conv2d_s2_p1", Conv2D(2, 3, 3, stride=2, padding=1, input_hw=(7, 7))),
        ("relu", ReLU()),
        ("maxpool2d", MaxPool2D(2, 2)),
        ("dense", Dense()),
        ("small_cnn", SmallCNN()),
        ("vanilla_rnn_bptt", VanillaRNN()),
        ("layer_norm", LayerNorm()),
        ("batch_norm_train", BatchNorm()),
        ("attention", SelfAttention()),
        ("small_cnn_f32", SmallCNN(dtype=np.float32)),
        ("attention_f32", SelfAttention(dtype=np.float32)),
    ]


def _pair_cases() -> list[tuple[str, Callable, Callable, Callable, tuple[str, ...], tuple]]:
    """``(name, forward, backward, engine_fn, input names, inputs)`` for the function pairs."""
    rng = np.random.default_rng(SEED)
    a, y = rng.uniform(0.05, 0.95, (2, 5)), rng.uniform(0.0, 1.0, (2, 5))
    ea, eb = rng.standard_normal(4), rng.standard_normal(4)
    return [
        ("quadratic_cost", quadratic_cost_forward, quadratic_cost_backward,
         quadratic_cost_engine, ("a", "y"), (a, y)),
        ("egraph_(a+b)(b+1)", egraph.forward, egraph.backward,
         egraph.engine_forward, ("a", "b"), (ea, eb)),
    ]


# -- hand and engine gradients under one cotangent ----------------------------------


def _cotangent(shape, dtype, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def hand_gradients_layer(layer, x: np.ndarray, seed: int = SEED):
    """Forward, then the hand backward under a seeded cotangent ``u``.

    Returns:
        ``(y, u, grads)`` with ``grads = {"x": dx, **layer.grads}``.
    """
    y = np.asarray(layer.forward(x.copy()))
    u = _cotangent(y.shape, y.dtype, seed)
    dx = layer.backward(u.copy())
    return y, u, {"x": dx, **{k: layer.grads[k] for k in layer.params}}


def _to_numpy(value) -> np.ndarray:
    for attr in ("data", "value"):
        if not isinstance(value, np.ndarray) and hasattr(value, attr):
            value = getattr(value, attr)
    return np.asarray(value)


def engine_gradients_layer(E, layer, x: np.ndarray, u: np.ndarray):
    """The engine's output and VJP of ``layer.engine_forward`` at ``(x, params)`` along ``u``.

    Returns:
        ``(y, grads)`` with ``grads`` keyed like :func:`hand_gradients_layer`.
    """
    names = list(layer.params)

    def f(x_, *ps):
        return layer.engine_forward(E, dict(zip(names, ps)), x_)

    out, vjp_fn = E.vjp(f, x.copy(), *[np.array(layer.params[k]) for k in names])
    grads = vjp_fn(u.copy())
    return _to_numpy(out), {k: _to_numpy(g) for k, g in zip(["x", *names], grads)}


def hand_gradients_pair(forward, backward, names, inputs, seed: int = SEED):
    """Forward and backward of a function pair under a seeded cotangent."""
    out, cache = forward(*[np.array(v) for v in inputs])
    out = np.asarray(out)
    u = _cotangent(out.shape, out.dtype, seed)
    return out, u, dict(zip(names, backward(u.copy(), cache)))


def engine_gradients_pair(E, engine_fn, names, inputs, u):
    """The engine's output and VJP of ``engine_fn(E, *inputs)`` along ``u``."""
    out, vjp_fn = E.vjp(lambda *xs: engine_fn(E, *xs), *[np.array(v) for v in inputs])
    return _to_numpy(out), {k: _to_numpy(g) for k, g in zip(names, vjp_fn(u.copy()))}


# -- the table ----------------------------------------------------------------------------


def _max_rel(result) -> float:
    errs = [s.max_rel_err for s in getattr(result, "inputs", ()) if s.checked]
    if errs:
        return float(max(errs))
    return float(result.worst.rel_err) if result.worst is not None else 0.0


def _engine_row(gv, E, y_hand, hand, engine_call) -> tuple[float, bool, str]:
    """Compare forward values then gradients with the engine; (rel err, ok, detail)."""
    if E is None:
        return float("nan"), False, "engine: gradverify.engine not importable"
    try:
        y_eng, eng = engine_call()
    except Exception as exc:   # an engine gap is reported in the row, not raised
        return float("nan"), False, f"engine: {type(exc).__name__}: {exc}"
    fwd = gv.compare_gradients({"output": y_hand}, {"output": y_eng}, reference_name="engine")
    res = gv.compare_gradients(hand, eng, reference_name="engine")
    ok = fwd.passed and res.passed
    detail = "" if ok else ("engine forward differs:\n" + str(fwd) if not fwd.passed else str(res))
    return max(_max_rel(fwd), _max_rel(res)), ok, detail


def _import_engine():
    try:
        import gradverify.engine as E
    except Exception:          # noqa: BLE001 - reported per row
        return None
    return E


def run_all(seed: int = SEED) -> list[dict]:
    """Check every reference model against finite differences and the engine.

    Cost: one finite-difference check and one engine VJP per model (a few
    seconds in all).

    Returns:
        One dict per model: ``model``, ``params`` (P, scalar parameters),
        ``engine_rel_err``, ``fd_rel_err``, ``verdict`` (``"PASS"`` or
        ``"FAIL"``), ``seconds`` and ``detail`` (the failing check's
        table, empty when it passed).
    """
    import gradverify as gv
    E = _import_engine()
    rows = []
    for name, layer in layer_cases():
        t0 = time.perf_counter()
        x = layer.example_input(seed)
        details = []
        try:
            fd = gv.check_layer(layer, inputs=x.copy(), seed=seed)
            fd_err, fd_ok = _max_rel(fd), fd.passed
            if not fd_ok:
                details.append(str(fd))
        except Exception as exc:  # noqa: BLE001 - a crash is a FAIL row
            fd_err, fd_ok = float("nan"), False
            details.append(f"fd: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
        y, u, hand = hand_gradients_layer(layer, x, seed)
        en_err, en_ok, det = _engine_row(gv, E, y, hand,
                                         lambda: engine_gradients_layer(E, layer, x, u))
        if det:
            details.append(det)
        rows.append(dict(model=name, params=layer.num_params, engine_rel_err=en_err,
                         fd_rel_err=fd_err, verdict="PASS" if fd_ok and en_ok else "FAIL",
                         seconds=time.perf_counter() - t0, detail="\n".join(details)))
    for name, fwd_fn, bwd_fn, eng_fn, names, inputs in _pair_cases():
        t0 = time.perf_counter()
        details = []
        try:
            fd = gv.check_pair(fwd_fn, bwd_fn, tuple(np.array(v) for v in inputs), seed=seed)
            fd_err, fd_ok = _max_rel(fd), fd.passed
            if not fd_ok:
                details.append(str(fd))
        except Exception as exc:  # noqa: BLE001
            fd_err, fd_ok = float("nan"), False
            details.append(f"fd: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
        y, u, hand = hand_gradients_pair(fwd_fn, bwd_fn, names, inputs, seed)
        en_err, en_ok, det = _engine_row(gv, E, y, hand,
                                         lambda: engine_gradients_pair(E, eng_fn, names, inputs, u))
        if det:
            details.append(det)
        ok = fd_ok and en_ok
        if fwd_fn is egraph.forward:        # the worked example, exactly
            p = egraph.EXAMPLE_POINT
            e, cache = egraph.forward(p["a"], p["b"])
            da, db = egraph.backward(1.0, cache)
            exact = (float(e), float(da), float(db)) == (p["e"], p["de/da"], p["de/db"])
            if not exact:
                details.append(f"egraph at a=2, b=1: e={e}, de/da={da}, de/db={db} (want 6, 2, 5)")
            ok = ok and exact
        rows.append(dict(model=name, params=0, engine_rel_err=en_err, fd_rel_err=fd_err,
                         verdict="PASS" if ok else "FAIL", seconds=time.perf_counter() - t0,
                         detail="\n".join(details)))
    return rows


def train_demo(epochs: int = 8, seed: int = SEED) -> list[float]:
    """Train the 3-4-2 sigmoid network by mini-batch SGD on the seeded toy problem.

    200 examples, mini-batches of 10, eta = 3.0. Cost: ``epochs`` passes over
    200 examples (milliseconds).

    Returns:
        The training cost before training, then after each epoch.
    """
    X, Y = make_toy_problem(200, seed=seed)
    net = SigmoidNetwork(seed=seed)
    return [net.cost(X, Y)] + net.sgd((X, Y), epochs, 10, 3.0, seed=seed)


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    head = f"{'model':<20} {'P':>5} {'rel err vs engine':>18} {'rel err vs FD':>14} {'verdict':>8} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<20} {r['params']:>5} {r['engine_rel_err']:>18.2e} "
                     f"{r['fd_rel_err']:>14.2e} {r['verdict']:>8} {r['seconds']:>8.3f}")
    return "\n".join(lines)


def main() -> int:
    """Print the table and the training curve; return 1 if any model failed."""
    t0 = time.perf_counter()
    rows = run_all()
    print(format_table(rows))
    for r in rows:
        if r["verdict"] != "PASS":
            print(f"\n--- {r['model']} FAILED ---\n{r['detail']}")
    costs = train_demo()
    print("\nSGD on the 3-4-2 sigmoid network (200 examples, batch 10, eta 3.0):")
    print("  " + "  ".join(f"epoch {i}: {c:.4f}" for i, c in enumerate(costs)))
    falling = costs[-1] < costs[0]
    if not falling:
        print("  cost did not fall: FAIL")
    n_fail = sum(r["verdict"] != "PASS" for r in rows) + (not falling)
    print(f"\n{len(rows)} models, {n_fail} failing, {time.perf_counter() - t0:.1f} s")
    return 1 if n_fail else 0
