"""Hypothesis strategies: random expressions, networks, and inputs inside every primitive's domain.

Public, composable strategies (functions returning strategies, keyword-only
bounds with small defaults, validated when called):

* :func:`expressions` -- :class:`~gradverify.spec.Expression` trees over the
  primitive table, built with ``st.recursive`` so a failure shrinks toward a
  shallow tree with few leaves; input values included.
* :func:`expression_values` -- values for a given expression's inputs that
  keep every intermediate result inside its primitive's domain and away from
  its kinks.
* :func:`networks` -- :class:`~gradverify.spec.Network` specs (dense, conv,
  pooling, RNN, normalisation, attention, residual blocks, activations,
  losses) whose shapes fit, with a seed whose parameters keep the network
  away from kinks.
* :func:`primitive_inputs` -- argument arrays for one primitive, inside its
  domain and away from its kinks.

Everything a strategy needs to know about a primitive -- its arity, its
domain (``log``: x > 0), its kinks (``relu`` at 0, ``max`` at ties) -- is read
from :data:`gradverify.ops.PRIMITIVES`. Domains are respected by
construction: an argument with a domain bound is wrapped in a guard built from
primitives (``softplus(a) + bound + 1/2``), except where the table's
``unless_integer_arg`` waives the bound (an integer exponent of ``pow``).
Kinks are avoided by measurement: candidate values are traced once through
the reference engine and every primitive application's distance to its kink
(:func:`gradverify.ops.distance_to_kink`) must exceed ``kink_margin``, no
value may exceed ``max_magnitude``, and the result must not cancel to
rounding residue (:data:`MIN_OUTPUT_RATIO`); a few candidates are tried
before the example is rejected.

Examples::

    from hypothesis import given
    from gradverify.strategies import expressions, networks

    @given(expressions(max_leaves=4))
    def test_my_engine(expr): ...

Cost of drawing: an expression costs O(nodes) shape inferences on small dummy
arrays and up to ``attempts`` traced reference evaluations; a network the same
per layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from . import ops
from .errors import SpecError
from .spec import (
    RNN, Activation, Attention, AvgPool, BatchNorm, Const, Conv1d, Conv2d, CrossEntropyLoss, Dense, Expression,
    Flatten, Index, Input, LayerNorm, Mask, MaxPool, MSELoss, Network, Op, Residual, Var, activation_names,
)

__all__ = [
    "expressions", "expression_values", "networks", "primitive_inputs",
    "EXPRESSION_PRIMITIVES", "LAYER_KINDS", "LOSSES",
]

#: Primitives :func:`expressions` draws from by default: every public primitive.
EXPRESSION_PRIMITIVES: tuple[str, ...] = ops.public_primitives()

#: Layer kinds :func:`networks` draws from by default.
LAYER_KINDS: tuple[str, ...] = ("dense", "conv1d", "conv2d", "max_pool", "avg_pool", "activation", "flatten",
                                "rnn", "layer_norm", "batch_norm", "attention", "residual")

#: Losses :func:`networks` draws from (``"none"``: the output array itself).
LOSSES: tuple[str, ...] = ("none", "mse", "cross_entropy")

_SEED = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------
# Argument validation (eager: when the strategy function is called)
# ---------------------------------------------------------------------------

def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise InvalidArgument(f"{name} must be {bounds}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidArgument(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or (positive and value <= 0):
        raise InvalidArgument(f"{name} must be a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def _check_subset(name: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        chosen = tuple(value)
    except TypeError:
        raise InvalidArgument(f"{name} must be a sequence of names from {list(allowed)}, got {value!r}") from None
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise InvalidArgument(f"{name} has unknown name(s) {unknown}; choose from {list(allowed)}")
    if not chosen:
        raise InvalidArgument(f"{name} must not be empty")
    return tuple(dict.fromkeys(chosen))


# ---------------------------------------------------------------------------
# Shared: is a case safe (finite, bounded, in domain, away from kinks)?
# ---------------------------------------------------------------------------

def _reference():
    from .backends import get_backend

    return get_backend("reference")


#: A case whose result is below this fraction of its largest intermediate value has
#: cancelled to rounding residue (the mean of a layer norm's outputs): its finite
#: differences are noise, so the strategies do not draw it.
MIN_OUTPUT_RATIO = 1e-8


def _safe(spec: Any, kink_margin: float, max_magnitude: float) -> bool:
    try:
        m = _reference().margins(spec)
    except (SpecError, FloatingPointError, ValueError):
        return False
    return m.safe(kink_margin=kink_margin, max_magnitude=max_magnitude, min_output_ratio=MIN_OUTPUT_RATIO)


# ---------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _T:
    """A subtree while it is being built: the node, its shape and its depth."""

    node: Any
    shape: tuple[int, ...]
    depth: int

    def __repr__(self) -> str:  # what Hypothesis prints for intermediate draws
        return repr(self.node)


def _infer(prim: str, args: Sequence[Any], params: dict) -> tuple[int, ...] | None:
    """Output shape of ``prim`` on these argument shapes (None if invalid), via the reference lowering."""
    from .backends.reference import ReferenceLowering

    low = ReferenceLowering(np.dtype(np.float64))
    vals = []
    for a in args:
        if isinstance(a, _T):
            vals.append(np.full(a.shape, 0.75))
        elif isinstance(a, Mask):
            vals.append(a.array())
        elif isinstance(a, Index):
            vals.append(low.index(a))
        else:
            vals.append(a)
    try:
        with np.errstate(all="ignore"):
            out = low.P(prim, *vals, **params)
    except (SpecError, ValueError, IndexError, TypeError):
        return None
    return tuple(np.shape(out))


class _Builder:
    """Builds subtrees from children, reading the primitive table; caps depth and size."""

    def __init__(self, prims: tuple[str, ...], max_depth: int, max_size: int):
        self.prims = prims
        self.max_depth = max_depth
        self.max_size = max_size

    def guard(self, t: _T, bound: ops.Bound) -> _T:
        """Wrap ``t`` so its values satisfy ``bound``: ``softplus(t) + value + 1/2`` (> value)."""
        node = Op("add", Op("softplus", t.node), Const(bound.value + 0.5))
        return _T(node, t.shape, t.depth + 2)

    def make(self, prim: str, args: Sequence[Any], params: dict, fallback: _T) -> _T:
        """``Op(prim, *args, **params)`` with domain guards; ``fallback`` if it does not fit."""
        row = ops.primitive(prim)
        args = list(args)
        for b in row.domain:
            if b.arg >= len(args) or not isinstance(args[b.arg], _T):
                continue
            if b.unless_integer_arg is not None:
                other = args[b.unless_integer_arg]
                if isinstance(other, _T) and isinstance(other.node, Const) and float(other.node.value).is_integer():
                    continue
            args[b.arg] = self.guard(args[b.arg], b)
        shape = _infer(prim, args, params)
        if shape is None or int(np.prod(shape, dtype=np.int64)) > self.max_size:
            return fallback
        depth = 1 + max(a.depth for a in args if isinstance(a, _T))
        if depth > self.max_depth:
            return fallback
        node = Op(prim, *[a.node if isinstance(a, _T) else a for a in args], **params)
        return _T(node, shape, depth)

    # -- one strategy per family of primitives ----------------------------------
    def extend(self, children: st.SearchStrategy) -> st.SearchStrategy:
        options: list[st.SearchStrategy] = []
        p = self.prims
        row = ops.primitive
        # Families read from the table: kind, arity, and the static parameters each row takes.
        un = [n for n in p if row(n).kind == "elementwise" and row(n).arity == 1]
        bi = [n for n in p if row(n).kind == "elementwise" and row(n).arity == 2]
        red = [n for n in p if row(n).kind == "reduction" and "keepdims" in row(n).params]
        soft = [n for n in p if row(n).kind == "reduction" and "keepdims" not in row(n).params]
        shp = [n for n in p if row(n).kind == "shape"]
        nn = [n for n in p if row(n).kind == "nn"]
        # Unary and binary elementwise ops are listed twice: they are the bulk of the table.
        # The first option is what Hypothesis shrinks toward: a unary op (a shallow tree).
        if un:
            options += [st.builds(self._unary, st.sampled_from(un), children)] * 2
        if bi:
            options += [st.builds(self._binary, st.sampled_from(bi), children, children, st.data())] * 2
        if "where" in p:
            options.append(st.builds(self._where, children, children, st.data()))
        if red:
            options.append(st.builds(self._reduce, st.sampled_from(red), children, st.data()))
        if soft:
            options.append(st.builds(self._softmax, st.sampled_from(soft), children, st.data()))
        if shp:
            options.append(st.builds(self._shape, st.sampled_from(shp), children, children, st.data()))
        if "matmul" in p:
            options.append(st.builds(self._matmul, children, children))
        if nn:
            options.append(st.builds(self._nn, st.sampled_from(nn), children, st.data()))
        return st.one_of(options)

    def _unary(self, prim, a):
        return self.make(prim, [a], {}, a)

    def _binary(self, prim, a, b, data):
        if prim == "pow" and data.draw(st.booleans(), label="integer exponent"):
            e = data.draw(st.sampled_from([2.0, 3.0]), label="exponent")
            return self.make("pow", [a, _T(Const(e), (), 1)], {}, a)
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            b = self.make("mean", [b], {}, b)
        return self.make(prim, [a, b], {}, a)

    def _where(self, a, b, data):
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            b = self.make("mean", [b], {}, a)          # too deep to average: b falls back to a
            shape = np.broadcast_shapes(a.shape, b.shape)
        n = int(np.prod(shape, dtype=np.int64))
        bits = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="mask")
        return self.make("where", [Mask(shape, bits), a, b], {}, a)

    def _axis(self, nd, data):
        if nd == 0:
            return None
        choice = data.draw(st.sampled_from(["all", "one", "many"]), label="axis kind")
        if choice == "all":
            return None
        if choice == "one" or nd == 1:
            return data.draw(st.integers(-nd, nd - 1), label="axis")
        axes = data.draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True), label="axes")
        return tuple(axes)

    def _reduce(self, prim, a, data):
        params = {"axis": self._axis(len(a.shape), data), "keepdims": data.draw(st.booleans(), label="keepdims")}
        return self.make(prim, [a], params, a)

    def _softmax(self, prim, a, data):
        if not a.shape:
            return a
        axis = data.draw(st.integers(-len(a.shape), len(a.shape) - 1), label="axis")
        return self.make(prim, [a], {"axis": axis}, a)

    def _shape(self, prim, a, b, data):
        nd, shape = len(a.shape), a.shape
        size = int(np.prod(shape, dtype=np.int64))
        if prim == "reshape":
            target = data.draw(st.sampled_from([(size,), (1, -1), tuple(reversed(shape)), (-1, 1)]), label="shape")
            return self.make(prim, [a], {"shape": target}, a)
        if prim == "transpose":
            if nd < 2:
                return a
            perm = data.draw(st.permutations(range(nd)), label="axes")
            return self.make(prim, [a], {"axes": tuple(perm)}, a)
        if prim == "broadcast_to":
            ones = [i for i, s in enumerate(shape) if s == 1]
            if ones and data.draw(st.booleans(), label="stretch"):
                target = tuple(2 if i == ones[0] else s for i, s in enumerate(shape))
            else:
                target = (2,) + shape
            return self.make(prim, [a], {"shape": target}, a)
        if prim == "expand_dims":
            return self.make(prim, [a], {"axis": data.draw(st.integers(0, nd), label="axis")}, a)
        if prim == "squeeze":
            ones = [i for i, s in enumerate(shape) if s == 1]
            if not ones:
                return a
            axis = data.draw(st.one_of(st.none(), st.sampled_from(ones)), label="axis")
            return self.make(prim, [a], {"axis": axis}, a)
        if prim == "getitem":
            if nd == 0 or shape[0] == 0:
                return a
            n0 = shape[0]
            kind = data.draw(st.sampled_from(["int", "slice", "take"]), label="index kind")
            if kind == "int":
                item: Any = data.draw(st.integers(-n0, n0 - 1), label="index")
            elif kind == "slice":
                start = data.draw(st.integers(0, n0 - 1), label="start")
                step = data.draw(st.integers(1, 2), label="step")
                item = ("slice", start, None, step)
            else:
                item = ("take", tuple(data.draw(st.lists(st.integers(0, n0 - 1), min_size=1, max_size=4),
                                                label="take")))
            return self.make(prim, [a, Index((item,))], {}, a)
        if prim in ("concatenate", "stack"):
            if nd == 0 and prim == "concatenate":
                return a
            axis = data.draw(st.integers(0, nd if prim == "stack" else nd - 1), label="axis")
            partner = b if _infer(prim, [a, b], {"axis": axis}) is not None else a
            return self.make(prim, [a, partner], {"axis": axis}, a)
        return a  # pragma: no cover - every shape primitive is handled above

    def _matmul(self, a, b):
        if not a.shape:
            return a
        if _infer("matmul", [a, b], {}) is not None:
            return self.make("matmul", [a, b], {}, a)
        if len(a.shape) == 1:
            return self.make("matmul", [a, a], {}, a)
        nd = len(a.shape)
        at = self.make("transpose", [a], {"axes": tuple(range(nd - 2)) + (nd - 1, nd - 2)}, a)
        return self.make("matmul", [a, at], {}, a)

    def _nn(self, prim, a, data):
        if len(a.shape) != 4:
            return a
        n, c, h, w = a.shape
        if prim == "conv2d":
            k = data.draw(st.integers(1, 2), label="kernel")
            pad = data.draw(st.integers(0, 1), label="padding")
            stride = data.draw(st.integers(1, 2), label="stride")
            o = data.draw(st.integers(1, 2), label="out channels")
            if h + 2 * pad < k or w + 2 * pad < k:
                return a
            weight = _T(Var(f"?w:{o},{c},{k},{k}"), (o, c, k, k), 1)   # named in _tree_to_expression
            return self.make(prim, [a, weight], {"stride": stride, "padding": pad}, a)
        k = data.draw(st.integers(1, 2), label="kernel")
        if h < k or w < k:
            return a
        stride = data.draw(st.one_of(st.none(), st.just(1)), label="stride")
        return self.make(prim, [a], {"kernel": k, "stride": stride}, a)


def _leaves(inputs: Sequence[Input], consts: bool) -> st.SearchStrategy:
    var = st.sampled_from([_T(Var(i.name), i.shape, 1) for i in inputs])
    if not consts:
        return var
    const = st.sampled_from([0.5, 2.0, -1.5, 3.0]).map(lambda c: _T(Const(c), (), 1))
    return st.one_of(var, const)


def _fit(shape: tuple[int, ...], max_size: int, floor: int = 1) -> tuple[int, ...]:
    """Reduce sides (leading first) toward ``floor`` until the size is at most ``max_size``."""
    out = list(shape)
    for i in range(len(out)):
        while int(np.prod(out, dtype=np.int64)) > max_size and out[i] > floor:
            out[i] -= 1
    return tuple(out)


def _input_shapes(draw, *, max_inputs: int, max_dims: int, max_side: int, max_size: int,
                  image: bool) -> list[tuple[int, ...]]:
    if image:
        base = (draw(st.integers(1, 2), label="N"), draw(st.integers(1, 2), label="C"),
                draw(st.integers(2, max(2, max_side)), label="H"), draw(st.integers(2, max(2, max_side)), label="W"))
        base = _fit(_fit(base[:2], max(1, max_size // (base[2] * base[3]))) + base[2:], max_size, floor=2)
    else:
        nd = draw(st.integers(0, max_dims), label="ndim")
        base = tuple(draw(st.lists(st.integers(1, max_side), min_size=nd, max_size=nd), label="base shape"))
        base = _fit(base, max_size)
    n = draw(st.integers(1, max_inputs), label="inputs")
    shapes = [base]
    for _ in range(n - 1):
        kind = draw(st.sampled_from(["same", "scalar", "suffix", "ones"]), label="input shape kind")
        if kind == "same" or not base:
            shapes.append(base)
        elif kind == "scalar":
            shapes.append(())
        elif kind == "suffix":
            shapes.append(base[draw(st.integers(0, len(base)), label="drop"):])
        else:
            keep = draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)), label="keep dims")
            shapes.append(tuple(s if k else 1 for s, k in zip(base, keep)))
    return shapes


def _tree_to_expression(t: _T, inputs: list[Input]) -> Expression:
    """The Expression of a built tree; fresh conv2d weights (``Var("?w:shape")``) become inputs w0, w1..."""
    counter = [0]
    declared = list(inputs)

    def rebuild(node: Any) -> Any:
        if isinstance(node, Var) and node.name.startswith("?w:"):
            name = f"w{counter[0]}"
            counter[0] += 1
            declared.append(Input(name, tuple(int(s) for s in node.name[3:].split(","))))
            return Var(name)
        if isinstance(node, Op):
            return Op(node.prim, *[rebuild(a) for a in node.args], **node.kwargs)
        return node

    return Expression(rebuild(t.node), tuple(declared))


def expressions(*, max_leaves: int = 6, max_depth: int = 4, max_inputs: int = 3, max_dims: int = 3,
                max_side: int = 3, max_size: int = 36, primitives: Iterable[str] | None = None,
                constants: bool = True, bound: float = 2.0, kink_margin: float = 1e-2,
                max_magnitude: float = 1e3, attempts: int = 8) -> st.SearchStrategy[Expression]:
    """Random expression trees over the primitive table, with input values included.

    The tree is drawn with ``st.recursive`` (leaves: the inputs and a few
    constants), so failures shrink toward shallow trees with few leaves; every
    node's shape fits (an argument that does not broadcast is averaged to a
    scalar first; matmul without a fitting partner multiplies by its own
    transpose). Values are drawn by :func:`expression_values`.

    Args:
        max_leaves: most leaves per tree (``st.recursive``'s bound).
        max_depth: most nodes on a root-to-leaf path; deeper ops are not added.
        max_inputs: most input variables.
        max_dims, max_side: input rank and side length bounds.
        max_size: most elements in any input or intermediate result.
        primitives: names from :data:`EXPRESSION_PRIMITIVES` to draw from
            (default: all public primitives).
        constants: allow scalar constant leaves.
        bound: input values are drawn uniformly from ``[-bound, bound]``.
        kink_margin: smallest allowed distance of any primitive's arguments
            from its kink (:func:`gradverify.ops.distance_to_kink`).
        max_magnitude: largest allowed ``|value|`` of any intermediate.
        attempts: value draws tried before the example is rejected.

    Raises:
        InvalidArgument: a bound is out of range or a primitive unknown.
    """
    max_leaves = _check_int("max_leaves", max_leaves, 1)
    max_depth = _check_int("max_depth", max_depth, 1)
    max_inputs = _check_int("max_inputs", max_inputs, 1)
    max_dims = _check_int("max_dims", max_dims, 0, 4)
    max_side = _check_int("max_side", max_side, 1)
    max_size = _check_int("max_size", max_size, 1)
    attempts = _check_int("attempts", attempts, 1)
    prims = EXPRESSION_PRIMITIVES if primitives is None else _check_subset("primitives", primitives,
                                                                            EXPRESSION_PRIMITIVES)
    bound = _check_float("bound", bound)
    kink_margin = _check_float("kink_margin", kink_margin, positive=False)
    max_magnitude = _check_float("max_magnitude", max_magnitude)
    builder = _Builder(prims, max_depth, max_size)
    allow_image = max_size >= 4 and any(ops.primitive(p).kind == "nn" for p in prims)

    @st.composite
    def draw_expression(draw):
        image = allow_image and draw(st.booleans(), label="image input")
        shapes = _input_shapes(draw, max_inputs=max_inputs, max_dims=max_dims, max_side=max_side,
                               max_size=max_size, image=image)
        inputs = [Input(f"x{i}", s) for i, s in enumerate(shapes)]
        tree = draw(st.recursive(_leaves(inputs, constants), builder.extend, max_leaves=max_leaves), label="tree")
        if not isinstance(tree.node, (Op, Var)):
            tree = _T(Var("x0"), shapes[0], 1)
        expr = _tree_to_expression(tree, inputs)
        return draw(expression_values(expr, bound=bound, kink_margin=kink_margin, max_magnitude=max_magnitude,
                                      attempts=attempts), label="values")

    return draw_expression()


def expression_values(expr: Expression, *, bound: float = 2.0, kink_margin: float = 1e-2,
                      max_magnitude: float = 1e3, attempts: int = 8) -> st.SearchStrategy[Expression]:
    """``expr`` with input values that keep it in every primitive's domain and away from its kinks.

    Values are uniform in ``[-bound, bound]`` from a drawn seed; a candidate
    is kept when the traced reference evaluation is finite, no intermediate
    exceeds ``max_magnitude``, every domain margin is positive and every kink
    is at least ``kink_margin`` away. Up to ``attempts`` candidates are tried,
    then the example is rejected. Cost: up to ``attempts`` traced evaluations.
    """
    if not isinstance(expr, Expression):
        raise InvalidArgument(f"expr must be an Expression, got {type(expr).__name__}")
    bound = _check_float("bound", bound)
    kink_margin = _check_float("kink_margin", kink_margin, positive=False)
    max_magnitude = _check_float("max_magnitude", max_magnitude)
    attempts = _check_int("attempts", attempts, 1)

    @st.composite
    def draw_values(draw):
        seed = draw(_SEED, label="value seed")
        rng = np.random.default_rng(seed)
        for _ in range(attempts):
            arrays = {i.name: rng.uniform(-bound, bound, i.shape) for i in expr.inputs}
            candidate = expr.with_values(arrays)
            if _safe(candidate, kink_margin, max_magnitude):
                return candidate
        from hypothesis import reject

        reject()

    return draw_values()


def primitive_inputs(name: str, shapes: Sequence[Sequence[int]], *, bound: float = 2.0, kink_margin: float = 1e-2,
                     dtype: Any = np.float64, **params: Any) -> st.SearchStrategy[tuple[np.ndarray, ...]]:
    """Argument arrays for primitive ``name``, inside its domain and ``kink_margin`` away from its kinks.

    Values are drawn with Hypothesis (they shrink) in ``[-bound, bound]``,
    then moved into the domain: an argument with a ``gt`` bound ``v`` becomes
    ``v + kink_margin + |value|``, one with an ``ne`` bound is pushed at
    least ``kink_margin`` away from ``v``; point kinks are pushed away the
    same way, ties between two arguments by separating the second one. Ties
    inside a reduction or a pooling window are filtered out. ``params`` are
    the primitive's static parameters (``axis=...``, ``kernel=...``).

    Raises:
        InvalidArgument: unknown or non-public primitive, wrong number of shapes.
    """
    row = ops.PRIMITIVES.get(name)
    if row is None or not row.public:
        raise InvalidArgument(f"name must be a public primitive of gradverify.ops, got {name!r}")
    shapes = [tuple(_check_int("shapes entry", s, 0) for s in shape) for shape in shapes]
    if row.arity is not None and len(shapes) != row.arity:
        raise InvalidArgument(f"shapes must give {row.arity} shape(s) for {name!r} ({', '.join(row.arg_names)}), "
                              f"got {len(shapes)}")
    bound = _check_float("bound", bound)
    kink_margin = _check_float("kink_margin", kink_margin, positive=False)
    unknown = sorted(set(params) - set(row.params))
    if unknown:
        raise InvalidArgument(f"params has unknown name(s) {unknown}; {name!r} takes {list(row.params)}")
    dt = np.dtype(dtype)
    from hypothesis.extra import numpy as hnp

    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32)
    arrays = st.tuples(*[hnp.arrays(np.float64, s, elements=elements, unique=True) for s in shapes])

    def repair(args: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        args = [a.copy() for a in args]
        for b in row.domain:
            if b.unless_integer_arg is not None and ops._is_integer_valued(args[b.unless_integer_arg]):
                continue
            x = args[b.arg]
            if b.op == "gt":
                args[b.arg] = b.value + kink_margin + np.abs(x)
            else:
                near = np.abs(x - b.value) < kink_margin
                args[b.arg] = np.where(near, b.value + np.where(x < b.value, -1, 1) * 2 * kink_margin, x)
        for k in row.kinks:
            if k.kind == "point":
                x = args[k.args[0]]
                near = np.abs(x - k.at) < kink_margin
                args[k.args[0]] = np.where(near, k.at + np.where(x < k.at, -1, 1) * 2 * kink_margin, x)
            elif k.kind == "tie":
                i, j = k.args
                x, y = np.broadcast_arrays(args[i], args[j])
                near = np.abs(x - y) < 2 * kink_margin
                if near.any():
                    y2 = np.where(near, x + 4 * kink_margin, y)
                    args[j] = y2 if y2.shape == args[j].shape else args[j] + 4 * kink_margin
        return tuple(a.astype(dt) for a in args)

    def away(args):
        with np.errstate(all="ignore"):
            return (ops.domain_margin(name, *args) > 0
                    and ops.distance_to_kink(name, *args, **params) >= kink_margin)

    return arrays.map(repair).filter(away)


# ---------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------

def _family_ok(family: str, kinds: tuple[str, ...]) -> bool:
    need = {"vector": ("dense", "activation", "layer_norm", "batch_norm", "residual"),
            "sequence": ("rnn", "attention", "dense", "layer_norm", "residual"),
            "signal": ("conv1d", "max_pool", "avg_pool", "batch_norm"),
            "image": ("conv2d", "max_pool", "avg_pool", "batch_norm")}[family]
    return any(k in kinds for k in need)


def _layer_options(shape: tuple[int, ...], kinds: tuple[str, ...]) -> list[str]:
    nd = len(shape)
    out = []
    for k in kinds:
        if k in ("dense", "activation", "residual"):
            out.append(k)
        elif k == "layer_norm" and shape[-1] >= 2:
            out.append(k)
        elif k == "batch_norm" and nd in (2, 3, 4) and shape[0] * int(np.prod(shape[2:])) >= 3:
            out.append(k)
        elif k == "flatten" and nd >= 3:
            out.append(k)
        elif k in ("rnn", "attention") and nd == 3:
            out.append(k)
        elif k == "conv1d" and nd == 3:
            out.append(k)
        elif k == "conv2d" and nd == 4:
            out.append(k)
        elif k in ("max_pool", "avg_pool") and nd in (3, 4) and min(shape[2:]) >= 2:
            out.append(k)
    return out


def _draw_layer(draw, kind: str, shape: tuple[int, ...], *, max_width: int, activations: tuple[str, ...],
                kinds: tuple[str, ...], inner: bool = False):
    if kind == "dense":
        units = shape[-1] if inner else draw(st.integers(1, max_width), label="units")
        return Dense(units, bias=draw(st.booleans(), label="bias"))
    if kind == "activation":
        return Activation(draw(st.sampled_from(activations), label="activation"))
    if kind == "layer_norm":
        return LayerNorm(affine=draw(st.booleans(), label="affine"))
    if kind == "batch_norm":
        return BatchNorm(affine=draw(st.booleans(), label="affine"))
    if kind == "flatten":
        return Flatten()
    if kind == "rnn":
        return RNN(draw(st.integers(1, max_width), label="hidden"), draw(st.booleans(), label="return_sequences"))
    if kind == "attention":
        d = shape[-1]
        heads = draw(st.sampled_from([h for h in (1, 2) if d % h == 0]), label="heads")
        return Attention(heads, causal=draw(st.booleans(), label="causal"))
    if kind == "conv1d":
        length = shape[2]
        pad = draw(st.integers(0, 1), label="padding")
        k = draw(st.integers(1, min(3, length + 2 * pad)), label="kernel")
        return Conv1d(draw(st.integers(1, max_width), label="channels"), k,
                      stride=draw(st.integers(1, 2), label="stride"), padding=pad)
    if kind == "conv2d":
        h, w = shape[2:]
        pad = draw(st.integers(0, 1), label="padding")
        k = draw(st.integers(1, min(3, h + 2 * pad, w + 2 * pad)), label="kernel")
        return Conv2d(draw(st.integers(1, max_width), label="channels"), k,
                      stride=draw(st.integers(1, 2), label="stride"), padding=pad)
    if kind in ("max_pool", "avg_pool"):
        k = draw(st.integers(2, min(2, *shape[2:])), label="kernel")
        stride = draw(st.one_of(st.none(), st.just(1)), label="stride")
        return (MaxPool if kind == "max_pool" else AvgPool)(k, stride)
    if kind == "residual":
        fits = _layer_options(shape, kinds + ("dense", "activation"))
        layers = []
        for _ in range(draw(st.integers(1, 2), label="residual depth")):
            inner = draw(st.sampled_from(("dense", "activation", "layer_norm", "attention", "batch_norm")),
                         label="inner kind")
            if inner in fits:
                layers.append(_draw_layer(draw, inner, shape, max_width=max_width, activations=activations,
                                          kinds=kinds, inner=True))
        return Residual(tuple(layers) or (Dense(shape[-1]),))
    raise AssertionError(kind)  # pragma: no cover


def networks(*, max_layers: int = 4, max_batch: int = 3, max_width: int = 4, max_time: int = 4,
             max_spatial: int = 5, kinds: Iterable[str] | None = None, activations: Iterable[str] | None = None,
             losses: Iterable[str] = LOSSES, kink_margin: float = 1e-2, max_magnitude: float = 1e3,
             attempts: int = 8) -> st.SearchStrategy[Network]:
    """Random networks whose shapes fit, with a seed keeping them away from kinks.

    The input family (vectors (N, D), sequences (N, T, D), signals (N, C, L)
    or images (N, C, H, W)) is drawn first, then up to ``max_layers`` layers,
    each chosen among the kinds that fit the current shape; the loss last
    (``CrossEntropyLoss`` only on (N, K) outputs). Shrinking removes layers
    and reduces sizes. The parameter seed is drawn, and up to ``attempts``
    consecutive seeds are tried until the network's intermediate values are
    finite, bounded by ``max_magnitude`` and ``kink_margin`` away from every
    kink (relu at 0, max-pooling ties); otherwise the example is rejected.

    Args:
        max_layers: most top-level layers (a residual block counts as one).
        max_batch, max_width, max_time, max_spatial: size bounds (batch,
            features/channels/units, sequence length, signal/image side).
        kinds: layer kinds from :data:`LAYER_KINDS` (default: all).
        activations: activation names (default:
            :func:`gradverify.spec.activation_names`).
        losses: from :data:`LOSSES`.
        kink_margin, max_magnitude, attempts: as in :func:`expressions`.

    Raises:
        InvalidArgument: a bound out of range or an unknown name.
    """
    max_layers = _check_int("max_layers", max_layers, 1)
    max_batch = _check_int("max_batch", max_batch, 1)
    max_width = _check_int("max_width", max_width, 1)
    max_time = _check_int("max_time", max_time, 1)
    max_spatial = _check_int("max_spatial", max_spatial, 2)
    attempts = _check_int("attempts", attempts, 1)
    kinds_t = LAYER_KINDS if kinds is None else _check_subset("kinds", kinds, LAYER_KINDS)
    acts = activation_names() if activations is None else _check_subset("activations", activations,
                                                                         activation_names())
    losses_t = _check_subset("losses", losses, LOSSES)
    kink_margin = _check_float("kink_margin", kink_margin, positive=False)
    max_magnitude = _check_float("max_magnitude", max_magnitude)
    families = [f for f in ("vector", "sequence", "signal", "image") if _family_ok(f, kinds_t)]
    if not families:
        raise InvalidArgument(f"kinds={kinds_t} has no layer that takes an input; add 'dense' or 'conv2d'")

    @st.composite
    def draw_network(draw):
        family = draw(st.sampled_from(families), label="input family")
        n = draw(st.integers(1, max_batch), label="batch")
        if family == "vector":
            shape: tuple[int, ...] = (n, draw(st.integers(1, max_width), label="features"))
        elif family == "sequence":
            shape = (n, draw(st.integers(1, max_time), label="time"), draw(st.integers(1, max_width), label="features"))
        elif family == "signal":
            shape = (n, draw(st.integers(1, 2), label="channels"), draw(st.integers(2, max_spatial), label="length"))
        else:
            side = st.integers(2, max_spatial)
            shape = (n, draw(st.integers(1, 2), label="channels"), draw(side, label="H"), draw(side, label="W"))
        layers = []
        current = shape
        for _ in range(draw(st.integers(1, max_layers), label="layers")):
            # The kind is drawn from the fixed list and skipped when it does not fit, so that
            # shrinking a size never changes which kind a draw means (it would block the shrink).
            kind = draw(st.sampled_from(kinds_t), label="kind")
            if kind not in _layer_options(current, kinds_t):
                continue
            layer = _draw_layer(draw, kind, current, max_width=max_width, activations=acts, kinds=kinds_t)
            try:
                current = layer.out_shape(current)
            except SpecError:
                continue
            layers.append(layer)
        if not layers:
            layers.append(Dense(1))
            current = layers[-1].out_shape(current)
        loss_options = [l for l in losses_t if l != "cross_entropy" or (len(current) == 2 and current[1] >= 2)]
        loss_name = draw(st.sampled_from(loss_options or ["none"]), label="loss")
        loss = {"none": None, "mse": MSELoss(), "cross_entropy": CrossEntropyLoss()}.get(loss_name)
        seed = draw(_SEED, label="seed")
        for k in range(attempts):
            net = Network(tuple(layers), shape, loss, seed=(seed + k) % 2**32)
            if _safe(net, kink_margin, max_magnitude):
                return net
        from hypothesis import reject

        reject()

    return draw_network()
