"""What every backend shares: the Backend interface, the spec interpreter and the layer compositions.

A backend turns a spec (:mod:`gradverify.spec`) into a function of its
framework's arrays and differentiates it with the framework's own autodiff.
Three pieces:

* :class:`Lowering` -- the interpreter. ``expression(root)`` walks an
  expression tree (iteratively) and calls one primitive per :class:`Op`;
  ``network(spec)`` applies one method per layer kind. The layer methods
  here are written once, against the primitive namespace, as compositions of
  primitives (the reference engine uses exactly these); framework backends
  override the layers their framework has a kernel for (``F.layer_norm``,
  ``lax.conv_general_dilated``...), so the comparison pits independent
  implementations against each other.
* :func:`canonical_params` -- the one normalisation of a primitive's static
  parameters (axes sorted and non-negative, ``-1`` resolved in reshape,
  stride defaulted to kernel...), so each backend implements the canonical
  form only and none re-derives numpy's defaults.
* :class:`Backend` -- values, VJPs and JVPs over numpy arrays in and out,
  float32 or float64, on a device. Subclasses supply five hooks
  (``_import``, ``_lowering``, ``_to``, ``_from``, ``_vjp``/``_jvp``).

Cost: interpreting a spec is O(number of nodes or layers) Python calls on top
of the framework's own work; a VJP is one forward and one backward pass, a
JVP one forward-mode pass.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import BackendUnavailable, ShapeMismatch, SpecError, install_hint
from ..spec import Const, Expression, Index, Mask, Network, Op, Var
from ..spec._base import pair

__all__ = ["Backend", "Lowering", "canonical_params", "as_dtype", "DTYPES"]

#: The dtypes every backend computes in.
DTYPES = ("float32", "float64")


def as_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy dtype, refusing anything but float32 and float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise SpecError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None
    if dt.name not in DTYPES:
        raise SpecError(f"dtype must be one of {DTYPES}, got {dt.name}")
    return dt


def _axes(axis: Any, ndim: int, what: str) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axis:
        if not -ndim <= int(a) < max(ndim, 1):
            raise SpecError(f"{what}: axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise SpecError(f"{what}: repeated axis in {axis}")
    return tuple(sorted(out))


def canonical_params(prim: str, shapes: Sequence[tuple[int, ...]], params: Mapping[str, Any]) -> dict[str, Any]:
    """The static parameters of ``prim`` in canonical form, given its arguments' shapes.

    Reductions get ``axis`` (sorted tuple of non-negative axes) and
    ``keepdims``; softmax/log_softmax a one-or-more-axes tuple (default: the
    last axis); reshape a shape with ``-1`` resolved; transpose a full
    permutation; expand_dims/squeeze sorted axis tuples; concatenate/stack a
    non-negative int; conv2d stride/padding pairs; pooling kernel/stride pairs.
    Raises SpecError naming the primitive when a parameter does not fit.
    """
    p = dict(params)
    nd = len(shapes[0]) if shapes else 0
    what = f"{prim!r}"
    if prim in ("sum", "mean", "max", "logsumexp"):
        return {"axis": _axes(p.get("axis"), nd, what), "keepdims": bool(p.get("keepdims", False))}
    if prim in ("softmax", "log_softmax"):
        return {"axis": _axes(p.get("axis", -1), nd, what)}
    if prim == "reshape":
        shape = p.get("shape")
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        total = int(np.prod(shapes[0], dtype=np.int64))
        if shape.count(-1) > 1:
            raise SpecError(f"{what}: at most one -1 in shape {shape}")
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
            if known == 0 or total % known:
                raise SpecError(f"{what}: cannot reshape {shapes[0]} to {shape}")
            shape = tuple(total // known if s == -1 else s for s in shape)
        if int(np.prod(shape, dtype=np.int64)) != total:
            raise SpecError(f"{what}: cannot reshape {shapes[0]} (size {total}) to {shape}")
        return {"shape": shape}
    if prim == "transpose":
        axes = p.get("axes")
        axes = tuple(reversed(range(nd))) if axes is None else tuple(int(a) % max(nd, 1) for a in axes)
        if sorted(axes) != list(range(nd)):
            raise SpecError(f"{what}: axes {p.get('axes')} is not a permutation of {nd} axes")
        return {"axes": axes}
    if prim == "broadcast_to":
        shape = tuple(int(s) for s in np.atleast_1d(p.get("shape")))
        try:
            np.broadcast_shapes(shapes[0], shape)
        except ValueError:
            raise SpecError(f"{what}: cannot broadcast {shapes[0]} to {shape}") from None
        return {"shape": shape}
    if prim == "expand_dims":
        axis = p.get("axis")
        n = len(axis) if isinstance(axis, (tuple, list)) else 1
        return {"axis": _axes(axis, nd + n, what)}
    if prim == "squeeze":
        axis = p.get("axis")
        axes = tuple(i for i, s in enumerate(shapes[0]) if s == 1) if axis is None else _axes(axis, nd, what)
        if any(shapes[0][a] != 1 for a in axes):
            raise SpecError(f"{what}: cannot squeeze axes {axes} of shape {shapes[0]} (length is not 1)")
        return {"axis": axes}
    if prim == "concatenate":
        return {"axis": _axes(p.get("axis", 0), nd, what)[0]}
    if prim == "stack":
        return {"axis": _axes(p.get("axis", 0), nd + 1, what)[0]}
    if prim == "conv2d":
        return {"stride": pair(p.get("stride", 1)), "padding": pair(p.get("padding", 0))}
    if prim in ("max_pool2d", "avg_pool2d"):
        if "kernel" not in p:
            raise SpecError(f"{what} needs a kernel parameter")
        kernel = pair(p["kernel"])
        stride = kernel if p.get("stride") is None else pair(p["stride"])
        return {"kernel": kernel, "stride": stride}
    return p


def _shape(a: Any) -> tuple[int, ...]:
    static = getattr(getattr(a, "type", None), "shape", None)     # a symbolic variable (PyTensor): its static shape
    if isinstance(static, tuple) and all(s is not None for s in static):
        return tuple(int(s) for s in static)
    return tuple(int(s) for s in np.shape(a)) if not hasattr(a, "shape") else tuple(int(s) for s in a.shape)


class Lowering:
    """Interpret specs with one backend's primitives; compose layers from them.

    Subclasses set :attr:`prims` (name -> callable taking the primitive's
    positional arguments and its canonical parameters) and implement
    :meth:`const`, :meth:`mask`, :meth:`index` and :meth:`int_array`; they may
    override any ``layer_<kind>`` or ``loss_<kind>`` method with a native kernel.

    Attributes:
        dtype: the numpy dtype computed in.
    """

    prims: Mapping[str, Callable[..., Any]] = {}

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)

    # -- hooks ------------------------------------------------------------------
    def const(self, value: float) -> Any:  # pragma: no cover - abstract
        """A 0-d constant array of :attr:`dtype`."""
        raise NotImplementedError

    def mask(self, array: np.ndarray) -> Any:  # pragma: no cover - abstract
        """A constant boolean array."""
        raise NotImplementedError

    def int_array(self, array: np.ndarray) -> Any:  # pragma: no cover - abstract
        """A constant integer array (indices, labels)."""
        raise NotImplementedError

    def constant(self, array: np.ndarray) -> Any:  # pragma: no cover - abstract
        """A constant float array of :attr:`dtype` (loss targets)."""
        raise NotImplementedError

    def index(self, index: Index) -> Any:
        """The backend's form of an :class:`~gradverify.spec.Index` (numpy's by default)."""
        return tuple(self.int_array(i) if isinstance(i, np.ndarray) else i for i in index.numpy())

    # -- primitives -------------------------------------------------------------
    def P(self, prim: str, *args: Any, **params: Any) -> Any:
        """Apply primitive ``prim`` with canonicalised parameters."""
        shapes = [_shape(a) for a in args if not isinstance(a, tuple)]
        canon = canonical_params(prim, shapes, params)
        fn = self.prims.get(prim)
        if fn is None:
            raise SpecError(f"primitive {prim!r} has no lowering in this backend")
        return fn(*args, **canon)

    # -- expressions ------------------------------------------------------------
    def expression(self, root: Any, env: Mapping[str, Any]) -> Any:
        """Evaluate an expression tree; ``env`` maps variable names to arrays. Iterative post-order."""
        values: dict[int, Any] = {}
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            key = id(node)
            if key in values:
                continue
            if isinstance(node, Op) and not ready:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(node.args) if id(c) not in values)
                continue
            if isinstance(node, Var):
                values[key] = env[node.name]
            elif isinstance(node, Const):
                values[key] = self.const(node.value)
            elif isinstance(node, Mask):
                values[key] = self.mask(node.array())
            elif isinstance(node, Index):
                values[key] = self.index(node)
            else:
                args = [values[id(c)] for c in node.args]
                try:
                    values[key] = self.P(node.prim, *args, **node.kwargs)
                except SpecError:
                    raise
                except Exception as exc:
                    shapes = [_shape(a) for a in args if not isinstance(a, tuple)]
                    raise SpecError(f"{node.prim!r} failed on argument shapes {shapes} with params "
                                    f"{node.kwargs}: {type(exc).__name__}: {exc}") from exc
        return values[id(root)]

    # -- networks ---------------------------------------------------------------
    def network(self, spec: Network, env: Mapping[str, Any], constants: Mapping[str, Any]) -> Any:
        """Apply the layers to ``env["x"]``, then the loss. Parameters come from ``env``."""
        y = env["x"]
        for i, layer in enumerate(spec.layers):
            y = self.layer(layer, y, _scope(env, f"{i}."))
        if spec.loss is not None:
            y = getattr(self, f"loss_{spec.loss.kind}")(spec.loss, y, constants)
        return y

    def layer(self, layer: Any, x: Any, p: Mapping[str, Any]) -> Any:
        """Apply one layer with its parameters ``p`` (local names: ``"W"``, ``"b"``...)."""
        return getattr(self, f"layer_{layer.kind}")(layer, x, p)

    # Composite definitions (the reference engine's lowering; frameworks override some).
    def layer_dense(self, layer, x, p):
        y = self.P("matmul", x, p["W"])
        return self.P("add", y, p["b"]) if layer.bias else y

    def _bias(self, y, p, layer, spatial: int):
        if not layer.bias:
            return y
        return self.P("add", y, self.P("reshape", p["b"], shape=(1, -1) + (1,) * spatial))

    def layer_conv2d(self, layer, x, p):
        y = self.P("conv2d", x, p["W"], stride=layer.stride, padding=layer.padding)
        return self._bias(y, p, layer, 2)

    def layer_conv1d(self, layer, x, p):
        x4 = self.P("expand_dims", x, axis=2)
        w4 = self.P("expand_dims", p["W"], axis=2)
        y = self.P("conv2d", x4, w4, stride=(1, layer.stride), padding=(0, layer.padding))
        return self._bias(self.P("squeeze", y, axis=2), p, layer, 1)

    def _pool(self, prim, layer, x):
        ks, ss = layer.windows(len(_shape(x)))
        if len(ks) == 1:
            y = self.P(prim, self.P("expand_dims", x, axis=2), kernel=(1, ks[0]), stride=(1, ss[0]))
            return self.P("squeeze", y, axis=2)
        return self.P(prim, x, kernel=ks, stride=ss)

    def layer_max_pool(self, layer, x, p):
        return self._pool("max_pool2d", layer, x)

    def layer_avg_pool(self, layer, x, p):
        return self._pool("avg_pool2d", layer, x)

    def layer_activation(self, layer, x, p):
        return self.P(layer.fn, x)

    def layer_flatten(self, layer, x, p):
        return self.P("reshape", x, shape=(_shape(x)[0], -1))

    def layer_rnn(self, layer, x, p):
        n, t, _ = _shape(x)
        h = None
        states = []
        for step in range(t):
            xt = self.P("getitem", x, self.index(Index((("slice", None, None, None), step))))
            z = self.P("matmul", xt, p["Wx"])
            if h is not None:                      # h_0 = 0: the first step has no recurrent term
                z = self.P("add", z, self.P("matmul", h, p["Wh"]))
            h = self.P("tanh", self.P("add", z, p["b"]))
            states.append(h)
        return self.P("stack", *states, axis=1) if layer.return_sequences else h

    def _standardize(self, x, axes, eps):
        mu = self.P("mean", x, axis=axes, keepdims=True)
        xc = self.P("sub", x, mu)
        var = self.P("mean", self.P("square", xc), axis=axes, keepdims=True)
        return self.P("div", xc, self.P("sqrt", self.P("add", var, self.const(eps))))

    def _affine(self, y, p, layer, shape):
        if not layer.affine:
            return y
        g, b = p["gamma"], p["beta"]
        if shape is not None:
            g, b = self.P("reshape", g, shape=shape), self.P("reshape", b, shape=shape)
        return self.P("add", self.P("mul", y, g), b)

    def layer_layer_norm(self, layer, x, p):
        return self._affine(self._standardize(x, -1, layer.eps), p, layer, None)

    def layer_batch_norm(self, layer, x, p):
        nd = len(_shape(x))
        axes = (0,) + tuple(range(2, nd))
        y = self._standardize(x, axes, layer.eps)
        return self._affine(y, p, layer, (1, -1) + (1,) * (nd - 2))

    def _heads(self, x, w, heads):
        n, t, d = _shape(x)
        y = self.P("reshape", self.P("matmul", x, w), shape=(n, t, heads, d // heads))
        return self.P("transpose", y, axes=(0, 2, 1, 3))              # (N, heads, T, dh)

    def attention_core(self, q, k, v, causal: bool):
        """softmax(q k^T / sqrt(dh)) v over (N, heads, T, dh) arrays, composed from primitives."""
        dh = _shape(q)[-1]
        s = self.P("mul", self.P("matmul", q, self.P("transpose", k, axes=(0, 1, 3, 2))),
                   self.const(1.0 / math.sqrt(dh)))
        if causal:
            t = _shape(q)[-2]
            s = self.P("where", self.mask(np.tril(np.ones((t, t), dtype=bool))), s, self.const(-np.inf))
        return self.P("matmul", self.P("softmax", s, axis=-1), v)

    def layer_attention(self, layer, x, p):
        n, t, d = _shape(x)
        q, k, v = (self._heads(x, p[w], layer.heads) for w in ("Wq", "Wk", "Wv"))
        o = self.attention_core(q, k, v, layer.causal)
        o = self.P("reshape", self.P("transpose", o, axes=(0, 2, 1, 3)), shape=(n, t, d))
        return self.P("matmul", o, p["Wo"])

    def layer_residual(self, layer, x, p):
        y = x
        for j, inner in enumerate(layer.layers):
            y = self.layer(inner, y, _scope(p, f"{j}."))
        return self.P("add", x, y)

    def loss_mse(self, loss, y, constants):
        d = self.P("sub", y, self.constant(constants["target"]))
        return self.P("mean", self.P("square", d))

    def loss_cross_entropy(self, loss, y, constants):
        labels = np.asarray(constants["labels"])
        lp = self.P("log_softmax", y, axis=-1)
        picked = self.P("getitem", lp, self.index(Index((("take", tuple(range(len(labels)))),
                                                         ("take", tuple(int(i) for i in labels))))))
        return self.P("neg", self.P("mean", picked))


def _scope(env: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in env.items() if k.startswith(prefix)}


class Backend:
    """One way of computing a spec's values and derivatives. Subclasses: reference, torch, jax.

    All public methods take and return numpy arrays. ``arrays`` (optional)
    overrides some or all of ``spec.arrays(dtype)`` (the input ``"x"`` and
    parameters of a network, the variables of an expression); every array is
    cast to ``dtype``.

    Attributes:
        name: registry name.
        extra: the pip extra that installs the framework (``None``: none needed).
        modules: top-level modules that must be importable.
        device: the device computed on (``"cpu"``, ``"cuda"``...).
    """

    name: ClassVar[str] = "?"
    extra: ClassVar[str | None] = None
    modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: str = "cpu"):
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendUnavailable(
                f"the {self.name!r} backend needs {', '.join(missing)}, which is not installed; "
                f"install it with: {install_hint(self.extra)}"
            )
        self._import()
        self.device = self._device(str(device))
        self._lowerings: dict[str, Lowering] = {}

    @classmethod
    def available(cls) -> bool:
        """Whether the framework is importable (``importlib.util.find_spec``; imports nothing)."""
        return all(importlib.util.find_spec(m) is not None for m in cls.modules)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r})"

    # -- hooks ------------------------------------------------------------------
    def _import(self) -> None:
        """Import the framework (called once, in ``__init__``)."""

    def _device(self, device: str) -> str:
        if device != "cpu":
            raise BackendUnavailable(f"the {self.name!r} backend runs on the CPU only, not {device!r}")
        return device

    def _make_lowering(self, dtype: np.dtype) -> Lowering:  # pragma: no cover - abstract
        raise NotImplementedError

    def _to(self, array: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _from(self, value: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _vjp(self, f: Callable, primals: list) -> tuple[Any, Callable[[Any], list]]:  # pragma: no cover
        """Forward pass; returns the output and ``pullback(cotangent) -> one gradient (or None) per primal``."""
        raise NotImplementedError

    def _jvp(self, f: Callable, primals: list, tangents: list) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    def _scope(self):
        """Context manager around every framework computation (JAX: 64-bit mode)."""
        import contextlib
        return contextlib.nullcontext()

    # -- lowering ---------------------------------------------------------------
    def lowering(self, dtype: Any = np.float64) -> Lowering:
        """The :class:`Lowering` for ``dtype`` (cached)."""
        dt = as_dtype(dtype)
        if dt.name not in self._lowerings:
            self._lowerings[dt.name] = self._make_lowering(dt)
        return self._lowerings[dt.name]

    def _prepare(self, spec: Any, arrays: Mapping[str, Any] | None, dtype: Any) -> tuple[list[str], list[np.ndarray]]:
        if not isinstance(spec, (Expression, Network)):
            raise SpecError(f"a backend evaluates an Expression or a Network spec, got {type(spec).__name__}")
        dt = as_dtype(dtype)
        base = spec.arrays(dt)
        if arrays:
            unknown = sorted(set(arrays) - set(base))
            if unknown:
                raise SpecError(f"arrays has unknown name(s) {unknown}; the spec's arrays are {list(base)}")
            for k, v in arrays.items():
                a = np.asarray(v)
                if a.shape != base[k].shape:
                    raise ShapeMismatch(f"array {k!r} has shape {a.shape}, the spec needs {base[k].shape}")
                base[k] = a.astype(dt)
        return list(base), [np.array(v, order="C") for v in base.values()]

    def function(self, spec: Any, dtype: Any = np.float64) -> tuple[list[str], Callable[..., Any]]:
        """``(names, f)``: ``f(*arrays)`` computes ``spec`` on framework arrays, in ``names`` order."""
        dt = as_dtype(dtype)
        low = self.lowering(dt)
        names = list(spec.arrays(dt)) if isinstance(spec, Expression) else ["x"] + [p.name for p in spec.parameters()]
        if isinstance(spec, Expression):
            root = spec.root

            def f(*arrays):
                return low.expression(root, dict(zip(names, arrays)))
        else:
            consts = spec.constants()

            def f(*arrays):
                return low.network(spec, dict(zip(names, arrays)), consts)
        return names, f

    # -- public API -------------------------------------------------------------
    def value(self, spec: Any, arrays: Mapping[str, Any] | None = None, *, dtype: Any = np.float64) -> np.ndarray:
        """The spec's output at its arrays. Cost: one forward pass."""
        names, vals = self._prepare(spec, arrays, dtype)
        _, f = self.function(spec, dtype)
        with self._scope():
            return self._from(f(*[self._to(v) for v in vals]))

    def vjp(self, spec: Any, cotangent: Any, arrays: Mapping[str, Any] | None = None, *,
            dtype: Any = np.float64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Output and ``cotangent^T J`` for every array (name -> gradient). Cost: forward + backward."""
        names, vals = self._prepare(spec, arrays, dtype)
        _, f = self.function(spec, dtype)
        ct = np.asarray(cotangent, dtype=as_dtype(dtype))
        with self._scope():
            out, pullback = self._vjp(f, [self._to(v) for v in vals])
            if _shape(out) != ct.shape:
                raise ShapeMismatch(f"cotangent has shape {ct.shape}, but the output has shape {_shape(out)}; "
                                    "give one cotangent entry per output entry")
            grads = pullback(self._to(ct))
            res = {n: (np.zeros_like(v) if g is None else self._from(g)) for n, v, g in zip(names, vals, grads)}
            return self._from(out), res

    def grad(self, spec: Any, arrays: Mapping[str, Any] | None = None, *,
             dtype: Any = np.float64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Value and gradient of a scalar spec (a network with a loss): :meth:`vjp` with cotangent 1."""
        return self.vjp(spec, np.ones(()), arrays, dtype=dtype)

    def jvp(self, spec: Any, tangents: Mapping[str, Any], arrays: Mapping[str, Any] | None = None, *,
            dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """Output and ``J v`` (forward mode) for tangents ``v`` (name -> array; missing names are zero).

        Cost: one forward-mode pass.
        """
        names, vals = self._prepare(spec, arrays, dtype)
        unknown = sorted(set(tangents) - set(names))
        if unknown:
            raise SpecError(f"tangents has unknown name(s) {unknown}; the spec's arrays are {names}")
        dt = as_dtype(dtype)
        tans = []
        for n, v in zip(names, vals):
            t = np.zeros_like(v) if tangents.get(n) is None else np.asarray(tangents[n], dtype=dt)
            if t.shape != v.shape:
                raise ShapeMismatch(f"tangent {n!r} has shape {t.shape}, its array has shape {v.shape}")
            tans.append(t)
        _, f = self.function(spec, dtype)
        with self._scope():
            out, t_out = self._jvp(f, [self._to(v) for v in vals], [self._to(t) for t in tans])
            return self._from(out), self._from(t_out)
