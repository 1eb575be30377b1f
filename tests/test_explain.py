"""``gradverify.explain``: the annotated computational graph of a scalar expression.

Each gradient it prints is checked against the reference engine run directly
(``E.grad`` on the same function written with engine calls) and, for the
classic example, against the values derived by hand. Path counts are checked
against a brute-force enumeration of the paths. The parser must reject
everything outside its whitelist without evaluating it.

Tolerances: explain and ``E.grad`` use the same primitives and VJP rules, but
explain shares repeated subexpressions (one node) where the direct engine
function recomputes them, so sums may be accumulated in another order:
``rtol=1e-12`` (a few ulps of float64 over these short graphs).

Cost: milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradverify.engine as E
from gradverify.errors import GradVerifyError, SpecError
from gradverify.explain import explain, format_dot, format_text, functions, parse_at

RTOL = 1e-12   # see the module docstring


def test_classic_example_values_partials_adjoints():
    ex = explain("(a + b) * (b + 1)", "a=2,b=1")
    assert ex.output == "e"
    values = {n.name: n.value for n in ex.nodes}
    assert values == {"a": 2, "b": 1, "c": 3, "d": 2, "e": 6}
    assert {n.name: n.expr for n in ex.nodes if n.op} == {"c": "a + b", "d": "b + 1", "e": "c * d"}
    partials = {(e.parent, e.child): e.partial for e in ex.edges}
    assert partials == {("a", "c"): 1, ("b", "c"): 1, ("b", "d"): 1, ("c", "e"): 2, ("d", "e"): 3}
    adjoints = {n.name: n.adjoint for n in ex.nodes}
    assert adjoints == {"e": 1, "d": 3, "c": 2, "b": 5, "a": 2}
    assert dict(ex.gradient) == {"a": 2, "b": 5}
    # Paths: a->c->e, b->c->e, b->d->e; one multiplication each. The sweep:
    # one per edge not into e (a->c, b->c, b->d).
    assert dict(ex.paths) == {"a": 1, "b": 2}
    assert ex.path_multiplications == 3 and ex.sweep_multiplications == 3


def test_classic_example_text_ends_with_the_gradient():
    text = format_text(explain("(a + b) * (b + 1)", "a=2,b=1"))
    lines = text.splitlines()
    assert lines[0] == "expression: e = (a + b) * (b + 1)"
    assert lines[-2:] == ["de/da = 2", "de/db = 5"]
    assert "  adj[b] = adj[c] * dc/db + adj[d] * dd/db = 2 * 1 + 3 * 1 = 5" in lines
    assert "  c = a + b   = 3" in lines
    assert any(line.startswith("  summing over all paths: 3 multiplications over 3 paths") for line in lines)
    assert any(line.startswith("  one reverse sweep:      3 multiplications") for line in lines)


# (expression, point, the same function with engine calls)
CASES = [
    ("(a + b) * (b + 1)", {"a": 2.0, "b": 1.0}, lambda a, b: (a + b) * (b + 1)),
    ("y = tanh(w * x + b)", {"w": 0.5, "x": 2.0, "b": -1.3},
     lambda w, x, b: E.tanh(w * x + b)),
    ("sigmoid(a) * log(b) - exp(-a / b) ** 2", {"a": 0.3, "b": 1.7},
     lambda a, b: E.sigmoid(a) * E.log(b) - E.exp(-a / b) ** 2),
    ("sin(x) * cos(x) + x ** y", {"x": 1.2, "y": 0.7},
     lambda x, y: E.sin(x) * E.cos(x) + x ** y),
    ("relu(a - 1) + softplus(a * b) / sqrt(b)", {"a": 2.5, "b": 0.4},
     lambda a, b: E.relu(a - 1) + E.softplus(a * b) / E.sqrt(b)),
    ("maximum(a, b) * minimum(a, -b) + abs(a - b)", {"a": 0.6, "b": -0.2},
     lambda a, b: E.maximum(a, b) * E.minimum(a, -b) + E.abs(a - b)),
    ("q = (x * x) * (x * x) + 3", {"x": -1.1}, lambda x: (x * x) * (x * x) + 3),
]


@pytest.mark.parametrize("source, point, fn", CASES, ids=[c[0] for c in CASES])
def test_gradient_and_value_match_the_engine(source, point, fn):
    ex = explain(source, point)
    args = [np.float64(point[k]) for k in point]
    argnums = tuple(range(len(args)))
    value, grads = E.value_and_grad(fn, argnums)(*args)
    assert ex.node(ex.output).value == pytest.approx(float(value), rel=RTOL)
    assert [v for v, _ in ex.gradient] == list(point)
    for (name, g), want in zip(ex.gradient, grads):
        assert g == pytest.approx(float(want), rel=RTOL, abs=1e-15), name


@pytest.mark.parametrize("source, point, fn", CASES, ids=[c[0] for c in CASES])
def test_adjoints_are_sums_over_outgoing_edges(source, point, fn):
    """adj[x] = sum over edges x -> c of adj[c] * dc/dx, for every node (the chain rule, one sweep)."""
    ex = explain(source, point)
    adj = {n.name: n.adjoint for n in ex.nodes}
    for n in ex.nodes:
        if n.name == ex.output:
            assert n.adjoint == 1
            continue
        want = sum(adj[e.child] * e.partial for e in ex.edges if e.parent == n.name)
        assert n.adjoint == pytest.approx(want, rel=RTOL, abs=1e-15)


def _brute_force_paths(ex, start):
    """Every path start -> output, as lists of edges (exponential; small graphs only)."""
    done, stack = [], [(start, 0)]
    while stack:
        node, length = stack.pop()
        if node == ex.output:
            done.append(length)
            continue
        stack.extend((e.child, length + 1) for e in ex.edges if e.parent == node)
    return done


@pytest.mark.parametrize("source, point, fn", CASES, ids=[c[0] for c in CASES])
def test_path_counts_match_brute_force(source, point, fn):
    ex = explain(source, point)
    mults = 0
    for v, _ in ex.inputs:
        lengths = _brute_force_paths(ex, v)
        assert ex.paths[v] == len(lengths)
        mults += sum(k - 1 for k in lengths)
    assert ex.path_multiplications == mults
    assert ex.sweep_multiplications == sum(1 for e in ex.edges if e.child != ex.output)


def test_repeated_squaring_has_exponentially_many_paths():
    # x -> x*x -> (x*x)^2 -> ...: 2^k paths of k edges, but 2 edges per level.
    k = 12
    source = "x"
    for _ in range(k):
        source = f"({source}) * ({source})"
    ex = explain(source, {"x": 1.01})
    assert ex.paths["x"] == 2 ** k
    assert ex.path_multiplications == 2 ** k * (k - 1)
    assert ex.sweep_multiplications == 2 * (k - 1)
    assert len(ex.nodes) == k + 1                     # shared subexpressions are one node
    assert dict(ex.gradient)["x"] == pytest.approx(2 ** k * 1.01 ** (2 ** k - 1), rel=1e-12)


def test_named_output_and_extra_variables():
    ex = explain("y = a * a", "a=3,z=4")
    assert ex.output == "y"
    assert dict(ex.gradient) == {"a": 6, "z": 0}
    text = format_text(ex)
    assert text.splitlines()[-2:] == ["dy/da = 6", "dy/dz = 0"]
    assert "adj[z] = 0   (z does not reach y)" in text


def test_bare_variable_and_output_name_clash():
    ex = explain("a", "a=5")
    assert dict(ex.gradient) == {"a": 1} and ex.node("e").value == 5
    # A variable called e: the output becomes "out" unless the expression names it.
    assert explain("e * 2", "e=1").output == "out"
    assert explain("y = e * 2", "e=1").output == "y"


def test_kink_is_noted_with_the_engines_convention():
    ex = explain("relu(a) + a", "a=0")
    assert dict(ex.gradient) == {"a": 1}             # relu'(0) = 0, as PyTorch and JAX
    assert any("kink of relu" in n for n in ex.notes)
    assert "note: b = relu(a) is at a kink of relu" in format_text(ex)


@pytest.mark.parametrize("source, at, message", [
    ("log(a)", "a=-1", "log needs x > 0"),
    ("a / (b - 1)", "a=1,b=1", "div needs y != 0"),
    ("sqrt(a)", "a=0", "sqrt needs x > 0"),
    ("a * b", "a=1", "no value for b: add b=... to --at"),
    ("1 + 2", "", "has no variables"),
    ("a +", "a=1", "cannot parse"),
    ("a; b", "a=1,b=1", "one expression"),
    ("import os", "", "give an expression"),
    ("foo(a)", "a=1", "unknown function 'foo'; known:"),
    ("exp(a, a)", "a=1", "exp() takes 1 argument(s), got 2"),
    ("exp(x=a)", "a=1", "positional arguments only"),
    ("a.real", "a=1", "Attribute is not allowed"),
    ("a[0]", "a=1", "Subscript is not allowed"),
    ("a if a else a", "a=1", "IfExp is not allowed"),
    ("(lambda: a)()", "a=1", "unknown function"),
    ("a @ a", "a=1", "MatMult is not supported"),
    ("not a", "a=1", "Not is not supported"),
    ("'s' * a", "a=1", "only real numbers"),
    ("2j * a", "a=1", "only real numbers"),
    ("exp", "", "is a function; call it"),
])
def test_bad_expressions_are_spec_errors(source, at, message):
    with pytest.raises(SpecError, match=None) as info:
        explain(source, at)
    assert message in str(info.value)


def test_nothing_is_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    for source in (f"__import__('os').system('touch {marker}')",
                   f"open('{marker}', 'w')",
                   "().__class__.__bases__[0].__subclasses__()"):
        with pytest.raises(GradVerifyError):
            explain(source, "")
    assert not marker.exists()


@pytest.mark.parametrize("text, want", [
    ("a=2,b=1", {"a": 2.0, "b": 1.0}),
    (["a=2", "b=-1.5e-3"], {"a": 2.0, "b": -1.5e-3}),
    (" x = 3 , ", {"x": 3.0}),
])
def test_parse_at(text, want):
    assert parse_at(text) == want


@pytest.mark.parametrize("text", ["a", "a=", "a=x", "1a=2", "a=1,a=2", "a=nan", "a=inf"])
def test_parse_at_rejects(text):
    with pytest.raises(SpecError):
        parse_at(text)


def test_functions_come_from_the_primitive_table():
    from gradverify.ops import PRIMITIVES

    funcs = functions()
    for name in ("exp", "log", "tanh", "sigmoid", "relu", "sin", "cos", "sqrt", "softplus", "abs"):
        assert funcs[name] == 1 and PRIMITIVES[name].arity == 1
    assert funcs["maximum"] == 2
    assert "where" not in funcs and "identity" not in funcs and "sum" not in funcs


def test_dot_output_annotates_nodes_and_edges():
    ex = explain("(a + b) * (b + 1)", "a=2,b=1")
    dot = format_dot(ex)
    assert dot.startswith('digraph "e" {') and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    assert '"c" [label="c = a + b\\nvalue 3\\nadjoint de/dc = 2"];' in dot
    assert '"b" [label="b\\nvalue 1\\nadjoint de/db = 5", shape=ellipse];' in dot
    assert '"d" -> "e" [label="de/dd = 3"];' in dot
    assert sum(" -> " in line for line in dot.splitlines()) == len(ex.edges) == 5


def test_repeated_argument_edges_are_labelled():
    ex = explain("x * x", "x=3")
    assert [(e.parent, e.child, e.argnum, e.partial) for e in ex.edges] == [("x", "e", 0, 3), ("x", "e", 1, 3)]
    assert "de/dx#1 = 3" in format_text(ex) and "de/dx#2 = 3" in format_dot(ex)
    assert dict(ex.gradient) == {"x": 6}


def test_to_dict_is_json_ready():
    import json

    d = explain("y = exp(a) * b", "a=0,b=2").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["gradient"] == {"a": 2.0, "b": 1.0} and d["output"] == "y"
    assert math.isclose(d["nodes"][-1]["value"], 2.0)


def test_long_expression_needs_no_recursion():
    """A 1500-term left-nested sum is deeper than Python's recursion limit; the builder uses a stack."""
    n = 1500
    source = " + ".join(f"x{i} * x{i + 1}" for i in range(n))
    point = {f"x{i}": 1.0 + i / n for i in range(n + 1)}
    ex = explain(source, point)
    grad = dict(ex.gradient)
    # d/dx_i of sum_j x_j x_{j+1} = x_{i-1} + x_{i+1} (missing neighbours at the ends); exact sums of
    # a few float64 values, compared at rtol 1e-12.
    for i in (0, 1, n // 2, n):
        want = (point.get(f"x{i - 1}", 0.0) if i > 0 else 0.0) + point.get(f"x{i + 1}", 0.0)
        assert grad[f"x{i}"] == pytest.approx(want, rel=RTOL)
    assert format_text(ex).splitlines()[-1] == f"de/dx{n} = {grad[f'x{n}']:.10g}"


def test_too_deep_for_the_parser_is_a_spec_error():
    source = " + ".join(f"x{i}" for i in range(20000))
    with pytest.raises(SpecError, match="nested too deeply"):
        explain(source, {f"x{i}": 1.0 for i in range(20000)})
