"""``gradverify campaign``: the subcommand (``HELP``, ``add_arguments``, ``run``), registered by :mod:`gradverify.cli`.

Exit status: 0 no disagreement, 1 one or more (a disagreement, a case that
raised, a case that crashed its workers), 2 bad usage (bad options, Dask not
installed, a target that does not load, a resume with other options).
Nothing heavy is imported until :func:`run` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

__all__ = ["HELP", "add_arguments", "run"]

HELP = ("differential campaign (reference, finite differences, PyTorch, JAX, TensorFlow, PyTensor) or a property campaign of your "
        "layer, on Dask (exit 0 all agree, 1 disagreement, 2 bad usage)")

EPILOG = """\
exit status: 0 no disagreement, 1 one or more disagreements (or crashes), 2 bad usage.

examples:
  gradverify campaign --cases 2000 --out campaign-out --jax-cache ~/.cache/gradverify-jax
  gradverify campaign --cases 200 --workers 2 --kinds expressions --budget 600
  gradverify campaign --out campaign-out --cases 2000 --resume         # after an interruption
  gradverify campaign --scheduler tcp://10.0.0.5:8786 --cases 100000 --out big
  gradverify campaign --target layers.py:Dense --input-shape 4,3 --examples 200
  gradverify campaign --out campaign-out --render                      # re-render from results.jsonl
"""

_MISSING_DASK = ('gradverify campaign needs Dask: pip install "gradverify[campaign]" '
                 '(from a checkout: pip install ".[campaign]")')


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The campaign's options."""
    p.epilog = EPILOG
    p.add_argument("--cases", type=int, default=1000, metavar="N", help="cases in all (default: 1000)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="stop submitting new cases after this many seconds (default: no limit)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="campaign seed: fixes every case (default: 0)")
    p.add_argument("--backends", default=None, metavar="A,B,...",
                   help="backends compared (default: reference and every installed framework)")
    p.add_argument("--kinds", default="networks,expressions", metavar="K,...",
                   help="what is drawn, taken in turn: networks, expressions (default: both)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="(default: float64)")
    p.add_argument("--out", default="campaign-out", metavar="DIR",
                   help="results.jsonl and campaign.{json,md,html} go here (default: campaign-out)")
    p.add_argument("--resume", action="store_true", help="skip the cases already recorded in --out")
    p.add_argument("--render", action="store_true", help="only re-render the reports from --out/results.jsonl")
    p.add_argument("--jax-cache", default=None, metavar="DIR", help="JAX compilation cache shared by the workers")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="local worker processes, one thread each (default: one per CPU)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="use this existing Dask scheduler instead of a local cluster")
    p.add_argument("--allowed-failures", type=int, default=2, metavar="K",
                   help="a case that kills more than K workers is recorded as a crash (local cluster; default: 2)")
    p.add_argument("--no-shrink", action="store_true", help="do not shrink disagreements")
    p.add_argument("--target", default=None, metavar="FILE.py:NAME|module:NAME",
                   help="campaign your layer instead: each case one check_layer with its own seed")
    p.add_argument("--examples", type=int, default=None, metavar="N", help="cases of a --target campaign")
    p.add_argument("--input-shape", default=None, metavar="SHAPE", help="input shape of the --target layer, e.g. 4,3")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _error(message: str) -> int:
    print(f"gradverify campaign: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    from .render import write_reports

    if args.render:
        if not os.path.exists(os.path.join(args.out, "results.jsonl")):
            return _error(f"no results.jsonl in {args.out}")
        s = write_reports(args.out)
        print(f"rendered {args.out}/campaign.{{json,md,html}}: {s['cases']} case(s)")
        return 1 if s["disagreements"] + s["errors"] + s["crashes"] else 0
    if importlib.util.find_spec("distributed") is None:
        return _error(_MISSING_DASK)
    from ..backends import available_backends, backend_names
    from ..cli import _BadInput, load_layer, parse_shape
    from .cases import KINDS
    from .run import CampaignConfig, CampaignError, run_campaign

    backends = _csv(args.backends) if args.backends else list(available_backends())
    unknown = [b for b in backends if b not in backend_names()]
    if unknown or not backends:
        return _error(f"unknown backend(s) {unknown}; known: {', '.join(backend_names())}")
    kinds = _csv(args.kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        return _error(f"--kinds takes {', '.join(KINDS)}; got {args.kinds!r}")
    cases = args.cases
    shape = None
    if args.target:
        if not args.input_shape:
            return _error("--target needs --input-shape")
        try:
            shape = parse_shape(args.input_shape)
            load_layer(args.target)
        except _BadInput as exc:
            return _error(str(exc))
        cases = args.examples if args.examples is not None else args.cases
    elif args.examples is not None or args.input_shape:
        return _error("--examples and --input-shape go with --target")
    if cases < 0 or (args.workers is not None and args.workers < 1):
        return _error("--cases/--examples must be at least 0 and --workers at least 1")
    cfg = CampaignConfig(cases=cases, seed=args.seed, backends=tuple(backends), kinds=tuple(kinds), dtype=args.dtype,
                         out=args.out, budget=args.budget, workers=args.workers, scheduler=args.scheduler,
                         jax_cache=args.jax_cache, resume=args.resume, shrink=not args.no_shrink,
                         allowed_failures=args.allowed_failures, target=args.target,
                         input_shape=shape, cwd=os.getcwd() if args.target else None)
    try:
        s = run_campaign(cfg, show_progress=not args.quiet)
    except CampaignError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        print(f"gradverify campaign: interrupted; the finished cases are in {args.out}/results.jsonl -- "
              "rerun with the same options and --resume to finish", file=sys.stderr)
        return 130
    print(f"{s['cases']} case(s): {s['passed']} passed, {s['disagreements']} disagreement(s), {s['errors']} "
          f"error(s), {s['crashes']} crash(es); {s['wall_seconds']} s, {s['cases_per_second']} cases/s "
          f"({s['steady_cases_per_second']} once started); "
          f"report in {args.out}/campaign.html")
    for p, v in s["per_pair"].items():
        print(f"  {p:<22} {v['cases']:>6} cases  worst error/tolerance {float(v['worst_ratio']):.3g}")
    return 1 if s["disagreements"] + s["errors"] + s["crashes"] else 0
