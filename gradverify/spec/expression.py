"""Expressions: trees over the primitive table, with their inputs.

An :class:`Expression` is a tree whose inner nodes are :class:`Op` (one
primitive of :data:`gradverify.ops.PRIMITIVES` applied to child nodes, with
its static parameters) and whose leaves are :class:`Var` (an input, to be
differentiated), :class:`Const` (a scalar constant), :class:`Mask` (a constant
boolean array, the condition of ``where``) and :class:`Index` (the index of
``getitem``). Positional arguments follow the primitive table exactly:
``Op("getitem", x, Index(...))`` has the table's two arguments, and
``Op("where", Mask(...), x, y)`` its three.

Example::

    >>> from gradverify.spec import *
    >>> e = Expression(Op("mul", Op("add", Var("a"), Var("b")), Op("add", Var("b"), Const(1.0))),
    ...                inputs=(Input("a", (), (2.0,)), Input("b", (), (1.0,))))
    >>> e.arrays()["b"]
    array(1.)

``repr(e)`` is a constructor call that reproduces ``e`` when evaluated after
``from gradverify.spec import *``. Cost of every method: O(number of nodes),
plus the input sizes for :meth:`Expression.arrays`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from ..errors import SpecError
from ..ops import PRIMITIVES
from ._base import SpecRecord, as_float, as_int, as_shape, freeze, register, setattr_frozen

__all__ = ["Node", "Var", "Const", "Mask", "Index", "Op", "Input", "Expression"]


class Node(SpecRecord):
    """Base class of expression tree nodes."""

    def children(self) -> tuple["Node", ...]:
        """The child nodes (empty for leaves)."""
        return ()


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Var(Node):
    """An input of the expression, by name; its value comes from :class:`Input`."""

    name: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"Var name must be a non-empty string, got {self.name!r}")

    def __repr__(self) -> str:
        return f"Var({self.name!r})"


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Const(Node):
    """A scalar constant (cast to the dtype of the evaluation; no gradient)."""

    value: float

    def __post_init__(self):
        setattr_frozen(self, "value", as_float(self.value, "Const value"))

    def __repr__(self) -> str:
        return f"Const({self.value!r})"


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Mask(Node):
    """A constant boolean array (the condition of ``where``); ``bits`` in C order."""

    shape: tuple[int, ...]
    bits: tuple[bool, ...]

    def __post_init__(self):
        shape = as_shape(self.shape, "Mask shape", minimum=0)
        bits = tuple(bool(b) for b in freeze(self.bits))
        if len(bits) != int(np.prod(shape, dtype=np.int64)):
            raise SpecError(f"Mask of shape {shape} needs {int(np.prod(shape))} bits, got {len(bits)}")
        setattr_frozen(self, "shape", shape)
        setattr_frozen(self, "bits", bits)

    def array(self) -> np.ndarray:
        """The mask as a boolean ndarray."""
        return np.array(self.bits, dtype=bool).reshape(self.shape)

    def __repr__(self) -> str:
        return f"Mask({self.shape!r}, {tuple(int(b) for b in self.bits)!r})"


def _index_item(item: Any) -> Any:
    if item is None or item == "...":
        return item
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return int(item)
    item = freeze(item)
    if isinstance(item, tuple) and item and item[0] == "slice" and len(item) == 4:
        return ("slice",) + tuple(None if v is None else as_int(v, "slice bound") for v in item[1:])
    if isinstance(item, tuple) and len(item) == 2 and item[0] == "take":
        return ("take", tuple(as_int(i, "take index") for i in freeze(item[1])))
    raise SpecError(
        f"index item {item!r} is not one of: an int, None, '...', ('slice', start, stop, step), "
        "('take', (i, j, ...))"
    )


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Index(Node):
    """The index of ``getitem``, one item per indexed axis.

    Items: an ``int``; ``None`` (a new axis); ``"..."`` (Ellipsis);
    ``("slice", start, stop, step)``; ``("take", (i, j, ...))`` -- an integer
    array along that axis (repeats allowed: their gradients accumulate).
    """

    items: tuple

    def __post_init__(self):
        items = self.items if isinstance(self.items, (tuple, list)) else (self.items,)
        setattr_frozen(self, "items", tuple(_index_item(i) for i in items))

    def numpy(self) -> tuple:
        """The index as numpy understands it (slices, ints, int64 arrays)."""
        out: list[Any] = []
        for it in self.items:
            if it == "...":
                out.append(Ellipsis)
            elif isinstance(it, tuple) and it[0] == "slice":
                out.append(slice(*it[1:]))
            elif isinstance(it, tuple):
                out.append(np.array(it[1], dtype=np.int64))
            else:
                out.append(it)
        return tuple(out)

    def __repr__(self) -> str:
        return f"Index({self.items!r})"


@register
@dataclasses.dataclass(frozen=True, init=False, repr=False)
class Op(Node):
    """One primitive applied to child nodes: ``Op(prim, *args, **params)``.

    ``prim`` is a public primitive of :data:`gradverify.ops.PRIMITIVES`,
    ``args`` its positional arguments (nodes; the table's arity), ``params``
    its static parameters as sorted ``(name, value)`` pairs, named as in the
    table (``axis``, ``keepdims``, ``stride``...). Missing parameters take
    the engine's defaults (``axis=None`` for reductions, ``-1`` for softmax,
    ``0`` for concatenate and stack, stride 1 and padding 0 for conv2d,
    stride = kernel for pooling).
    """

    prim: str
    args: tuple
    params: tuple

    def __init__(self, prim: str, *args: Node, **params: Any):
        row = PRIMITIVES.get(prim) if isinstance(prim, str) else None
        if row is None or not row.public:
            public = [n for n, p in PRIMITIVES.items() if p.public]
            raise SpecError(f"unknown primitive {prim!r}; known: {', '.join(public)}")
        for i, a in enumerate(args):
            if not isinstance(a, Node):
                raise SpecError(f"argument {i} of {prim!r} must be a spec node (Var, Const, Op...), "
                                f"got {type(a).__name__}")
        if row.arity is None:
            if not args:
                raise SpecError(f"{prim!r} needs at least one argument")
        elif len(args) != row.arity:
            raise SpecError(f"{prim!r} takes {row.arity} argument(s) ({', '.join(row.arg_names)}), got {len(args)}")
        unknown = sorted(set(params) - set(row.params))
        if unknown:
            raise SpecError(f"{prim!r} has no parameter(s) {unknown}; its parameters: {list(row.params)}")
        if prim == "getitem" and not isinstance(args[1], Index):
            raise SpecError("the second argument of 'getitem' must be an Index(...)")
        if prim == "where" and not isinstance(args[0], Mask):
            raise SpecError("the condition (first argument) of 'where' must be a Mask(...)")
        for i, a in enumerate(args):
            if isinstance(a, (Mask, Index)) and not (prim == "where" and i == 0 or prim == "getitem" and i == 1):
                raise SpecError(f"a {type(a).__name__} can only be the condition of 'where' or the index of "
                                f"'getitem', not argument {i} of {prim!r}")
        object.__setattr__(self, "prim", prim)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "params", tuple(sorted((str(k), freeze(v)) for k, v in params.items())))

    def children(self) -> tuple[Node, ...]:
        return self.args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters as a dict."""
        return dict(self.params)

    def _encode_fields(self) -> dict:
        return {"prim": self.prim, "args": self.args, "params": dict(self.params)}

    @classmethod
    def _from_fields(cls, fields: dict) -> "Op":
        unknown = sorted(set(fields) - {"prim", "args", "params"})
        if unknown:
            raise SpecError(f"Op has no field(s) {unknown}; fields: ['args', 'params', 'prim']")
        return cls(fields.get("prim"), *fields.get("args", ()), **(fields.get("params") or {}))

    def __repr__(self) -> str:
        parts = [repr(self.prim)] + [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.params]
        return f"Op({', '.join(parts)})"


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Input(SpecRecord):
    """A named input array: its shape and (optionally) its values in C order.

    Without ``values`` the input is drawn from a standard normal with the
    expression's seed.
    """

    name: str
    shape: tuple[int, ...]
    values: tuple[float, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"Input name must be a non-empty string, got {self.name!r}")
        shape = as_shape(self.shape, f"shape of input {self.name!r}", minimum=0)
        setattr_frozen(self, "shape", shape)
        if self.values is not None:
            vals = tuple(as_float(v, f"value of input {self.name!r}") for v in np.ravel(np.asarray(self.values)))
            if len(vals) != int(np.prod(shape, dtype=np.int64)):
                raise SpecError(f"input {self.name!r} of shape {shape} needs {int(np.prod(shape))} values, "
                                f"got {len(vals)}")
            setattr_frozen(self, "values", vals)

    def __repr__(self) -> str:
        tail = "" if self.values is None else f", {self.values!r}"
        return f"Input({self.name!r}, {self.shape!r}{tail})"


