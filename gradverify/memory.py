"""How much memory a check may take: what the machine has available, and each stage's budget within it.

A check adds to the caller's memory: the gradient under test (the size of
the inputs), and what its finite-difference stages hold while they run (a
saved copy of one tensor, chunks of :func:`chunk_for` elements, rows of
outputs; full mode hands each element's result to the comparison as it
settles, which keeps only the elements a verdict may turn on). The stages
that allocate in proportion to the point or to its number of elements --
rows evaluated together by a vectorised call, chunks of batched outputs,
full mode's comparison at worst (every element failing: four numbers kept
per element) -- ask :func:`budget` before allocating: it bounds what they want
by a share (:data:`SAFETY`) of the memory the machine has available
(``MemAvailable`` of ``/proc/meminfo``, else ``sysconf``), so they pick
smaller chunks (slower, leaner) rather than run the machine out of memory,
and raises :class:`~gradverify.InsufficientMemory`, naming what would be
needed, where even their leanest path would not fit. Cost: one read of
``/proc/meminfo`` per stage.
"""

from __future__ import annotations

import os

from .errors import InsufficientMemory

__all__ = ["SAFETY", "WORKING_FLOOR", "available_bytes", "budget", "chunk_for", "mib"]

#: A stage takes at most this share of the memory available when it starts.
SAFETY = 0.5

#: Working memory a stage may take whatever the inputs' size (below it, memory is not worth time): rows
#: evaluated together, chunks of outputs. Above it, such buffers are bounded by the inputs' size too.
WORKING_FLOOR = 8 * 2**20


def available_bytes() -> int | None:
    """The memory the machine can give without swapping, in bytes (None where the system does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def mib(n: float) -> str:
    """Bytes as a readable size."""
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def budget(want: int, *, least: int = 0, what: str = "this stage", instead: str = "") -> int:
    """``want`` bytes, or fewer where the machine has less available, but at least ``least``.

    Raises:
        InsufficientMemory: even ``least`` bytes exceed :data:`SAFETY` of
            the memory available; the message names ``what`` needs them,
            and ``instead`` (what to do about it) when given.
    """
    avail = available_bytes()
    if avail is None:
        return max(int(want), int(least))
    room = int(SAFETY * avail)
    if least > room:
        raise InsufficientMemory(
            f"{what} needs about {mib(least)} of memory, but only {mib(avail)} is available (a check takes at "
            f"most {SAFETY:.0%} of it){'; ' + instead if instead else ''}")
    return max(int(least), min(int(want), room))


def chunk_for(size: int) -> int:
    """Elements per chunk of a chunked pass over a tensor of ``size`` elements.

    A 64th of the tensor, between 8192 and 65536 elements: each temporary
    of a pass is at most 1/64 of the tensor (or 64 KiB), and a pass over a
    large tensor takes at most a few thousand numpy calls. (A floor of 1024
    made a pass over a 20,000-weight matrix 20 rounds of numpy calls: the
    noise table alone cost more than the rest of a fast check.)
    """
    return int(min(1 << 16, max(1 << 13, size // 64)))
