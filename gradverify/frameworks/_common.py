"""Shared machinery of the framework adapters (no framework is imported here).

:class:`FrameworkFunctionTarget` turns a torch or JAX callable into the
numpy-facing :class:`~gradverify.layers.FunctionTarget` the checks already
know: its ``fn`` converts numpy arrays to framework arrays, calls the code
under test and returns numpy; its ``vjp`` asks the framework's own autodiff
(or the caller's ``vjp=``) for the gradient of ``<u, output>``. Input
naming, constants, copies and the in-place-mutation warnings are therefore
exactly those of the numpy path.

Inputs that are not arrays (Python scalars, ``None``, strings, JAX PRNG
keys...) are passed through unchanged as opaque constants: they are never
differentiated (wrap a scalar in a tensor to check its gradient).

Outputs may be one array or a (nested) tuple, list or dict of arrays: the
floating-point leaves, flattened in order and concatenated, form the output
whose projection ``<u, output>`` is differentiated; non-floating leaves
(indices, masks) and ``None`` are ignored.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import NoDifferentiableInputs, ProtocolError, SpecError
from ..layers import FunctionTarget

__all__ = ["Opaque", "FrameworkFunctionTarget", "split_inputs", "flatten_tree", "unflatten_tree", "join_outputs"]


class Opaque:
    """A constant passed through to the code under test unchanged (never copied or converted).

    Wrapping keeps the numpy-side bookkeeping (copies, ``np.array_equal``
    mutation checks) working for objects that are not arrays: two wrappers
    compare equal when they hold the same object.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Opaque) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def copy(self) -> "Opaque":
        return self

    def __repr__(self) -> str:
        return f"Opaque({self.obj!r})"


def split_inputs(inputs: Any, is_array: Callable[[Any], bool]) -> tuple[list | dict, bool]:
    """The inputs as a list (positional) or dict (keyword), and whether they are keyword inputs.

    One array (``is_array``) or scalar is one positional input; a list or
    tuple is a sequence of inputs; a mapping is keyword inputs.
    """
    if isinstance(inputs, Mapping):
        if not inputs:
            raise SpecError("inputs is an empty dict; give at least one input")
        return {str(k): v for k, v in inputs.items()}, True
    if is_array(inputs) or isinstance(inputs, np.ndarray) or np.isscalar(inputs):
        return [inputs], False
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise SpecError("inputs is empty; give at least one input array")
        return list(inputs), False
    raise SpecError(f"inputs must be an array or tensor, a sequence of them or a dict, got {type(inputs).__name__}")


def flatten_tree(tree: Any, is_leaf: Callable[[Any], bool]) -> list:
    """The leaves of a nested tuple/list/dict (dicts in key order), depth first."""
    if is_leaf(tree):
        return [tree]
    if isinstance(tree, Mapping):
        return [leaf for k in tree for leaf in flatten_tree(tree[k], is_leaf)]
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in flatten_tree(item, is_leaf)]
    return []


def unflatten_tree(tree: Any, is_leaf: Callable[[Any], bool], leaves: list) -> Any:
    """``tree`` with its leaves replaced in order by ``leaves``; other entries become None."""
    it = iter(leaves)

    def rebuild(node):
        if is_leaf(node):
            return next(it)
        if isinstance(node, Mapping):
            return {k: rebuild(v) for k, v in node.items()}
        if isinstance(node, (tuple, list)):
            items = [rebuild(v) for v in node]
            if hasattr(node, "_fields"):  # namedtuple
                return type(node)(*items)
            return type(node)(items) if isinstance(node, list) else tuple(items)
        return None

    return rebuild(tree)


def join_outputs(leaves: Sequence[np.ndarray], single: bool) -> np.ndarray:
    """One output array: the single leaf as is, else the flattened leaves concatenated."""
    if single:
        return leaves[0]
    return np.concatenate([np.reshape(v, -1) for v in leaves]) if leaves else np.zeros(0)


def split_cotangent(dout: np.ndarray, shapes: Sequence[tuple], single: bool) -> list[np.ndarray]:
    """Pieces of the (joined) cotangent, one per floating output leaf, each in its leaf's shape."""
    dout = np.asarray(dout)
    if single:
        return [dout]
    pieces, at = [], 0
    for shape in shapes:
        n = int(np.prod(shape, dtype=np.int64))
        pieces.append(dout[at:at + n].reshape(shape))
        at += n
    if at != dout.size:
        raise ProtocolError(f"the output has {at} elements on this call but {dout.size} before; "
                            "the function must return outputs of the same shapes every call")
    return pieces


