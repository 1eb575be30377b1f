"""How fast is the reference engine's gradient? (forward + backward) / forward on a tanh MLP.

Run by hand (no timed assertions anywhere in the tests)::

    python benchmarks/engine_speed.py                  # P ~ 1k, 5k, 20k
    python benchmarks/engine_speed.py --params 1000 20000 50000 --repeat 31
    python benchmarks/engine_speed.py --json out.json  # also write the rows

The function: a tanh MLP with two hidden layers of width ``h`` (input width ``h``,
one output) on a batch of 8, float64, loss ``mean((y - target)**2)``; ``h`` is
chosen so the parameter count P = 2h^2 + 3h + 1 is close to each requested P.

Columns (per call, median over ``--repeat`` samples after a warm-up; each
sample times a loop long enough to last about ``--min-sample`` seconds; ``--clock cpu``
measures process CPU time instead of wall time, which a busy machine disturbs less):

* ``fwd``: the plain forward evaluation, ``E.numpy_pair(f)[0]`` (records nothing);
* ``vg``: ``E.value_and_grad(f, argnums=params)`` (forward trace + backward sweep);
  ``vg/fwd`` is the engine's ratio, the target being at most 3;
* ``vjp``: ``E.numpy_pair(f)[1](1.0, *arrays)``, what ``gradverify.check`` calls; it
  differentiates all eight inputs (``x`` and ``target`` too), so it does a little more work;
* ``numpy``: a hand-written numpy forward+backward of the same MLP (the floor);
* ``torch``: eager PyTorch in float64, ``torch.set_num_threads(1)``: ``t.fwd``
  under ``no_grad`` and ``t.f+b`` = forward + ``loss.backward()``; ``t.ratio`` is
  their quotient (only when torch is installed; imported inside this script).

Threads: BLAS/OpenMP pools are pinned to one thread through environment
variables set before numpy is imported (and threadpoolctl when installed); the
script prints what it pinned. Cost: a few seconds per size at the defaults.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradverify.engine as E  # noqa: E402

BATCH = 8


def width_for(p: int) -> int:
    """The hidden width h whose parameter count 2h^2 + 3h + 1 is closest to ``p``."""
    h = max(1, round((-3 + math.sqrt(9 + 8 * (p - 1))) / 4))
    return min((h - 1, h, h + 1), key=lambda w: abs(2 * w * w + 3 * w + 1 - p) if w > 0 else p)


def make_arrays(h: int, seed: int = 0) -> list[np.ndarray]:
    """[x, target, W1, b1, W2, b2, W3, b3] for width ``h``, float64, seeded."""
    rng = np.random.default_rng(seed)
    s = 1.0 / math.sqrt(h)
    return [rng.standard_normal((BATCH, h)), rng.standard_normal((BATCH, 1)),
            rng.standard_normal((h, h)) * s, rng.standard_normal(h) * 0.1,
            rng.standard_normal((h, h)) * s, rng.standard_normal(h) * 0.1,
            rng.standard_normal((h, 1)) * s, rng.standard_normal(1) * 0.1]


def mlp(x, target, W1, b1, W2, b2, W3, b3):
    """The loss, written with the engine's primitives (works on Tensors and ndarrays)."""
    a1 = E.tanh(x @ W1 + b1)
    a2 = E.tanh(a1 @ W2 + b2)
    y = a2 @ W3 + b3
    return E.mean(E.square(y - target))


def numpy_fwd_bwd(x, target, W1, b1, W2, b2, W3, b3):
    """Hand-written forward + backward of :func:`mlp` (the floor for any engine)."""
    a1 = np.tanh(x @ W1 + b1)
    a2 = np.tanh(a1 @ W2 + b2)
    r = a2 @ W3 + b3 - target
    loss = np.mean(r * r)
    dy = r * (2.0 / r.size)
    dW3, db3 = a2.T @ dy, dy.sum(0)
    d2 = (dy @ W3.T) * (1 - a2 * a2)
    dW2, db2 = a1.T @ d2, d2.sum(0)
    d1 = (d2 @ W2.T) * (1 - a1 * a1)
    dW1, db1 = x.T @ d1, d1.sum(0)
    return loss, (dW1, db1, dW2, db2, dW3, db3)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timeit(fn: Callable[[], Any], repeat: int, min_sample: float) -> dict[str, float]:
    """Per-call seconds: median, min and max over ``repeat`` samples, after a warm-up."""
    for _ in range(3):
        fn()
    number, t = 1, 0.0
    while True:                                       # calibrate the loop length
        t0 = clock()
        for _ in range(number):
            fn()
        t = clock() - t0
        if t >= min_sample / 2 or number >= 1 << 20:
            break
        number *= 2
    number = max(1, int(number * min_sample / max(t, 1e-9)))
    samples = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(number):
            fn()
        samples.append((clock() - t0) / number)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "loops": number, "repeat": repeat}


