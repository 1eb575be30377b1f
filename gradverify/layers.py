"""Adapters: every kind of code under test becomes one shape, a :class:`Target`.

A target knows the arrays to differentiate with respect to (``point``: name
-> array, perturbed in place by the finite differences), the constants it
does not differentiate (integer inputs such as indices), how to evaluate
the output at the current point, and how to get the analytic gradient of
``<u, output>`` for a cotangent ``u``. The numpy object protocol, function
pairs and numpy callables with a ``vjp`` are adapted here; the checks in
:mod:`gradverify.api` are one loop over this shape.

The adapters protect the check from the code under test: they hand over
copies, or read-only views once a call on copies showed the code writes
nothing (a forward that writes into its input, or a backward that writes
into ``dy``, cannot corrupt the check) and say so in ``warnings``; they
evaluate the finite differences in float64 where the code accepts it, so a
float32 gradient is measured against a float64 oracle.
"""

from __future__ import annotations

import copy
import inspect
import types
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .batching import BatchedEvaluation
from .errors import (
    CodeUnderTestError,
    GradVerifyError,
    MissingGradient,
    NoDifferentiableInputs,
    NonFiniteError,
    ProtocolError,
    ShapeMismatch,
    SpecError,
)
from .memory import chunk_for

__all__ = ["Target", "LayerTarget", "FunctionTarget", "RandomGuard", "as_input_arrays", "draw_input",
           "validate_gradients", "call_user", "pair_callables"]


