"""``gradverify campaign``: differential and property campaigns at scale on Dask.

Modules (imported lazily; importing this package imports neither Dask nor a
framework):

* :mod:`.cases` -- a case's identity (index -> seed -> spec), the Dask task
  :func:`~.cases.run_case`;
* :mod:`.run` -- the driver: Dask scheduling, streamed ``results.jsonl``,
  resume, crashes;
* :mod:`.shrink` -- the deterministic minimiser of a disagreeing spec;
* :mod:`.render` -- ``campaign.json``/``.md``/``.html`` from the results file;
* :mod:`.cli` -- the subcommand (``HELP``, ``add_arguments``, ``run``).

See ``docs/campaign.md``.
"""

from __future__ import annotations

from typing import Any, TextIO

__all__ = ["progress", "run_campaign", "CampaignConfig"]


def progress(section: str, total: int, *, enabled: bool | None = None, stream: TextIO | None = None) -> Any:
    """A progress bar with ``.step(detail="", n=1)`` and ``.close(detail="") -> float``: :func:`gradverify.progress.progress`.

    ``enabled=False`` gives a silent one.
    """
    from ..progress import progress as _progress

    return _progress(section, total, enabled=enabled, stream=stream)


def __getattr__(name: str) -> Any:
    if name in ("run_campaign", "CampaignConfig"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