class FrameworkFunctionTarget(FunctionTarget):
    """A framework callable seen as a numpy function with a numpy vjp (see the module docstring).

    Subclasses implement the framework specifics: :meth:`is_array`,
    :meth:`to_numpy`, :meth:`call` (run the code on numpy arguments, return
    the output tree), :meth:`float_leaf`, :meth:`leaf_to_numpy`,
    :meth:`autodiff` (the framework's gradient of ``<dout, output>``) and
    :meth:`user_vjp_args`.

    Cost: one call of the code under test per evaluation, plus the
    conversion of the arguments (a copy of each input).
    """

    framework = "framework"

    def __init__(self, fn: Callable, inputs: Any, vjp: Callable | None, *, names_from: Callable | None = None):
        if not callable(fn):
            raise ProtocolError(f"the function to check is a {type(fn).__name__}, not a callable")
        if vjp is not None and not callable(vjp):
            raise ProtocolError(f"vjp must be callable, got {type(vjp).__name__}")
        self.user_fn = fn
        self.user_vjp = vjp
        self._out_single = True
        self._out_shapes: list[tuple] = []
        self._out_tree: Any = None
        values, by_keyword = split_inputs(inputs, self.is_array)
        arrays, opaque_keys = self._to_numpy_inputs(values)
        if not any(isinstance(a, np.ndarray) and a.dtype.kind == "f" for a in
                   (arrays.values() if isinstance(arrays, dict) else arrays)):
            raise NoDifferentiableInputs(
                "no input is a floating-point array or tensor (Python scalars and other non-array inputs are "
                "passed through as constants); pass at least one floating-point tensor to differentiate"
            )
        placeholder = {k: arrays[k] for k in opaque_keys}
        for k in opaque_keys:
            arrays[k] = np.zeros((), np.int8)  # stands in while FunctionTarget builds its tables
        what = "vjp" if vjp is not None else f"{self.framework} autodiff of {_name(fn)}"
        super().__init__(self._np_fn, self._np_vjp, arrays, kind="function",
                         names_from=names_from if names_from is not None else fn, what=what)
        self.opaque: dict[str, Opaque] = {}
        for k, obj in placeholder.items():
            name = k if by_keyword else self.order[k]
            self.constants.pop(name, None)
            self.opaque[name] = obj

    def faithful_float64(self) -> None:
        """Fall back to the caller's dtype where the float64 evaluation computes a different function.

        Run once at construction when some input is not float64: ``fn`` in
        float64 and in the caller's dtype must agree to within the caller's
        rounding (see :func:`dtype_dependence`); random draws that depend on
        the dtype (dropout masks, ``jax.random`` under 64-bit mode) or a
        dtype-dependent branch break that, and the finite differences then
        run in the caller's dtype, with a warning. Cost: two calls of ``fn``.
        """
        low = sorted({v.dtype.name for v in self.originals.values() if v.dtype != np.float64})
        if not low:
            return
        try:
            y64 = np.asarray(self._call(self.fn, self._args(self.point)))
            ylow = np.asarray(self._call(self.fn, self._args(self.originals)))
        except Exception:  # noqa: BLE001 - the check's own fallback reports it
            return
        reason = self.random_draws() or dtype_dependence(y64, ylow, low)
        if reason:
            for k in self.point:
                self.point[k] = self.originals[k].copy()
            self._warn(f"{_name(self.user_fn)} {reason}, so the finite differences ran in the caller's dtype "
                       f"({', '.join(low)}); the verdict is coarser than a float64 check")

    def random_draws(self) -> str | None:
        """A reason string when the code drew random numbers whose values depend on the dtype."""
        return None

    # -- framework specifics -------------------------------------------------
    def is_array(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_numpy(self, value: Any, name: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def call(self, args: list, kwargs: dict) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def float_leaf(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def leaf_to_numpy(self, value: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def autodiff(self, pieces: list[np.ndarray], args: list, kwargs: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def user_vjp_args(self, pieces: list[np.ndarray], args: list, kwargs: dict) -> tuple[Any, list, dict]:
        raise NotImplementedError  # pragma: no cover - abstract

    # -- numpy-facing fn and vjp ----------------------------------------------
    def _to_numpy_inputs(self, values: list | dict) -> tuple[list | dict, list]:
        keys = list(values) if isinstance(values, dict) else list(range(len(values)))
        out = dict(values) if isinstance(values, dict) else list(values)
        opaque = []
        for k in keys:
            v = values[k]
            label = str(k)
            if self.is_array(v):
                out[k] = self.to_numpy(v, label)
            elif isinstance(v, (np.ndarray, np.generic)):
                out[k] = np.array(v)
            else:
                out[k] = Opaque(v)
                opaque.append(k)
        return out, opaque

    def _args(self, source: Mapping[str, np.ndarray]) -> list:
        return [self.opaque[n] if n in self.opaque else (source[n].copy() if n in source else self.constants[n].copy())
                for n in self.order]

    def _names_of(self, args: Sequence, kwargs: Mapping) -> list[tuple[str, Any]]:
        if kwargs:
            return list(kwargs.items())
        return list(zip(self.order, args))

    def _record_output(self, out: Any) -> list:
        if self.float_leaf(out):
            leaves, single = [out], True
        else:
            leaves = [v for v in self.leaves_of(out) if self.float_leaf(v)]
            single = False
            if not leaves:
                raise ProtocolError(
                    f"{_name(self.user_fn)} returned {type(out).__name__} with no floating-point "
                    f"{self.framework} array in it; return a tensor (or a tuple of tensors)"
                )
        self._out_single = single
        self._out_shapes = [tuple(v.shape) for v in leaves]
        self._out_tree = out
        return leaves

    def context(self, args: Sequence, kwargs: Mapping):
        """A context manager every call of the code under test runs in (JAX: 64-bit mode for float64)."""
        return contextlib.nullcontext()

    def leaves_of(self, out: Any) -> list:
        """The array leaves of an output tree, in a fixed order."""
        return flatten_tree(out, self.is_array)

    def rebuild(self, tree: Any, leaves: list) -> Any:
        """``tree`` with its floating leaves replaced in order by ``leaves`` (others become None)."""
        return unflatten_tree(tree, self.float_leaf, leaves)

    def _np_fn(self, *args, **kwargs) -> np.ndarray:
        with self.context(args, kwargs):
            out = self.call(list(args), dict(kwargs))
            leaves = self._record_output(out)
            return join_outputs([self.leaf_to_numpy(v) for v in leaves], self._out_single)

    def _np_vjp(self, dout, *args, **kwargs):
        if not self._out_shapes:
            self._call(self.fn, self._args(self.originals))
        pieces = split_cotangent(dout, self._out_shapes, self._out_single)
        with self.context(args, kwargs):
            if self.user_vjp is None:
                return self.autodiff(pieces, list(args), dict(kwargs))
            dout_fw, fargs, fkwargs = self.user_vjp_args(pieces, list(args), dict(kwargs))
            result = self.user_vjp(dout_fw, *fargs, **fkwargs)
            return self._grads_to_numpy(result)

    def _grads_to_numpy(self, result: Any) -> Any:
        def conv(g):
            if g is None or isinstance(g, np.ndarray):
                return g
            if self.is_array(g):
                return self.leaf_to_numpy(g)
            return g

        if isinstance(result, Mapping):
            return {k: conv(v) for k, v in result.items()}
        if isinstance(result, (tuple, list)):
            return [conv(v) for v in result]
        return (conv(result),)


def dtype_dependence(y64: np.ndarray, ylow: np.ndarray, low_dtypes) -> str | None:
    """Why the float64 evaluation is not the caller's function, or None.

    The outputs must have the same shape and agree to within
    ``max(1e-3, 64 eps) * max|y|`` (``eps`` of the coarsest caller dtype): a
    thousand times float32 rounding, far below what a different random
    draw or branch produces.
    """
    if y64.shape != ylow.shape:
        return f"returns shape {ylow.shape} in the caller's dtype but {y64.shape} in float64"
    a, b = y64.astype(np.float64, copy=False), ylow.astype(np.float64, copy=False)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    eps = max(float(np.finfo(np.dtype(d)).eps) if np.dtype(d).kind == "f" else 0.0 for d in low_dtypes)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    gap = float(np.max(np.abs(a - b))) if a.size else 0.0
    if gap > max(1e-3, 64 * eps) * scale + 1e-30:
        return (f"computes different values in float64 than in the caller's dtype (max |difference| {gap:.3g} "
                f"for max |y| {scale:.3g}: random draws that depend on the dtype, or a dtype-dependent branch?)")
    return None


def _name(fn: Any) -> str:
    self_ = getattr(fn, "__self__", None)
    if isinstance(self_, type):
        return f"{self_.__name__}.{getattr(fn, '__name__', 'apply')}"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
