"""Record the computational graph: a Tensor wraps an ndarray and remembers how it was made.

This module knows nothing about derivatives. It provides:

* :class:`Tensor` -- a numpy array plus the primitive that produced it, the
  arguments it was applied to, its static parameters and a creation id
  (a global counter: a node's id is always larger than its parents' ids, so
  sorting by id is a topological order);
* :func:`apply` -- run one primitive of :data:`gradverify.ops.PRIMITIVES` on
  raw values and, if any differentiable argument is a Tensor that requires a
  gradient, record the result as a new graph node;
* one public function per primitive (``exp``, ``matmul``, ``conv2d``, ...).

Every primitive function accepts raw arrays as well as Tensors. Given only raw
arrays (and Python scalars) it returns a raw ndarray and records nothing. This
is what lets the derivative rules in ``vjps.py``/``jvps.py`` be written with these
same functions: in a first-order backward pass they run on raw arrays at numpy
speed, and in a nested (higher-order) pass they run on Tensors and are traced.

Cost: one primitive call is its numpy cost plus about a microsecond of Python
bookkeeping; a recorded node keeps references to its inputs and output. While a
transformation traces a function, every new node is also appended to the
thread's tape (:data:`RECORDING`), which the transformation then sweeps.

dtypes follow numpy 2 (NEP 50) promotion: float32 op float32 is float32 and a
Python scalar never upcasts an array; nothing here casts.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import math
import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import SpecError, TraceLost
from ..ops import PRIMITIVES

__all__ = [
    "Tensor", "apply", "value", "shape_of", "FORWARD", "trace_lost", "user_frame",
    # elementwise
    "add", "sub", "mul", "div", "neg", "pow", "square", "exp", "log", "sqrt", "abs",
    "sin", "cos", "tanh", "sigmoid", "relu", "softplus", "maximum", "minimum", "where",
    # reductions
    "sum", "mean", "max", "logsumexp", "softmax", "log_softmax",
    # shape
    "reshape", "transpose", "broadcast_to", "expand_dims", "squeeze", "getitem",
    "concatenate", "stack",
    # linear algebra and layers
    "matmul", "conv2d", "max_pool2d", "avg_pool2d",
    # helpers for derivative rules
    "identity", "scatter_add", "im2col", "col2im",
]

_ids = itertools.count()
_new = object.__new__


class _Recording(threading.local):
    """Per-thread tracing state, set by the transformations in ``core.py``.

    Attributes:
        depth: how many transformations' functions are being traced (nesting).
        tape: the list every new graph node is appended to while a function is
            traced (``None`` otherwise): the nodes in creation order, so a
            transformation can sweep them without a graph walk.
        strict: how many strict numpy traces (``numpy_vjp``) are active; while
            positive, turning a traced Tensor into a plain array or number
            raises :class:`~gradverify.errors.TraceLost` instead of dropping the graph.
    """

    depth = 0
    tape: list | None = None
    strict = 0      # > 0 inside numpy_vjp: leaving the trace raises TraceLost
    lost: Any = None    # the last TraceLost raised while strict (numpy may swallow it)


RECORDING = _Recording()


class Tensor:
    """A node of the computational graph: an ndarray and how it was computed.

    Attributes:
        value: the ndarray.
        prim: name of the primitive that produced it (``None`` for a leaf).
        args: the primitive's positional arguments: a Tensor where the argument
            is traced, the raw value where it is a constant or not differentiable.
        params: the primitive's static keyword parameters.
        id: creation number; parents always have smaller ids.
        requires_grad: whether a gradient flows into this node.
        parents: ``((argnum, Tensor), ...)``, the traced entries of ``args``
            (what the backward sweep visits).
        raw_args: ``args`` with every Tensor replaced by its value (what a
            first-order derivative rule receives).
    """

    __slots__ = ("value", "prim", "args", "params", "id", "requires_grad", "parents", "raw_args",
                 "base")
    # numpy's dispatch protocols (__array_ufunc__, __array_function__) and the
    # ndarray methods beyond the few below are installed by ``numpy_api.py``.

    def __init__(self, value: Any, requires_grad: bool = False, *, prim: str | None = None,
                 args: tuple = (), params: dict | None = None):
        self.value = value if isinstance(value, np.ndarray) else np.asarray(value)
        self.prim = prim
        self.args = args = tuple(args)
        self.params = params if params is not None else {}
        self.requires_grad = requires_grad
        self.id = next(_ids)
        self.base = None
        if args:
            self.parents = tuple((i, a) for i, a in enumerate(args) if isinstance(a, Tensor))
            self.raw_args = tuple(a.value if isinstance(a, Tensor) else a for a in args)
        else:
            self.parents = self.raw_args = ()
        if self.parents and requires_grad and RECORDING.tape is not None:
            RECORDING.tape.append(self)

    @classmethod
    def _node(cls, value: Any, prim: str | None, args: tuple, params: dict, parents: tuple,
              raw_args: tuple) -> "Tensor":
        """A recorded node (``requires_grad``), without ``__init__``'s checks: :func:`apply` uses it."""
        t = _new(cls)
        t.value = value if isinstance(value, np.ndarray) else np.asarray(value)
        t.prim, t.args, t.params, t.id = prim, args, params, next(_ids)
        t.requires_grad, t.parents, t.raw_args, t.base = True, parents, raw_args, None
        tape = RECORDING.tape
        if tape is not None:
            tape.append(t)
        return t

    @classmethod
    def _leaf(cls, value: Any, requires_grad: bool = False) -> "Tensor":
        """``Tensor(value, requires_grad)``, a leaf or a constant, without ``__init__``'s checks."""
        t = _new(cls)
        t.value = value if isinstance(value, np.ndarray) else np.asarray(value)
        t.prim, t.args, t.params, t.id = None, (), {}, next(_ids)
        t.requires_grad, t.parents, t.raw_args, t.base = requires_grad, (), (), None
        return t

    # -- array-like surface -------------------------------------------------
    shape = property(lambda self: self.value.shape, doc="shape of the value")
    dtype = property(lambda self: self.value.dtype, doc="dtype of the value")
    ndim = property(lambda self: self.value.ndim, doc="number of dimensions")
    size = property(lambda self: self.value.size, doc="number of elements")
    T = property(lambda self: transpose(self), doc="axes reversed, like ndarray.T")

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        how = f"{self.prim}" if self.prim else ("leaf" if self.requires_grad else "constant")
        return f"Tensor({self.value!r}, {how}, id={self.id})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # A constant view for printing and np.asarray; it drops the graph (TraceLost when strict).
        if RECORDING.strict and self.requires_grad:
            trace_lost("a traced Tensor was converted to a plain ndarray (its __array__ was called: "
                       "np.asarray/np.array of it, or writing it into a plain ndarray)")
        return self.value if dtype is None else self.value.astype(dtype)

    def __float__(self) -> float:
        if RECORDING.strict and self.requires_grad:
            trace_lost("float() of a traced Tensor drops its gradient (numpy calls it when a traced "
                       "value is written into a plain ndarray: out[i] = t)")
        return float(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)

    # -- operators (all go through the primitives) ---------------------------
    def __add__(self, o): return apply("add", self, o)
    def __radd__(self, o): return apply("add", o, self)
    def __sub__(self, o): return apply("sub", self, o)
    def __rsub__(self, o): return apply("sub", o, self)
    def __mul__(self, o): return apply("mul", self, o)
    def __rmul__(self, o): return apply("mul", o, self)
    def __truediv__(self, o): return apply("div", self, o)
    def __rtruediv__(self, o): return apply("div", o, self)
    def __pow__(self, o): return apply("pow", self, o)
    def __rpow__(self, o): return apply("pow", o, self)
    def __matmul__(self, o): return apply("matmul", self, o)
    def __rmatmul__(self, o): return apply("matmul", o, self)
    def __neg__(self): return apply("neg", self)
    def __pos__(self): return self
    def __abs__(self): return abs(self)
    def __getitem__(self, index): return getitem(self, index)

    # Comparisons are not differentiable: they return plain boolean ndarrays.
    def __lt__(self, o): return self.value < value(o)
    def __le__(self, o): return self.value <= value(o)
    def __gt__(self, o): return self.value > value(o)
    def __ge__(self, o): return self.value >= value(o)

    # -- method spellings of common primitives --------------------------------
    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def reshape(self, *shape): return reshape(self, shape[0] if len(shape) == 1 else shape)
    def transpose(self, *axes): return transpose(self, (axes[0] if len(axes) == 1 else axes) or None)


