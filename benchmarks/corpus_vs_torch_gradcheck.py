"""Classify the mutation corpus with torch.autograd.gradcheck and with gradverify.

Run by hand from the repository root::

    python benchmarks/corpus_vs_torch_gradcheck.py [--json out.json]

Every corpus entry (``tests/corpus/mutants.py``: realistic backward bugs and
their correct twins) is checked four ways:

* ``torch slow``  -- ``torch.autograd.gradcheck`` with its defaults
  (eps=1e-6, atol=1e-5, rtol=1e-3), full Jacobians;
* ``torch fast``  -- the same with ``fast_mode=True`` (random projections);
* ``gv auto`` / ``gv full`` / ``gv fast`` -- ``gradverify`` with its
  default tolerances in each mode (a mode the installed gradverify does not
  offer is skipped).

Each numpy layer is wrapped as a ``torch.autograd.Function`` whose forward
runs the numpy forward and whose backward calls the numpy backward. The
layer is deep-copied on each forward call and the copy kept in ``ctx``, so
the numpy cache read by a backward is the one written by *its* forward (the
correct way to wrap a caching layer; gradcheck evaluates many perturbed
forwards between a forward and its backward). A layer that already holds a
stale cache keeps it in the copy. Its parameters are inputs of the Function,
so gradcheck checks them as well as ``x``. Inputs are float64, except for
float32 layers, which stay in float32 as a torch user would leave them (and
gradcheck warns about). Integer inputs (embedding indices) are passed
without ``requires_grad``. Both checkers see the same point: the same input
(the corpus's own, or a seeded standard normal draw for entries given by
shape) and the same parameter values.

A bug is *caught* when the checker says the gradients disagree; a twin is a
*false alarm* when it does. An exception raised by a checker is counted
separately as an error. Cost: torch slow mode does 2 forwards per input
element plus one backward per output element; the whole corpus takes a few
seconds.

torch is imported only inside this script.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.corpus.mutants import BUGS, TWINS, Entry  # noqa: E402


def _layer_input(entry: Entry) -> np.ndarray:
    """The input gradverify's check_layer uses for this entry (same point for torch)."""
    if entry.input_shape is None:
        return np.asarray(entry.make_inputs())
    layer = entry.factory()
    params = getattr(layer, "params", {}) or {}
    dtype = next((v.dtype for v in params.values() if v.dtype.kind == "f"), np.dtype(np.float64))
    # The same draw as gradverify's check_layer(layer, input_shape, seed=0).
    return np.random.default_rng(0).standard_normal(entry.input_shape).astype(dtype)