def _shape_of(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    if shape is not None and not callable(shape):
        try:
            return tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            return None
    if isinstance(value, (list, tuple)):
        inner = [_shape_of(v) for v in value]
        return inner if any(i is not None for i in inner) else None
    return None


def call_user(call: str, stage: str, fn: Callable, args: Sequence = (), kwargs: Mapping | None = None,
              names: Sequence[str] | None = None) -> Any:
    """Call the code under test; what it raises becomes a :class:`~gradverify.CodeUnderTestError`.

    The one place every call of a forward, backward or vjp goes through.
    The error names ``call`` (``"Dense.forward"``), its ``stage``
    (``"forward"``, ``"backward"`` or ``"vjp"``) and the shapes of the array
    arguments (named by ``names``, else by position), with the original as
    ``__cause__``. Exceptions gradverify raises itself (any
    :class:`~gradverify.GradVerifyError`, e.g. from a nested call that was
    already wrapped, and any exception class defined in gradverify, such as
    the engine's signal that a traced forward left the trace) pass through
    unchanged. Callers that retry or fall back
    on failure (the float64 fallback, batched evaluation) catch the typed
    error like any other. Cost: a ``try`` around the call.
    """
    __tracebackhide__ = True
    kwargs = {} if kwargs is None else kwargs
    try:
        return fn(*args, **kwargs)
    except GradVerifyError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code raised: say where, keep the original
        if type(exc).__module__.split(".")[0] == "gradverify":
            raise  # gradverify's own signals from inside the call (the engine's trace, a Declined reference)
        shapes = {}
        for i, a in enumerate(args):
            shape = _shape_of(a)
            if shape is not None:
                shapes[names[i] if names is not None and i < len(names) else f"argument {i}"] = shape
        for k, a in kwargs.items():
            shape = _shape_of(a)
            if shape is not None:
                shapes[str(k)] = shape
        raise CodeUnderTestError(call, stage, shapes, exc) from exc


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _framework_array_type(value: Any) -> str | None:
    """``"torch.Tensor"``-like name when ``value`` is a torch or JAX array (handed to numpy code), else None."""
    root = type(value).__module__.split(".")[0]
    if root in ("torch", "jax", "jaxlib", "tensorflow") and hasattr(value, "shape"):
        return f"{root}.{type(value).__name__}"
    return None


def pair_callables(forward: Callable, backward: Callable) -> tuple[Callable, Callable]:
    """A function pair as ``fn(*xs)`` and ``vjp(dout, *xs)`` (forward re-run right before backward).

    Each call of ``forward`` and ``backward`` goes through :func:`call_user`,
    so an exception names which of the two raised; a forward that does not
    return ``(out, cache)`` is a :class:`~gradverify.ProtocolError`.
    """
    fname, bname = _callable_name(forward), _callable_name(backward)

    def split(res):
        if not isinstance(res, tuple) or len(res) != 2:
            raise ProtocolError(
                f"forward must return a pair (out, cache); it returned {type(res).__name__}"
                + (f" of length {len(res)}" if isinstance(res, tuple) else "")
            )
        return res

    def fn(*xs, **kw):
        return split(call_user(fname, "forward", forward, xs, kw))[0]

    def vjp(dout, *xs, **kw):
        _, cache = split(call_user(fname, "forward", forward, xs, kw))
        return call_user(bname, "backward", backward, (dout, cache), names=("dout", "cache"))

    return fn, vjp


def _is_differentiable(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal arrays for the in-place-write checks (a NaN input element equals itself).

    Compared a chunk at a time: ``np.array_equal(..., equal_nan=True)``
    of whole arrays would take two temporary copies of them.
    """
    if a.shape != b.shape:
        return False
    fa = a.reshape(-1) if a.flags.c_contiguous else np.ravel(a)
    fb = b.reshape(-1) if b.flags.c_contiguous else np.ravel(b)
    nan, step = a.dtype.kind in "fc", chunk_for(fa.size)
    return all(np.array_equal(fa[i:i + step], fb[i:i + step], equal_nan=nan) for i in range(0, fa.size, step))


def _shareable(value: Any) -> bool:
    """A plain, writeable, C-contiguous float64 numpy array: a check can perturb it in place instead of copying it."""
    return type(value) is np.ndarray and value.dtype == np.float64 and value.flags.writeable and \
        value.flags.c_contiguous


def _to_array(value: Any, name: str, *, allow_empty: bool = False, allow_nonfinite: bool = False,
              share: bool = False) -> np.ndarray:
    """``value`` as a numpy array: a copy, or with ``share`` the caller's own float64 array (see :func:`_shareable`)."""
    if value is None:
        raise SpecError(f"input {name!r} is None; pass an array")
    try:
        # a copy, unless asked to share a float64 array (perturbed in place and restored bit for bit)
        arr = value if share and _shareable(value) else _framework_to_numpy(value, name)
    except GradVerifyError:
        raise
    except Exception as exc:  # noqa: BLE001 - report what to fix
        raise SpecError(f"input {name!r} cannot be converted to a numpy array: {exc}") from None
    if arr.dtype == object:
        raise SpecError(f"input {name!r} is not numeric (an object array of {type(value).__name__}); pass a numpy array")
    if arr.dtype.kind == "c":
        raise SpecError(f"input {name!r} is complex; gradverify checks real-valued inputs")
    if arr.dtype.kind in "USV":
        raise SpecError(f"input {name!r} has non-numeric dtype {arr.dtype}")
    if arr.size == 0 and not allow_empty:
        raise SpecError(f"input {name!r} is empty (shape {arr.shape}); give it at least one element")
    if arr.dtype.kind == "f" and not allow_nonfinite and not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"input {name!r} contains NaN or inf; check the point, not only the gradient")
    return arr


def _framework_to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy copy of ``value``; a torch tensor through its own ``numpy()`` (no NumPy 2 ``__array__`` warning).

    ``np.array(tensor)`` goes through ``Tensor.__array__``, which NumPy 2
    warns about (no ``copy`` keyword) and which fails on a tensor that
    requires grad; ``detach().cpu().numpy()`` is torch's own conversion.
    torch is never imported here: the tensor's type says where it comes from.
    """
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        t = value.detach()
        if str(t.dtype) == "torch.bfloat16":
            raise SpecError(f"input {name!r} is a bfloat16 tensor, which numpy cannot hold; pass x.float()")
        if t.is_complex():
            raise SpecError(f"input {name!r} is complex; gradverify checks real-valued inputs")
        return np.array(t.resolve_conj().resolve_neg().cpu().numpy(), copy=True)
    return np.array(value)


class Opaque:
    """A non-numeric input (a dict of options, a string, None...) passed through untouched.

    Function pairs often take such arguments (``conv_forward(x, w, b,
    conv_param)``); they are constants, handed to each call as a deep copy
    (a forward that updates, say, running statistics in its options dict
    cannot make later calls disagree).
    """

    def __init__(self, value: Any):
        self.value = value

    def get(self) -> Any:
        return copy.deepcopy(self.value)

    @property
    def shape(self) -> tuple:
        return ()

    @property
    def dtype(self):
        return type(self.value).__name__


def _is_opaque(value: Any) -> bool:
    """A constant passed through as given: anything but an array (Python numbers, tuples of ints, dicts, None...).

    Python numbers among the inputs are options (a scale, an epsilon, a
    count), as for ``torch.autograd.gradcheck``; pass an array to have one
    differentiated.
    """
    if value is None or isinstance(value, (Mapping, str, bytes, int, float, bool, complex)) or callable(value):
        return True
    if isinstance(value, (np.ndarray, np.generic)):
        return False
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return True  # a shape, a kernel size, a list of indices
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value).dtype == object
        except Exception:  # noqa: BLE001 - ragged nested sequences
            return True
    return not hasattr(value, "__array__") and not hasattr(value, "__array_interface__")


def as_input_arrays(inputs: Any, names: Sequence[str] | None = None, *, allow_opaque: bool = False,
                    allow_empty: bool = False, allow_nonfinite: bool = False, share: bool = False) -> dict[str, Any]:
    """Normalise ``inputs`` (one array, a sequence, or a dict) to name -> array copies.

    With ``allow_opaque``, non-numeric values become :class:`Opaque`
    constants instead of errors; with ``allow_empty``, empty arrays are
    kept (framework callables: an empty tensor is checked trivially); with
    ``allow_nonfinite``, infinite and NaN elements are kept (they do not
    move under a perturbation: finite differences see them as constant);
    with ``share``, plain float64 arrays are the caller's own, not copies.
    """

    def convert(v, name):
        if allow_opaque and _is_opaque(v):
            return Opaque(v)
        return _to_array(v, name, allow_empty=allow_empty, allow_nonfinite=allow_nonfinite, share=share)

    if isinstance(inputs, Mapping):
        if not inputs:
            raise SpecError("inputs is an empty dict; give at least one input")
        return {str(k): convert(v, str(k)) for k, v in inputs.items()}
    if isinstance(inputs, np.ndarray) or np.isscalar(inputs):
        inputs = (np.asarray(inputs) if np.isscalar(inputs) and not isinstance(inputs, (str, bytes)) else inputs,)
    try:
        seq = list(inputs)
    except TypeError:
        raise SpecError(f"inputs must be an array, a sequence of arrays or a dict, got {type(inputs).__name__}") from None
    if not seq:
        raise SpecError("inputs is empty; give at least one input array")
    if names is None or len(names) < len(seq):
        names = [str(i) for i in range(len(seq))]
    return {names[i]: convert(v, names[i]) for i, v in enumerate(seq)}


def draw_input(input_shape: Any, inputs: Any, dtype: Any, default_dtype, rng: np.random.Generator,
               what: str = "layer") -> np.ndarray | None:
    """The drawn input of a layer check, or None when ``inputs`` is given.

    Validates that exactly one of ``input_shape`` and ``inputs`` is given and
    draws a seeded standard normal of that shape in ``dtype`` (default
    ``default_dtype``). Raises SpecError with what to fix.
    """
    if inputs is not None and input_shape is not None:
        raise SpecError("give input_shape or inputs, not both")
    if inputs is not None:
        return None
    if input_shape is None:
        raise SpecError(f"check_layer needs input_shape=(...) or inputs=array to know what to feed the {what}")
    shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
    if not all(isinstance(s, (int, np.integer)) and s >= 0 for s in shape):
        raise SpecError(f"input_shape must be a tuple of non-negative integers, got {input_shape!r}")
    dt = np.dtype(default_dtype if dtype is None else dtype)
    if dt.kind != "f":
        raise SpecError(f"dtype must be a floating-point dtype, got {dt}")
    return rng.standard_normal(shape).astype(dt)


def validate_gradients(
    grads: Mapping[str, Any], like: Mapping[str, np.ndarray], *, what: str = "backward"
) -> dict[str, np.ndarray]:
    """Check that each gradient exists, has its input's shape, a real float dtype and finite values."""
    out = {}
    for name, ref in like.items():
        if name not in grads or grads[name] is None:
            raise MissingGradient(
                f"{what} returned no gradient for {name!r} (got None or nothing); "
                f"return an array of shape {tuple(np.shape(ref))} (zeros if it does not affect the output)"
            )
        g = grads[name]
        try:
            g = np.asarray(g)
        except Exception as exc:  # noqa: BLE001
            raise ProtocolError(f"{what} gradient for {name!r} is not array-like: {exc}") from None
        if g.dtype.kind != "f":
            want = np.asarray(ref).dtype
            raise ProtocolError(
                f"{what} gradient for {name!r} has dtype {g.dtype}; return a real floating-point array "
                f"({want.name if want.kind == 'f' else 'float64'}, like {name!r})"
            )
        if g.shape != np.shape(ref):
            raise ShapeMismatch(
                f"{what} gradient for {name!r} has shape {g.shape}, but {name!r} has shape {tuple(np.shape(ref))}; "
                "a gradient must have the shape of what it differentiates (sum over broadcast axes?)"
            )
        if not np.all(np.isfinite(g)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(g))[0])
            raise NonFiniteError(f"{what} gradient for {name!r} is not finite at index {bad} (value {g[bad]})")
        out[name] = g
    return out


