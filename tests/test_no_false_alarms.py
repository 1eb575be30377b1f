"""gradverify must pass every correct-but-awkward case, with default settings.

The corpus (tests/corpus/awkward.py) holds layers and function pairs whose
backward passes are exact (each was cross-checked against an independent
float64 central difference over several step sizes, and the float32-arithmetic
ones against their float64 twins); only their numerics are hard.  A failure
here is a false alarm of the checker.  No tolerance argument is passed
anywhere: the defaults must cope.  Cost: one check per case and seed (about
130 checks), each a few hundred to a few thousand function evaluations.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradverify as gv
from tests.corpus.awkward import CASES, LAYER_CASES, PAIR_CASES, build

SEEDS = (0, 1, 2)


def _run(case, seed):
    b = build(case, seed)
    if case.kind == "layer":
        if b.inputs is not None:
            return gv.check_layer(b.obj, inputs=b.inputs, seed=seed)
        return gv.check_layer(b.obj, b.input_shape, seed=seed)
    forward, backward = b.obj
    return gv.check_pair(forward, backward, b.inputs, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_correct_case_passes(case, seed):
    # No rtol/atol: the harness's dtype-keyed defaults are what is under test.
    result = _run(case, seed)
    assert result.passed, f"false alarm on correct case {case.name!r} (seed {seed}):\n{result}"
    assert result.status == "pass"


def test_corpus_is_large_and_varied():
    # The brief asks for at least 30 cases covering both protocols and float32.
    assert len(CASES) >= 30
    assert LAYER_CASES and PAIR_CASES
    assert sum(np.dtype(c.dtype) == np.float32 for c in CASES) >= 5
    assert sum(1 for c in LAYER_CASES if c.input_shape is not None) >= 10
    assert sum(1 for c in LAYER_CASES if c.inputs is not None) >= 3


@pytest.mark.parametrize("case", [c for c in CASES if np.dtype(c.dtype) == np.float32],
                         ids=lambda c: c.name)
def test_float32_cases_really_compute_in_float32(case):
    # Guard on the corpus itself: a float32 case that silently upcasts would
    # not exercise the float32 paths of the checker.
    b = build(case, 0)
    if case.kind == "layer":
        layer = b.obj
        assert all(p.dtype == np.float32 for p in layer.params.values())
        x = b.inputs if b.inputs is not None else np.ones(b.input_shape, np.float32)
        assert x.dtype == np.float32
        y = layer.forward(x)
        assert np.asarray(y).dtype == np.float32
        dx = layer.backward(np.ones_like(y))
        assert dx.dtype == np.float32
        assert all(g.dtype == np.float32 for g in layer.grads.values())
    else:
        forward, backward = b.obj
        assert all(a.dtype == np.float32 for a in b.inputs)
        out, cache = forward(*b.inputs)
        assert out.dtype == np.float32
        assert all(g.dtype == np.float32 for g in backward(np.ones_like(out), cache))


def test_internal_cast_case_is_float64_outside_float32_inside():
    # The f32_internal_cast case must look like float64 to the checker (params,
    # inputs, gradients) while its output betrays float32 arithmetic.
    from tests.corpus.awkward import by_name

    b = build(by_name("f32_internal_cast"), 0)
    layer = b.obj
    x = np.random.default_rng(0).standard_normal(b.input_shape)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == np.float32
    assert dx.dtype == np.float64
    assert all(p.dtype == np.float64 for p in layer.params.values())
    assert all(g.dtype == np.float64 for g in layer.grads.values())
