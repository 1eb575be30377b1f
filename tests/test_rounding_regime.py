"""Elements added to much larger intermediates: rounding the outputs do not show.

``sin(A @ W + b)`` with ``A @ W`` of order 1e4 and ``b`` of order 1e-2: the
step for ``b`` is far under the resolution of the sum it is added to, so the
difference quotients at small steps settle on a plateau biased by that
rounding while the noise model (a few ulps of each output) calls it
converged. The step walk raises the noise to the scatter it observes
between steps (``references.stepwalk.noise_calibration``); before it did, seed 30 of
these was a false alarm (a 0.2% "error" on a correct gradient).
"""

from __future__ import annotations

import numpy as np
import pytest

import gradverify as gv

SEEDS = range(40)


def case(seed, factor=1.0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((4, 12)) * 3e3
    W = rng.standard_normal((12, 8))
    b = rng.standard_normal(8) * 1e-2

    def fn(b):
        return np.sin(A @ W + b)

    def vjp(dy, b):
        g = (dy * np.cos(A @ W + b)).sum(0)
        g[3] *= factor
        return (g,)

    return gv.check(fn, b, vjp=vjp, seed=seed)


def test_correct_gradient_next_to_large_intermediates_is_not_failed():
    failed = [(s, r.worst) for s in SEEDS if not (r := case(s)).passed]
    assert failed == []


@pytest.mark.parametrize("factor", [1.001, 1.01])
def test_wrong_gradient_next_to_large_intermediates_is_caught_where_it_is(factor):
    results = [case(s, factor) for s in SEEDS]
    caught = [r for r in results if not r.passed]
    # measured: 38 of 40; the two misses are said in the verdict: at seed 0 the element is reported
    # unverifiable (differences never converged), at seed 28 it agreed only within the reference's noise
    assert len(caught) >= 36
    assert all(r.worst.index == (3,) for r in caught)