def torch_fns(arrays: list[np.ndarray]) -> tuple[Callable[[], Any], Callable[[], Any]] | None:
    """(forward under no_grad, forward + loss.backward()) in eager float64 torch, or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    x, target, *params = (torch.tensor(a, dtype=torch.float64) for a in arrays)
    for p in params:
        p.requires_grad_(True)
    W1, b1, W2, b2, W3, b3 = params

    def loss():
        a1 = torch.tanh(x @ W1 + b1)
        a2 = torch.tanh(a1 @ W2 + b2)
        y = a2 @ W3 + b3
        return torch.mean(torch.square(y - target))

    def fwd():
        with torch.no_grad():
            return loss()

    def fwd_bwd():
        for p in params:
            p.grad = None
        out = loss()
        out.backward()
        return out

    return fwd, fwd_bwd


def check_gradients(arrays: list[np.ndarray]) -> float:
    """Largest relative difference between the engine's and the hand-written gradient."""
    _, g_eng = E.value_and_grad(mlp, argnums=tuple(range(2, 8)))(*arrays)
    _, g_np = numpy_fwd_bwd(*arrays)
    return max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-300)) for a, b in zip(g_eng, g_np))


def run(sizes: list[int], repeat: int, min_sample: float, with_torch: bool,
        spread: bool = False) -> list[dict[str, Any]]:
    rows = []
    for p_req in sizes:
        h = width_for(p_req)
        arrays = make_arrays(h)
        p = sum(a.size for a in arrays[2:])
        fwd, vjp = E.numpy_pair(mlp)
        vg = E.value_and_grad(mlp, argnums=tuple(range(2, 8)))
        one = np.ones(())
        row: dict[str, Any] = {"P": p, "width": h, "batch": BATCH,
                               "max_rel_grad_diff_vs_numpy": check_gradients(arrays)}
        row["fwd"] = timeit(lambda: fwd(*arrays), repeat, min_sample)
        row["value_and_grad"] = timeit(lambda: vg(*arrays), repeat, min_sample)
        row["vjp"] = timeit(lambda: vjp(one, *arrays), repeat, min_sample)
        row["numpy_fwd_bwd"] = timeit(lambda: numpy_fwd_bwd(*arrays), repeat, min_sample)
        row["ratio"] = row["value_and_grad"]["median"] / row["fwd"]["median"]
        row["vjp_ratio"] = row["vjp"]["median"] / row["fwd"]["median"]
        tf = torch_fns(arrays) if with_torch else None
        if tf is not None:
            row["torch_fwd"] = timeit(tf[0], repeat, min_sample)
            row["torch_fwd_bwd"] = timeit(tf[1], repeat, min_sample)
            row["torch_ratio"] = row["torch_fwd_bwd"]["median"] / row["torch_fwd"]["median"]
            row["vg_over_torch"] = row["value_and_grad"]["median"] / row["torch_fwd_bwd"]["median"]
        rows.append(row)
        print_row(row, header=len(rows) == 1)
        if spread:
            print_spread(row)
    return rows


def _us(t: dict[str, float]) -> str:
    return f"{t['median'] * 1e6:8.1f}"


def print_spread(row: dict[str, Any]) -> None:
    keys = [k for k in ("fwd", "value_and_grad", "vjp", "numpy_fwd_bwd", "torch_fwd", "torch_fwd_bwd")
            if k in row]
    print("        min..max: " + ", ".join(
        f"{k} {row[k]['min'] * 1e6:.1f}..{row[k]['max'] * 1e6:.1f}" for k in keys), flush=True)


def print_row(row: dict[str, Any], header: bool) -> None:
    if header:
        print(f"{'P':>7} {'h':>4} | {'fwd':>8} {'vg':>8} {'vg/fwd':>6} {'vjp':>8} {'vjp/fwd':>7} "
              f"{'numpy':>8} | {'t.fwd':>8} {'t.f+b':>8} {'t.ratio':>7} {'vg/t.f+b':>8}"
              "   (us per call, median)")
    line = (f"{row['P']:>7} {row['width']:>4} | {_us(row['fwd'])} {_us(row['value_and_grad'])} "
            f"{row['ratio']:6.2f} {_us(row['vjp'])} {row['vjp_ratio']:7.2f} {_us(row['numpy_fwd_bwd'])} |")
    if "torch_fwd" in row:
        line += (f" {_us(row['torch_fwd'])} {_us(row['torch_fwd_bwd'])} {row['torch_ratio']:7.2f} "
                 f"{row['vg_over_torch']:8.2f}")
    else:
        line += "  (torch not installed)"
    print(line, flush=True)


def thread_report() -> dict[str, Any]:
    info: dict[str, Any] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        threadpool_limits(1)
        info["threadpools"] = [(d.get("internal_api"), d.get("num_threads")) for d in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed (environment variables only)"
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, nargs="+", default=[1000, 5000, 20000],
                    help="approximate parameter counts P (default: 1000 5000 20000)")
    ap.add_argument("--repeat", type=int, default=15, help="samples per measurement (median reported)")
    ap.add_argument("--min-sample", type=float, default=0.05, help="seconds per sample (loop length)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: time.perf_counter (default); cpu: time.process_time, the process's "
                         "CPU time, steadier on a loaded machine (everything runs on one thread)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch columns")
    ap.add_argument("--spread", action="store_true", help="also print min and max of every timing")
    ap.add_argument("--json", metavar="PATH", help="also write the rows (median/min/max) as JSON")
    args = ap.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    threads = thread_report()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cpus; clock {args.clock}; threads: {threads}")
    rows = run(args.params, args.repeat, args.min_sample, not args.no_torch, args.spread)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": threads, "numpy": np.__version__,
                                               "clock": args.clock,
                                               "command": " ".join(sys.argv), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
