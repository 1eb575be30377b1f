"""Tests of gradverify.spec: frozen records, JSON round trips, runnable reprs, validation, seeded arrays.

No numerical tolerances here: round trips and reprs must reproduce a spec
exactly (``==``), and seeded arrays must be bit-identical across calls.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings

import gradverify.spec as S
from gradverify.errors import SpecError
from gradverify.spec import (
    RNN, Activation, Attention, AvgPool, BatchNorm, Const, Conv1d, Conv2d, CrossEntropyLoss, Dense, Expression,
    Flatten, Index, Input, LayerNorm, Mask, MaxPool, MSELoss, Network, Op, Residual, Var,
)
from gradverify.strategies import expressions, networks

NETWORKS = [
    Network((Dense(4), Activation("tanh"), Dense(3)), input_shape=(2, 5), loss=CrossEntropyLoss(), seed=3),
    Network((Conv2d(2, 3, padding=1), Activation("relu"), MaxPool(2), Flatten(), Dense(2)), input_shape=(2, 1, 4, 4)),
    Network((Conv1d(3, 2, stride=2, padding=1), BatchNorm(), AvgPool(2, stride=1)), input_shape=(2, 2, 7),
            loss=MSELoss()),
    Network((RNN(4, return_sequences=True), Attention(heads=2, causal=True), LayerNorm(affine=False), RNN(3)),
            input_shape=(2, 3, 2)),
    Network((Dense(3), Residual((LayerNorm(), Dense(3, bias=False))), Activation("softplus")), input_shape=(4, 3)),
]

EXPRESSIONS = [
    Expression(Op("mul", Op("add", Var("a"), Var("b")), Op("add", Var("b"), Const(1.0))),
               inputs=(Input("a", (), (2.0,)), Input("b", (), (1.0,)))),
    Expression(Op("sum", Op("getitem", Var("x"), Index((("take", (0, 0, 2)), ("slice", None, None, 2)))),
                  axis=(0, 1), keepdims=True),
               inputs=(Input("x", (3, 4)),), seed=7),
    Expression(Op("where", Mask((2, 2), (1, 0, 0, 1)), Op("log", Var("x")), Op("exp", Var("y"))),
               inputs=(Input("x", (2, 2), (0.5, 1.5, 2.5, 3.5)), Input("y", (2,)))),
    Expression(Op("concatenate", Var("x"), Op("neg", Var("x")), axis=0), inputs=(Input("x", (2, 3)),)),
]

ALL = NETWORKS + EXPRESSIONS


@pytest.mark.parametrize("spec", ALL, ids=repr)
def test_json_round_trip_is_exact(spec):
    text = spec.to_json()
    assert type(spec).from_json(text) == spec
    assert S.from_json(text) == spec
    assert S.from_dict(json.loads(text)) == spec


@pytest.mark.parametrize("spec", ALL, ids=repr)
def test_repr_is_a_runnable_constructor(spec):
    rebuilt = eval(repr(spec), vars(S))  # noqa: S307 - the point of the test
    assert rebuilt == spec
    assert hash(rebuilt) == hash(spec)


@pytest.mark.parametrize("spec", ALL, ids=repr)
def test_snippet_runs_and_reproduces(spec, capsys):
    code = S.snippet(spec, backends=("reference",))
    assert repr(spec) in code
    exec(compile(code, "<snippet>", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert out.startswith("agreement PASS")


def test_records_are_frozen_and_store_tuples():
    net = Network([Dense(2), Residual([Dense(2)])], input_shape=[3, 2])
    assert isinstance(net.layers, tuple) and isinstance(net.layers[1].layers, tuple)
    assert net.input_shape == (3, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.seed = 1  # type: ignore[misc]
    expr = Expression(Op("sum", Var("x"), axis=[0, 1]), inputs=[Input("x", [2, 2])])
    assert expr.root.kwargs["axis"] == (0, 1)
    assert isinstance(expr.inputs, tuple)


def test_network_shapes_and_parameter_names():
    net = NETWORKS[1]
    assert net.shapes() == [(2, 1, 4, 4), (2, 2, 4, 4), (2, 2, 4, 4), (2, 2, 2, 2), (2, 8), (2, 2)]
    assert [(p.name, p.shape) for p in net.parameters()] == [
        ("0.W", (2, 1, 3, 3)), ("0.b", (2,)), ("4.W", (8, 2)), ("4.b", (2,))]
    res = NETWORKS[4]
    assert [p.name for p in res.parameters()] == ["0.W", "0.b", "1.0.gamma", "1.0.beta", "1.1.W"]
    assert res.output_shape == (4, 3)
    assert NETWORKS[0].output_shape == ()


def test_arrays_are_seeded_and_cast():
    net = NETWORKS[0]
    a, b = net.arrays(), net.arrays()
    assert list(a) == ["x", "0.W", "0.b", "2.W", "2.b"]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(v.dtype == np.float32 for v in net.arrays("float32").values())
    other = dataclasses.replace(net, seed=4).arrays()
    assert not np.array_equal(a["x"], other["x"])
    labels = net.constants()["labels"]
    assert labels.dtype == np.int64 and labels.shape == (2,) and labels.max() < 3
    # Changing one input's values leaves the other inputs' drawn values alone.
    e = EXPRESSIONS[1]
    assert np.array_equal(e.arrays()["x"], e.arrays()["x"])
    assert e.arrays()["x"].shape == (3, 4)


def test_expression_helpers():
    e = EXPRESSIONS[0]
    assert e.variables() == ("a", "b")
    assert e.primitives() == ("add", "mul")
    assert e.depth == 3 and e.size == 7
    e2 = e.with_values({"a": np.array(5.0)})
    assert e2.arrays()["a"] == 5.0 and e2.arrays()["b"] == 1.0


@pytest.mark.parametrize("make, match", [
    (lambda: Network((Dense(3), Conv2d(2, 3)), input_shape=(2, 3)), r"layer 1: Conv2d.*4-D input"),
    (lambda: Network((Conv1d(2, 9),), input_shape=(1, 1, 4)), r"layer 0: .*window 9 is larger"),
    (lambda: Network((Residual((Dense(2),)),), input_shape=(1, 3)), r"Residual.*same shape"),
    (lambda: Network((Attention(heads=2),), input_shape=(1, 2, 3)), r"not divisible by heads=2"),
    (lambda: Network((Dense(3),), input_shape=(2, 4, 5), loss=CrossEntropyLoss()), r"\(N, K\) logits"),
    (lambda: Network((BatchNorm(),), input_shape=(1, 3)), r"at least 2 values per channel"),
    (lambda: Activation("log"), r"Activation fn must be one of"),
    (lambda: Dense(0), r"Dense units must be >= 1"),
    (lambda: Dense(2.5), r"Dense units must be an integer"),
    (lambda: Op("frobnicate", Var("x")), r"unknown primitive 'frobnicate'"),
    (lambda: Op("exp", Var("x"), Var("y")), r"'exp' takes 1 argument"),
    (lambda: Op("sum", Var("x"), axes=0), r"'sum' has no parameter\(s\) \['axes'\]"),
    (lambda: Op("where", Var("c"), Var("x"), Var("y")), r"condition .* must be a Mask"),
    (lambda: Op("getitem", Var("x"), Var("i")), r"must be an Index"),
    (lambda: Op("identity", Var("x")), r"unknown primitive 'identity'"),
    (lambda: Mask((2, 2), (1, 0)), r"needs 4 bits"),
    (lambda: Index((("slice", 0),)), r"index item"),
    (lambda: Input("x", (2,), (1.0,)), r"needs 2 values"),
    (lambda: Expression(Op("exp", Var("y")), inputs=(Input("x", (2,)),)), r"variable\(s\) \['y'\] .* not declared"),
    (lambda: Expression(Var("x"), inputs=(Input("x", (2,)), Input("x", (3,)))), r"input names must be unique"),
    (lambda: S.from_json('{"type": "Bogus"}'), r"unknown spec type 'Bogus'"),
    (lambda: S.from_json('{"type": "Dense", "units": 2, "colour": 1}'), r"Dense has no field"),
    (lambda: Network.from_json(Dense(2).to_json()), r"expected a Network record"),
    (lambda: S.from_json("{not json"), r"not valid JSON"),
])
def test_bad_specs_raise_spec_error_saying_what_to_fix(make, match):
    with pytest.raises(SpecError, match=match):
        make()


@settings(max_examples=25)
@given(networks())
def test_random_networks_round_trip(net):
    assert Network.from_json(net.to_json()) == net
    assert eval(repr(net), vars(S)) == net  # noqa: S307


@settings(max_examples=25)
@given(expressions())
def test_random_expressions_round_trip(expr):
    assert Expression.from_json(expr.to_json()) == expr
    assert eval(repr(expr), vars(S)) == expr  # noqa: S307
    for name, arr in expr.arrays().items():
        assert np.array_equal(arr, Expression.from_json(expr.to_json()).arrays()[name])