def trace_lost(reason: str) -> None:
    """Raise :class:`~gradverify.errors.TraceLost` with ``reason`` and the user's ``file:line``.

    The location is the innermost stack frame whose file is outside
    gradverify, numpy and scipy; cost O(stack depth).
    """
    err = TraceLost(reason, user_frame())
    RECORDING.lost = err        # numpy swallows exceptions from __float__ in ``a[i] = t``
    raise err


def _package_dirs() -> tuple[str, ...]:
    import os
    import sys
    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            os.path.dirname(os.path.abspath(np.__file__))]
    scipy = sys.modules.get("scipy")
    if scipy is not None and getattr(scipy, "__file__", None):
        dirs.append(os.path.dirname(os.path.abspath(scipy.__file__)))
    return tuple(d + os.sep for d in dirs)


def user_frame() -> str | None:
    """``file:line`` of the innermost frame outside gradverify/, numpy/ and scipy/ (or None)."""
    import sys
    skip = _package_dirs()
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith(skip) and not name.startswith("<__array_function__"):
            return f"{name}:{f.f_lineno}"
        f = f.f_back
    return None


def value(x: Any) -> Any:
    """The raw value of ``x``: ``x.value`` for a Tensor, ``x`` itself otherwise; O(1)."""
    return x.value if isinstance(x, Tensor) else x


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of a Tensor, array or scalar; O(1)."""
    if isinstance(x, np.ndarray):
        return x.shape
    return x.value.shape if isinstance(x, Tensor) else np.shape(x)


def _ndim(x: Any) -> int:
    """The number of dimensions of a Tensor, array or scalar; O(1)."""
    if isinstance(x, Tensor):
        return x.value.ndim
    return x.ndim if isinstance(x, np.ndarray) else np.ndim(x)


def apply(name: str, *args: Any, **params: Any) -> Any:
    """Run primitive ``name`` and record it in the graph if it is traced; O(primitive).

    The forward value is always ``FORWARD[name]`` on raw values. The result is
    a new graph node when some *differentiable* argument (per ``ops.py``) is a
    Tensor that requires a gradient; then the node keeps those Tensors in
    ``args`` and the raw values of everything else (constants, a ``where``
    condition, an index). With Tensors that need no gradient the result is a
    constant Tensor; with no Tensors at all it is a raw ndarray.

    This is the engine's hot loop (every operation of a traced function passes
    through it, and so does every engine call of a derivative rule), so it is
    written for speed: raw arguments go straight to numpy, and one pass over
    the arguments unwraps them, decides whether to record, and collects what
    the backward sweep needs (``parents``, ``raw_args``).
    """
    for a in args:
        if isinstance(a, Tensor):
            break
    else:                                   # no Tensors: plain numpy, nothing recorded
        return FORWARD[name](*args, **params)
    diff = _DIFF[name]
    raw, recorded, parents = [], [], []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            r = a.value
            if a.requires_grad and (diff is None or i in diff):
                parents.append((i, a))
                recorded.append(a)
            else:
                recorded.append(r)
            raw.append(r)
        else:
            raw.append(a)
            recorded.append(a)
    out = FORWARD[name](*raw, **params)
    if not parents:
        return Tensor._leaf(out)
    return Tensor._node(out, name, tuple(recorded), params, tuple(parents), tuple(raw))


# ---------------------------------------------------------------------------
# Argument normalisation (done once, in the public functions, so that the
# forward implementations and the derivative rules see canonical params).
# ---------------------------------------------------------------------------

def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """``None|int|tuple`` -> sorted tuple of non-negative axes (memoised: rules call it often)."""
    if isinstance(axis, list):
        axis = tuple(axis)
    try:
        return _axes_cached(axis, ndim)
    except TypeError:                       # an unhashable axis: normalise it uncached
        return _axes_cached.__wrapped__(axis, ndim)


@functools.lru_cache(maxsize=4096)
def _axes_cached(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    for a in axis:
        if not -ndim <= int(a) < ndim:
            raise SpecError(f"axis {a} is out of bounds for an array of dimension {ndim}")
    out = tuple(sorted(int(a) % ndim for a in axis))
    if len(frozenset(out)) != len(out):
        raise SpecError(f"repeated axis in {axis}")
    return out


def _shape_arg(shape: Any) -> tuple[int, ...]:
    """An int or a sequence of ints -> a tuple of Python ints (memoised)."""
    try:
        return _shape_cached(shape)
    except TypeError:                       # a list or an array: not hashable
        return _shape_cached.__wrapped__(shape)


@functools.lru_cache(maxsize=4096)
def _shape_cached(shape: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in np.atleast_1d(shape))


def _perm(axes: Any, ndim: int) -> tuple[int, ...]:
    """A transpose's ``axes`` (None: reversed) -> a tuple of non-negative axes (memoised)."""
    try:
        return _perm_cached(axes, ndim)
    except TypeError:
        return _perm_cached.__wrapped__(axes, ndim)


