"""Tests of gradverify.strategies: eager argument validation, valid draws, domains and kinks, shrinking.

No numerical tolerances: drawn cases must satisfy the stated bounds exactly
(the margins are measured with the same ops.py helpers the strategies use).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from gradverify import ops
from gradverify.backends import get_backend
from gradverify.spec import Attention, Expression, Input, Network, Op, Residual, Var
from gradverify.strategies import (
    EXPRESSION_PRIMITIVES, LAYER_KINDS, expression_values, expressions, networks, primitive_inputs,
)

SHRINK = settings(max_examples=200, database=None, suppress_health_check=list(HealthCheck), deadline=None)


@pytest.mark.parametrize("call, argument", [
    (lambda: expressions(max_leaves=0), "max_leaves"),
    (lambda: expressions(max_depth=-1), "max_depth"),
    (lambda: expressions(max_dims=9), "max_dims"),
    (lambda: expressions(max_side=1.5), "max_side"),
    (lambda: expressions(primitives=["exp", "frobnicate"]), "primitives"),
    (lambda: expressions(primitives=[]), "primitives"),
    (lambda: expressions(bound=0), "bound"),
    (lambda: expressions(kink_margin=float("nan")), "kink_margin"),
    (lambda: networks(max_layers=0), "max_layers"),
    (lambda: networks(max_spatial=1), "max_spatial"),
    (lambda: networks(kinds=["dense", "lstm"]), "kinds"),
    (lambda: networks(kinds=["flatten"]), "kinds"),
    (lambda: networks(activations=["log"]), "activations"),
    (lambda: networks(losses=["hinge"]), "losses"),
    (lambda: networks(attempts=True), "attempts"),
    (lambda: primitive_inputs("identity", [(2,)]), "name"),
    (lambda: primitive_inputs("add", [(2,)]), "shapes"),
    (lambda: primitive_inputs("sum", [(2,)], axes=0), "params"),
    (lambda: expression_values("x"), "expr"),
])
def test_bad_arguments_fail_when_the_strategy_is_made(call, argument):
    with pytest.raises(InvalidArgument, match=argument):
        call()          # eagerly: no draw needed


def _margins(spec):
    return get_backend("reference").margins(spec)


@settings(max_examples=40)
@given(expressions(max_leaves=5, max_depth=4, max_size=30))
def test_expressions_are_valid_bounded_and_safe(expr):
    assert isinstance(expr, Expression)
    assert expr.depth <= 4
    assert all(i.values is not None for i in expr.inputs)
    assert set(expr.primitives()) <= set(EXPRESSION_PRIMITIVES)
    value = get_backend("reference").value(expr)
    assert value.size <= 30 and np.all(np.isfinite(value))
    m = _margins(expr)
    assert m.safe(kink_margin=1e-2, max_magnitude=1e3), m


@settings(max_examples=20)
@given(expressions(primitives=["log", "sqrt", "div", "pow", "relu", "abs", "maximum", "max"], max_leaves=4))
def test_restricted_expressions_stay_in_domain_and_away_from_kinks(expr):
    assert set(expr.primitives()) <= {"log", "sqrt", "div", "pow", "relu", "abs", "maximum", "max",
                                      "add", "softplus", "mean"}     # + domain guards and broadcast fixes
    m = _margins(expr)
    assert m.domain > 0 and m.kink >= 1e-2


@settings(max_examples=40)
@given(networks(max_layers=3, max_batch=2, max_width=3))
def test_networks_fit_and_are_safe(net):
    assert isinstance(net, Network)
    assert 1 <= len(net.layers) <= 3
    assert net.input_shape[0] <= 2
    net.shapes()                                  # shapes fit (Network validates them on construction)
    m = _margins(net)
    assert m.safe(kink_margin=1e-2, max_magnitude=1e3), m


@settings(max_examples=20)
@given(networks(kinds=["conv2d", "max_pool", "flatten", "dense"], losses=["cross_entropy"]))
def test_network_kinds_and_losses_are_honoured(net):
    kinds = {l.kind for l in net.layers}
    assert kinds <= {"conv2d", "max_pool", "flatten", "dense"}
    assert net.loss is None or net.loss.kind == "cross_entropy"


def test_every_layer_kind_is_drawn():
    seen: set[str] = set()

    @settings(max_examples=300, database=None, derandomize=True)
    @given(networks())
    def collect(net):
        for l in net.layers:
            seen.add(l.kind)
            if isinstance(l, Residual):
                seen.update(i.kind for i in l.layers)

    collect()
    assert set(LAYER_KINDS) <= seen


PRIMS_WITH_LIMITS = [n for n in ops.public_primitives() if ops.primitive(n).domain or ops.primitive(n).kinks]
PARAMS = {"max": {"axis": (1,)}, "max_pool2d": {"kernel": (2, 2), "stride": (1, 1)}}
SHAPES = {"max_pool2d": [(1, 2, 3, 3)]}


@pytest.mark.parametrize("name", PRIMS_WITH_LIMITS)
def test_primitive_inputs_are_inside_the_domain_and_away_from_kinks(name):
    row = ops.primitive(name)
    shapes = SHAPES.get(name, [(2, 3)] * row.arity)
    params = PARAMS.get(name, {})

    @settings(max_examples=30, suppress_health_check=[HealthCheck.filter_too_much])
    @given(primitive_inputs(name, shapes, kink_margin=0.05, **params))
    def check(args):
        assert [a.shape for a in args] == shapes
        assert ops.domain_margin(name, *args) > 0
        assert ops.distance_to_kink(name, *args, **params) >= 0.05

    check()


def test_expression_values_respect_an_unguarded_domain():
    expr = Expression(Op("log", Var("x")), inputs=(Input("x", (2,)),))

    @settings(max_examples=20, suppress_health_check=[HealthCheck.filter_too_much])
    @given(expression_values(expr))
    def check(e):
        assert np.all(e.arrays()["x"] > 0)

    check()


def test_strategies_compose():
    pair = st.tuples(expressions(max_leaves=2), networks(max_layers=1))

    @settings(max_examples=5)
    @given(pair)
    def check(p):
        assert isinstance(p[0], Expression) and isinstance(p[1], Network)

    check()


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_failures_shrink_to_shallow_expressions():
    # The smallest expression using `log` is log(guard(leaf)) = log(softplus(leaf) + 0.5):
    # depth 4, 5 nodes (the guard keeps log inside its domain, per ops.py).
    found = find(expressions(max_inputs=1, max_dims=1, primitives=["exp", "sin", "mul", "sum", "log"]),
                 lambda e: "log" in e.primitives(), settings=SHRINK)
    assert found.depth <= 4 and found.size <= 6, repr(found)
    assert all(np.size(a) <= 1 for a in found.arrays().values()), repr(found)


def test_failures_shrink_to_small_networks():
    found = find(networks(), lambda n: any(isinstance(l, Attention) for l in n.layers), settings=SHRINK)
    assert len(found.layers) == 1 and found.loss is None, repr(found)
    assert found.input_shape[0] == 1 and found.input_shape[1] == 1, repr(found)
