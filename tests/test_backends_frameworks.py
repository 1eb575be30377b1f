"""TensorFlow and PyTensor backends: every primitive and layer kind against the reference engine.

Reuses the cases of ``tests/test_backends.py``: one small expression per
public primitive and one small network per layer kind and loss, compared
with the reference engine (values, VJPs along a seeded cotangent, JVPs
along seeded tangents) by the one comparison core, in float64 and float32.
Each backend's tests are skipped with a reason when its framework is not
installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import gradverify.backends as B
from gradverify import BackendUnavailable
from gradverify.backends import get_backend
from test_backends import LAYER_CASES, PRIMITIVE_CASES, _all_derivatives, _assert_agree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = [pytest.param("tensorflow", marks=pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                                            reason='tensorflow not installed (pip install ".[tensorflow]")')),
       pytest.param("pytensor", marks=pytest.mark.skipif(importlib.util.find_spec("pytensor") is None,
                                                          reason='pytensor not installed (pip install ".[pytensor]")'))]


@pytest.mark.parametrize("framework", NEW)
@pytest.mark.parametrize("name", sorted(PRIMITIVE_CASES))
def test_primitive_agrees_with_reference_float64(framework, name):
    spec = PRIMITIVE_CASES[name]
    _assert_agree(_all_derivatives(get_backend(framework), spec), _all_derivatives(get_backend("reference"), spec),
                  f"{framework} {name}")


@pytest.mark.parametrize("framework", NEW)
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_agrees_with_reference_float64(framework, name):
    spec = LAYER_CASES[name]
    _assert_agree(_all_derivatives(get_backend(framework), spec), _all_derivatives(get_backend("reference"), spec),
                  f"{framework} {name}")


@pytest.mark.parametrize("framework", NEW)
@pytest.mark.parametrize("name", ["conv2d", "max_pool_2d", "rnn_seq", "layer_norm", "batch_norm_4d",
                                  "attention_causal_2h", "cross_entropy"])
def test_float32_stays_float32_and_agrees_with_float64(framework, name):
    spec = LAYER_CASES[name]
    v32, g32, t32 = _all_derivatives(get_backend(framework), spec, "float32")
    assert v32.dtype == np.float32 and t32.dtype == np.float32
    assert all(g.dtype == np.float32 for g in g32.values())
    _assert_agree((v32, g32, t32), _all_derivatives(get_backend("reference"), spec), f"{framework} float32 {name}")


@pytest.mark.parametrize("framework, extra", [("tensorflow", "tensorflow"), ("pytensor", "pytensor")])
def test_missing_framework_names_the_extra(monkeypatch, framework, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == framework else real(name, *a))
    cls = B.BACKENDS[framework]
    assert not cls.available()
    assert framework not in B.available_backends()
    with pytest.raises(BackendUnavailable, match=rf'pip install "\.\[{extra}\]"'):
        cls()


def test_registry_names_the_new_backends_without_importing_them():
    assert B.backend_names() == ("reference", "torch", "jax", "tensorflow", "pytensor")
    code = ("import sys, gradverify, gradverify.backends, gradverify.backends.agreement, gradverify.pytest_plugin\n"
            "gradverify.backends.available_backends()\n"
            "print(sorted(m for m in ('tensorflow', 'pytensor', 'keras') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pytensor_compiles_once_per_spec_and_dtype():
    pytest.importorskip("pytensor", reason='pytensor not installed (pip install ".[pytensor]")')
    b = B.PyTensorBackend()
    spec = LAYER_CASES["mse"]
    b.value(spec)
    b.grad(spec, {"x": np.ones((3, 4))})
    b.jvp(spec, {"x": np.ones((3, 4))})
    assert b.compilations == 1
    b.value(spec, dtype="float32")
    assert b.compilations == 2


@pytest.mark.parametrize("jax_first", [False, True], ids=["alone", "after-jax"])
def test_tensorflow_import_is_quiet(jax_first):
    # JAX's import sets TF_CPP_MIN_LOG_LEVEL=1 when unset; the notices must stay silent then too
    # (a campaign worker imports JAX before TensorFlow and printed them for every worker).
    pytest.importorskip("tensorflow", reason='tensorflow not installed (pip install ".[tensorflow]")')
    if jax_first:
        pytest.importorskip("jax", reason='jax not installed (pip install ".[jax]")')
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = (("import jax\n" if jax_first else "") +
            "from gradverify.backends import get_backend\n"
            "from gradverify.spec import Network, Dense, MSELoss\n"
            "get_backend('tensorflow').grad(Network((Dense(2),), input_shape=(1, 3), loss=MSELoss()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "oneDNN" not in out.stderr and "cpu_feature_guard" not in out.stderr, out.stderr


def test_agreement_covers_all_fifteen_pairs_and_the_report_orders_them():
    from gradverify.backends.agreement import agreement
    from gradverify.report import model

    names = B.available_backends()
    if len(names) < 5:
        pytest.skip(f"needs all five backends, have {names}")
    a = agreement(LAYER_CASES["mse"], backends=names, dtype="float64", seed=3)
    assert a.passed, a.summary()
    labels = set(a.max_errors())
    assert len(labels) == 15 and labels == set(model._PAIR_ORDER)


# Property tests: random small networks and expressions, the new backends against the reference
# engine and finite differences (the campaign script draws thousands with every backend).
from hypothesis import given, settings  # noqa: E402

from gradverify.strategies import expressions, networks  # noqa: E402


def _new_installed():
    return tuple(n for n in ("tensorflow", "pytensor") if n in B.available_backends())


@pytest.mark.skipif(not _new_installed(), reason="neither tensorflow nor pytensor is installed")
@settings(deadline=None, max_examples=4)
@given(networks(max_layers=3, max_batch=2, max_width=3, max_time=3, max_spatial=4))
def test_random_networks_agree_with_the_new_backends(net):
    from gradverify.backends.agreement import agreement

    a = agreement(net, backends=("reference",) + _new_installed(), dtype="float64", require=True)
    assert a.passed, f"{a.summary()}\n\nreproduce with:\n{a.snippet()}"


@pytest.mark.skipif(not _new_installed(), reason="neither tensorflow nor pytensor is installed")
@settings(deadline=None, max_examples=4)
@given(expressions(max_leaves=5, max_depth=4, max_side=3))
def test_random_expressions_agree_with_the_new_backends(expr):
    from gradverify.backends.agreement import agreement

    a = agreement(expr, backends=("reference",) + _new_installed(), dtype="float64", require=True)
    assert a.passed, f"{a.summary()}\n\nreproduce with:\n{a.snippet()}"