@functools.lru_cache(maxsize=4096)
def _perm_cached(axes: Any, ndim: int) -> tuple[int, ...]:
    return tuple(reversed(range(ndim))) if axes is None else tuple(int(a) % ndim for a in axes)


def _pair(v: Any, what: str) -> tuple[int, int]:
    pair = (int(v), int(v)) if np.ndim(v) == 0 else tuple(int(i) for i in v)
    if len(pair) != 2:
        raise SpecError(f"{what} must be an int or a pair of ints, got {v!r}")
    return pair  # type: ignore[return-value]


def _index(index: Any) -> Any:
    """Unwrap Tensors inside an index; lists become integer/bool arrays."""
    if isinstance(index, tuple):
        return tuple(_index(i) for i in index)
    if isinstance(index, Tensor):
        index = index.value
    if isinstance(index, list):
        index = np.asarray(index)
    if isinstance(index, np.ndarray) and index.dtype.kind not in "iub":
        raise SpecError(f"array indices must be integer or boolean, got dtype {index.dtype}")
    return index


def _is_basic(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return builtins.all(p is None or p is Ellipsis or isinstance(p, (slice, int, np.integer))
                        for p in parts)


# ---------------------------------------------------------------------------
# Forward implementations on raw numpy values: name -> function.
# ---------------------------------------------------------------------------

def _sigmoid(x):
    return np.exp(-np.logaddexp(0, -x))     # stable at both tails, keeps dtype


def _logsumexp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _log_softmax(x, axis):
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _broadcast_to(x, shape):
    """numpy ``broadcast_to``: a fresh array when small (3x faster), else a read-only view."""
    x = np.asarray(x)
    if x.shape == shape:
        return x
    if x.ndim > len(shape) or math.prod(shape) > _SMALL:
        return np.broadcast_to(x, shape)    # also the error for incompatible shapes
    out = np.empty(shape, dtype=x.dtype)
    out[...] = x
    return out


_SMALL = 1 << 16


def _expand_dims(x, axis):
    """numpy ``expand_dims`` for sorted, non-negative ``axis`` (positions in the result)."""
    shape = list(np.shape(x))
    for a in axis:
        shape.insert(a, 1)
    return np.asarray(x).reshape(shape)


def _scatter_add(updates, index, shape):
    out = np.zeros(shape, dtype=np.result_type(updates))
    if _is_basic(index):
        out[index] += updates            # basic indexing cannot repeat an element
    else:
        np.add.at(out, index, updates)   # repeated integer indices accumulate
    return out


def _im2col(x, kernel, stride):
    (kh, kw), (sh, sw) = kernel, stride
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return win[:, :, ::sh, ::sw]     # (N, C, Ho, Wo, kh, kw), a read-only view


def _col2im(cols, shape, stride):
    n, c, ho, wo, kh, kw = cols.shape
    sh, sw = stride
    out = np.zeros(shape, dtype=cols.dtype)
    for i in range(kh):              # a loop over kernel offsets, not elements
        for j in range(kw):
            out[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] += cols[:, :, :, :, i, j]
    return out


def _conv2d(x, w, stride, padding):
    ph, pw = padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = _im2col(x, w.shape[2:], stride)                          # (N, C, Ho, Wo, kh, kw)
    out = np.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3]))        # (N, Ho, Wo, O)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


