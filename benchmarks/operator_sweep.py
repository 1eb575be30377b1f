"""gradverify over PyTorch's OpInfo database, side by side with ``torch.autograd.gradcheck``.

Run by hand from the repository root (a benchmark, not a test)::

    python benchmarks/operator_sweep.py                         # every autograd OpInfo, 2 samples each
    python benchmarks/operator_sweep.py --ops atan2 floor round # a subset (OpInfo names)
    python benchmarks/operator_sweep.py --json sweep.json       # also write every row
    python benchmarks/operator_sweep.py --samples 1 --timeout 30

Needs torch and ``expecttest`` (``pip install expecttest``: PyTorch's
``torch.testing._internal.common_methods_invocations.op_db`` imports it).
``expecttest`` is a dependency of this benchmark only, never of gradverify
or its tests.

For each OpInfo with ``supports_autograd``, the first ``--samples`` (2)
float64 samples of ``op.sample_inputs("cpu", torch.float64,
requires_grad=True)`` are checked three ways on the same function (the
op's ``gradcheck_wrapper`` around ``op.op``; a TensorList input splatted
into separate inputs, as PyTorch's own ``test_ops_gradients`` does;
``output_process_fn_grad`` applied): ``gradverify.check(fn, inputs)``
(default mode), ``gradverify.check(fn, inputs, mode="fast")`` and
``torch.autograd.gradcheck(fn, inputs)`` (its defaults, slow mode; its
fast mode beyond :data:`GRADCHECK_DENSE_LIMIT` Jacobian entries, where the
dense Jacobians of the slow mode take gigabytes). Each
gradverify run is classified:

* ``pass`` -- the check passed;
* ``false alarm`` -- it failed (status ``"fail"``) where gradcheck passed;
* ``agree fail`` -- it failed and so did gradcheck;
* ``inconclusive`` -- another status (``"nondiff"``, ``"unverified"``...);
* ``refused`` -- it raised a :class:`gradverify.GradVerifyError` (bad input,
  said clearly); the row records what gradcheck made of the sample (a
  refusal where gradcheck passes is a gap; where gradcheck fails too, e.g.
  on a NaN output, or errors, it is not);
* ``crash`` -- any other exception;
* ``timeout`` -- past ``--timeout`` seconds (SIGALRM).

The bar: no false alarm, no crash, and refusals only of samples gradcheck
cannot check either. Threads are pinned to one.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradverify  # noqa: E402


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _timed(fn, timeout: float):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    t = time.perf_counter()
    try:
        return fn(), time.perf_counter() - t
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _sample_call(op, sample):
    """The callable and the flat positional inputs of one sample (TensorList inputs splatted)."""
    import torch
    from torch.testing._internal.common_utils import is_iterable_of_tensors

    listed = is_iterable_of_tensors(sample.input)
    n = len(sample.input) if listed else 0
    inputs = (*sample.input, *sample.args) if listed else (sample.input, *sample.args)

    def fn(*xs):
        if listed:
            xs = (list(xs[:n]), *xs[n:])
        out = op.gradcheck_wrapper(op.op, *xs, **sample.kwargs)
        if sample.output_process_fn_grad is not None:
            out = sample.output_process_fn_grad(out)
        return out

    fn.__name__ = op.name.replace(".", "_")
    return fn, tuple(x for x in inputs), torch


#: Beyond this many Jacobian entries (inputs x outputs requiring grad) gradcheck's slow mode, which builds
#: dense Jacobians, needs gigabytes (slice_scatter: 8000 x 8000 float64, several copies): its fast mode runs.
GRADCHECK_DENSE_LIMIT = 4_000_000


def _jacobian_entries(fn, inputs) -> int:
    import torch

    n_in = sum(x.numel() for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad)
    try:
        with torch.no_grad():
            out = fn(*inputs)
    except Exception:  # noqa: BLE001 - gradcheck reports it
        return 0
    outs = out if isinstance(out, (tuple, list)) else (out,)
    n_out = sum(o.numel() for o in outs if isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex()))
    return n_in * n_out


def _gradcheck(fn, inputs, timeout):
    import torch

    fast = _jacobian_entries(fn, inputs) > GRADCHECK_DENSE_LIMIT
    try:
        ok, s = _timed(lambda: torch.autograd.gradcheck(fn, inputs, raise_exception=True, fast_mode=fast), timeout)
        return ("pass" if ok else "fail"), "", s
    except _Timeout:
        return "timeout", "", timeout
    except Exception as exc:  # noqa: BLE001 - classify
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        kind = "fail" if "Jacobian mismatch" in str(exc) or "Backward is not reentrant" in str(exc) else "error"
        return kind, f"{type(exc).__name__}: {msg}", 0.0


def _gradverify(fn, inputs, mode, timeout, gc):
    kwargs = {} if mode == "default" else {"mode": mode}
    try:
        r, s = _timed(lambda: gradverify.check(fn, list(inputs), **kwargs), timeout)
    except _Timeout:
        return "timeout", "", timeout, 0
    except gradverify.GradVerifyError as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return "refused", f"{type(exc).__name__}: {msg}", 0.0, 0
    except Exception as exc:  # noqa: BLE001 - classify
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return "crash", f"{type(exc).__name__}: {msg}", 0.0, 0
    if r.passed:
        return "pass", "", s, r.evaluations
    if r.status == "fail":
        w = r.worst
        where = f"{w.input}{list(w.index)} rel err {w.rel_err:.2g}" if w is not None else ""
        return ("false alarm" if gc == "pass" else "agree fail"), where, s, r.evaluations
    return "inconclusive", r.status, s, r.evaluations


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="*", metavar="NAME", help="OpInfo names to run (default: all with autograd)")
    ap.add_argument("--samples", type=int, default=2, metavar="N", help="samples per operator (default 2)")
    ap.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per check (default 120)")
    ap.add_argument("--modes", nargs="*", default=["default", "fast"], metavar="MODE",
                    help="gradverify modes (default: default fast)")
    ap.add_argument("--json", metavar="PATH", help="write every row as JSON")
    args = ap.parse_args(argv)

    import torch
    from torch.testing._internal.common_methods_invocations import op_db

    torch.set_num_threads(1)
    ops = [op for op in op_db if op.supports_autograd]
    if args.ops:
        wanted = set(args.ops)
        ops = [op for op in ops if op.name in wanted or f"{op.name}.{op.variant_test_name}" in wanted
               or f"{op.name}_{op.variant_test_name}" in wanted]
    rows = []
    start = time.perf_counter()
    for op in ops:
        label = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        try:
            samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))[: args.samples]
        except Exception as exc:  # noqa: BLE001 - the database's own trouble, reported apart
            rows.append({"op": label, "sample": -1, "error": f"sample_inputs: {type(exc).__name__}: {exc}"})
            continue
        for i, sample in enumerate(samples):
            fn, inputs, _ = _sample_call(op, sample)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gc, gc_why, gc_s = _gradcheck(fn, inputs, args.timeout)
                row = {"op": label, "sample": i, "gradcheck": gc, "gradcheck_why": gc_why, "gradcheck_s": gc_s}
                for mode in args.modes:
                    cls, why, s, n = _gradverify(fn, inputs, mode, args.timeout, gc)
                    row[mode] = cls
                    row[f"{mode}_why"] = why
                    row[f"{mode}_s"] = s
                    row[f"{mode}_evaluations"] = n
            rows.append(row)
            flagged = [m for m in args.modes if row[m] in ("false alarm", "crash", "timeout")
                       or (row[m] == "refused" and gc in ("pass", "fail"))]
            if flagged:
                print(f"  {label}[{i}]: " + "; ".join(f"{m}: {row[m]} {row[m + '_why']}" for m in flagged)
                      + f" (gradcheck: {gc})", flush=True)
    elapsed = time.perf_counter() - start
    checked = [r for r in rows if "gradcheck" in r]
    print(f"\n{len(ops)} operators, {len(checked)} samples, {elapsed:.0f} s")
    print("gradcheck:", dict(collections.Counter(r["gradcheck"] for r in checked)))
    for mode in args.modes:
        counts = collections.Counter(r[mode] for r in checked)
        refused_pass = sum(1 for r in checked if r[mode] == "refused" and r["gradcheck"] == "pass")
        refused_fail = sum(1 for r in checked if r[mode] == "refused" and r["gradcheck"] == "fail")
        print(f"gradverify {mode}: {dict(counts)}; refused where gradcheck passes: {refused_pass}, "
              f"where it fails: {refused_fail}")
        for cls in ("false alarm", "crash", "timeout", "refused", "inconclusive"):
            hit = [r for r in checked if r[mode] == cls]
            if not hit:
                continue
            print(f"  {cls} ({len(hit)}):")
            for r in hit:
                print(f"    {r['op']}[{r['sample']}] {r[mode + '_why']} (gradcheck: {r['gradcheck']})")
    broken = [r for r in rows if "error" in r]
    if broken:
        print(f"sample_inputs failed for {len(broken)} operators: " + ", ".join(r["op"] for r in broken))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
