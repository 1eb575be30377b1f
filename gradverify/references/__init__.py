"""The references: what the gradient under test is compared with.

A check asks one or more references for the gradient of ``<u, f>`` at the
point, ``u`` the check's cotangent, and hands their values and error
estimates to the one comparison core (:mod:`gradverify.compare`). The
comparison knows nothing of where a reference came from beyond its error
estimate (0 for an exact one). The references, chosen by ``against=``:

``"fd"``
    finite differences (:mod:`.elementwise` for every element,
    :mod:`.projections` for fast mode's random projections, both built on
    :mod:`.stencils`, :mod:`.stepwalk` and :mod:`.screen`): works on any
    black box, costs O(size) evaluations, carries an error estimate.
``"reference"``
    the reference engine (:mod:`gradverify.engine`) tracing the plain numpy
    forward of the code under test (:mod:`.exact`): exact, one traced
    forward and one backward.
``"torch"``, ``"jax"``
    the framework's own autodiff of the *primal* of the code under test:
    the ``forward`` of a ``torch.autograd.Function``, the undecorated
    function of a ``jax.custom_vjp``/``custom_jvp``, or the function itself
    where the gradient under test is a user ``vjp=`` (:mod:`.exact`).
``"auto"`` (the default)
    the exact reference that applies, else finite differences.

An exact reference that cannot follow the code (the forward leaves the
trace, the primal is not differentiable by its framework) *declines* with
the reason (:class:`Declined`); the check then falls back to finite
differences and says why.
"""

from __future__ import annotations

from typing import Any

from ..errors import SpecError

__all__ = ["AGAINST", "EXACT", "Declined", "parse_against"]

#: Accepted values of ``against=`` (alone or several in a tuple).
AGAINST = ("auto", "fd", "reference", "torch", "jax", "tensorflow", "pytensor")

#: The exact references, in the order ``"auto"`` tries them.
EXACT = ("reference", "torch", "jax", "tensorflow", "pytensor")


class Declined(Exception):
    """An exact reference cannot differentiate this code; ``reason`` says why (and ``where``, a file:line)."""

    def __init__(self, reason: str, where: str | None = None, *, applies: bool = True):
        super().__init__(reason if where is None else f"{reason} (at {where})")
        self.reason = reason
        self.where = where
        #: False where the reference found nothing to be exact about (plain
        #: torch code has no custom backward): ``against="auto"`` then falls
        #: back to finite differences without a warning.
        self.applies = applies


def parse_against(against: Any) -> tuple[str, ...]:
    """Normalise ``against=``: a name or a sequence of names from :data:`AGAINST`, duplicates dropped.

    Raises:
        SpecError: an unknown name, an empty sequence, or ``"auto"`` combined with others.
    """
    names = (against,) if isinstance(against, str) else tuple(against) if against is not None else ("auto",)
    if not names:
        raise SpecError(f"against= needs at least one of {AGAINST}")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or name not in AGAINST:
            raise SpecError(f"against= takes names from {AGAINST} (one, or several in a tuple), got {name!r}")
        if name not in out:
            out.append(name)
    if "auto" in out and len(out) > 1:
        raise SpecError("against='auto' chooses by itself; combine only explicit references, e.g. ('reference', 'fd')")
    return tuple(out)
