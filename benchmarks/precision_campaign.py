"""False-alarm rate and sensitivity of the checks on random correct and corrupted networks.

Run by hand::

    python benchmarks/precision_campaign.py                 # 2,000 cases per dtype
    python benchmarks/precision_campaign.py --cases 300 --json

Each case is a random MLP (1-3 dense layers of width 1-6, activations drawn
from tanh, sigmoid, softplus, sin, square, ELU and identity, weight scales
1e-3..1e2, input scales 1e-3..1e3, batch 1-4) with a hand-written backward,
checked with ``gradverify.check_layer`` on default settings. Correct
networks measure the false-alarm rate; corrupted ones (one weight gradient
scaled by ``1 + r``, either one element or the whole tensor) measure the
smallest relative error ``r`` still caught. A correct case whose
low-precision forward is itself percents away from the float64 function
gets the verdict ``unverified`` (not a false alarm, not a pass) and is
counted apart. A corrupted case whose
corrupted gradient is below the tensor's noise floor (a weight the output
does not use) cannot be caught by any checker; the detection rates are
reported as measured, without removing such cases.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import gradverify as gv
import gradverify.numeric

ACTS = {
    "tanh": (np.tanh, lambda z, a: 1 - a * a),
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z, a: a * (1 - a)),
    "softplus": (lambda z: np.logaddexp(0, z), lambda z, a: 1 / (1 + np.exp(-z))),
    "sin": (np.sin, lambda z, a: np.cos(z)),
    "square": (lambda z: z * z, lambda z, a: 2 * z),
    "elu": (lambda z: np.where(z > 0, z, np.exp(np.minimum(z, 0)) - 1), lambda z, a: np.where(z > 0, 1.0, a + 1)),
    "identity": (lambda z: z, lambda z, a: np.ones_like(z)),
}


class MLP:
    """A random dense network; ``corrupt=(layer, flat index or None, factor)`` breaks one weight gradient."""

    def __init__(self, rng: np.random.Generator, dtype, corrupt=None, widths=(1, 6)):
        n = int(rng.integers(1, 4))
        self.dims = [int(rng.integers(widths[0], widths[1] + 1)) for _ in range(n + 1)]
        self.acts = [list(ACTS)[rng.integers(len(ACTS))] for _ in range(n)]
        ws = 10.0 ** rng.uniform(-3, 2)
        self.x_scale = 10.0 ** rng.uniform(-3, 3)
        self.params = {}
        for i in range(n):
            self.params[f"W{i}"] = (rng.standard_normal((self.dims[i], self.dims[i + 1])) * ws
                                    / np.sqrt(self.dims[i])).astype(dtype)
            self.params[f"b{i}"] = (rng.standard_normal(self.dims[i + 1]) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)
        self.n = n
        self.corrupt = corrupt

    def forward(self, x):
        self.cache = []
        a = x
        for i in range(self.n):
            z = a @ self.params[f"W{i}"] + self.params[f"b{i}"]
            out = ACTS[self.acts[i]][0](z).astype(z.dtype)
            self.cache.append((a, z, out))
            a = out
        return a

    def backward(self, dy):
        self.grads = {}
        d = dy
        for i in reversed(range(self.n)):
            a, z, out = self.cache[i]
            dz = d * ACTS[self.acts[i]][1](z, out).astype(z.dtype)
            gW = a.T @ dz
            if self.corrupt is not None and self.corrupt[0] == i:
                gW = gW.copy()
                if self.corrupt[1] is None:
                    gW *= self.corrupt[2]
                else:
                    gW.flat[self.corrupt[1] % gW.size] *= self.corrupt[2]
            self.grads[f"W{i}"] = gW
            self.grads[f"b{i}"] = dz.sum(0)
            d = dz @ self.params[f"W{i}"].T
        return d


def case(seed: int, dtype, corrupt_kind=None, r=0.0, mode="full", widths=(1, 6)):
    rng = np.random.default_rng(seed)
    net = MLP(rng, dtype, widths=widths)
    if corrupt_kind is not None:
        layer = int(rng.integers(net.n))
        net.corrupt = (layer, None if corrupt_kind == "tensor" else int(rng.integers(100)), 1 + r)
    x = (rng.standard_normal((int(rng.integers(1, 5)), net.dims[0])) * net.x_scale).astype(dtype)
    return gv.check_layer(net, inputs=x, seed=seed, mode=mode)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2000, help="cases per configuration (default 2000)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--widths", type=int, nargs=2, default=(1, 6), metavar=("MIN", "MAX"),
                   help="layer widths drawn from MIN..MAX (default 1 6; from 8 up, weight matrices reach the "
                        "screened size, gradverify.references.screen.SCREEN_MIN_SIZE)")
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    p.add_argument("--no-screen", action="store_true",
                   help="Richardson for every element (no one-difference screen): the reference for A/B runs")
    args = p.parse_args(argv)
    if args.no_screen:
        import gradverify.references.screen

        gradverify.references.screen.SCREEN_MIN_SIZE = 2**62
    widths = tuple(args.widths)
    summary = {"cases": args.cases, "widths": list(widths), "screen": not args.no_screen, "false_alarms": {},
               "detection": {}, "seconds": {}, "evaluations": {}}
    for dtype in (np.dtype(d).type for d in args.dtypes):
        name = np.dtype(dtype).name
        t = time.perf_counter()
        results = [(s, case(s, dtype, widths=widths)) for s in range(args.cases)]
        summary["evaluations"][name] = int(sum(r.evaluations for _, r in results))
        alarms = [s for s, r in results if r.status == "fail"]
        unverified = [s for s, r in results if r.status == "unverified"]
        summary["false_alarms"][name] = {"count": len(alarms), "seeds": alarms[:20]}
        summary.setdefault("unverified", {})[name] = {"count": len(unverified), "seeds": unverified[:20]}
        summary["seconds"][name] = time.perf_counter() - t
        for kind in ("element", "tensor"):
            for r in (1e-4, 1e-3, 1e-2):
                n = max(1, args.cases // 4)
                caught = sum(not case(s, dtype, kind, r, widths=widths).passed for s in range(n))
                summary["detection"][f"{name}/{kind}/{r:g}"] = {"cases": n, "caught": caught}
        print(f"{name}: {len(alarms)} false alarms, {len(unverified)} unverified, in {args.cases} correct cases",
              file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"false alarms: {summary['false_alarms']}")
        print(f"unverified: {summary['unverified']}")
        for k, v in summary["detection"].items():
            print(f"  {k:<24} caught {v['caught']:>5} / {v['cases']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