class OutputStructure:
    """Several outputs (a tuple, list or dict of arrays, nested) seen as one flat float array, and back.

    An LSTM step returning ``(h, c)`` is checked on both: the cotangent
    covers every floating-point output, and :meth:`split` hands the code
    under test its pieces in the structure it returned (``None`` for
    outputs that are not floating-point: integer arrays, strings, None).
    Cost: one concatenation per evaluation.
    """

    def __init__(self, out: Any, what: str):
        self.what = what
        self.paths: list[tuple] = []
        self.shapes: list[tuple] = []
        self.template = self._walk(out, ())

    @staticmethod
    def is_structured(out: Any) -> bool:
        return isinstance(out, (tuple, list, Mapping))

    def _walk(self, node: Any, path: tuple) -> Any:
        if isinstance(node, Mapping):
            return {k: self._walk(v, path + (k,)) for k, v in node.items()}
        if isinstance(node, (tuple, list)):
            return type(node)(self._walk(v, path + (i,)) for i, v in enumerate(node)) \
                if not hasattr(node, "_fields") else type(node)(*(self._walk(v, path + (i,)) for i, v in enumerate(node)))
        arr = _numpy_output(node, self.what) if node is not None and not isinstance(node, (str, bytes)) else None
        if arr is not None and arr.dtype.kind == "f":
            self.paths.append(path)
            self.shapes.append(arr.shape)
            return len(self.paths) - 1
        return None

    def leaves(self, out: Any) -> list:
        found = []
        for path in self.paths:
            node = out
            for k in path:
                node = node[k]
            found.append(_numpy_output(node, self.what))
        return found

    def join(self, out: Any) -> np.ndarray:
        """The floating-point outputs raveled and concatenated (float64 where they differ in dtype)."""
        leaves = self.leaves(out)
        if [a.shape for a in leaves] != self.shapes:
            raise ShapeMismatch(f"{self.what} returned outputs of shapes {[a.shape for a in leaves]} on this call "
                                f"but {self.shapes} before")
        if not leaves:
            raise ProtocolError(f"{self.what} returned no floating-point array; return the output(s) to check")
        dtype = np.result_type(*leaves)
        return np.concatenate([a.reshape(-1).astype(dtype, copy=False) for a in leaves])

    def split(self, flat: np.ndarray) -> Any:
        """``flat`` cut into pieces shaped like the outputs, in the output's structure."""
        pieces, start = [], 0
        for shape in self.shapes:
            n = int(np.prod(shape))
            pieces.append(np.asarray(flat[start:start + n]).reshape(shape))
            start += n

        def build(node):
            if isinstance(node, Mapping):
                return {k: build(v) for k, v in node.items()}
            if isinstance(node, (tuple, list)):
                items = [build(v) for v in node]
                return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)
            return None if node is None else pieces[node]

        return build(self.template)


def _numpy_output(y: Any, what: str) -> np.ndarray:
    """``np.asarray(y)``, refusing a torch or JAX array (numpy code that returns one is mixing frameworks)."""
    framework = _framework_array_type(y)
    if framework is not None:
        _check_output(y, what)
    return np.asarray(y)