def _walk(root: Node) -> Iterator[tuple[Node, int]]:
    """Pre-order (node, depth) pairs, iteratively (deep trees do not recurse)."""
    stack = [(root, 1)]
    while stack:
        node, d = stack.pop()
        yield node, d
        stack.extend((c, d + 1) for c in reversed(node.children()))


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Expression(SpecRecord):
    """A differentiable expression: a tree, its inputs, and a seed for inputs without values.

    Attributes:
        root: the tree (an :class:`Op` or a leaf).
        inputs: one :class:`Input` per variable; inputs the tree does not use
            are allowed (their gradient is zero).
        seed: draws the values of inputs given without ``values``.
    """

    root: Node
    inputs: tuple[Input, ...]
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.root, Node) or isinstance(self.root, (Mask, Index)):
            raise SpecError(f"Expression root must be an Op, Var or Const, got {type(self.root).__name__}")
        inputs = freeze(self.inputs)
        if isinstance(inputs, Input):
            inputs = (inputs,)
        for i in inputs:
            if not isinstance(i, Input):
                raise SpecError(f"Expression inputs must be Input(...) records, got {type(i).__name__}")
        names = [i.name for i in inputs]
        if len(set(names)) != len(names):
            raise SpecError(f"input names must be unique, got {names}")
        missing = sorted(set(self.variables()) - set(names))
        if missing:
            raise SpecError(f"variable(s) {missing} used in the expression but not declared in inputs {names}")
        setattr_frozen(self, "inputs", inputs)
        setattr_frozen(self, "seed", as_int(self.seed, "seed", minimum=0))

    def variables(self) -> tuple[str, ...]:
        """Names of the variables the tree uses, in first-use (pre-order) order."""
        seen: dict[str, None] = {}
        for node, _ in _walk(self.root):
            if isinstance(node, Var):
                seen.setdefault(node.name)
        return tuple(seen)

    @property
    def depth(self) -> int:
        """Number of nodes on the longest root-to-leaf path (a leaf alone: 1)."""
        return max(d for _, d in _walk(self.root))

    @property
    def size(self) -> int:
        """Number of nodes."""
        return sum(1 for _ in _walk(self.root))

    def primitives(self) -> tuple[str, ...]:
        """The primitive names used, sorted, each once."""
        return tuple(sorted({n.prim for n, _ in _walk(self.root) if isinstance(n, Op)}))

    def arrays(self, dtype: Any = np.float64) -> dict[str, np.ndarray]:
        """The input arrays, name -> ndarray in ``dtype``, in ``inputs`` order.

        Inputs without values are drawn from ``default_rng(seed)``, one
        standard-normal draw per input in order (drawn for every input, so
        giving one input values does not change the others).
        """
        rng = np.random.default_rng(self.seed)
        out = {}
        for inp in self.inputs:
            drawn = rng.standard_normal(inp.shape)
            vals = drawn if inp.values is None else np.array(inp.values, dtype=np.float64).reshape(inp.shape)
            out[inp.name] = np.asarray(vals, dtype=np.float64).astype(dtype)
        return out

    def constants(self) -> dict[str, np.ndarray]:
        """Non-differentiated inputs (none: masks and constants live in the tree)."""
        return {}

    def with_values(self, arrays: dict[str, Any]) -> "Expression":
        """A copy whose inputs carry the given values (a self-contained case)."""
        new = []
        for inp in self.inputs:
            if inp.name in arrays:
                a = np.asarray(arrays[inp.name], dtype=np.float64)
                if a.shape != inp.shape:
                    raise SpecError(f"value for input {inp.name!r} has shape {a.shape}, expected {inp.shape}")
                new.append(Input(inp.name, inp.shape, tuple(float(v) for v in a.ravel())))
            else:
                new.append(inp)
        return Expression(self.root, tuple(new), self.seed)

    def __repr__(self) -> str:
        tail = "" if self.seed == 0 else f", seed={self.seed}"
        return f"Expression({self.root!r}, inputs={self.inputs!r}{tail})"
