"""The campaign driver: cases as Dask tasks, results streamed to disk, resumable.

:func:`run_campaign` connects to a Dask cluster -- a ``LocalCluster`` of
worker processes (one thread each) by default, an existing scheduler with
``scheduler=`` -- and keeps a bounded window of cases in flight (``2 x``
worker threads ``+ 2``): each finished case is appended at once to
``results.jsonl`` in ``out`` (one JSON line, flushed) and another case is
submitted. The client, not the workers, writes the file, so a case is
recorded exactly once however often it ran.

Failures of the machinery: a worker that dies mid-case (killed, out of
memory, a segfault in a framework) has its case rescheduled on another
worker by the Dask scheduler; a case that has killed more than
``allowed_failures`` workers raises ``KilledWorker`` and is recorded as a
``"crash"`` with its reproduction, never retried forever. (The limit is the
scheduler's ``distributed.scheduler.allowed-failures``: set here for a local
cluster, in the scheduler's configuration for an existing one.)

Resuming: the cases of a campaign are fixed by its seed (see
:mod:`.cases`), so ``resume=True`` reads ``results.jsonl``, checks that the
configuration is the same, and submits only the indices not yet recorded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

from . import progress
from .cases import KINDS, kind_of, make_task, reproduction
from .render import RESULTS, load, write_reports

__all__ = ["CampaignConfig", "CampaignError", "run_campaign", "client_for"]

#: Configuration keys that must match between a run and its resume.
_IDENTITY = ("seed", "kinds", "backends", "dtype", "target", "input_shape")


class CampaignError(Exception):
    """Bad usage of a campaign (exit status 2): a mismatched resume, an output that exists, a bad option."""


@dataclasses.dataclass
class CampaignConfig:
    """What a campaign runs; see ``gradverify campaign --help`` for each option."""

    cases: int = 100
    seed: int = 0
    backends: Sequence[str] = ("reference", "torch", "jax")
    kinds: Sequence[str] = KINDS
    dtype: str = "float64"
    out: str = "campaign-out"
    budget: float | None = None
    workers: int | None = None
    scheduler: str | None = None
    jax_cache: str | None = None
    resume: bool = False
    shrink: bool = True
    allowed_failures: int = 2
    target: str | None = None
    input_shape: Sequence[int] | None = None
    cwd: str | None = None

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(d[k]) if isinstance(d[k], (tuple, list)) else d[k]) for k in _IDENTITY}


def client_for(cfg: CampaignConfig) -> tuple[Any, Any]:
    """``(client, cluster or None)``: connect to ``cfg.scheduler`` or start a LocalCluster of processes."""
    import dask
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        return Client(cfg.scheduler, timeout="30s"), None
    workers = cfg.workers or max(1, os.cpu_count() or 1)
    with dask.config.set({"distributed.scheduler.allowed-failures": cfg.allowed_failures}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR,
                               env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    return Client(cluster), cluster


def _crash_record(task: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """A case that kept killing workers: its spec is drawn again here, for the reproduction."""
    rec = {"type": "case", "index": task["index"], "seed": task["seed"], "kind": task["kind"], "status": "crash",
           "error": f"{type(exc).__name__}: {exc}", "pairs": {}, "worst_ratio": 0.0, "seconds": 0.0,
           "worker": "-", "finished": time.time()}
    spec = None
    if task["kind"] != "target":
        try:
            from .cases import draw_spec

            spec = draw_spec(task["kind"], task["seed"])
            rec["repr"] = repr(spec)
        except Exception:  # noqa: BLE001 - the reproduction by seed still stands
            spec = None
    rec["snippet"] = reproduction(task, spec)
    return rec


def _prepare_out(cfg: CampaignConfig) -> tuple[str, set[int]]:
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, RESULTS)
    metas, cases = load(path)
    if cases and not cfg.resume:
        raise CampaignError(f"{path} already holds {len(cases)} case(s): pass --resume to continue that "
                            "campaign, or another --out")
    if cfg.resume and metas:
        before = {k: metas[0].get(k) for k in _IDENTITY}
        now = cfg.identity()
        diff = [k for k in _IDENTITY if before.get(k) != now[k]]
        if diff:
            raise CampaignError(f"--resume with a different configuration ({', '.join(diff)}: was "
                                f"{', '.join(repr(before.get(k)) for k in diff)}); resume with the same options")
    # A line torn by a kill mid-write is cut off, so that the next line starts clean.
    if os.path.exists(path):
        with open(path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
    return path, {c["index"] for c in cases}


def run_campaign(cfg: CampaignConfig, *, client: Any = None, show_progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) a campaign; returns the summary that ``campaign.json`` holds.

    Args:
        cfg: the configuration.
        client: an existing ``distributed.Client`` (tests, notebooks); by
            default one is made from ``cfg`` and closed at the end.
        show_progress: a progress bar on stderr (default: on).

    Raises:
        CampaignError: bad usage (see the class).
    """
    if cfg.cases < 0:
        raise CampaignError("--cases must be at least 0")
    path, done = _prepare_out(cfg)
    base = cfg.identity()
    base.update(jax_cache=cfg.jax_cache, shrink=cfg.shrink, cwd=cfg.cwd)
    todo = [i for i in range(cfg.cases) if i not in done]
    meta = {"type": "meta", "started": time.time(), "cases": cfg.cases, "resumed": bool(done), **cfg.identity(),
            "budget": cfg.budget, "scheduler": cfg.scheduler, "workers": cfg.workers}
    own_client = client is None
    cluster = None
    bar = progress("campaign", len(todo), enabled=show_progress)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(meta) + "\n")
        fh.flush()
        if todo:
            if own_client:
                client, cluster = client_for(cfg)
            try:
                _drive(client, cfg, base, todo, fh, bar)
            finally:
                if own_client:
                    client.close()
                    if cluster is not None:
                        cluster.close()
    bar.close()
    return write_reports(cfg.out)


def _drive(client: Any, cfg: CampaignConfig, base: dict[str, Any], todo: list[int], fh: Any, bar: Any) -> None:
    from distributed import as_completed

    from .cases import run_case

    deadline = time.time() + cfg.budget if cfg.budget else float("inf")
    nthreads = max(1, sum(client.nthreads().values()))
    window = 2 * nthreads + 2
    pending = iter(todo)
    tasks: dict[str, dict[str, Any]] = {}

    def submit() -> Any:
        if time.time() > deadline:
            return None
        i = next(pending, None)
        if i is None:
            return None
        task = make_task(base, i)
        fut = client.submit(run_case, task, key=f"gradverify-case-{cfg.seed}-{i}-{kind_of(cfg.kinds, i)}",
                            pure=False)
        tasks[fut.key] = task
        return fut

    first = [f for f in (submit() for _ in range(window)) if f is not None]
    ac = as_completed(first)
    try:
        for fut in ac:
            task = tasks.pop(fut.key)
            if fut.status == "finished":
                rec = fut.result()
            else:
                try:
                    exc = fut.exception()
                except BaseException as err:  # noqa: BLE001 - a cancelled future (scheduler lost): say so
                    exc = err
                rec = _crash_record(task, exc)
            fut.release()
            fh.write(json.dumps(rec, default=str) + "\n")
            fh.flush()
            bar.step(f"case {rec['index']} {rec['status']}")
            nxt = submit()
            if nxt is not None:
                ac.add(nxt)
    except BaseException:
        for f in list(ac.futures):
            f.cancel()
        raise
