"""Memory a check allocates, counted by tracemalloc (bytes, never time).

numpy allocations are traced by tracemalloc, so a numpy function with a
``vjp=`` shows what the check itself holds: its float64 copy of the
inputs, the gradient under test, and what each finite-difference stage
adds on top. Size: a 0.7 MiB input (``W`` 300 x 300 and ``x`` 8 x 300),
every tensor over the size above which fast mode stops holding its probe
directions (:data:`gradverify.api.KEEP_DIRECTION_BYTES`).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gradverify as gv
from gradverify import api
from gradverify.references import noise as noise_mod


def _f(x, w):
    return np.tanh(x @ w)


def _vjp(dy, x, w):
    d = dy * (1 - np.tanh(x @ w) ** 2)
    return d @ w.T, x.T @ d


def _inputs(n=300):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, n)), rng.standard_normal((n, n)) / np.sqrt(n)]


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _stage_peaks(monkeypatch, owner, names, base):
    """Per stage: (bytes held when it starts, peak bytes while it runs), both above ``base``."""
    seen = {}
    for name in names:
        original = getattr(owner, name)

        def wrapped(*a, _original=original, _name=name, **k):
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            try:
                return _original(*a, **k)
            finally:
                seen[_name] = (start - base, tracemalloc.get_traced_memory()[1] - base)

        monkeypatch.setattr(owner, name, wrapped)
    return seen


def test_a_fast_check_allocates_a_few_copies_of_its_inputs(traced, monkeypatch):
    xs = _inputs()
    size = sum(a.nbytes for a in xs)
    assert all(a.nbytes > api.KEEP_DIRECTION_BYTES for a in xs[1:])
    kept = [a.copy() for a in xs]
    gv.check(_f, [xs[0][:, :4], xs[1][:4, :4]], vjp=_vjp, mode="fast", against="fd")  # imports and caches outside the count
    base = tracemalloc.get_traced_memory()[0]
    stages = _stage_peaks(monkeypatch, api, ["_fast", "function_noise"], base)
    tracemalloc.reset_peak()
    r = gv.check(_f, xs, vjp=_vjp, mode="fast", against="fd")
    peak = tracemalloc.get_traced_memory()[1] - base
    assert r.passed and r.mode == "fast"
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))  # the caller's arrays untouched
    # The finite-difference stages add at most about 3 copies of the inputs to what the check holds
    # when they start (its float64 copy of the inputs, the gradient under test): the saved point, one
    # direction, the copies each call of the code gets. (Before: 16 displaced points and 4 probe
    # directions at once, ~38x.)
    for name, (start, high) in stages.items():
        assert high - start < 3.5 * size, (name, (high - start) / size)
    assert peak < 6 * size, peak / size


def test_the_noise_table_holds_no_temporaries_the_size_of_the_point(traced):
    xs = _inputs()
    point = {"x": xs[0].copy(), "w": xs[1].copy()}
    size = sum(a.nbytes for a in xs)
    y = _f(*xs)
    u = np.random.default_rng(1).standard_normal(y.shape)
    before = {k: v.copy() for k, v in point.items()}
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    nz = noise_mod.function_noise(lambda: _f(point["x"].copy(), point["w"].copy()), point, u,
                                  rng=np.random.default_rng(2))
    added = tracemalloc.get_traced_memory()[1] - base
    assert nz.evaluations >= 9
    assert all(np.array_equal(point[k], before[k]) for k in point)  # restored bit for bit
    # the saved point, the direction, int8 signs, and the copies the evaluation makes
    assert added < 3.5 * size, added / size
