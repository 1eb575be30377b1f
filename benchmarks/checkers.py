"""gradverify against torch.autograd.gradcheck and jax.test_util.check_grads, side by side.

Run by hand from the repository root (no timed assertions anywhere in the tests)::

    python benchmarks/checkers.py                       # P ~ 100 .. 20000, ~2-3 min
    python benchmarks/checkers.py --quick               # P ~ 100 .. 2000, seconds
    python benchmarks/checkers.py --json out.json       # also write every row
    python benchmarks/checkers.py --params 5000 20000 --repeats 9 --budget 20
    python benchmarks/checkers.py --methods "gradverify full (torch)" "torch gradcheck"
    python benchmarks/checkers.py --small --repeats 5    # small-operator sweep and per-stage breakdown only
    python benchmarks/checkers.py --small --full-fd      # the sweep with every element by finite differences
    python benchmarks/checkers.py --narrow --params 5000 20000   # the narrow-input MLP 4 -> H -> H -> 2
    python benchmarks/checkers.py --scale               # P 2e4 .. 8e6: time and peak memory (fast modes)

(``python`` is the one of the environment gradverify is installed in.)

A thin command line over :mod:`gradverify.checkers` (the library the report
calls): the same tanh MLP (batch 8, float64) as a torch and a JAX function,
timed with every checker (median / min / max wall time of repeated runs
after a warm-up, the median process CPU time, which other load on the
machine disturbs less, and the warm-up itself: the first check of a fresh
function, compilations included; later checks of the same function reuse
them), then the detection table (a 0.1% error in one
weight element; a ~1e-3 approximation mismatch in the tanh derivative) and
the localisation of one wrong element among ~20,000 parameters by fast
mode. Threads are pinned to one before numpy, torch or jax is imported; the
script prints what it pinned.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
           "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
if "intra_op_parallelism_threads" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradverify import checkers as C  # noqa: E402


def _fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)


def timing_table(rows) -> str:
    head = f"{'method':<26}{'P':>7}{'median s':>11}{'min s':>10}{'max s':>10}{'cpu s':>10}{'first s':>10}" \
           f"{'runs':>5}{'evals':>8}{'passed':>8}  note"
    out = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "measured":
            out.append(f"{r['method']:<26}{r['params']:>7}{r['status']:>11}{'':>53}  {r['note']}")
            continue
        out.append(f"{r['method']:<26}{r['params']:>7}{_fmt(r['seconds']):>11}{_fmt(r['min']):>10}"
                   f"{_fmt(r['max']):>10}{_fmt(r['cpu_seconds']):>10}{_fmt(r.get('first')):>10}{r['runs']:>5}"
                   f"{_fmt(r['evaluations'], 'd'):>8}"
                   f"{str(r['passed']):>8}  {r['note']}")
    return "\n".join(out)


def ratio_table(rows) -> str:
    """Ratios per size: gradverify against gradcheck and check_grads, and full mode on JAX against torch."""
    by = {(r["method"], r["params"]): r for r in rows if r["status"] == "measured"}
    sizes = sorted({r["params"] for r in rows})
    pairs = (("gradverify full (torch)", "torch gradcheck"), ("gradverify fast (torch)", "torch gradcheck fast"),
             ("gradverify fast (jax)", "jax check_grads"), ("gradverify full (jax)", "gradverify full (torch)"))
    out = [f"{'ratio (median wall; cpu)':<50}" + "".join(f"{p:>16}" for p in sizes)]
    for a, b in pairs:
        cells = []
        for p in sizes:
            ra, rb = by.get((a, p)), by.get((b, p))
            cells.append(f"{ra['seconds'] / rb['seconds']:.2f}; {ra['cpu_seconds'] / rb['cpu_seconds']:.2f}"
                         if ra and rb else "-")
        out.append(f"{a + ' / ' + b:<50}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(out)


def detection_text(rows) -> str:
    out = [f"{'method':<26}{'correct (false alarms)':>24}{'element 0.1%':>14}{'approx 1e-3':>13}  located"]
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = {r["case"]: r for r in rows if r["method"] == m}
        fmt = {k: (f"{v['failed']}/{v['runs']}" if v["runs"] else "-") for k, v in cells.items()}
        loc = cells["element"]["located"]
        where = (", ".join(sorted(set(loc))) + f" (bug at {cells['element']['expected']})") if loc else ""
        out.append(f"{m:<26}{fmt['correct']:>24}{fmt['element']:>14}{fmt['approx']:>13}  {where}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, nargs="+", default=None, help="parameter counts (default 100..20000)")
    ap.add_argument("--methods", nargs="+", default=None, choices=list(C.METHODS), metavar="METHOD",
                    help=f"methods to run (default all): {', '.join(C.METHODS)}")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per method and size (default 5)")
    ap.add_argument("--budget", type=float, default=C.DEFAULT_BUDGET_S,
                    help=f"seconds per method and size, warm-up included (default {C.DEFAULT_BUDGET_S:g})")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for the random checkers' detection (default 3)")
    ap.add_argument("--detection-params", type=int, default=None, help="P of the detection table (default 5000)")
    ap.add_argument("--localisation-params", type=int, default=None, help="P of the localisation (default 20000)")
    ap.add_argument("--quick", action="store_true", help="P up to 2000, 3 runs, 3 s budget: seconds")
    ap.add_argument("--json", metavar="PATH", help="write every row to PATH")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--small", action="store_true",
                    help="only the small-operator sweep against gradcheck and the per-stage breakdown of small checks")
    ap.add_argument("--full-fd", action="store_true",
                    help="--small with gradverify's mode='full', against='fd' (every element by finite differences: "
                         "where batched evaluation shows) instead of the default check")
    ap.add_argument("--no-wrapped", action="store_true",
                    help="--small without the operators wrapped in an autograd.Function")
    ap.add_argument("--narrow", action="store_true", help="the narrow-input MLP 4 -> H -> H -> 2 instead")
    ap.add_argument("--scale", action="store_true", help="only the scale sweep: time and peak memory, P 2e4 .. 8e6")
    a = ap.parse_args(argv)
    if a.small:
        return small_main(a, argv)
    if a.scale:
        return scale_main(a, argv)
    if a.narrow:
        C.NARROW_INPUTS = 4
    params = a.params or ((100, 500, 2000) if a.quick else C.DEFAULT_PARAMS)
    repeats = a.repeats if a.repeats is not None else (3 if a.quick else 5)
    budget = 3.0 if a.quick and a.budget == C.DEFAULT_BUDGET_S else a.budget
    det_p = a.detection_params or (500 if a.quick else 5000)
    loc_p = a.localisation_params or (2000 if a.quick else 20000)
    say = None if a.quiet else (lambda s: print("  ..", s, file=sys.stderr, flush=True))
    start = time.perf_counter()
    res = C.run_all(params=params, methods=a.methods, repeats=repeats, budget_s=budget, detection_params=det_p,
                    seeds=a.seeds, localisation_params=loc_p, progress=say)
    res["command"] = " ".join(["benchmarks/checkers.py"] + (argv if argv is not None else sys.argv[1:]))
    print("pinned:", "; ".join(f"{k}: {v}" for k, v in res["pinned"].items()))
    env = res["environment"]
    print("environment:", ", ".join(f"{k}={v}" for k, v in env.items()))
    print("\nseconds per check (tanh MLP, batch 8, float64):")
    print(timing_table(res["timing"]))
    print()
    print(ratio_table(res["timing"]))
    print(f"\ndetection at P={res['detection'][0]['params'] if res['detection'] else '-'} "
          "(failed runs / runs; random checkers at several seeds):")
    print(detection_text(res["detection"]))
    print("\nlocalisation by gradverify fast mode (one element of dW2 wrong):")
    for r in res["localisation"]:
        print(f"  {r['framework']:<6} P={r['params']} error={r['error']:g}: detected={r['detected']} "
              f"reported={r['reported']} expected={r['expected']} evaluations={r['evaluations']} "
              f"{_fmt(r['seconds'])} s {r['note']}")
    print("\ntargets:")
    for t in res["targets"]:
        extra = {k: v for k, v in t.items() if k not in ("target", "met")}
        print(f"  {'met' if t['met'] else ('NOT met' if t['met'] is False else 'n/a'):>7}  {t['target']}  "
              + ", ".join(f"{k}={_fmt(v, '.3g') if isinstance(v, float) else v}" for k, v in extra.items()))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {a.json}")
    return 0


def small_main(a, argv) -> int:
    """``--small``: the sweep, its summary, and the stage breakdown of three small checks."""
    print("pinned:", "; ".join(f"{k}: {v}" for k, v in C.pin_threads().items()))
    import torch

    say = None if a.quiet else (lambda s: print("  ..", s, file=sys.stderr, flush=True))
    reps = 5 if a.repeats is None else a.repeats
    options = {"mode": "full", "against": "fd"} if a.full_fd else None
    rows = C.small_sweep(repeats=reps, wrapped=not a.no_wrapped, progress=say, options=options)
    print(f"\nsmall-operator sweep: {len(rows)} samples, float64, one thread; per sample the median of {reps} "
          f"interleaved runs{'; gradverify with ' + str(options) if options else ''}")
    head = f"{'kind':<10}{'samples':>8}{'median ratio':>14}{'min':>8}{'max':>8}{'total ratio':>13}" \
           f"{'vs fast':>9}{'gv s':>8}{'gc s':>8}  passed"
    print(head)
    print("-" * len(head))
    for s in C.small_summary(rows):
        print(f"{s['kind']:<10}{s['samples']:>8}{s['median_ratio']:>14.3f}{s['min_ratio']:>8.2f}{s['max_ratio']:>8.2f}"
              f"{s['total_ratio']:>13.3f}{s['total_ratio_fast']:>9.2f}{s['gradverify_s']:>8.3f}{s['gradcheck_s']:>8.3f}"
              f"  {s['all_passed']}")
    g = torch.Generator().manual_seed(0)
    cases = {"sin, 10 elements": (torch.sin, [torch.randn(10, dtype=torch.float64, generator=g, requires_grad=True)]),
             "tanh, 100 elements": (torch.tanh,
                                    [torch.randn(100, dtype=torch.float64, generator=g, requires_grad=True)]),
             "Function(sin), 10 elements (no vmap rule)": (C._as_function(torch.sin, 1), [
                 torch.randn(10, dtype=torch.float64, generator=g, requires_grad=True)])}
    for label, (fn, xs) in cases.items():
        b = C.stage_breakdown(fn, xs, repeats=max(reps, 10))
        gc = []
        for _ in range(max(reps, 10)):
            t = time.perf_counter()
            torch.autograd.gradcheck(fn, xs)
            gc.append(time.perf_counter() - t)
        import statistics

        print(f"\nstages of check({label}): median {1e3 * b['total']:.3g} ms (min {1e3 * b['min']:.3g}, max "
              f"{1e3 * b['max']:.3g}); gradcheck slow {1e3 * statistics.median(gc):.3g} ms; {b['evaluations']} "
              f"evaluations, reference={b['reference']}, mode={b['mode']}")
        for k, v in b["stages"].items():
            if v > 0:
                print(f"  {1e3 * v:8.3f} ms  {k}")
    if a.json:
        Path(a.json).write_text(json.dumps({"small": rows, "summary": C.small_summary(rows)}, indent=2, default=str))
    return 0


def scale_main(a, argv) -> int:
    """``--scale``: time and peak memory of fast checks as P grows, beside gradcheck's fast mode."""
    print("pinned:", "; ".join(f"{k}: {v}" for k, v in C.pin_threads().items()))
    params = a.params or C.SCALE_PARAMS
    rows = C.scale_sweep(params, budget_s=a.budget,
                         progress=None if a.quiet else (lambda s: print("  ..", s, file=sys.stderr, flush=True)))
    head = f"{'method':<28}{'P':>10}{'seconds':>10}{'peak MiB':>10}{'inputs MiB':>11}{'peak/inputs':>12}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['method']:<28}{r['params']:>10}{_fmt(r['seconds'], '.3g'):>10}{_fmt(r['peak_mib'], '.4g'):>10}"
              f"{r['inputs_mib']:>11.4g}{_fmt(r['peak_ratio'], '.3g'):>12}  {r['note']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
