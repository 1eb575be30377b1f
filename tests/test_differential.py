"""Differential property tests: reference engine, finite differences, PyTorch and JAX agree.

For random networks and expressions (:mod:`gradverify.strategies`) every pair
of backends is compared on values, VJPs (along a seeded random cotangent)
and JVPs (along seeded random tangents) in float64 with the one comparison
core, :func:`gradverify.compare_gradients` (float64 rule: rtol 1e-5 plus a
scale floor -- independent float64 implementations differ by ~1e-13 of a
tensor's scale, so the rule has a 1e8-fold margin yet flags a 1e-4 relative
error in one element), and each backend's VJP is checked against finite
differences with :func:`gradverify.check` (Richardson central differences in
float64, whose own error estimate enters the tolerance). See
:func:`gradverify.backends.agreement.agreement`.

The default Hypothesis profile runs a modest number of examples over small
shapes; ``pytest tests/test_differential.py --hypothesis-profile=campaign``
runs thousands. ``benchmarks/campaign.py`` runs the same comparison over the
strategies' default sizes and records the worst error per backend pair.

The planted-bug tests show the comparison is not vacuous: a backend with a
realistic bug (unbiased variance in layer norm, one wrong gradient element, a
transposed weight gradient) disagrees with the others.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings

import gradverify.backends as B
from gradverify import compare_gradients, tolerance_for
from gradverify.backends import ReferenceBackend, get_backend
from gradverify.backends.agreement import agreement, term_sizes
from gradverify.backends.reference import ReferenceLowering
from gradverify.spec import Activation, Dense, Expression, Input, LayerNorm, MSELoss, Network, Op, Var
from gradverify.strategies import expressions, networks

BACKENDS = ("reference", "torch", "jax")
needs_frameworks = pytest.mark.skipif(not {"torch", "jax"} <= set(B.available_backends()),
                                      reason="torch and jax are needed for the differential tests")

# Small shapes keep the default run quick (and JAX compiles few distinct shapes);
# the campaign script uses the strategies' default sizes.
SMALL_NETWORKS = networks(max_layers=3, max_batch=2, max_width=3, max_time=3, max_spatial=4)
SMALL_EXPRESSIONS = expressions(max_leaves=5, max_depth=4, max_side=3)

# A network case costs ~0.5 s cold (JAX compiles each new shape), so the default run draws 30;
# a profile asking for more (``--hypothesis-profile=campaign``: thousands) gets what it asks for.
NETWORK_EXAMPLES = settings.default.max_examples if settings.default.max_examples > 50 else 30


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP hand-off costs (restored afterwards)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _explain(a) -> str:
    return f"{a.summary()}\n\nreproduce with:\n{a.snippet()}"


@needs_frameworks
@settings(deadline=None, max_examples=NETWORK_EXAMPLES)
@given(SMALL_NETWORKS)
def test_random_networks_agree_float64(net):
    a = agreement(net, backends=BACKENDS, dtype="float64", require=True)
    assert a.passed, _explain(a)
    assert len(a.results) == 3 * 3 + 3       # 3 pairs x (value, vjp, jvp) + 3 finite-difference checks


@needs_frameworks
@settings(deadline=None)
@given(SMALL_EXPRESSIONS)
def test_random_expressions_agree_float64(expr):
    a = agreement(expr, backends=BACKENDS, dtype="float64", require=True)
    assert a.passed, _explain(a)


@needs_frameworks
@settings(deadline=None, max_examples=10)
@given(SMALL_NETWORKS)
def test_float32_backends_agree_with_the_float64_reference(net):
    # float32 gradients against the float64 reference engine, under the float32 rule (rtol 2e-3,
    # scale floor 2e-4) plus its rounding term ulps * eps32 * (size of the summed terms): float32
    # rounding in a backward pass -- also where a gradient cancels to ~0 (attention over two keys) --
    # fits inside it; a 1% error does not.
    rng = np.random.default_rng(0)
    ref = get_backend("reference")
    u = rng.standard_normal(net.output_shape)
    want_value, want = ref.vjp(net, u, dtype="float64")
    tol = tolerance_for("float32")
    atol = {k: tol.ulps * tol.eps * m for k, m in term_sizes(net, u).items()}
    for name in BACKENDS:
        value, got = get_backend(name).vjp(net, u, dtype="float32")
        res = compare_gradients({"output": value}, {"output": want_value}, reference_name="reference float64",
                                atol=atol["value"])
        assert res.passed, f"{name} value\n{res}\n{net!r}"
        res = compare_gradients(got, want, reference_name="reference float64", atol=atol["vjp"])
        assert res.passed, f"{name} float32 gradients\n{res}\n{net!r}"


@needs_frameworks
@pytest.mark.parametrize("spec", [
    # logsumexp(log_softmax(x)) = log(rows): the gradient is identically zero, and the backends return
    # rounding residue of ~5e-17 that compare_gradients alone flags (nothing sets a scale at zero).
    Expression(Op("logsumexp", Op("log_softmax", Var("x"), axis=1)), inputs=(Input("x", (2, 3)),)),
    Expression(Op("sub", Op("exp", Var("x")), Op("exp", Var("x"))), inputs=(Input("x", (3,)),)),
], ids=["logsumexp_log_softmax", "f_minus_f"])
def test_gradients_that_cancel_to_zero_agree(spec):
    # The rounding allowance is the core's ulps * eps * (size of the summed terms), measured by the
    # reference engine: ~1e-15 here, so a 1e-4 error anywhere would still fail.
    a = agreement(spec, backends=BACKENDS, dtype="float64", require=True)
    assert a.passed, _explain(a)
    assert all(r.scaled_err < 1e-14 for r in a.results if r.quantity != "fd"), _explain(a)


def test_reference_agrees_with_finite_differences_without_frameworks():
    net = Network((Dense(3), Activation("tanh"), LayerNorm(), Dense(2)), input_shape=(2, 4), loss=MSELoss())
    a = agreement(net, backends=("reference",))
    assert a.passed, _explain(a)
    assert [r.quantity for r in a.results] == ["fd"]


class _Copy(ReferenceBackend):
    """The reference engine under another name (a second, identical backend)."""

    name = "reference_copy"


def test_agreement_record_is_json_ready(buggy):
    net = Network((Dense(2),), input_shape=(1, 3))
    a = agreement(net, backends=("reference", "reference_copy"))
    data = json.loads(json.dumps(a.to_dict()))
    assert data["passed"] and data["repr"] == repr(net)
    assert {"value", "vjp", "jvp", "fd"} == {r["quantity"] for r in data["results"]}
    assert set(a.max_errors()) == {"reference~reference_copy", "fd~reference", "fd~reference_copy"}
    assert all(e["max_abs_err"] == 0.0 for k, e in a.max_errors().items() if not k.startswith("fd"))


# -- planted bugs: each must be caught ---------------------------------------------------

class _UnbiasedLayerNorm(ReferenceLowering):
    """A realistic bug: layer norm with the unbiased variance (n - 1), as np.var(ddof=1) would give."""

    def _standardize(self, x, axes, eps):
        n = np.shape(x)[-1]
        xc = self.P("sub", x, self.P("mean", x, axis=axes, keepdims=True))
        var = self.P("mul", self.P("mean", self.P("square", xc), axis=axes, keepdims=True), self.const(n / (n - 1)))
        return self.P("div", xc, self.P("sqrt", self.P("add", var, self.const(eps))))


class _UnbiasedBackend(ReferenceBackend):
    name = "buggy_unbiased"

    def _make_lowering(self, dtype):
        return _UnbiasedLayerNorm(dtype)


class _OneElementBackend(ReferenceBackend):
    """A gradient 1e-4 off (relative) in one element of one parameter."""

    name = "buggy_element"

    def _vjp(self, f, primals):
        out, pullback = super()._vjp(f, primals)

        def wrong(ct):
            grads = [np.array(g, copy=True) for g in pullback(ct)]
            grads[1].reshape(-1)[2] *= 1 + 1e-4
            return grads

        return out, wrong


class _TransposedBackend(ReferenceBackend):
    """The weight gradient of a square Dense layer handed back transposed."""

    name = "buggy_transposed"

    def _vjp(self, f, primals):
        out, pullback = super()._vjp(f, primals)
        return out, lambda ct: [g.T if i == 1 else g for i, g in enumerate(pullback(ct))]


@pytest.fixture
def buggy(monkeypatch):
    monkeypatch.setattr(B, "_INSTANCES", {})
    for cls in (_UnbiasedBackend, _OneElementBackend, _TransposedBackend, _Copy):
        monkeypatch.setitem(B.BACKENDS, cls.name, cls)
    return B


@pytest.mark.parametrize("bug, spec, failing", [
    ("buggy_unbiased", Network((LayerNorm(), Dense(2)), input_shape=(3, 4)), {"value", "vjp", "jvp", "fd"}),
    ("buggy_element", Network((Dense(3), Activation("tanh")), input_shape=(2, 3), loss=MSELoss()), {"vjp", "fd"}),
    ("buggy_transposed", Network((Dense(3), Activation("sigmoid")), input_shape=(2, 3)), {"vjp", "fd"}),
])
def test_planted_bugs_are_caught(buggy, bug, spec, failing):
    a = agreement(spec, backends=("reference", bug))
    assert not a.passed
    failed = {r.quantity for r in a.failures()}
    assert failed == failing, a.summary()
    fd_ref = next(r for r in a.results if r.quantity == "fd" and r.a == "reference")
    assert fd_ref.passed                          # the reference itself still agrees with finite differences
    assert bug in a.snippet() and repr(spec) in a.snippet()
