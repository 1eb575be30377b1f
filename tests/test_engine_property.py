"""Property test: on random expressions, the engine's gradient agrees with finite differences.

A small private Hypothesis strategy builds expression trees over the public
primitives of ``gradverify.ops`` with ``st.recursive`` (so a failure shrinks
toward a shallow expression). Every node of every expression maps a (2, 3)
array to a (2, 3) array; primitives that change shapes are wrapped so that
they come back to (2, 3) (``transpose(reshape(e, (3, 2)))``, a conv with
"same" padding, a reduction broadcast back, ...). Broadcasting is exercised by
(1, 3) and (2, 1) inputs.

Inputs are drawn inside each primitive's domain by construction (``log``,
``sqrt``, the denominator of ``div`` and the base of ``pow`` only ever see a
positive subexpression). The recorded graph is then screened with the table's
own helpers (``ops.in_domain``, ``ops.domain_margin``, ``ops.distance_to_kink``):
an example whose intermediate values sit within ``KINK_MARGIN`` of a kink, or
within ``DOMAIN_MARGIN`` of a domain boundary, or exceed ``MAX_MAGNITUDE``, is
rejected with ``assume`` -- finite differences are not meaningful there.

The comparison itself is ``gradverify.assert_gradients(fn, inputs, vjp=vjp)``
with ``(fn, vjp) = E.numpy_pair(expr_fn)``, at its default float64 tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import gradverify as gv
import gradverify.engine as E
from gradverify import ops
from gradverify.engine import vjps

# Finite-difference steps are ~1e-4 relative (eps**(1/4)); a kink 2e-2 away from
# every intermediate value stays far outside the stencil even after the
# perturbation is amplified by the expression's derivatives (bounded below).
KINK_MARGIN = 2e-2
DOMAIN_MARGIN = 1e-2
MAX_MAGNITUDE = 1e2

SHAPE = (2, 3)
INPUT_NAMES = ("x0", "x1", "p", "r", "c", "W", "K")


def _draw_inputs(seed: int) -> list[np.ndarray]:
    """Seeded inputs: x0, x1 in +-[0.2, 1.5]; p in [0.5, 2]; row r, column c; W, K."""
    rng = np.random.default_rng(seed)

    def signed(*shape):
        return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)

    return [signed(*SHAPE), signed(*SHAPE), rng.uniform(0.5, 2.0, SHAPE),
            signed(1, 3), signed(2, 1), rng.standard_normal((3, 3)) / 2,
            rng.standard_normal((1, 1, 3, 3)) / 3]


@dataclass(frozen=True)
class Node:
    """An expression tree node: ``op`` applied to ``children`` with a static ``arg``."""

    op: str
    children: tuple = ()
    arg: Any = None

    def __repr__(self) -> str:
        if self.op == "var":
            return self.arg
        inner = ", ".join(repr(c) for c in self.children)
        return f"{self.op}({inner}{'' if self.arg is None else ', ' + repr(self.arg)})"


def _evaluate(node: Node, env: dict[str, Any]) -> Any:
    """Evaluate a tree with engine primitives; each op returns a (2, 3) array."""
    op, a = node.op, node.arg
    if op == "var":
        return env[a]
    c = [_evaluate(ch, env) for ch in node.children]
    if op in ("neg", "square", "exp", "log", "sqrt", "abs", "sin", "cos", "tanh",
              "sigmoid", "relu", "softplus"):
        return getattr(E, op)(c[0])
    if op in ("add", "sub", "mul", "div", "maximum", "minimum", "pow"):
        return getattr(E, op)(c[0], c[1])
    if op == "pow_int":
        return c[0] ** a
    if op == "where":
        return E.where(np.array(a, dtype=bool).reshape(SHAPE), c[0], c[1])
    if op == "matmul_w":
        return E.matmul(c[0], env["W"])
    if op == "matmul3":
        return E.matmul(E.matmul(c[0], E.transpose(c[1])), c[2])
    if op in ("sum", "mean", "max", "logsumexp"):       # reduce, then broadcast back
        return E.broadcast_to(getattr(E, op)(c[0], axis=a, keepdims=True), SHAPE)
    if op == "reduce_all":                              # scalar result, broadcast by add
        return c[0] + E.sum(c[1]) * 0.1
    if op in ("softmax", "log_softmax"):
        return getattr(E, op)(c[0], axis=a)
    if op == "reshape_t":
        return E.transpose(E.reshape(c[0], (3, 2)))
    if op == "squeeze_expand":
        return E.squeeze(E.expand_dims(c[0], 0), 0)
    if op == "take":                                    # repeated column indices
        return c[0][:, np.array(a)]
    if op == "flip":
        return c[0][::-1]
    if op == "concatenate":
        return E.concatenate([c[0][:, :a], c[1][:, a:]], axis=1)
    if op == "stack":
        return E.stack([c[0][0], c[1][1]], axis=0)
    if op == "conv2d":                                  # 3x3 kernel, "same" padding
        return E.reshape(E.conv2d(E.reshape(c[0], (1, 1) + SHAPE), env["K"], padding=1), SHAPE)
    if op in ("max_pool2d", "avg_pool2d"):              # (2, 1) windows -> a (1, 3) row
        pooled = getattr(E, op)(E.reshape(c[1], (1, 1) + SHAPE), (2, 1), 1)
        return c[0] + E.reshape(pooled, (1, 3))
    raise AssertionError(f"unknown op {op}")


_UNARY = ("neg", "square", "exp", "sin", "cos", "tanh", "sigmoid", "relu", "softplus", "abs")
_BINARY = ("add", "sub", "mul", "maximum", "minimum")


def _leaves() -> st.SearchStrategy[Node]:
    return st.sampled_from([Node("var", arg="x0"), Node("var", arg="x1"), Node("var", arg="p")])


def _extend(e: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    # A positive subexpression, for log, sqrt, div's denominator and pow's base.
    pos = st.one_of(st.just(Node("var", arg="p")),
                    st.builds(lambda ch, f: Node(f, (ch,)), e, st.sampled_from(["exp", "sigmoid", "softplus"])))
    small = st.sampled_from([Node("var", arg="r"), Node("var", arg="c")])
    two = st.tuples(e, e)
    return st.one_of(
        st.builds(lambda ch, f: Node(f, (ch,)), e, st.sampled_from(_UNARY)),
        st.builds(lambda ch, f: Node(f, (ch,)), pos, st.sampled_from(["log", "sqrt"])),
        st.builds(lambda ab, f: Node(f, ab), two, st.sampled_from(_BINARY)),
        st.builds(lambda a, b, f: Node(f, (a, b)), e, small, st.sampled_from(_BINARY)),
        st.builds(lambda a, b: Node("div", (a, b)), e, pos),
        st.builds(lambda a, b: Node("pow", (a, b)), pos, e),
        st.builds(lambda a, k: Node("pow_int", (a,), k), e, st.sampled_from([2, 3])),
        st.builds(lambda ab, m: Node("where", ab, m), two, st.tuples(*[st.booleans()] * 6)),
        st.builds(lambda a: Node("matmul_w", (a,)), e),
        st.builds(lambda a, b, c: Node("matmul3", (a, b, c)), e, e, e),
        st.builds(lambda a, f, ax: Node(f, (a,), ax), e,
                  st.sampled_from(["sum", "mean", "max", "logsumexp"]), st.sampled_from([0, 1, (0, 1)])),
        st.builds(lambda ab: Node("reduce_all", ab), two),
        st.builds(lambda a, f, ax: Node(f, (a,), ax), e, st.sampled_from(["softmax", "log_softmax"]),
                  st.sampled_from([0, 1, -1])),
        st.builds(lambda a, f: Node(f, (a,)), e, st.sampled_from(["reshape_t", "squeeze_expand", "flip"])),
        st.builds(lambda a, idx: Node("take", (a,), idx), e, st.tuples(*[st.integers(0, 2)] * 3)),
        st.builds(lambda ab, k: Node("concatenate", ab, k), two, st.sampled_from([1, 2])),
        st.builds(lambda ab: Node("stack", ab), two),
        st.builds(lambda a: Node("conv2d", (a,)), e),
        st.builds(lambda ab, f: Node(f, ab), two, st.sampled_from(["max_pool2d", "avg_pool2d"])),
    )


expressions = st.recursive(_leaves(), _extend, max_leaves=10)


def _make_fn(expr: Node):
    def expr_fn(x0, x1, p, r, c, W, K):
        return _evaluate(expr, dict(x0=x0, x1=x1, p=p, r=r, c=c, W=W, K=K))
    return expr_fn


def _screen(expr_fn, inputs, seed) -> None:
    """Reject points where finite differences are not meaningful, using ops.py's helpers.

    Also rejects expressions that are (numerically) constant, such as ``e - e``:
    their true gradient is zero everywhere and there is nothing to verify (the
    checker's tolerance has no scale to work with there; see the report).
    """
    rng = np.random.default_rng(seed)
    fn = E.numpy_pair(expr_fn)[0]
    moved = fn(*[a + 1e-3 * rng.standard_normal(a.shape) for a in inputs]) - fn(*inputs)
    assume(np.max(np.abs(moved)) > 1e-8)
    out = expr_fn(*[E.Tensor(a, requires_grad=True) for a in inputs])
    for node in E.toposort(out):
        v = node.value
        assume(np.all(np.isfinite(v)) and np.max(np.abs(v), initial=0.0) < MAX_MAGNITUDE)
        if node.prim is None:
            continue
        args = [a.value if isinstance(a, E.Tensor) else a for a in node.args]
        assume(ops.domain_margin(node.prim, *args) > DOMAIN_MARGIN)
        assume(ops.distance_to_kink(node.prim, *args, **node.params) > KINK_MARGIN)


# Example budget and deadline come from the Hypothesis profile in tests/conftest.py
# (default: 50 examples, no deadline; --hypothesis-profile=campaign for thousands).
@given(expr=expressions, seed=st.integers(0, 2**16))
def test_engine_gradient_matches_finite_differences(expr, seed):
    inputs = _draw_inputs(seed)
    expr_fn = _make_fn(expr)
    _screen(expr_fn, inputs, seed)
    fn, vjp = E.numpy_pair(expr_fn)
    # Default float64 tolerances of the checker: the engine is exact up to
    # rounding, so any disagreement beyond finite-difference noise is a bug.
    gv.assert_gradients(fn, inputs, vjp=vjp, seed=seed)


def test_the_property_has_teeth(monkeypatch):
    """A deliberately wrong rule (sin' = 1.01 cos) is caught by the same check."""
    monkeypatch.setitem(vjps.VJPS, "sin", (lambda g, ans, x: g * E.cos(x) * 1.01,))
    expr_fn = _make_fn(Node("sin", (Node("var", arg="x0"),)))
    fn, vjp = E.numpy_pair(expr_fn)
    with pytest.raises(gv.GradientMismatch):
        gv.assert_gradients(fn, _draw_inputs(0), vjp=vjp)


# One instance of every op the strategy can build, with its static argument and arity.
_ALL_OPS = [(f, None, 1) for f in _UNARY + ("log", "sqrt", "matmul_w", "reshape_t", "squeeze_expand",
                                           "flip", "conv2d")] + \
    [(f, None, 2) for f in _BINARY + ("div", "pow", "reduce_all", "stack", "max_pool2d", "avg_pool2d")] + \
    [("pow_int", 2, 1), ("where", (True, False) * 3, 2), ("matmul3", None, 3), ("take", (0, 0, 1), 1),
     ("concatenate", 1, 2)] + \
    [(f, 1, 1) for f in ("sum", "mean", "max", "logsumexp", "softmax", "log_softmax")]


def test_the_strategy_covers_the_public_primitives():
    """Every public primitive of ops.py is reachable from the expression strategy."""
    used = set()
    for op, arg, arity in _ALL_OPS:
        leaves = [E.Tensor(a, requires_grad=True) for a in _draw_inputs(1)]
        out = _evaluate(Node(op, (Node("var", arg="p"),) * arity, arg), dict(zip(INPUT_NAMES, leaves)))
        assert out.shape == SHAPE, op
        used.update(node.prim for node in E.toposort(out) if node.prim)
    missing = set(ops.public_primitives()) - used
    assert not missing, f"public primitives the strategy never builds: {sorted(missing)}"