FORWARD: dict[str, Callable[..., Any]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum, "where": np.where,
    "neg": np.negative, "square": np.square, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "abs": np.abs, "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0), "softplus": lambda x: np.logaddexp(0, x),
    "sum": lambda x, axis, keepdims: np.asarray(x).sum(axis, keepdims=keepdims),
    "mean": lambda x, axis, keepdims: np.asarray(x).mean(axis, keepdims=keepdims),
    "max": lambda x, axis, keepdims: np.asarray(x).max(axis, keepdims=keepdims),
    "logsumexp": _logsumexp, "softmax": _softmax, "log_softmax": _log_softmax,
    "reshape": lambda x, shape: np.asarray(x).reshape(shape),
    "transpose": lambda x, axes: np.asarray(x).transpose(axes),
    "broadcast_to": _broadcast_to,
    "expand_dims": _expand_dims,
    "squeeze": lambda x, axis: np.squeeze(x, axis),
    "getitem": lambda x, index: np.asarray(x)[index],
    "concatenate": lambda *xs, axis: np.concatenate(xs, axis=axis),
    "stack": lambda *xs, axis: np.stack(xs, axis=axis),
    "matmul": np.matmul, "conv2d": _conv2d,
    "max_pool2d": lambda x, kernel, stride: np.max(_im2col(x, kernel, stride), axis=(4, 5)),
    "avg_pool2d": lambda x, kernel, stride: np.mean(_im2col(x, kernel, stride), axis=(4, 5)),
    "identity": lambda x: x,
    "scatter_add": _scatter_add, "im2col": _im2col, "col2im": _col2im,
}

