"""Differential campaign: N random float64 cases, every installed reference, every disagreement recorded.

Draws random networks and expressions with :mod:`gradverify.strategies`
(``st.one_of``: about half each, interleaved), and for every case computes the value, the VJP and the JVP with
every installed backend (the reference engine, PyTorch, JAX, TensorFlow,
PyTensor; ``--backends`` to choose), and checks each VJP against finite
differences (:func:`gradverify.backends.agreement.agreement`). It records,
per pair (``reference~torch``, ..., ``tensorflow~pytensor``, ``fd~reference``,
..., ``fd~pytensor``: 15 with all six references), the largest absolute and
relative error and the largest error/tolerance ratio, and every
disagreement with a runnable reproduction snippet. The summary is printed
as JSON (and written to ``--out`` if given).

Usage::

    python benchmarks/campaign.py                       # 5000 cases, 2 workers
    python benchmarks/campaign.py --cases 200 --workers 1 --out campaign.json
    python benchmarks/campaign.py --budget 900          # stop drawing after 15 minutes
    python benchmarks/campaign.py --jax-cache ~/.cache/gradverify-jax   # keep JAX compilations

Cost: JAX compiles every operation once per shape it meets, which is most
of a cold campaign's time (about 6 compilations of 50 ms per case at
first); warm, a case costs about 0.05 s (expression) to 0.2 s (network),
mostly finite differences. Each worker is one process with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)



def pairs(backends) -> tuple[str, ...]:
    """Every pair label among ``backends`` and finite differences, in agreement's order."""
    names = list(backends)
    return tuple(f"{a}~{b}" for i, a in enumerate(names) for b in names[i + 1:]) + tuple(f"fd~{n}" for n in names)


class _Budget(Exception):
    """Raised inside the Hypothesis loop when the time budget is spent."""


def _worker(job: dict) -> dict:
    """Run one worker's share of the campaign; returns its per-case records."""
    import warnings

    warnings.filterwarnings("ignore")
    if "torch" in job["backends"]:
        import torch

        torch.set_num_threads(1)
    if "tensorflow" in job["backends"]:
        from gradverify.backends.tensorflow import import_tensorflow

        tf = import_tensorflow()
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if job.get("jax_cache"):
        import jax

        # Keep every compiled XLA executable on disk: JAX compiles each operation once per
        # shape (the bulk of a cold campaign's time), and a later campaign then starts warm.
        jax.config.update("jax_compilation_cache_dir", job["jax_cache"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from gradverify.backends.agreement import agreement
    from gradverify.strategies import expressions, networks

    from hypothesis import strategies as st

    records: list[dict] = []
    deadline = job["deadline"]
    # Networks and expressions interleaved, so a budget cut leaves both represented.
    cases = st.one_of(networks(), expressions(max_leaves=8, max_depth=5))

    @seed(job["seed"])
    @settings(max_examples=job["count"], deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(cases)
    def run(spec: Any) -> None:
        if time.time() > deadline:
            raise _Budget
        case_seed = job["worker"] * 1_000_000 + len(records)
        a = agreement(spec, backends=job["backends"], dtype="float64", seed=case_seed)
        rec = {"kind": type(spec).__name__.lower(), "seconds": a.seconds, "passed": a.passed,
               "errors": a.max_errors()}
        if not a.passed:
            rec.update(failures=[r.to_dict() for r in a.failures()], snippet=a.snippet(), seed=case_seed,
                       repr=repr(spec))
        records.append(rec)

    try:
        run()
    except _Budget:
        pass
    return {"worker": job["worker"], "records": records}


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def summarize(records: list[dict], seconds: float, args: argparse.Namespace) -> dict:
    """The campaign summary: per pair worst errors, per kind counts, disagreements."""
    per_pair: dict[str, dict[str, Any]] = {}
    for rec in records:
        for pair, e in rec["errors"].items():
            cur = per_pair.setdefault(pair, {"cases": 0, "max_abs_err": 0.0, "max_scaled_err": 0.0, "max_ratio": 0.0})
            cur["cases"] += 1
            for src, dst in (("max_abs_err", "max_abs_err"), ("scaled_err", "max_scaled_err"), ("ratio", "max_ratio")):
                if e[src] > cur[dst]:
                    cur[dst] = e[src]
                    if dst == "max_ratio":
                        cur["worst_case_kind"] = rec["kind"]
    kinds: dict[str, dict[str, Any]] = {}
    for rec in records:
        k = kinds.setdefault(rec["kind"], {"cases": 0, "disagreements": 0, "autodiff_disagreements": 0,
                                           "seconds": 0.0})
        k["cases"] += 1
        k["disagreements"] += 0 if rec["passed"] else 1
        # A disagreement among the autodiff backends themselves (value, VJP or JVP), not only with
        # finite differences.
        k["autodiff_disagreements"] += int(any(f["quantity"] != "fd" for f in rec.get("failures", ())))
        k["seconds"] = round(k["seconds"] + rec["seconds"], 1)
    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "cases": len(records),
        "requested": args.cases,
        "workers": args.workers,
        "seed": args.seed,
        "wall_seconds": round(seconds, 1),
        "dtype": "float64",
        "backends": list(args.backends),
        "per_pair": {p: per_pair[p] for p in pairs(args.backends) if p in per_pair},
        "by_kind": kinds,
        "disagreements": [
            {k: rec[k] for k in ("kind", "repr", "seed", "failures", "snippet")}
            for rec in records if not rec["passed"]
        ],
        "versions": {"python": platform.python_version(),
                     **{d: version(d) for d in ("numpy", "torch", "jax", "tensorflow-cpu", "tensorflow", "pytensor",
                                                "hypothesis")}},
    }


def main(argv: list[str] | None = None) -> dict:
    """Parse options, run the workers, print (and save) the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, metavar="N", help="cases in all (default: 5000)")
    parser.add_argument("--workers", type=int, default=2, metavar="W", help="worker processes (default: 2)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="Hypothesis seed of worker 0 (default: 0)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="stop drawing new cases after this many seconds (default: no limit)")
    parser.add_argument("--out", default=None, metavar="PATH", help="also write the summary JSON here")
    parser.add_argument("--jax-cache", default=None, metavar="DIR",
                        help="persistent JAX compilation cache directory (default: none); reruns start warm")
    parser.add_argument("--backends", default=None, metavar="A,B,...",
                        help="backends to compare (default: every installed one)")
    args = parser.parse_args(argv)
    from gradverify.backends import available_backends

    args.backends = tuple(args.backends.split(",")) if args.backends else available_backends()
    start = time.time()
    deadline = start + args.budget if args.budget else float("inf")
    counts = _split(args.cases, args.workers)
    jobs = [{"worker": w, "seed": args.seed + w, "deadline": deadline, "count": counts[w], "jax_cache": args.jax_cache,
             "backends": args.backends}
            for w in range(args.workers)]
    if args.workers == 1:
        results = [_worker(jobs[0])]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(_worker, jobs)
    records = [r for res in results for r in res["records"]]
    summary = summarize(records, time.time() - start, args)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return summary


if __name__ == "__main__":
    main()
