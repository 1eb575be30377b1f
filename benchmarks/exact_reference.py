"""Exact references against torch.autograd.gradcheck, side by side, and their detection figures.

Run by hand from the repository root (no timed assertions anywhere in the tests)::

    python benchmarks/exact_reference.py                 # P ~ 20,000, 5 repeats, ~2 min
    python benchmarks/exact_reference.py --params 5000 --repeats 9
    python benchmarks/exact_reference.py --json out.json

Three measurements, threads pinned to one before numpy or torch is imported:

1. **Timing** (issue 11's target: a full element-wise check with the exact
   reference at P ~ 20,000 in at most 0.05x ``gradcheck`` and at most 3x
   ``gradcheck(fast_mode=True)``): the tanh MLP of
   :mod:`gradverify.checkers` (batch 8, float64) built from custom
   ``torch.autograd.Function``s with hand-written backwards, checked by
   gradverify's default (``against="auto"``: torch autograd of the
   Functions' forwards, every element compared) and by gradcheck slow and
   fast on the same function. Median, min and max wall time of repeated
   runs after a warm-up, measured in one process, interleaved.
2. **Detection, torch**: a 0.1% error in one element of the hidden weight
   of that MLP, at 20 positions: how many the default check catches and
   names exactly.
3. **Detection, numpy** (the engine tracing the layer's own numpy
   forward): a 0.1% error in one element of a 20,000-parameter numpy
   layer, 20 seeds.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradverify as gv  # noqa: E402
from gradverify import checkers as C  # noqa: E402


def timing(params: int, repeats: int) -> list[dict]:
    """Median/min/max seconds of each checker on the custom-Function MLP, runs interleaved."""
    import torch

    torch.set_num_threads(1)
    mlp = C.make_mlp(params, 0)
    fn, ps = C.torch_mlp(mlp, None, custom=True)
    runs = {
        "gradverify default (exact torch)": lambda: gv.check(fn, [p.detach() for p in ps]),
        "torch gradcheck": lambda: torch.autograd.gradcheck(fn, ps, raise_exception=False),
        "torch gradcheck fast": lambda: torch.autograd.gradcheck(fn, ps, fast_mode=True, raise_exception=False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    info: dict[str, str] = {}
    for k, run in runs.items():  # warm-up
        out = run()
        info[k] = f"reference={out.reference}, {out.evaluations} evaluations, {out.status}" \
            if hasattr(out, "reference") else f"passed={bool(out)}"
    for _ in range(repeats):
        for k, run in runs.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    return [{"method": k, "params": mlp.size, "median": statistics.median(v), "min": min(v), "max": max(v),
             "runs": len(v), "note": info[k]} for k, v in times.items()]


def torch_detection(params: int, positions: int) -> dict:
    """A 0.1% error at ``positions`` elements of W2, one at a time: caught and named by the default check."""
    mlp = C.make_mlp(params, 0)
    rng = np.random.default_rng(1)
    shape = mlp.params[2].shape
    caught = named = 0
    for _ in range(positions):
        mlp.bug_index = tuple(int(rng.integers(n)) for n in shape)
        fn, ps = C.torch_mlp(mlp, "element", custom=True)
        r = gv.check(fn, [p.detach() for p in ps])
        caught += r.status == "fail"
        named += r.status == "fail" and r.worst.input in ("2", "W2") and r.worst.index == mlp.bug_index
    return {"params": mlp.size, "positions": positions, "caught": caught, "named": named}


class NumpyMLPLayer:
    """A numpy layer y = tanh(x W1 + b1) W2 + b2 with a hand-written backward; ``bad`` scales one dW1 element."""

    def __init__(self, n_in: int, hidden: int, n_out: int, seed: int, bad=None):
        rng = np.random.default_rng(seed)
        self.params = {"W1": rng.standard_normal((n_in, hidden)) / np.sqrt(n_in), "b1": np.zeros(hidden),
                       "W2": rng.standard_normal((hidden, n_out)) / np.sqrt(hidden), "b2": np.zeros(n_out)}
        self.bad = bad

    def forward(self, x):
        p = self.params
        self.x, self.h = x, np.tanh(x @ p["W1"] + p["b1"])
        return self.h @ p["W2"] + p["b2"]

    def backward(self, dy):
        p = self.params
        dh = dy @ p["W2"].T * (1 - self.h ** 2)
        dW1 = self.x.T @ dh
        if self.bad is not None:
            dW1[self.bad] *= 1.001
        self.grads = {"W1": dW1, "b1": dh.sum(0), "W2": self.h.T @ dy, "b2": dy.sum(0)}
        return dh @ p["W1"].T


def numpy_detection(seeds: int) -> dict:
    """A 0.1% error in one element of a ~20,000-parameter numpy layer, default check, ``seeds`` seeds."""
    caught = named = 0
    seconds = []
    size = 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        bad = (int(rng.integers(100)), int(rng.integers(190)))
        layer = NumpyMLPLayer(100, 190, 4, seed, bad)
        size = sum(v.size for v in layer.params.values())
        t = time.perf_counter()
        r = gv.check_layer(layer, (8, 100), seed=seed)
        seconds.append(time.perf_counter() - t)
        caught += r.status == "fail"
        named += r.status == "fail" and r.worst.input == "W1" and r.worst.index == bad
    return {"params": size, "seeds": seeds, "caught": caught, "named": named,
            "median_seconds": statistics.median(seconds), "reference": r.reference}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=int, default=20000, help="parameters of the MLP (default 20000)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per checker (default 5)")
    p.add_argument("--seeds", type=int, default=20, help="seeds / positions for the detection figures (default 20)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    rows = timing(args.params, args.repeats)
    base = {r["method"]: r["median"] for r in rows}
    print(f"{'method':<34}{'P':>7}{'median s':>10}{'min s':>9}{'max s':>9}  note")
    for r in rows:
        print(f"{r['method']:<34}{r['params']:>7}{r['median']:>10.4f}{r['min']:>9.4f}{r['max']:>9.4f}  {r['note']}")
    ours = base["gradverify default (exact torch)"]
    ratios = {"vs gradcheck": ours / base["torch gradcheck"], "vs gradcheck fast": ours / base["torch gradcheck fast"]}
    print(f"ratio of medians: {ratios['vs gradcheck']:.4f}x gradcheck (target <= 0.05), "
          f"{ratios['vs gradcheck fast']:.2f}x gradcheck fast (target <= 3)")
    td = torch_detection(args.params, args.seeds)
    print(f"torch, 0.1% error in one element of W2 (P={td['params']}): caught {td['caught']}/{td['positions']}, "
          f"named exactly {td['named']}/{td['positions']}")
    nd = numpy_detection(args.seeds)
    print(f"numpy layer, 0.1% error in one element of W1 (P={nd['params']}, reference={nd['reference']}): caught "
          f"{nd['caught']}/{nd['seeds']}, named exactly {nd['named']}/{nd['seeds']}, median {nd['median_seconds']:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"timing": rows, "ratios": ratios, "torch_detection": td,
                                               "numpy_detection": nd}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