#: primitive name -> frozenset of differentiable argument indices (None: all), read by apply.
_DIFF: dict[str, frozenset[int] | None] = {
    name: None if p.differentiable_args is None else frozenset(p.differentiable_args)
    for name, p in PRIMITIVES.items()
}


# ---------------------------------------------------------------------------
# Public primitive functions. Arguments may be Tensors, ndarrays or scalars.
# ---------------------------------------------------------------------------

def add(x, y): return apply("add", x, y)
def sub(x, y): return apply("sub", x, y)
def mul(x, y): return apply("mul", x, y)
def div(x, y): return apply("div", x, y)
def pow(x, y): return apply("pow", x, y)  # noqa: A001 - numpy-style name
def maximum(x, y): return apply("maximum", x, y)
def minimum(x, y): return apply("minimum", x, y)
def neg(x): return apply("neg", x)
def square(x): return apply("square", x)
def exp(x): return apply("exp", x)
def log(x): return apply("log", x)
def sqrt(x): return apply("sqrt", x)
def abs(x): return apply("abs", x)  # noqa: A001
def sin(x): return apply("sin", x)
def cos(x): return apply("cos", x)
def tanh(x): return apply("tanh", x)
def sigmoid(x): return apply("sigmoid", x)
def relu(x): return apply("relu", x)
def softplus(x): return apply("softplus", x)


def where(condition, x, y):
    """``x`` where ``condition`` else ``y``; the condition is a constant (no gradient)."""
    return apply("where", value(condition), x, y)


def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (None, int or tuple)."""
    return apply("sum", x, axis=_axes(axis, _ndim(x)), keepdims=bool(keepdims))


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (None, int or tuple)."""
    return apply("mean", x, axis=_axes(axis, _ndim(x)), keepdims=bool(keepdims))


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Max over ``axis``; ties share the gradient equally (see vjps.py)."""
    return apply("max", x, axis=_axes(axis, _ndim(x)), keepdims=bool(keepdims))


def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x), axis))`` without overflow."""
    return apply("logsumexp", x, axis=_axes(axis, _ndim(x)), keepdims=bool(keepdims))


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x), axis)`` without overflow."""
    return apply("softmax", x, axis=_axes(axis, _ndim(x)))


def log_softmax(x, axis=-1):
    """``x - logsumexp(x, axis)``."""
    return apply("log_softmax", x, axis=_axes(axis, _ndim(x)))


def reshape(x, shape):
    """numpy reshape (one ``-1`` allowed)."""
    shape = _shape_arg(shape)
    if -1 in shape:   # resolve it here so the node records the real shape
        known = math.prod(s for s in shape if s != -1)
        total = math.prod(shape_of(x))
        shape = tuple(total // known if known and s == -1 else s for s in shape)
    return apply("reshape", x, shape=shape)


def transpose(x, axes=None):
    """Permute axes; ``axes=None`` reverses them."""
    return apply("transpose", x, axes=_perm(axes, _ndim(x)))


def broadcast_to(x, shape):
    """numpy broadcast_to; the gradient is summed back to ``x``'s shape."""
    return apply("broadcast_to", x, shape=_shape_arg(shape))


