"""Differential campaign: a thin caller of ``gradverify campaign`` (the logic lives in :mod:`gradverify.campaign`).

Usage::

    python benchmarks/campaign.py --cases 2000 --workers 2 --out campaign-out
    python benchmarks/campaign.py --cases 200 --budget 600 --jax-cache ~/.cache/gradverify-jax

Every option of ``gradverify campaign --help`` is accepted; see ``docs/campaign.md``.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv: list[str] | None = None) -> int:
    """Run ``gradverify campaign`` with ``argv``; returns its exit status."""
    from gradverify.cli import main as cli_main

    return cli_main(["campaign", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