def _torch_callable(entry: Entry):
    """Return (fn, inputs) for torch.autograd.gradcheck."""
    import torch

    if entry.kind == "layer":
        template = entry.factory()
        names = [k for k, v in (getattr(template, "params", {}) or {}).items() if v.dtype.kind == "f"]
        x = _layer_input(entry)

        class NumpyLayer(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x_t, *params):
                layer = copy.deepcopy(template)
                for name, p in zip(names, params):
                    layer.params[name] = p.detach().numpy().copy()
                y = layer.forward(x_t.detach().numpy().copy())
                ctx.layer = layer
                return torch.from_numpy(np.array(y))

            @staticmethod
            def backward(ctx, dy):
                layer = ctx.layer
                dx = layer.backward(dy.detach().numpy().copy())
                grads = [torch.from_numpy(np.array(layer.grads[n])) for n in names]
                dx_t = None if dx is None else torch.from_numpy(np.array(dx))
                return (dx_t, *grads)

        x_t = torch.from_numpy(x.copy())
        if x.dtype.kind == "f":
            x_t.requires_grad_(True)
        params = [torch.from_numpy(template.params[n].copy()).requires_grad_(True) for n in names]
        return (lambda *a: NumpyLayer.apply(*a)), (x_t, *params)

    forward, backward = entry.factory()
    arrays = entry.make_inputs()

    class NumpyPair(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            out, cache = forward(*[t.detach().numpy().copy() for t in inputs])
            ctx.cache = cache
            return torch.from_numpy(np.array(out))

        @staticmethod
        def backward(ctx, dout):
            grads = backward(dout.detach().numpy().copy(), ctx.cache)
            return tuple(None if g is None else torch.from_numpy(np.array(g)) for g in grads)

    inputs = tuple(torch.from_numpy(np.array(a)).requires_grad_(np.asarray(a).dtype.kind == "f")
                   for a in arrays)
    return (lambda *a: NumpyPair.apply(*a)), inputs


def _torch_verdict(entry: Entry, fast: bool) -> str:
    """'disagree', 'agree' or 'error: ...' from torch.autograd.gradcheck."""
    import torch

    fn, inputs = _torch_callable(entry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float32 "will likely fail" warning
        try:
            ok = torch.autograd.gradcheck(fn, inputs, fast_mode=fast, raise_exception=False)
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            return f"error: {type(exc).__name__}: {exc}".splitlines()[0][:100]
    return "agree" if ok else "disagree"


def _gv_verdict(entry: Entry, mode: str) -> str:
    """'disagree (...)', 'agree', 'n/a' (mode not offered) or 'error: ...' from gradverify."""
    import gradverify as gv

    try:
        # Entries given by shape go through check_layer(layer, input_shape),
        # which draws the same x as _layer_input (the first standard-normal
        # draw of default_rng(seed=0)) and then its cotangent from the same
        # generator. Passing that x as inputs= instead would make the
        # cotangent *equal* to x (both are the first draw of
        # default_rng(0)): see tests/test_mutation_suite.py.
        result = entry.check(mode=mode)
    except gv.SpecError as exc:
        if "mode" in str(exc):
            return "n/a"
        return f"error: SpecError: {exc}".splitlines()[0][:100]
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}: {exc}".splitlines()[0][:100]
    if result.passed:
        return "agree"
    where = ""
    if result.worst is not None:
        where = f" {result.worst.input}{list(int(i) for i in result.worst.index)}"
    return f"disagree ({result.status}{where})"


CHECKERS = {
    "torch slow": lambda e: _torch_verdict(e, fast=False),
    "torch fast": lambda e: _torch_verdict(e, fast=True),
    "gv auto": lambda e: _gv_verdict(e, "auto"),
    "gv full": lambda e: _gv_verdict(e, "full"),
    "gv fast": lambda e: _gv_verdict(e, "fast"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the per-entry verdicts as JSON")
    args = parser.parse_args(argv)

    import torch  # noqa: F401 - fail early and clearly if torch is missing

    rows, seconds = [], {name: 0.0 for name in CHECKERS}
    for entry in (*BUGS, *TWINS):
        row = {"name": entry.name, "bug": entry.is_bug, "dtype": entry.dtype}
        for cname, fn in CHECKERS.items():
            t0 = time.perf_counter()
            row[cname] = fn(entry)
            seconds[cname] += time.perf_counter() - t0
        rows.append(row)

    for c in list(CHECKERS):
        if all(r[c] == "n/a" for r in rows):
            print(f"(column {c!r} skipped: this gradverify does not offer that mode)")
            del CHECKERS[c]
    width = max(len(r["name"]) for r in rows)
    header = f"{'entry':{width}s}  " + "  ".join(f"{c:>10s}" for c in CHECKERS)
    for title, is_bug in (("BUGS (want: disagree)", True), ("TWINS (want: agree)", False)):
        print(f"\n{title}\n{header}")
        for r in rows:
            if r["bug"] != is_bug:
                continue
            cells = []
            for c in CHECKERS:
                v = r[c]
                good = v.startswith("disagree") if is_bug else v == "agree"
                mark = "ok" if good else ("ERR" if v.startswith("error") else "MISS" if is_bug else "FALSE")
                cells.append(f"{mark:>10s}")
            print(f"{r['name']:{width}s}  " + "  ".join(cells))

    print("\nSUMMARY")
    n_bugs = sum(r["bug"] for r in rows)
    n_twins = len(rows) - n_bugs
    for c in CHECKERS:
        caught = sum(r["bug"] and r[c].startswith("disagree") for r in rows)
        false = sum((not r["bug"]) and r[c].startswith("disagree") for r in rows)
        errors = sum(r[c].startswith("error") for r in rows)
        print(f"  {c:10s}: caught {caught}/{n_bugs} bugs, false alarms {false}/{n_twins} twins, "
              f"errors {errors}, {seconds[c]:.2f} s")
    misses = [(r["name"], c, r[c]) for r in rows for c in CHECKERS
              if (r["bug"] and not r[c].startswith("disagree")) or (not r["bug"] and r[c] != "agree")]
    if misses:
        print("\nDETAIL of misses, false alarms and errors")
        for name, c, v in misses:
            print(f"  {c:10s} {name}: {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "seconds": seconds}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