def expand_dims(x, axis):
    """Insert length-1 axes at ``axis`` (int or tuple, positions in the result)."""
    nd = _ndim(x) + (len(axis) if isinstance(axis, (tuple, list)) else 1)
    return apply("expand_dims", x, axis=_axes(axis, nd))


def squeeze(x, axis=None):
    """Remove length-1 axes (all of them when ``axis`` is None)."""
    shape = shape_of(x)
    axes = tuple(i for i, n in enumerate(shape) if n == 1) if axis is None else _axes(axis, len(shape))
    return apply("squeeze", x, axis=axes)


def getitem(x, index):
    """``x[index]``; repeated integer indices accumulate in the gradient."""
    return apply("getitem", x, _index(index))


def concatenate(xs: Sequence[Any], axis: int = 0):
    """Join arrays along an existing axis."""
    nd = _ndim(xs[0])
    return apply("concatenate", *xs, axis=_axes(axis, nd)[0])


def stack(xs: Sequence[Any], axis: int = 0):
    """Join arrays along a new axis."""
    nd = _ndim(xs[0]) + 1
    return apply("stack", *xs, axis=_axes(axis, nd)[0])


def matmul(a, b):
    """numpy matmul: batched over leading axes, 1-D operands promoted then squeezed."""
    return apply("matmul", a, b)


def _check_nchw(x, what):
    if _ndim(x) != 4:
        raise SpecError(f"{what} expects a 4-D array, got shape {shape_of(x)}")


def conv2d(x, w, stride=1, padding=0):
    """2-D cross-correlation: x (N, C, H, W), w (O, C, kh, kw) -> (N, O, Ho, Wo).

    Implemented as im2col (``sliding_window_view``) followed by one tensordot;
    cost O(N * O * C * Ho * Wo * kh * kw) flops and one window copy.
    """
    _check_nchw(x, "conv2d input x")
    _check_nchw(w, "conv2d weight w")
    if shape_of(x)[1] != shape_of(w)[1]:
        raise SpecError(f"conv2d: x has {shape_of(x)[1]} channels but w expects {shape_of(w)[1]} "
                        f"(x {shape_of(x)}, w {shape_of(w)}; weight layout is OIHW)")
    return apply("conv2d", x, w, stride=_pair(stride, "stride"), padding=_pair(padding, "padding"))


def _pool(name, x, kernel, stride):
    _check_nchw(x, name)
    kernel = _pair(kernel, "kernel")
    stride = kernel if stride is None else _pair(stride, "stride")
    return apply(name, x, kernel=kernel, stride=stride)


def max_pool2d(x, kernel, stride=None):
    """Max over ``kernel`` windows of NCHW ``x`` (stride defaults to kernel, no padding)."""
    return _pool("max_pool2d", x, kernel, stride)


def avg_pool2d(x, kernel, stride=None):
    """Mean over ``kernel`` windows of NCHW ``x`` (stride defaults to kernel, no padding)."""
    return _pool("avg_pool2d", x, kernel, stride)


def identity(x):
    """``x`` as a new graph node (used to start a nested differentiation)."""
    return apply("identity", x)


def scatter_add(updates, index, shape):
    """``zeros(shape)`` with ``updates`` added at ``index``; the adjoint of getitem."""
    return apply("scatter_add", updates, _index(index), shape=tuple(shape))


def im2col(x, kernel, stride):
    """Sliding windows of NCHW ``x``: shape (N, C, Ho, Wo, kh, kw)."""
    return apply("im2col", x, kernel=_pair(kernel, "kernel"), stride=_pair(stride, "stride"))


def col2im(cols, shape, stride):
    """Sum (N, C, Ho, Wo, kh, kw) windows back into an array of ``shape``; adjoint of im2col."""
    return apply("col2im", cols, shape=tuple(shape), stride=_pair(stride, "stride"))
