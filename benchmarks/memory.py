"""Where a check's bytes go: tracemalloc peaks per stage and per path, as multiples of the inputs' size.

Each path checks a numpy function with ``vjp=`` (numpy allocations are
what tracemalloc sees): ``tanh(x @ W)`` at ``W`` n x n, ``x`` 8 x n.
Paths: fast mode, full mode, a planted bug in fast mode (probe
confirmation and bisection) and in full mode (the Taylor second opinion),
a function that draws random numbers (RNG replay) and a function that
writes into its input (the mutation probe's fallback) in both modes, and
a full check where every element of ``W`` is wrong (the comparison then
keeps every element until the end). For each, the whole check's peak
above the bytes held before the call (the caller's inputs already
allocated) and each stage's peak above the same base.

Run from the repository root: ``python benchmarks/memory.py [--n 300] [--full-n 200] [--paths ...]`` (full mode
at n = 200 takes about 30 s a path under tracemalloc).
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the gradverify of this checkout
import gradverify as gv  # noqa: E402
from gradverify import api, compare  # noqa: E402
from gradverify.references import elementwise, noise, projections  # noqa: E402

STAGES = [(api, "_first_evaluation"), (api, "_analytic_pass"), (api, "_fd_verdict"), (api, "_fast"),
          (api, "_second_opinion"), (api, "function_noise"), (projections, "directional_mismatches"),
          (projections, "taylor_test"), (api, "projected_gradients"), (elementwise, "projected_gradients"),
          (noise, "_table"), (compare.ComparisonStream, "result")]


def _inputs(n):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, n)), rng.standard_normal((n, n)) / np.sqrt(n)]


def f(x, w):
    return np.tanh(x @ w)


def vjp(dy, x, w):
    d = dy * (1 - np.tanh(x @ w) ** 2)
    return d @ w.T, x.T @ d


def vjp_bug(dy, x, w):
    dx, dw = vjp(dy, x, w)
    dw[1, 2] += 0.5  # (in place: dw is the vjp's own new array)
    return dx, dw


def vjp_all_wrong(dy, x, w):
    dx, dw = vjp(dy, x, w)
    return dx, dw * 1.01  # every element of W 1% off


_drop = np.random.default_rng(5)


def f_random(x, w):
    mask = _drop.random((x.shape[0], w.shape[1])) < 0.9
    return np.tanh(x @ w) * mask


def vjp_random(dy, x, w):
    mask = _drop.random((x.shape[0], w.shape[1])) < 0.9
    return vjp(dy * mask, x, w)


def f_writes(x, w):
    np.tanh(x, out=x)  # writes into its (small) input x: the mutation probe finds it, and x gets copies
    return np.tanh(x @ w)


def vjp_writes(dy, x, w):
    dz = dy * (1 - np.tanh(np.tanh(x) @ w) ** 2)
    return (dz @ w.T) * (1 - np.tanh(x) ** 2), np.tanh(x).T @ dz


PATHS = {
    "fast": (f, vjp, "fast"),
    "full": (f, vjp, "full"),
    "fast, planted bug (bisection)": (f, vjp_bug, "fast"),
    "full, planted bug (Taylor)": (f, vjp_bug, "full"),
    "fast, RNG replay": (f_random, vjp_random, "fast"),
    "fast, writes its input": (f_writes, vjp_writes, "fast"),
    "full, RNG replay": (f_random, vjp_random, "full"),
    "full, writes its input": (f_writes, vjp_writes, "full"),
    "full, every element of W wrong": (f, vjp_all_wrong, "full"),
}


def measure(name: str, n: int) -> dict:
    fn, jac, mode = PATHS[name]
    xs = _inputs(n)
    size = sum(a.nbytes for a in xs)
    gv.check(fn, [xs[0][:, :4].copy(), xs[1][:4, :4].copy()], vjp=jac, mode=mode, against="fd")  # warm caches
    seen: dict = {}
    active: list = []  # [stage, its peak so far] of the stages running now (reset_peak is global)
    originals = []
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for owner, attr in STAGES:
            orig = getattr(owner, attr)
            originals.append((owner, attr, orig))

            def wrapped(*a, _orig=orig, _attr=attr, **k):
                p = tracemalloc.get_traced_memory()[1]
                for fr in active:
                    fr[1] = max(fr[1], p)
                tracemalloc.reset_peak()
                frame = [_attr, tracemalloc.get_traced_memory()[0]]
                active.append(frame)
                try:
                    return _orig(*a, **k)
                finally:
                    active.remove(frame)
                    frame[1] = max(frame[1], tracemalloc.get_traced_memory()[1])
                    for fr in active:
                        fr[1] = max(fr[1], frame[1])
                    seen[_attr] = max(seen.get(_attr, 0), frame[1] - base)

            setattr(owner, attr, wrapped)
        tracemalloc.reset_peak()
        top = ["check", base]
        active.append(top)
        r = gv.check(fn, xs, vjp=jac, mode=mode, against="fd", budget=1e9)
        active.remove(top)
        peak = max(top[1], tracemalloc.get_traced_memory()[1]) - base
    finally:
        for owner, attr, orig in originals:
            setattr(owner, attr, orig)
        tracemalloc.stop()
    return {"path": name, "status": r.status, "inputs_kib": size / 1024, "peak_ratio": peak / size,
            "stages": {k: v / size for k, v in seen.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="W is n x n, x 8 x n in fast mode (default 300)")
    ap.add_argument("--full-n", type=int, default=200, help="n of the full-mode paths (default 200)")
    ap.add_argument("--paths", nargs="*", default=list(PATHS), help="paths to run (default all)")
    args = ap.parse_args()
    for name in args.paths:
        n = args.full_n if PATHS[name][2] == "full" else args.n
        row = measure(name, n)
        stages = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["stages"].items(), key=lambda kv: -kv[1]))
        print(f"{row['path']:34s} n={n:<4d} {row['status']:8s} inputs {row['inputs_kib']:7.0f} KiB  "
              f"peak {row['peak_ratio']:.2f}x  [{stages}]", flush=True)


if __name__ == "__main__":
    main()
