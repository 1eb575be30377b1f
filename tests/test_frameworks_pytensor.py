"""Checks of PyTensor code: an ``Op`` with a hand-written ``grad``, and functions that build a PyTensor graph.

The code under test is compiled once per dtype (value and ``pullback``
functions); the reference is float64 finite differences, or PyTensor's
autodiff of the function itself with ``vjp=`` (``against="pytensor"``).
No test passes a tolerance.

Cost: a few small compilations (``FAST_COMPILE``); ~5 s.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradverify as gv

pytest.importorskip("pytensor", reason='pytensor not installed (pip install ".[pytensor]")')
import pytensor.tensor as pt  # noqa: E402

from tests.corpus.framework_mutants_tf_pt import by_name  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _np(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def test_op_with_custom_grad_is_named_after_its_inputs():
    fn, inputs = by_name("pt_linear_transposed_dW__twin").build()
    r = gv.check(fn, inputs)
    assert r.passed and {s.name for s in r.inputs} == {"x", "W"}, r


def test_op_float32_stays_float32():
    fn, (x, W) = by_name("pt_linear_transposed_dW__twin").build()
    r = gv.check(fn, (x.astype(np.float32), W.astype(np.float32)))
    assert r.passed and r.to_dict()["dtype"] == "float32", r


def test_graph_building_function_is_recognised_by_its_output():
    r = gv.check(lambda a, b: pt.sum(pt.sin(pt.dot(a, b)), axis=0), (_np(0, 3, 4), _np(1, 4, 2)))
    assert r.passed and {s.name for s in r.inputs} == {"a", "b"}, r


def test_user_vjp_against_pytensor_autodiff():
    def f(x):
        return pt.exp(-x) * x

    def vjp(g, x, scale=1.0):
        return g * np.exp(-x) * (1 - x) * vjp.scale

    x = _np(4, 5)
    vjp.scale = 1.0
    ok = gv.check(f, x, vjp=vjp, against="pytensor")
    assert ok.passed and ok.to_dict()["reference"] == "pytensor", ok
    vjp.scale = 1.001
    assert gv.check(f, x, vjp=vjp, against="pytensor").status == "fail"


def test_missing_pytensor_is_a_clear_error(monkeypatch):
    import importlib.util

    import gradverify.backends as B

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pytensor" else real(n, *a))
    with pytest.raises(gv.BackendUnavailable, match=r'pip install pytensor .*"\.\[pytensor\]"'):
        B.BACKENDS["pytensor"]()
    warnings.simplefilter("default")
