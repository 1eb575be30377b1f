"""The computational graph e = (a + b) * (b + 1), differentiated by hand.

The example of Christopher Olah's *Calculus on Computational Graphs*::

    c = a + b        dc/da = 1, dc/db = 1
    d = b + 1        dd/db = 1
    e = c * d        de/dc = d, de/dd = c

Reverse mode starts from de and walks the graph backwards once; ``b`` feeds
two nodes, so its adjoint *accumulates* the two paths::

    de/db = de/dc * dc/db + de/dd * dd/db = d * 1 + c * 1

At a = 2, b = 1: c = 3, d = 2, e = 6, de/da = d = 2 and de/db = 2 + 3 = 5.

``forward``/``backward`` form a function pair for ``gradverify.check_pair``;
they work elementwise on scalars or arrays of one shape.
"""

from __future__ import annotations

import numpy as np

__all__ = ["forward", "backward", "engine_forward", "EXAMPLE_POINT"]

#: The point of the worked example and its exact values.
EXAMPLE_POINT = {"a": 2.0, "b": 1.0, "e": 6.0, "de/da": 2.0, "de/db": 5.0}


def forward(a, b):
    """Evaluate e = (a + b) * (b + 1), caching the intermediate nodes.

    Cost: three elementwise operations.

    Returns:
        ``(e, cache)`` with ``cache = (c, d)``.
    """
    dtype = np.result_type(np.asarray(a), np.asarray(b))
    if not np.issubdtype(dtype, np.floating):
        dtype = np.float64           # integers in, floats out
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    c = a + b          # dc/da = 1, dc/db = 1
    d = b + 1.0        # dd/db = 1
    e = c * d          # de/dc = d, de/dd = c
    return e, (c, d)


def backward(de, cache):
    """Pull the cotangent ``de`` back to ``(da, db)`` along every edge.

    Adjoints start at zero and accumulate (``+=``), so ``b``, which reaches
    ``e`` through both ``c`` and ``d``, sums its two paths. Cost: a handful
    of elementwise operations.
    """
    c, d = cache
    de = np.asarray(de, dtype=c.dtype)
    da = np.zeros_like(c)
    db = np.zeros_like(c)
    dc = de * d        # e = c * d  ->  de/dc = d
    dd = de * c        # e = c * d  ->  de/dd = c
    da += dc * 1.0     # c = a + b  ->  dc/da = 1
    db += dc * 1.0     # c = a + b  ->  dc/db = 1   (first path into b)
    db += dd * 1.0     # d = b + 1  ->  dd/db = 1   (second path into b)
    return da, db


def engine_forward(E, a, b):
    """The same graph with engine tensors: (a + b) * (b + 1)."""
    return (a + b) * (b + 1.0)
