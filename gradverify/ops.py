"""The one primitive table: what each primitive is, where it is valid, where it has kinks.

Every other part of gradverify that needs to know *about* a primitive -- the
reference engine (which arguments get a gradient), the expression strategies
(which inputs to draw), the backends (which names to compile) -- reads
:data:`PRIMITIVES` instead of keeping its own list. The table is data: a frozen
:class:`Primitive` record per name. Derivative rules are *not* here; they live in
``gradverify.engine.vjps`` (reverse mode) and ``gradverify.engine.jvps``
(forward mode), one rule per differentiable argument of each row.

Conventions:

* Positional arguments are arrays (or array-likes such as an index); keyword
  ``params`` are static configuration (``axis``, ``stride``, ...).
* ``arity`` counts positional arguments; ``None`` means a variadic sequence
  (``concatenate``, ``stack``), every element of which is differentiable.
* ``domain`` is a tuple of :class:`Bound` constraints on argument values
  (``log``: argument 0 > 0). Inputs outside it are invalid or have an infinite
  or undefined derivative there.
* ``kinks`` is a tuple of :class:`Kink` records: the places inside the domain
  where the function is continuous but not differentiable (``relu`` at 0,
  ``maximum`` at ties). What the engine returns *at* a kink is documented in
  ``gradverify.engine.vjps`` (it follows PyTorch and JAX).
* ``public=False`` rows are helper primitives the engine uses to write the
  derivative rules of other primitives (so that a gradient of a gradient is
  itself traced); random-expression strategies should skip them.

The helpers :func:`in_domain`, :func:`domain_margin` and
:func:`distance_to_kink` evaluate these records on concrete arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = [
    "Bound",
    "Kink",
    "Primitive",
    "PRIMITIVES",
    "primitive",
    "public_primitives",
    "is_differentiable_arg",
    "in_domain",
    "domain_margin",
    "distance_to_kink",
]


@dataclass(frozen=True)
class Bound:
    """A constraint on the values of one positional argument.

    Attributes:
        arg: index of the constrained positional argument.
        op: ``"gt"`` (strictly greater than ``value``) or ``"ne"`` (not equal).
        value: the boundary value.
        unless_integer_arg: if set, the bound does not apply where the
            positional argument with this index holds integer values (``pow``:
            a negative base is fine for an integer exponent).
    """

    arg: int
    op: str
    value: float = 0.0
    unless_integer_arg: int | None = None


@dataclass(frozen=True)
class Kink:
    """A set of points where a primitive is continuous but not differentiable.

    Attributes:
        kind: ``"point"`` -- argument ``args[0]`` equals ``at`` (relu, abs);
            ``"tie"`` -- arguments ``args[0]`` and ``args[1]`` are equal
            elementwise (maximum, minimum);
            ``"reduce_tie"`` -- the largest two entries of a reduced slice of
            argument ``args[0]`` are equal (max over ``axis``);
            ``"window_tie"`` -- the largest two entries of a pooling window of
            argument ``args[0]`` are equal (max_pool2d over ``kernel``/``stride``).
        args: the argument indices involved.
        at: the kink location for ``"point"`` kinks.
    """

    kind: str
    args: tuple[int, ...] = (0,)
    at: float = 0.0


@dataclass(frozen=True)
class Primitive:
    """One row of the primitive table.

    Attributes:
        name: the primitive's name, also the engine function's name.
        arity: number of positional (array) arguments; ``None`` if variadic.
        arg_names: names of the positional arguments, for messages.
        differentiable_args: indices of the arguments that get a gradient;
            ``None`` means all (used for variadic primitives).
        params: names of the static keyword parameters.
        domain: value constraints, see :class:`Bound`.
        kinks: non-differentiable points inside the domain, see :class:`Kink`.
        kind: ``"elementwise"``, ``"reduction"``, ``"shape"``, ``"linalg"``,
            ``"nn"`` or ``"internal"``.
        broadcasts: the array arguments broadcast against each other (numpy rules).
        linear: the primitive is linear (affine) in its differentiable
            arguments jointly, so its forward-mode rule is the primitive itself.
        public: part of the user-facing primitive set (``False`` for helpers).
        doc: one line saying what it computes.
    """

    name: str
    arity: int | None
    arg_names: tuple[str, ...]
    differentiable_args: tuple[int, ...] | None
    params: tuple[str, ...] = ()
    domain: tuple[Bound, ...] = ()
    kinks: tuple[Kink, ...] = ()
    kind: str = "elementwise"
    broadcasts: bool = False
    linear: bool = False
    public: bool = True
    doc: str = ""

    @property
    def smooth(self) -> bool:
        """True when the primitive has no kinks (it may still have a domain)."""
        return not self.kinks


def _unary(name: str, doc: str, **kw: Any) -> Primitive:
    return Primitive(name, 1, ("x",), (0,), doc=doc, **kw)


def _binary(name: str, doc: str, **kw: Any) -> Primitive:
    return Primitive(name, 2, ("x", "y"), (0, 1), broadcasts=True, doc=doc, **kw)


_REDUCE = ("axis", "keepdims")
_GT0 = (Bound(0, "gt", 0.0),)

_TABLE: tuple[Primitive, ...] = (
    # --- elementwise, binary, broadcasting ---------------------------------
    _binary("add", "x + y", linear=True),
    _binary("sub", "x - y", linear=True),
    _binary("mul", "x * y"),
    _binary("div", "x / y", domain=(Bound(1, "ne", 0.0),)),
    _binary("pow", "x ** y (real exponent needs x > 0)",
            domain=(Bound(0, "gt", 0.0, unless_integer_arg=1),)),
    _binary("maximum", "elementwise max(x, y)", kinks=(Kink("tie", (0, 1)),)),
    _binary("minimum", "elementwise min(x, y)", kinks=(Kink("tie", (0, 1)),)),
    Primitive("where", 3, ("condition", "x", "y"), (1, 2), broadcasts=True,
              doc="x where condition else y; the condition gets no gradient"),
    # --- elementwise, unary -------------------------------------------------
    _unary("neg", "-x", linear=True),
    _unary("square", "x * x"),
    _unary("exp", "e ** x"),
    _unary("log", "natural logarithm", domain=_GT0),
    _unary("sqrt", "square root (derivative infinite at 0)", domain=_GT0),
    _unary("abs", "|x|", kinks=(Kink("point", (0,), 0.0),)),
    _unary("sin", "sine"),
    _unary("cos", "cosine"),
    _unary("tanh", "hyperbolic tangent"),
    _unary("sigmoid", "1 / (1 + exp(-x))"),
    _unary("relu", "max(x, 0)", kinks=(Kink("point", (0,), 0.0),)),
    _unary("softplus", "log(1 + exp(x))"),
    # --- reductions ----------------------------------------------------------
    Primitive("sum", 1, ("x",), (0,), _REDUCE, kind="reduction", linear=True, doc="sum over axis"),
    Primitive("mean", 1, ("x",), (0,), _REDUCE, kind="reduction", linear=True, doc="mean over axis"),
    Primitive("max", 1, ("x",), (0,), _REDUCE, kind="reduction",
              kinks=(Kink("reduce_tie", (0,)),), doc="max over axis"),
    Primitive("logsumexp", 1, ("x",), (0,), _REDUCE, kind="reduction",
              doc="log(sum(exp(x))) over axis, computed stably"),
    Primitive("softmax", 1, ("x",), (0,), ("axis",), kind="reduction",
              doc="exp(x) / sum(exp(x)) over axis"),
    Primitive("log_softmax", 1, ("x",), (0,), ("axis",), kind="reduction",
              doc="x - logsumexp(x) over axis"),
    # --- shape -----------------------------------------------------------------
    Primitive("reshape", 1, ("x",), (0,), ("shape",), kind="shape", linear=True, doc="numpy reshape"),
    Primitive("transpose", 1, ("x",), (0,), ("axes",), kind="shape", linear=True,
              doc="permute axes (reverse them when axes is None)"),
    Primitive("broadcast_to", 1, ("x",), (0,), ("shape",), kind="shape", linear=True,
              doc="numpy broadcast_to"),
    Primitive("expand_dims", 1, ("x",), (0,), ("axis",), kind="shape", linear=True,
              doc="insert length-1 axes"),
    Primitive("squeeze", 1, ("x",), (0,), ("axis",), kind="shape", linear=True,
              doc="remove length-1 axes"),
    Primitive("getitem", 2, ("x", "index"), (0,), kind="shape", linear=True,
              doc="x[index]: ints, slices, None, Ellipsis, integer or boolean arrays; "
                  "repeated indices accumulate in the gradient"),
    Primitive("concatenate", None, ("xs",), None, ("axis",), kind="shape", linear=True,
              doc="join a sequence of arrays along an existing axis"),
    Primitive("stack", None, ("xs",), None, ("axis",), kind="shape", linear=True,
              doc="join a sequence of arrays along a new axis"),
    # --- linear algebra and neural-network layers ---------------------------
    Primitive("matmul", 2, ("a", "b"), (0, 1), kind="linalg", broadcasts=True,
              doc="numpy matmul: batched, 1-D operands promoted and squeezed"),
    Primitive("conv2d", 2, ("x", "w"), (0, 1), ("stride", "padding"), kind="nn",
              doc="cross-correlation, x NCHW, w OIHW, zero padding"),
    Primitive("max_pool2d", 1, ("x",), (0,), ("kernel", "stride"), kind="nn",
              kinks=(Kink("window_tie", (0,)),), doc="max over kernel windows of NCHW x"),
    Primitive("avg_pool2d", 1, ("x",), (0,), ("kernel", "stride"), kind="nn", linear=True,
              doc="mean over kernel windows of NCHW x"),
    # --- helpers the engine's derivative rules are written with --------------
    Primitive("identity", 1, ("x",), (0,), kind="internal", linear=True, public=False,
              doc="x itself, as a new graph node"),
    Primitive("scatter_add", 2, ("updates", "index"), (0,), ("shape",), kind="internal",
              linear=True, public=False,
              doc="zeros(shape) with updates added at index (np.add.at); adjoint of getitem"),
    Primitive("im2col", 1, ("x",), (0,), ("kernel", "stride"), kind="internal", linear=True,
              public=False, doc="NCHW -> (N, C, Ho, Wo, kh, kw) sliding windows"),
    Primitive("col2im", 1, ("cols",), (0,), ("shape", "stride"), kind="internal", linear=True,
              public=False, doc="sum windows back into an NCHW array; adjoint of im2col"),
)

#: name -> :class:`Primitive`, in a fixed (definition) order.
PRIMITIVES: Mapping[str, Primitive] = {p.name: p for p in _TABLE}


def primitive(name: str) -> Primitive:
    """Return the table row for ``name``; O(1).

    Raises:
        KeyError: with the list of known names, if ``name`` is unknown.
    """
    try:
        return PRIMITIVES[name]
    except KeyError:
        raise KeyError(f"unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}") from None


def public_primitives() -> tuple[str, ...]:
    """Names of the user-facing primitives (helpers excluded), in table order; O(n)."""
    return tuple(p.name for p in _TABLE if p.public)


def is_differentiable_arg(name: str, argnum: int) -> bool:
    """Whether positional argument ``argnum`` of primitive ``name`` gets a gradient; O(1)."""
    diff = primitive(name).differentiable_args
    return diff is None or argnum in diff


def _is_integer_valued(a: Any) -> bool:
    a = np.asarray(a)
    return a.dtype.kind in "iub" or bool(np.all(np.isfinite(a) & (a == np.round(a))))


def domain_margin(name: str, *arrays: Any) -> float:
    """Smallest distance of any argument value from its domain boundary; O(size).

    Positive inside the domain, zero on the boundary, negative outside (for
    ``"ne"`` bounds the margin is ``|x - value|``, never negative). ``inf``
    when the primitive has no domain restriction.
    """
    margin = math.inf
    for b in primitive(name).domain:
        if b.arg >= len(arrays):
            continue
        x = np.asarray(arrays[b.arg], dtype=np.float64)
        if b.unless_integer_arg is not None and b.unless_integer_arg < len(arrays):
            if _is_integer_valued(arrays[b.unless_integer_arg]):
                continue
        if x.size == 0:
            continue
        d = x - b.value if b.op == "gt" else np.abs(x - b.value)
        margin = min(margin, float(np.min(d)))
    return margin


def in_domain(name: str, *arrays: Any) -> bool:
    """Whether every argument value satisfies the primitive's domain; O(size).

    Example: ``in_domain("log", np.array([1.0, 2.0]))`` is True,
    ``in_domain("div", x, np.zeros(3))`` is False.
    """
    return domain_margin(name, *arrays) > 0


def _top_two_gap(x: np.ndarray, axes: tuple[int, ...]) -> float:
    """Min over reduced slices of (largest - second largest) along ``axes``."""
    moved = np.moveaxis(x, axes, tuple(range(-len(axes), 0)))
    flat = moved.reshape(moved.shape[: moved.ndim - len(axes)] + (-1,))
    if flat.shape[-1] < 2 or flat.size == 0:
        return math.inf
    top2 = -np.partition(-flat, 1, axis=-1)[..., :2]
    return float(np.min(top2[..., 0] - top2[..., 1]))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def distance_to_kink(name: str, *arrays: Any, **params: Any) -> float:
    """How far the arguments are from the nearest kink of ``name``; O(size).

    The distance is the smallest perturbation, in max-norm over the argument
    entries, that can reach a kink: ``|x - at|`` for a point kink, ``|x - y| / 2``
    for a tie between two arguments, half the gap between the two largest
    entries of a reduced slice or pooling window for a reduce/window tie.
    ``inf`` for a smooth primitive.

    Args:
        name: primitive name.
        *arrays: the positional arguments, as in the engine call.
        **params: the static parameters (``axis`` for ``max``; ``kernel``
            and ``stride`` for ``max_pool2d``).
    """
    dist = math.inf
    for k in primitive(name).kinks:
        if k.kind == "point":
            x = np.asarray(arrays[k.args[0]], dtype=np.float64)
            d = float(np.min(np.abs(x - k.at))) if x.size else math.inf
        elif k.kind == "tie":
            a = np.asarray(arrays[k.args[0]], dtype=np.float64)
            b = np.asarray(arrays[k.args[1]], dtype=np.float64)
            diff = np.abs(a - b)
            d = float(np.min(diff)) / 2 if diff.size else math.inf
        elif k.kind == "reduce_tie":
            x = np.asarray(arrays[k.args[0]], dtype=np.float64)
            axis = params.get("axis")
            axes = tuple(range(x.ndim)) if axis is None else tuple(
                a % x.ndim for a in (axis if isinstance(axis, tuple) else (axis,)))
            d = _top_two_gap(x, axes) / 2 if axes else math.inf
        elif k.kind == "window_tie":
            x = np.asarray(arrays[k.args[0]], dtype=np.float64)
            kh, kw = _pair(params["kernel"])
            sh, sw = _pair(params.get("stride") or (kh, kw))
            win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(-2, -1))
            win = win[..., ::sh, ::sw, :, :]
            d = _top_two_gap(win, (-2, -1)) / 2 if win.size else math.inf
        else:  # pragma: no cover - guarded by the table above
            raise ValueError(f"unknown kink kind {k.kind!r}")
        dist = min(dist, d)
    return dist