def _check_output(y: Any, what: str) -> np.ndarray:
    framework = _framework_array_type(y)
    if framework is not None:
        raise ProtocolError(
            f"{what} returned a {framework}; numpy code must return numpy arrays (convert it, e.g. "
            "y.detach().cpu().numpy(), or check framework code with gradverify.check(fn, inputs), which "
            "differentiates it by its own framework)"
        )
    try:
        arr = np.asarray(y)
    except Exception as exc:  # noqa: BLE001
        raise ProtocolError(f"{what} returned {type(y).__name__}, which is not array-like: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise ProtocolError(f"{what} returned an array of dtype {arr.dtype}; it must return real floating-point values")
    if not np.all(np.isfinite(arr)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise NonFiniteError(
            f"{what} produced a non-finite value at output index {bad} ({arr[bad]}); "
            "the gradient cannot be checked at a point where the function is NaN or inf"
        )
    return arr


class RandomGuard:
    """Captures random state the code under test consumes and replays it for every call.

    Stochastic layers (dropout) become checkable when every evaluation sees
    the same random draws. The guard finds numpy ``Generator`` /
    ``RandomState`` objects reachable from the code under test (attributes,
    closures, bound ``self``, default arguments, a few levels deep) and
    numpy's global state; :meth:`watch` runs the code once to learn which
    of them it actually consumes, and :meth:`restore` resets exactly those
    before each call (so code that draws nothing pays nothing). At the end
    every state is back where it was: the user's streams are untouched.
    """

    def __init__(self, *roots: Any):
        self._found: list[Any] = []
        seen: set[int] = set()
        for root in roots:
            self._scan(root, 0, seen)
        self._initial = [(obj, self._get(obj)) for obj in self._found]
        self._global = np.random.get_state()
        self._active: list[tuple[Any, Any]] = []
        self._global_active = False

    @staticmethod
    def _get(obj):
        return obj.get_state() if isinstance(obj, np.random.RandomState) else obj.state

    @staticmethod
    def _set(obj, state):
        if isinstance(obj, np.random.RandomState):
            obj.set_state(state)
        else:
            obj.state = state

    def _scan(self, obj: Any, depth: int, seen: set[int]) -> None:
        if obj is None or id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, np.random.Generator):
            self._found.append(obj.bit_generator)
            return
        if isinstance(obj, (np.random.RandomState, np.random.BitGenerator)):
            self._found.append(obj)
            return
        if isinstance(obj, (np.ndarray, str, bytes, int, float, complex, type)) or inspect.ismodule(obj):
            return
        children: list[Any] = []
        if isinstance(obj, Mapping):
            children.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            children.extend(obj)
        if getattr(obj, "__closure__", None):
            children.extend(c.cell_contents for c in obj.__closure__ if _cell_has_contents(c))
        for attr in ("__self__", "__func__", "__wrapped__"):
            if hasattr(obj, attr):
                children.append(getattr(obj, attr))
        if getattr(obj, "__defaults__", None):
            children.extend(obj.__defaults__)
        if inspect.isfunction(obj):
            # generators held as module globals of the function (rng = default_rng(0) at top level)
            for value in obj.__globals__.values():
                if isinstance(value, (np.random.Generator, np.random.RandomState, np.random.BitGenerator)):
                    children.append(value)
        if hasattr(obj, "__dict__") and not inspect.isfunction(obj) and not inspect.ismethod(obj):
            try:
                children.extend(vars(obj).values())
            except TypeError:
                pass
        for child in children:
            self._scan(child, depth + 1, seen)

    def watch(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` once and remember which random states it consumed."""
        before = [(obj, self._get(obj)) for obj in self._found]
        g_before = np.random.get_state()
        try:
            return call()
        finally:
            self._active = [(obj, st) for obj, st in before if not _same_state(self._get(obj), st)]
            g_after = np.random.get_state()
            self._global_active = not _same_state(g_after, g_before)
            self._global = g_before
            self.restore()

    @property
    def active(self) -> bool:
        return bool(self._active) or self._global_active

    def restore(self) -> None:
        """Reset the consumed states to what they were before the watched call."""
        for obj, st in self._active:
            self._set(obj, st)
        if self._global_active:
            np.random.set_state(self._global)

    def release(self) -> None:
        """Put every state back where it was when the guard was made."""
        for obj, st in self._initial:
            self._set(obj, st)
        if self._global_active:
            np.random.set_state(self._global)


def _cell_has_contents(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _same_state(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


_NOT_STATE = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType,
              np.random.Generator, np.random.RandomState)


class _LayerState:
    """Swap arrays for traced stand-ins inside a layer, and put the layer's state back afterwards.

    ``swap`` maps ``id(array)`` to its replacement. The layer's attributes
    (and those of objects it holds, two levels down), and the entries of its
    list and dict attributes, are recorded; :meth:`restore` rebinds every
    one of them and drops attributes the forward added, and copies back the
    contents of arrays the forward may have updated in place. Cost: one
    walk over the layer's attributes, copies of the arrays it holds.
    """

    _DEPTH = 2

    def __init__(self, layer: Any, swap: Mapping[int, Any], *, skip: set[int] = frozenset()):
        self.objects: list[tuple[Any, dict]] = []
        self.containers: list[tuple[Any, Any]] = []
        self.arrays: list[tuple[np.ndarray, np.ndarray]] = []
        self.paths: dict[int, str] = {}
        seen: set[int] = set(skip)  # arrays not to copy or restore (parameters the check perturbs itself)
        self._record(layer, 0, seen)
        for obj, _ in self.objects:
            d = vars(obj)
            for k, v in list(d.items()):
                if id(v) in swap:
                    d[k] = swap[id(v)]
        for c, _ in self.containers:
            keys = c.keys() if isinstance(c, dict) else range(len(c))
            for k in list(keys):
                if id(c[k]) in swap:
                    c[k] = swap[id(c[k])]

    def _record(self, obj: Any, depth: int, seen: set[int], path: str = "") -> None:
        if id(obj) in seen or depth > self._DEPTH:
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            if obj.flags.writeable and obj.size:
                self.arrays.append((obj, obj.copy()))
                self.paths[id(obj)] = path
            return
        if isinstance(obj, dict):
            self.containers.append((obj, dict(obj)))
            self.paths[id(obj)] = path
            children = [(v, f"{path}[{k!r}]") for k, v in obj.items()]
        elif isinstance(obj, list):
            self.containers.append((obj, list(obj)))
            self.paths[id(obj)] = path
            children = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        elif isinstance(obj, tuple):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, _NOT_STATE):
            try:
                d = vars(obj)
            except TypeError:
                return
            self.objects.append((obj, dict(d)))
            children = [(v, f"{path}.{k}" if path or depth else str(k)) for k, v in d.items()]
        else:
            return
        for child, where in children:
            self._record(child, depth + 1, seen, where)

    def changed(self) -> list[str]:
        """What a call changed that a later call reads: lists and dicts that grew or shrank, arrays updated in place.

        Each is named by its path from the layer (``X``, ``derived_variables['Z']``,
        ``gradients['W']``).
        """
        out = []
        for c, saved in self.containers:
            if len(c) != len(saved):
                out.append(f"{self.paths.get(id(c)) or 'a container'} ({type(c).__name__}: {len(saved)} -> {len(c)} "
                           "entries)")
        for arr, saved in self.arrays:
            if not np.array_equal(arr, saved, equal_nan=True):
                out.append(f"{self.paths.get(id(arr)) or 'an array'} (updated in place)")
        return out

    def restore(self) -> None:
        for obj, saved in self.objects:
            d = vars(obj)
            for k in [k for k in d if k not in saved]:
                del d[k]
            d.update(saved)
        for c, saved in self.containers:
            if isinstance(c, dict):
                c.clear()
                c.update(saved)
            else:
                c[:] = saved
        for arr, saved in self.arrays:
            if not np.array_equal(arr, saved, equal_nan=True):
                arr[...] = saved


class Target:
    """What a check differentiates. See the module docstring.

    Attributes:
        kind: ``"layer"``, ``"pair"`` or ``"function"``.
        point: name -> array the finite differences perturb in place.
        originals: name -> the arrays in the caller's dtype (for the analytic pass).
        constants: name -> array of inputs not differentiated.
        warnings: hazards found while running the code (in-place mutation...).
    """

    kind = "target"

    def __init__(self):
        self.point: dict[str, np.ndarray] = {}
        self.originals: dict[str, np.ndarray] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.warnings: list[str] = []
        #: The output of the run in the caller's dtype (set by the check).
        self.analytic_output: np.ndarray | None = None
        #: Random state replayed before every call (see :class:`RandomGuard`).
        self.random = RandomGuard()

    def evaluate(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    #: Optional: ``evaluate_batch(name, flat_indices, values) -> stacked outputs``
    #: evaluates many single-element perturbations of ``point[name]`` in one
    #: call (see :func:`gradverify.numeric.projected_gradients`). Targets
    #: that batch evaluations (:class:`gradverify.batching.BatchedEvaluation`:
    #: torch, JAX, TensorFlow and numpy functions) define it.
    evaluate_batch = None

    def analytic(self, cotangent: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def exact_references(self) -> tuple[str, ...]:
        """Names of the exact references that apply to this code (see :mod:`gradverify.references`)."""
        return ()

    def traced_call(self, values: Mapping[str, Any]) -> Any:
        """Run the forward with ``values`` (name -> engine Tensor) in place of the differentiable inputs."""
        raise NotImplementedError  # pragma: no cover - targets with "reference" in exact_references define it

    def session(self):
        """A context the whole check runs in (framework targets pin threads here)."""
        import contextlib

        return contextlib.nullcontext()

    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)


class LayerTarget(Target):
    """The numpy object protocol: ``params``, ``forward(x)``, ``backward(dy)``, ``grads``.

    The input is named ``"x"`` (``"input"`` if a parameter is called ``x``).
    Parameters are perturbed in their own storage (so a layer that reads
    ``self.W`` rather than ``self.params["W"]`` is still measured) and
    restored bit for bit; the input is evaluated in float64.
    """

    kind = "layer"

    def __init__(self, layer: Any, x: np.ndarray, *, params_attr: str = "params", grads_attr: str = "grads",
                 constants: Sequence[str] = ()):
        super().__init__()
        for method in ("forward", "backward"):
            if not callable(getattr(layer, method, None)):
                raise ProtocolError(
                    f"{type(layer).__name__} has no {method}() method; a numpy layer needs {params_attr} (a dict), "
                    f"forward(x) -> y and backward(dy) -> dx that sets {grads_attr}"
                )
        params = getattr(layer, params_attr, None)
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ProtocolError(f"{type(layer).__name__}.{params_attr} must be a dict of name -> array, got "
                                f"{type(params).__name__} (params_attr= names another attribute)")
        self.layer = layer
        self.params = params
        self.params_attr, self.grads_attr = params_attr, grads_attr
        held = set(constants or ())
        unknown = held - set(map(str, params)) - {"x", "input"}
        if unknown:
            raise SpecError(f"constants= names {sorted(unknown)}, which are not parameters of {type(layer).__name__} "
                            f"(it has {sorted(map(str, params))})")
        self.input_name = "input" if "x" in params else "x"
        if x.dtype.kind == "f":
            self.point[self.input_name] = x.astype(np.float64)
            self.originals[self.input_name] = x
        else:
            self.constants[self.input_name] = x
        self.param_names = []
        for name, value in params.items():
            if not isinstance(value, np.ndarray):
                raise ProtocolError(
                    f"parameter {name!r} of {type(layer).__name__} is a {type(value).__name__}; "
                    "params must hold numpy arrays (they are perturbed in place)"
                )
            if value.dtype.kind != "f" or str(name) in held:
                self.constants[str(name)] = value
                continue
            if not value.flags.writeable:
                raise ProtocolError(f"parameter {name!r} is read-only; the check perturbs parameters in place")
            if value.size == 0:
                continue
            self.point[str(name)] = value
            self.originals[str(name)] = value
            self.param_names.append(str(name))
        if self.input_name in held and self.input_name in self.point:
            self.constants[self.input_name] = self.originals.pop(self.input_name)
            del self.point[self.input_name]
        self._x = x
        self._checked_mutation = False
        self.random = RandomGuard(layer)
        #: the layer's state, when its forward changes state that later calls read (see :meth:`evaluate`)
        self._state: _LayerState | None = None

    def _forward(self, x: np.ndarray) -> Any:
        return call_user(f"{type(self.layer).__name__}.forward", "forward", self.layer.forward, (x,), names=("x",))

    def evaluate(self) -> np.ndarray:
        """One forward at the point, from the layer's state as the check found it.

        The first two calls watch the layer: a forward that appends to a
        list attribute, adds dict entries or updates an array attribute in
        place between one call and the next (a cache of every input, a
        running sum) would make every call see another layer, so from then
        on the layer's state is put back after every call (a warning names
        the state), and the second call runs again from it. A forward that
        only rebinds or overwrites its caches (``self.x = x``) costs nothing.
        """
        self.random.restore()
        x = self.point[self.input_name].copy() if self.input_name in self.point else self._x.copy()
        what = f"{type(self.layer).__name__}.forward"
        calls = self._state_calls = getattr(self, "_state_calls", 0) + 1
        if calls == 1:
            self._pristine = _LayerState(self.layer, {}, skip=self._param_ids())
            y = self._forward(x)
            self._after_first = _LayerState(self.layer, {}, skip=self._param_ids())
            return _numpy_output(y, what)
        if calls == 2:
            y = self._forward(x)
            changed = self._after_first.changed()
            self._after_first = None
            if changed:
                self._warn(f"{what} changes state that later calls read ({', '.join(changed)}); the check puts the "
                           "layer's state back before every call, so each forward and backward starts from the "
                           "state it was given")
                self._state = self._pristine
                self._state.restore()
                self.random.restore()
                y = self._forward(x)
                self._state.restore()
            self._pristine = None
            return _numpy_output(y, what)
        if self._state is None:
            return _numpy_output(self._forward(x), what)
        try:
            return _numpy_output(self._forward(x), what)
        finally:
            self._state.restore()

    def _param_ids(self) -> set[int]:
        return {id(self.params[n]) for n in self.param_names}

    def exact_references(self) -> tuple[str, ...]:
        return ("reference",)

    def traced_call(self, values: Mapping[str, Any]) -> Any:
        """``layer.forward`` with traced parameters and input; the layer's state is put back afterwards.

        Each parameter is replaced wherever the layer holds that very array
        (``params[name]``, an attribute, an entry of a list or dict
        attribute), and every attribute the forward sets or rebinds (caches
        of traced values, running statistics) is restored, so the plain
        forward and backward that follow see the layer as the user left it.
        """
        state = _LayerState(self.layer, {id(self.params[n]): values[n] for n in self.param_names})
        try:
            x = values[self.input_name] if self.input_name in values else self._x.copy()
            return self.layer.forward(x)
        finally:
            state.restore()

    def analytic(self, cotangent: np.ndarray, at_point: bool = False) -> dict[str, np.ndarray]:
        """Forward then backward; ``at_point`` feeds the float64 input copy instead of the caller's.

        A pass that changes state a later pass reads -- gradients
        accumulated with ``+=`` into arrays the layer keeps, a list that
        grows -- is undone afterwards (with a warning naming the state), so
        every pass starts from the same zeros; what the backward returned is
        copied first. Other state (a counter the backward bumps) is left
        alone, so a backward that depends on it is still caught as
        nondeterministic.
        """
        state = _LayerState(self.layer, {}, skip=self._param_ids())
        grads = self._analytic(cotangent, at_point)
        changed = state.changed()
        if changed:
            self._warn(f"{type(self.layer).__name__}'s forward and backward change state that the next pass reads "
                       f"({', '.join(changed)}: gradients accumulated with +=?); the check puts it back after every "
                       "pass, so each starts from the state it was given")
            state.restore()
        return grads

    def _analytic(self, cotangent: np.ndarray, at_point: bool) -> dict[str, np.ndarray]:
        self.random.restore()
        source = self.point[self.input_name] if at_point and self.input_name in self.point else self._x
        x_arg = source.copy()
        name = type(self.layer).__name__
        y = _check_output(call_user(f"{name}.forward", "forward", self.layer.forward, (x_arg,), names=("x",)),
                          f"{name}.forward")
        if not at_point:
            self.analytic_output = y
        if not np.array_equal(x_arg, source):
            self._warn("forward modifies its input x in place; in a network this corrupts the previous layer's "
                       "output (the check handed over a copy)")
        if y.shape != cotangent.shape:
            raise ShapeMismatch(f"forward returned shape {y.shape} on this call but {cotangent.shape} before")
        dy = cotangent.copy()
        dx = call_user(f"{name}.backward", "backward", self.layer.backward, (dy,), names=("dy",))
        if not np.array_equal(dy, cotangent):
            self._warn("backward modifies the dy it was given in place; in a network this corrupts the "
                       "gradient other layers receive (the check handed over a copy)")
        grads = {}
        if self.input_name in self.point:
            grads[self.input_name] = np.array(dx, copy=True) if isinstance(dx, np.ndarray) else dx
        ga = self.grads_attr
        layer_grads = getattr(self.layer, ga, None)
        if self.param_names:
            if not isinstance(layer_grads, Mapping):
                raise MissingGradient(
                    f"{type(self.layer).__name__}.backward did not set {ga} (a dict with one entry per "
                    f"{self.params_attr} key: {self.param_names}; grads_attr= names another attribute)"
                )
            for name in self.param_names:
                if name not in layer_grads:
                    raise MissingGradient(
                        f"{type(self.layer).__name__}.{ga} has no entry for parameter {name!r}; "
                        f"backward must set {ga}[{name!r}] (it has {sorted(map(str, layer_grads))}); if "
                        f"{name!r} is not trained (a running statistic), pass constants=[{name!r}]"
                    )
                g = layer_grads[name]
                grads[name] = np.array(g, copy=True) if isinstance(g, np.ndarray) else g
        return validate_gradients(grads, self.originals, what=f"{type(self.layer).__name__}.backward")


def _constant_names(constants: Any, order: Sequence[str]) -> set[str]:
    """``constants=`` (input names or positions) -> the set of input names held constant."""
    if constants is None:
        return set()
    if isinstance(constants, (str, int)):
        constants = (constants,)
    out = set()
    for c in constants:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(order):
            out.add(order[int(c)])
        elif isinstance(c, str) and c in order:
            out.add(c)
        else:
            raise SpecError(f"constants= names inputs by name or position ({', '.join(order)}); got {c!r}")
    return out


def _signature_names(fn: Callable, count: int) -> list[str] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            return None if len(names) < count else names
    return names if len(names) >= count else None


class FunctionTarget(BatchedEvaluation, Target):
    """A numpy callable ``fn(*inputs) -> out`` with ``vjp(dout, *inputs) -> grads``.

    Function pairs are the same shape: ``fn = forward(*xs)[0]`` and
    ``vjp = backward(dout, forward(*xs)[1])`` (forward re-run first).
    Inputs are named by ``fn``'s parameter names where it has them
    (``names_from``), otherwise by position; a dict of inputs names them
    itself and is passed by keyword.

    Memory: a plain float64 input (C-contiguous, writeable, sharing no
    memory with another input) is not copied: the finite differences
    perturb the caller's array in place and restore it bit for bit, as
    ``torch.autograd.gradcheck`` does (a function that reads that same
    array through a closure sees the perturbation too). Other inputs are
    copied (float64 copies where the caller's dtype is lower). The code
    gets writable copies of its inputs until a call on copies has shown
    that it does not write into them (the mutation probe for ``fn``, the
    first analytic pass for ``vjp``); from then on it gets read-only views
    of those (and copies of any it did write into).
    A call that raises on the views (a write the probe did not see: numpy
    says "assignment destination is read-only") runs again on copies, and
    that callable gets copies for the rest of the check, with the usual
    warning if its copies came back changed.

    Batched evaluation (:mod:`gradverify.batching`): a full check's
    perturbations of a tensor go to ``fn`` in batches along the batch axis
    the code accepts (the tensor given a leading axis of rows, the other
    inputs as one evaluation gets them), each call verified against
    one-by-one evaluations, else one by one. The rows and outputs of a
    batch take about half the inputs' size (at least
    :attr:`batch_memory_floor`, see :attr:`batch_output_bytes`), so a full
    check of numpy code stays within 3x its inputs. Fast mode's probes run
    one at a time.
    """

    kind = "function"
    #: Whether empty inputs, and inputs with inf/NaN elements, are kept (framework callables) or refused (numpy code).
    allow_empty = False
    allow_nonfinite = False

    def __init__(self, fn: Callable, vjp: Callable, inputs: Any, *, kind: str = "function",
                 names_from: Callable | None = None, what: str = "vjp", constants: Sequence[Any] = (),
                 random_roots: Sequence[Any] | None = None):
        super().__init__()
        if not callable(fn):
            raise ProtocolError(f"the function to check is a {type(fn).__name__}, not a callable")
        if not callable(vjp):
            raise ProtocolError(f"vjp must be callable, got {type(vjp).__name__}")
        self.kind = kind
        self.fn = fn
        self.vjp = vjp
        self.what = what
        #: how error messages name the function (its forward, for a pair)
        self.fn_name = _callable_name(names_from or fn)
        self.by_keyword = isinstance(inputs, Mapping)
        count = len(inputs) if isinstance(inputs, (list, tuple, Mapping)) else 1
        names = None if self.by_keyword else _signature_names(names_from or fn, count)
        arrays = as_input_arrays(inputs, names, allow_opaque=True, allow_empty=self.allow_empty,
                                 allow_nonfinite=self.allow_nonfinite, share=True)
        self.order = list(arrays)
        held = _constant_names(constants, self.order)
        #: the structure of several outputs (None: one array)
        self.structure: OutputStructure | None = None
        kept: list[np.ndarray] = []  # the arrays held so far (an input aliasing one of them is copied)
        for name, arr in arrays.items():
            if isinstance(arr, np.ndarray) and any(np.may_share_memory(arr, k) for k in kept):
                arr = arr.copy()  # the same memory as another input (f(x, x)): perturbed apart, so a copy
            if isinstance(arr, Opaque):
                self.constants[name] = arr
            elif name in held and isinstance(arr, np.ndarray):
                self.constants[name] = arr
            elif _is_differentiable(arr):
                # (float64 inputs: one array serves both -- the caller's own array where it was shareable,
                # else the check's copy; perturbations are restored bit for bit)
                self.point[name] = arr if arr.dtype == np.float64 else arr.astype(np.float64)
                self.originals[name] = arr
            else:
                self.constants[name] = arr
            if isinstance(arr, np.ndarray):
                kept.append(arr)
        if not self.point:
            raise NoDifferentiableInputs(
                f"every input is a constant ({', '.join(f'{k}: {v.dtype}' for k, v in arrays.items())}); "
                "pass at least one floating-point array to differentiate"
            )
        self._checked_mutation = False
        #: whether fn / vjp get read-only views of their inputs (after a call on copies showed which it writes)
        self._views = {"fn": False, "vjp": False}
        #: the inputs fn / vjp wrote into on copies: they keep getting copies, the others views
        self._written: dict[str, set] = {"fn": set(), "vjp": set()}
        #: whether a call of fn / vjp raised on views and ran again on copies (copies from then on)
        self._refused = {"fn": False, "vjp": False}
        # where random state the code consumes may be found: the callables and the opaque inputs (an adapter
        # names the user's own callables and arguments instead of its wrappers, whose attributes are its own)
        self.random = RandomGuard(*(random_roots if random_roots is not None else (fn, vjp, names_from)),
                                  [c.value for c in self.constants.values() if isinstance(c, Opaque)])

    def _args(self, source: Mapping[str, np.ndarray], views: bool = False, copied: set = frozenset()) -> list[Any]:
        """The arguments of one call: copies of ``source`` and the constants, or read-only views (copies of ``copied``)."""
        out = []
        for n in self.order:
            c = source[n] if n in source else self.constants[n]
            if isinstance(c, Opaque):
                out.append(c.get())
            elif views and n not in copied:
                v = c.view()
                v.flags.writeable = False
                out.append(v)
            else:
                out.append(c.copy())
        return out

    def _wrote(self, args: list, source: Mapping[str, np.ndarray]) -> set:
        """The inputs whose copies ``args`` (of ``source`` and the constants) a call changed."""
        out = set()
        for n, a in zip(self.order, args):
            b = source[n] if n in source else self.constants[n]
            if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.flags.writeable and \
                    not _same(a, b):
                out.add(n)
        return out

    def _shared_call(self, which: str, f: Callable, source: Mapping[str, np.ndarray], *extra) -> tuple[Any, list]:
        """``f`` on read-only views of ``source`` where ``which`` has earned them, else on copies.

        A call that raises on the views runs again on copies; ``which``
        gets copies from then on. Returns the output and the arguments
        used (copies to compare, or None where views were used).
        """
        __tracebackhide__ = True
        refused = None
        if self._views[which]:
            try:
                return self._call(f, self._args(source, views=True, copied=self._written[which]), *extra), None
            except Exception as exc:  # noqa: BLE001 - a write into a read-only view, or the code's own error
                refused = exc.__cause__ or exc
                self._views[which], self._refused[which] = False, True
                self.random.restore()
        args = self._args(source)
        out = self._call(f, args, *extra)  # (the code's own error, raised again on copies, propagates)
        if refused is not None:
            who = "the function" if which == "fn" else self.what
            self._warn(f"{who} raised on read-only views of its inputs ({type(refused).__name__}: {refused}) and ran "
                       "again on writable copies: it writes into its inputs on some calls, which the check's first "
                       "call did not show; every later call got copies")
        return out, args

    @staticmethod
    def _unaliased(out: Any, source: Mapping[str, np.ndarray]) -> Any:
        """``out``, copied where it is a view of an input (the check perturbs the inputs in place)."""
        if isinstance(out, np.ndarray) and any(np.may_share_memory(out, a) for a in source.values()):
            return out.copy()
        return out

    def _call(self, f: Callable, args: list, *extra):
        """``f(*extra, *args)`` (keywords for dict inputs) through :func:`call_user`."""
        __tracebackhide__ = True
        if f is self.vjp:
            call, stage = self.what, ("vjp" if self.what == "vjp" else "backward")
        else:
            call, stage = self.fn_name, "forward"
        names = ["dout"] * len(extra) + self.order
        if self.by_keyword:
            return call_user(call, stage, f, extra, dict(zip(self.order, args)), names=names)
        return call_user(call, stage, f, (*extra, *args), names=names)

    def evaluate(self) -> np.ndarray:
        self.random.restore()
        out, args = self._shared_call("fn", self.fn, self.point)
        if args is None:
            return self._unaliased(self.flat_output(out), self.point)
        if self._checked_mutation and self._wrote(args, self.point):
            self._warn("the function modifies its inputs in place; in a network this corrupts other layers' "
                       "values (the check handed over copies)")
        return self.flat_output(out)

    def flat_output(self, out: Any) -> np.ndarray:
        """The output as one array: several outputs (a tuple/dict) joined by :class:`OutputStructure`."""
        if self.structure is None and OutputStructure.is_structured(out) and not isinstance(out, np.ndarray):
            self.structure = OutputStructure(out, self.fn_name)
        if self.structure is not None:
            return self.structure.join(out)
        return _numpy_output(out, self.fn_name)

    def cotangent_for(self, cotangent: np.ndarray) -> Any:
        """The cotangent as the code expects it: split into the output's structure where it has several."""
        return cotangent if self.structure is None else self.structure.split(cotangent)

    def exact_references(self) -> tuple[str, ...]:
        return ("reference",)

    def traced_call(self, values: Mapping[str, Any]) -> Any:
        """``fn`` with traced values for the differentiable inputs (constants as given)."""
        args = [values[n] if n in values else a for n, a in zip(self.order, self._args(self.point))]
        return self._call(self.fn, args)

    def analytic(self, cotangent: np.ndarray, at_point: bool = False) -> dict[str, np.ndarray]:
        """The vjp at the inputs; ``at_point`` passes the float64 copies instead of the caller's arrays."""
        self.random.restore()
        source = self.point if at_point else self.originals
        dy = cotangent.copy()
        args = None
        if self._views["vjp"]:
            try:
                result = self._call(self.vjp, self._args(source, views=True, copied=self._written["vjp"]),
                                    self.cotangent_for(dy))
            except Exception as exc:  # noqa: BLE001 - a write into a read-only view, or the code's own error
                refused = exc.__cause__ or exc
                self._views["vjp"], self._refused["vjp"] = False, True
                self.random.restore()
                dy = cotangent.copy()
                args = self._args(source)
                result = self._call(self.vjp, args, self.cotangent_for(dy))  # (its own error propagates)
                self._warn(f"{self.what} raised on read-only views of its inputs ({type(refused).__name__}: "
                           f"{refused}) and ran again on writable copies: it writes into its inputs on some calls, "
                           "which its first call did not show; every later call got copies")
        if not self._views["vjp"] and args is None:  # (copies: the first call, or after views were refused)
            args = self._args(source)
            result = self._call(self.vjp, args, self.cotangent_for(dy))
        if not np.array_equal(dy, cotangent):
            self._warn(f"{self.what} modifies the dout it was given in place; in a network this corrupts the "
                       "gradient other layers receive (the check handed over a copy)")
        if args is not None:
            written = self._wrote(args, source)
            if written:
                self._warn(f"{self.what} modifies its inputs in place (the check handed over copies)")
            # later calls get read-only views of the inputs it did not write into, copies of the others
            self._written["vjp"] |= written
            self._views["vjp"] = not self._refused["vjp"]
        if isinstance(result, np.ndarray) or np.isscalar(result) or result is None:
            result = (result,)
        if isinstance(result, Mapping):
            grads = dict(result)
        else:
            try:
                result = list(result)
            except TypeError:
                raise ProtocolError(f"{self.what} returned {type(result).__name__}; return one gradient per input") from None
            # Trailing non-numeric inputs (an options dict) need no gradient slot.
            numeric_upto = max(i for i, n in enumerate(self.order) if not isinstance(self.constants.get(n), Opaque)) + 1
            if len(result) not in (len(self.order), numeric_upto):
                raise ProtocolError(
                    f"{self.what} returned {len(result)} gradient(s) for {len(self.order)} input(s) "
                    f"({', '.join(self.order)}); return one gradient per input, in order (None for a constant)"
                )
            grads = dict(zip(self.order, result))
        grads = validate_gradients({k: grads.get(k) for k in self.point}, self.originals, what=self.what)
        return {k: self._unaliased(g, {**self.point, **self.originals}) for k, g in grads.items()}

    # -- batched evaluation (gradverify.batching) --------------------------------
    #: numpy code has no vmap: its batches run along the batch axis the code accepts, else as a loop
    batch_strategies = ("batch axis",)
    #: Fast mode's probes run one at a time, in place: holding a tensor's 16 displaced points together (which
    #: the probes do for a target with ``evaluate_rows``) costs more memory than a fast check of numpy code
    #: keeps to (about three copies of its inputs), for at most 16 calls saved.
    evaluate_rows = None
    #: Bytes a batch may take whatever the inputs' size (see :attr:`batch_output_bytes`).
    batch_memory_floor = 64 * 2**10

    @property
    def batch_output_bytes(self) -> int:
        """Bytes of outputs a full check's batched request holds: a quarter of the inputs' size, at least
        :attr:`batch_memory_floor`.

        A full check holds the gradient under test and, above it, what its
        comparisons keep (little for a passing check) and under a copy of
        the inputs for the rest (``tests/test_memory.py``: under 1.5x). A
        batch holds the request's outputs, and within one call its rows,
        their outputs and whatever the code computes on the way (at least
        as large again as the outputs): a quarter of the inputs for the
        request and half that for a call's rows and outputs keep all of it
        to about half the inputs' size. The floor keeps a batch of a small
        function large enough to pay for a call's overhead.
        """
        return max(self.batch_memory_floor, sum(a.nbytes for a in self.point.values()) // 4)

    def _axis_rows_per_call(self, name: str) -> int:
        """Rows of one call along the batch axis: their copies of the tensor and their outputs within half of
        :attr:`batch_output_bytes` (see there)."""
        per_row = self.point[name].nbytes + getattr(self, "_batch_row_bytes", 0)
        return int(min(self.batch_max_rows, max(1, (self.batch_output_bytes // 2) // max(1, per_row))))

    def _output_row_shapes(self, want: np.ndarray) -> list[tuple]:
        return list(self.structure.shapes) if self.structure is not None else [tuple(want.shape[1:])]

    def _batch_axis(self, name: str, rows: np.ndarray, *, owned: bool) -> list:
        """``fn`` once with ``rows`` in place of input ``name``, the other inputs as :meth:`evaluate` hands them over.

        The code gets what one evaluation would: read-only views of the
        inputs once the mutation probe has shown it writes nothing into
        them, copies otherwise (and of the inputs it writes into); the rows
        as a read-only view, or, where it writes into that input, an array
        of its own (a copy unless ``owned``). Random state is replayed
        first, as before every call. Returns the output's floating leaves.
        """
        __tracebackhide__ = True
        self.random.restore()
        views, written = self._views["fn"], self._written["fn"]
        args = []
        for n in self.order:
            c = rows if n == name else self.point[n] if n in self.point else self.constants[n]
            if isinstance(c, Opaque):
                args.append(c.get())
            elif views and n not in written:
                v = c.view()
                v.flags.writeable = False
                args.append(v)
            else:
                args.append(rows if n == name and owned else c.copy())
        out = self._call(self.fn, args)
        if self.structure is None:
            if OutputStructure.is_structured(out) and not isinstance(out, np.ndarray):
                raise ProtocolError(f"{self.fn_name} returned {type(out).__name__} on a batch, one array one by one")
            return [_numpy_output(out, self.fn_name)]
        if not OutputStructure.is_structured(out) or isinstance(out, np.ndarray):
            raise ProtocolError(f"{self.fn_name} returned {type(out).__name__} on a batch, several outputs one by one")
        return self.structure.leaves(out)

    def check_forward_mutation(self) -> Any:
        """Run ``fn`` once on copies of the caller's inputs, warn if it wrote into them; return its output.

        Later evaluations hand ``fn`` read-only views of the inputs it did
        not write into, copies of the others (see the class docstring).
        """
        self.random.restore()
        args = self._args(self.originals)
        out = self._call(self.fn, args)
        self._checked_mutation = True
        written = self._wrote(args, self.originals)
        if written:
            self._warn("the function modifies its inputs in place; in a network this corrupts other layers' "
                       "values (the check handed over copies)")
        # later calls get read-only views of the inputs it did not write into, copies of the others
        self._written["fn"] |= written
        self._views["fn"] = not self._refused["fn"]
        return self.flat_output(out)
