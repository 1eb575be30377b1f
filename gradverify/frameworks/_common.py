"""Shared machinery of the framework adapters (no framework is imported here).

:class:`FrameworkFunctionTarget` turns a torch or JAX callable into the
numpy-facing :class:`~gradverify.layers.FunctionTarget` the checks already
know: its ``fn`` converts numpy arrays to framework arrays, calls the code
under test and returns numpy; its ``vjp`` asks the framework's own autodiff
(or the caller's ``vjp=``) for the gradient of ``<u, output>``. Input
naming, constants, copies and the in-place-mutation warnings are therefore
exactly those of the numpy path.

Inputs are laid out as flat, named arrays: an array argument is one input
(named after ``fn``'s parameter, the dict key, or its position); a list,
tuple or dict argument (any pytree, for JAX) contributes one input per
array leaf, named like ``params['W']`` or ``xs[0]``, and is rebuilt for
every call. Integer arrays are constants. Everything else (Python scalars,
``None``, strings, JAX PRNG keys...) is passed through unchanged and never
differentiated (wrap a scalar in a tensor to check its gradient).

With ``vjp=``, the caller's ``vjp(dout, *args, **kwargs)`` receives
``dout`` (a tree like the output) and the arguments as framework arrays in
the caller's dtype, and returns one gradient per top-level argument (a
tree like the argument for a tree; None for a constant), as framework or
numpy arrays.

Outputs may be one array or a (nested) tuple, list or dict of arrays: the
floating-point leaves, flattened in order and concatenated, form the output
whose projection ``<u, output>`` is differentiated; non-floating leaves
(indices, masks) and ``None`` are ignored.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..batching import BATCH_AGREEMENT, BatchedEvaluation
from ..errors import NoDifferentiableInputs, ProtocolError, SpecError
from ..layers import FunctionTarget, _signature_names, call_user

__all__ = ["Arg", "BATCH_AGREEMENT", "BatchedEvaluation", "FrameworkFunctionTarget", "split_inputs", "flatten_tree",
           "unflatten_tree", "join_outputs", "split_cotangent", "dtype_dependence"]


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


class Arg:
    """One top-level argument of the call: an array, a tree (list/tuple/dict/pytree) of arrays, or opaque.

    Attributes:
        name: the argument's name (from the signature, the dict key, or its position).
        keyword: passed by keyword (dict inputs) rather than by position.
        kind: ``"array"``, ``"tree"`` or ``"opaque"``.
        obj: the object itself (opaque arguments).
        leaves: the tree's leaves as given; ``flat`` their input names
            (None for a non-array leaf, passed through unchanged);
            ``rebuild(leaves)`` the tree from new leaves.
    """

    __slots__ = ("name", "keyword", "kind", "obj", "leaves", "flat", "rebuild")

    def __init__(self, name, keyword, kind, obj=None, leaves=(), flat=(), rebuild=None):
        self.name, self.keyword, self.kind, self.obj = name, keyword, kind, obj
        self.leaves, self.flat, self.rebuild = list(leaves), list(flat), rebuild


class NestedPrimal:
    """The code under test, run for the exact reference with each custom-gradient function *inside* it as its primal.

    Each framework says how (:mod:`~gradverify.frameworks._jax_primal`
    interprets the jaxpr, TensorFlow patches ``tf.custom_gradient`` in
    :meth:`scope`, PyTensor inlines ``OpFromGraph`` when its graph is
    built); this is what they share. ``intercepted`` lists the custom
    functions met so far, or is None where meeting none is fine (a user
    ``vjp=``: the framework's autodiff of the code is the reference then);
    :meth:`FrameworkFunctionTarget.primal_gradients` declines when it stays
    empty.
    """

    #: the reference runs the primals of custom-gradient functions *inside* the code (a refutation by
    #: finite differences may mean such a primal is not differentiable at the point: see api._check_reference)
    nested = True

    def __init__(self, fn: Callable, *, require_custom: bool = True):
        self.fn = fn
        self._seen: list[str] = []
        self._require = require_custom
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    @property
    def intercepted(self) -> list | None:
        """The custom functions met so far; None where calling none is fine."""
        return self._seen if self._require else None

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _wider(piece: np.dtype, framework_dtype: Any) -> bool:
    """Whether a real numpy ``piece`` dtype is wider than a real framework dtype (torch, JAX, TF or numpy)."""
    size = getattr(framework_dtype, "itemsize", None) or getattr(framework_dtype, "size", None)
    complex_ = bool(getattr(framework_dtype, "is_complex", False)) or getattr(framework_dtype, "kind", "") == "c"
    return (not complex_ and isinstance(size, int) and np.dtype(piece).kind == "f"
            and np.dtype(piece).itemsize > size)


class FrameworkFunctionTarget(FunctionTarget):
    """A framework callable seen as a numpy function with a numpy vjp (see the module docstring).

    The arguments are laid out as flat, named arrays for
    :class:`~gradverify.layers.FunctionTarget` (which copies them, keeps
    integer ones as constants and watches for in-place writes); a list,
    tuple or dict argument (any pytree, for JAX) contributes one input per
    array leaf, named ``arg[0]``, ``arg['W']``..., and is rebuilt for every
    call. Subclasses implement the framework specifics: :meth:`is_array`,
    :meth:`to_numpy`, :meth:`to_framework`, :meth:`flatten_input`,
    :meth:`float_leaf`, :meth:`leaf_to_numpy`, :meth:`autodiff`.

    Cost: one call of the code under test per evaluation, plus the
    conversion of the arguments (a copy of each input).
    """

    framework = "framework"
    #: One flag per floating output leaf: False for an output the framework's autodiff does not
    #: differentiate (left out of the function checked); None keeps every output.
    kept_outputs: list[bool] | None = None
    #: Empty tensors are checked (trivially, with a warning), as the frameworks' own checkers do; so are
    #: tensors with inf/NaN elements (a ``-inf`` attention mask), whose non-finite elements never move.
    allow_empty = True
    allow_nonfinite = True
    #: Batched evaluation (:mod:`gradverify.batching`) by the framework's vmap, where a subclass implements it;
    #: the batch axis of numpy code (:class:`~gradverify.layers.FunctionTarget`) would call the converted
    #: function, so a framework adds it itself (torch does).
    batch_strategies = ("vmap",)
    # Framework code keeps the BatchedEvaluation defaults that FunctionTarget narrows for numpy code (whose
    # memory tracemalloc sees and a check of numpy code keeps to a few copies of its inputs): fast mode's
    # probes batched too, requests of the check's own size, calls within batch_input_bytes.
    evaluate_rows = BatchedEvaluation.evaluate_rows
    batch_output_bytes = None
    _axis_rows_per_call = BatchedEvaluation._axis_rows_per_call

    def __init__(self, fn: Callable, inputs: Any, vjp: Callable | None, *, names_from: Callable | None = None,
                 constants: Any = ()):
        if not callable(fn):
            raise ProtocolError(f"the function to check is a {type(fn).__name__}, not a callable")
        if vjp is not None and not callable(vjp):
            raise ProtocolError(f"vjp must be callable, got {type(vjp).__name__}")
        self.user_fn = fn
        self.user_vjp = vjp
        self._out_single = True
        self._out_shapes: list[tuple] = []
        self._out_tree: Any = None
        values, keyword = split_inputs(inputs, self.is_array)
        if keyword:
            pairs = list(values.items())
        else:
            names = _signature_names(names_from if names_from is not None else fn, len(values))
            pairs = list(zip(names[:len(values)] if names else [str(i) for i in range(len(values))], values))
        self.args: list[Arg] = []
        flat: dict[str, np.ndarray] = {}
        for name, v in pairs:
            if self._arraylike(v):
                flat[name] = self._input_to_numpy(v, name)
                self.args.append(Arg(name, keyword, "array"))
                continue
            tree = self.flatten_input(v)
            if tree is not None and any(self._arraylike(leaf) for leaf in tree[1]):
                paths, leaves, rebuild = tree
                names_ = []
                for path, leaf in zip(paths, leaves):
                    if self._arraylike(leaf):
                        flat[name + path] = self._input_to_numpy(leaf, name + path)
                        names_.append(name + path)
                    else:
                        names_.append(None)
                self.args.append(Arg(name, keyword, "tree", leaves=leaves, flat=names_, rebuild=rebuild))
            else:
                self.args.append(Arg(name, keyword, "opaque", obj=v))
        if not any(a.dtype.kind == "f" for a in flat.values()):
            raise NoDifferentiableInputs(
                "no input is a floating-point array or tensor (Python scalars and other non-array inputs are "
                "passed through as constants); pass at least one floating-point tensor to differentiate"
            )
        what = "vjp" if vjp is not None else f"{self.framework} autodiff of {_name(fn)}"
        # random state the code may draw from: the user's callables, its opaque arguments and the non-array
        # leaves of its trees (not this adapter's own attributes: arrays and bookkeeping)
        passed = [a.obj for a in self.args if a.kind == "opaque"]
        passed += [leaf for a in self.args if a.kind == "tree" for leaf, n in zip(a.leaves, a.flat) if n is None]
        super().__init__(self._np_fn, self._np_vjp, flat, kind="function", what=what, constants=constants,
                         random_roots=(fn, vjp, names_from, passed))

    def faithful_float64(self) -> None:
        """Fall back to the caller's dtype where the float64 evaluation computes a different function.

        Run once at construction when some input is not float64. Random
        draws depend on the dtype (a dropout mask drawn for float64 tensors,
        ``jax.random`` in 64-bit mode), so code that draws them
        (:meth:`random_draws`) computes another function in float64; so does
        code whose float64 output is grossly different from its own
        (:func:`dtype_dependence`). The finite differences then run in the
        caller's dtype, with a warning. Smaller deviations are rounding,
        which the check's tolerance widening accounts for. Cost: one or two
        calls of ``fn`` (or one trace).
        """
        low = sorted({v.dtype.name for v in self.originals.values() if v.dtype != np.float64})
        if not low:
            return
        try:
            reason = self.random_draws()
            if not reason:
                y64 = np.asarray(self._call(self.fn, self._args(self.point)))
                ylow = np.asarray(self._call(self.fn, self._args(self.originals)))
                reason = dtype_dependence(y64, ylow, low)
        except Exception:  # noqa: BLE001 - the check's own fallback reports it
            return
        if reason:
            for k in self.point:
                self.point[k] = self.originals[k].copy()
            self._warn(f"{_name(self.user_fn)} {reason}, so the finite differences ran in the caller's dtype "
                       f"({', '.join(low)}); the verdict is coarser than a float64 check")

    def forget_compiled(self) -> None:
        """Drop compiled versions of the code (a copy whose function differs must not reuse them)."""

    def random_draws(self) -> str | None:
        """A reason string when the code drew random numbers whose values depend on the dtype."""
        return None

    # -- the exact reference: the framework's autodiff of the primal ----------
    def primal(self) -> tuple[Callable | None, str]:
        """The undecorated forward of the code under test and a description, or ``(None, why not)``.

        With a user ``vjp=``, the function itself is the primal (its
        framework differentiates it); otherwise a subclass names the primal
        of a custom-gradient construct (:meth:`custom_primal`).
        """
        custom, what = self.custom_primal(self.user_fn)
        if custom is not None:
            return custom, what
        if self.user_vjp is not None:
            return self.user_fn, f"{self.framework} autodiff of {_name(self.user_fn)}"
        return None, what

    def custom_primal(self, fn: Callable) -> tuple[Callable | None, str]:
        """``(primal, description)`` where ``fn`` is a custom-gradient construct, else ``(None, why)``."""
        return None, f"{_name(fn)} is differentiated by {self.framework} itself: no independent exact reference"

    def exact_references(self) -> tuple[str, ...]:
        return (self.framework,) if self.primal()[0] is not None else ()

    def primal_gradients(self, cotangent: np.ndarray, dtype: Any = np.float64
                         ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The framework's gradient of ``<cotangent, primal(point)>`` in float64, and the primal's output.

        Runs the primal on the float64 point through :meth:`autodiff` of a
        copy of this target whose function is the primal. Cost: one forward
        and one backward of the primal.

        Raises:
            Declined: no primal, or its output does not depend on the inputs
                through the framework's autodiff (detached, computed outside it).
        """
        import copy as _copy

        from ..references import Declined

        primal, what = self.primal()
        if primal is None:
            raise Declined(what)
        if not self._out_shapes:
            self._call(self.fn, self._args(self.point))
        ref = _copy.copy(self)
        ref.user_fn, ref.user_vjp, ref.warnings, ref.what = primal, None, [], what
        ref.forget_compiled()
        pieces = split_cotangent(cotangent, self._out_shapes, self._out_single)
        flat = {k: (v.astype(dtype) if k in self.point else v)
                for k, v in zip(self.order, self._args(self.point))}
        cotangent = np.asarray(cotangent, dtype=dtype)
        self.random.restore()
        scope = getattr(primal, "scope", contextlib.nullcontext)
        with ref.context(flat), scope():
            try:
                grads = ref.autodiff(pieces, flat)
            except Exception as exc:  # noqa: BLE001 - the primal is not differentiable by the framework
                raise Declined(f"{what} raised {type(exc).__name__}: {exc}") from exc
            leaves = ref._record_output(ref._out_tree)
            out = join_outputs([ref.leaf_to_numpy(v) for v in leaves], ref._out_single)
        if ref.warnings:
            raise Declined(f"{what}: " + ref.warnings[0])
        if getattr(primal, "intercepted", True) == []:
            raise Declined(f"{_name(self.user_fn)} calls no custom backward: its gradient comes from "
                           f"{self.framework} autodiff itself", applies=False)
        return {k: (np.zeros(self.point[k].shape) if g is None else np.asarray(g, dtype=np.float64))
                for k, g in grads.items()}, out

    # -- framework specifics -------------------------------------------------
    def is_array(self, value: Any) -> bool:  # pragma: no cover - abstract
        """A numeric array of the framework."""
        raise NotImplementedError

    def to_numpy(self, value: Any, name: str) -> np.ndarray:  # pragma: no cover - abstract
        """A numpy copy of a framework input (may record its device under ``name``)."""
        raise NotImplementedError

    def to_framework(self, value: np.ndarray, name: str) -> Any:  # pragma: no cover - abstract
        """The framework array for the numpy argument ``name``."""
        raise NotImplementedError

    def flatten_input(self, value: Any):
        """``(paths, leaves, rebuild)`` for a list/tuple/dict argument, else None."""
        if not isinstance(value, (Mapping, list, tuple)):
            return None
        paths: list[str] = []
        leaves: list = []

        def walk(node, path):
            if isinstance(node, Mapping):
                for k, v in node.items():
                    walk(v, f"{path}[{k!r}]")
            elif isinstance(node, (list, tuple)) and not self._arraylike(node):
                for i, v in enumerate(node):
                    walk(v, f"{path}[{i}]")
            else:
                paths.append(path)
                leaves.append(node)

        walk(value, "")
        return paths, leaves, lambda new: _rebuild_like(value, iter(new), self._arraylike)

    def float_leaf(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def leaf_to_numpy(self, value: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def autodiff(self, pieces: list[np.ndarray], flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The framework's gradient of ``<pieces, output>`` for every name in ``self.point``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def context(self, flat: Mapping[str, np.ndarray]):
        """A context manager every call of the code under test runs in (JAX: 64-bit mode for float64)."""
        return contextlib.nullcontext()

    def leaf_shape(self, value: Any) -> tuple:
        """The shape of an output leaf as :meth:`leaf_to_numpy` returns it."""
        return tuple(value.shape)

    def leaves_of(self, out: Any) -> list:
        """The array leaves of an output tree, in a fixed order."""
        return flatten_tree(out, self.is_array)

    def rebuild(self, tree: Any, leaves: list) -> Any:
        """``tree`` with its floating leaves replaced in order by ``leaves`` (others become None)."""
        return unflatten_tree(tree, self.float_leaf, leaves)

    # -- the call ------------------------------------------------------------
    def _arraylike(self, value: Any) -> bool:
        return self.is_array(value) or isinstance(value, (np.ndarray, np.generic))

    def _input_to_numpy(self, value: Any, name: str) -> np.ndarray:
        return self.to_numpy(value, name) if self.is_array(value) else np.array(value)

    def build_call(self, values: Mapping[str, Any], opaque: Mapping[str, Any] | None = None) -> tuple[list, dict]:
        """Positional and keyword arguments of the call, from framework arrays keyed by input name.

        ``opaque`` replaces pass-through arguments by name (for tracing).
        """
        pos, kw = [], {}
        for a in self.args:
            if a.kind == "array":
                v = values[a.name]
            elif a.kind == "tree":
                v = a.rebuild([values[f] if f is not None else leaf for f, leaf in zip(a.flat, a.leaves)])
            elif opaque and a.name in opaque:
                v = opaque[a.name]
            else:
                v = a.obj
            if a.keyword:
                kw[a.name] = v
            else:
                pos.append(v)
        return pos, kw

    def convert(self, flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {n: self.to_framework(v, n) for n, v in flat.items()}

    def call_user(self, values: Mapping[str, Any], opaque: Mapping[str, Any] | None = None) -> Any:
        """Call the code under test on framework arrays; what it raises becomes a CodeUnderTestError."""
        __tracebackhide__ = True
        pos, kw = self.build_call(values, opaque)
        names = [a.name for a in self.args if not a.keyword]
        return call_user(_name(self.user_fn), "forward", self.user_fn, pos, kw, names=names)

    def _record_output(self, out: Any) -> list:
        if self.float_leaf(out):
            leaves, single = [out], True
        else:
            leaves = [v for v in self.leaves_of(out) if self.float_leaf(v)]
            single = False
            if self.kept_outputs is not None and self.user_vjp is None and len(self.kept_outputs) == len(leaves):
                leaves = [v for v, k in zip(leaves, self.kept_outputs) if k]
            if not leaves:
                raise ProtocolError(
                    f"{_name(self.user_fn)} returned {type(out).__name__} with no floating-point "
                    f"{self.framework} array in it; return a tensor (or a tuple of tensors)"
                )
        self._out_single = single
        self._out_shapes = [self.leaf_shape(v) for v in leaves]
        self._out_tree = out
        return leaves

    def _np_fn(self, **flat) -> np.ndarray:
        with self.context(flat):
            out = self.run(flat)
            leaves = self._record_output(out)
            return join_outputs([self.leaf_to_numpy(v) for v in leaves], self._out_single)

    def run(self, flat: Mapping[str, np.ndarray]) -> Any:
        """Call the code under test on numpy arguments (converted to the framework)."""
        return self.call_user(self.convert(flat))

    def _np_vjp(self, dout, **flat):
        if not self._out_shapes:
            self._call(self.fn, self._args(self.originals))
        pieces = split_cotangent(dout, self._out_shapes, self._out_single)
        with self.context(flat):
            if self.user_vjp is None:
                return self.autodiff(pieces, flat)
            return self._run_user_vjp(pieces, flat)

    def _run_user_vjp(self, pieces: list[np.ndarray], flat: Mapping[str, np.ndarray]) -> dict:
        values = self.convert(flat)
        dts = [leaf.dtype for leaf in ([self._out_tree] if self._out_single else
                                       [v for v in self.leaves_of(self._out_tree) if self.float_leaf(v)])]
        # (ascontiguousarray makes 0-d pieces 1-d: keep each piece's shape; a float64 cotangent of the
        # float64 analytic pass is not cast to the float32 of an output recorded by an earlier call)
        ts = [self.to_framework(np.ascontiguousarray(p).reshape(np.shape(p)), None,
                                dtype=None if _wider(np.asarray(p).dtype, dt) else dt)
              for p, dt in zip(pieces, dts)]
        dout = ts[0] if self._out_single else self.rebuild(self._out_tree, ts)
        pos, kw = self.build_call(values)
        result = call_user(_name(self.user_vjp), "vjp", self.user_vjp, (dout, *pos), kw,
                           names=["dout"] + [a.name for a in self.args if not a.keyword])
        if isinstance(result, Mapping):
            per_arg = {str(k): v for k, v in result.items()}
        else:
            if result is None or self._arraylike(result):
                result = (result,)
            try:
                result = list(result)
            except TypeError:
                raise ProtocolError(f"vjp returned {type(result).__name__}; return one gradient per input") from None
            if len(result) != len(self.args):
                raise ProtocolError(
                    f"vjp returned {len(result)} gradient(s) for {len(self.args)} input(s) "
                    f"({', '.join(a.name for a in self.args)}); return one gradient per input, in order "
                    "(None for a constant)"
                )
            per_arg = {a.name: g for a, g in zip(self.args, result)}
        grads: dict[str, Any] = {}
        for a in self.args:
            g = per_arg.get(a.name)
            if g is None or a.kind == "opaque":
                continue
            if a.kind == "array":
                grads[a.name] = self._grad_to_numpy(g)
                continue
            tree = self.flatten_input(g)
            leaves = tree[1] if tree is not None else [g]
            wanted = [f for f in a.flat if f is not None]
            got = [leaf for leaf in leaves if self._arraylike(leaf) or leaf is None]
            if len(got) != len(wanted):
                raise ProtocolError(
                    f"vjp's gradient for {a.name!r} has {len(got)} array(s); the input has {len(wanted)} "
                    "(return a gradient with the structure of the input)"
                )
            for f, leaf in zip(wanted, got):
                if leaf is not None:
                    grads[f] = self._grad_to_numpy(leaf)
        return grads

    def _grad_to_numpy(self, g: Any) -> Any:
        return self.leaf_to_numpy(g) if self.is_array(g) else g


def _rebuild_like(node: Any, it, is_array) -> Any:
    if isinstance(node, Mapping):
        return {k: _rebuild_like(v, it, is_array) for k, v in node.items()}
    if isinstance(node, (list, tuple)) and not is_array(node):
        items = [_rebuild_like(v, it, is_array) for v in node]
        if hasattr(node, "_fields"):
            return type(node)(*items)
        return items if isinstance(node, list) else tuple(items)
    return next(it)


#: A float64 evaluation further than this (relative to ``max|y|``) from the
#: caller's-dtype output computes another function (see :func:`dtype_dependence`).
GROSS_DEVIATION = 0.25


def dtype_dependence(y64: np.ndarray, ylow: np.ndarray, low_dtypes) -> str | None:
    """Why the float64 evaluation is grossly not the caller's function, or None.

    Different shapes, or outputs that differ by more than
    :data:`GROSS_DEVIATION` of ``max|y|``: what a different random draw or
    branch produces. Rounding amplified by ill-conditioned code (a float32
    ``sin(1000 * x)``) deviates less and is left to the check's tolerance
    widening -- the float64 oracle is still the right reference there.
    """
    if y64.shape != ylow.shape:
        return f"returns shape {ylow.shape} in the caller's dtype but {y64.shape} in float64"
    a, b = y64.astype(np.float64, copy=False), ylow.astype(np.float64, copy=False)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    gap = float(np.max(np.abs(a - b))) if a.size else 0.0
    if gap > GROSS_DEVIATION * scale + 1e-30:
        return (f"computes different values in float64 than in the caller's dtype (max |difference| {gap:.3g} "
                f"for max |y| {scale:.3g}: random draws that depend on the dtype, or a dtype-dependent branch?)")
    return None


def _name(fn: Any) -> str:
    self_ = getattr(fn, "__self__", None)
    if isinstance(self_, type):
        return f"{self_.__name__}.{getattr(fn, '__name__', 'apply')}"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
