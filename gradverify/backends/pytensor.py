"""The PyTensor backend (Theano's heir): a symbolic graph per spec, compiled once, ``Lop`` VJPs and ``Rop`` JVPs.

``pytensor`` is imported when the backend is constructed, never when this
module is imported. Where the other backends trace a function eagerly,
PyTensor builds a symbolic graph and compiles it; compilation (graph
rewrites, C code generation on first use of an op) is what costs, so a
spec is compiled **once per spec and dtype** into one function

    (arrays..., cotangent, tangents...) -> (output, VJP per array..., JVP)

(``pytensor.gradient.pullback`` and ``pushforward``, formerly ``Lop`` and
``Rop``) and reused by :meth:`value`,
:meth:`vjp` and :meth:`jvp` for any arrays of the spec's shapes (the cache
holds :data:`CACHE_SIZE` specs, least recently used first out). A VJP call
feeds zero tangents and a JVP call a zero cotangent: the unused half costs
one more linear pass of a small graph, far less than a second compilation.

The JVP is a sum of one ``pushforward`` per input: PyTensor 3.0.7's
``pushforward`` of several inputs at once loses the tangent of a
broadcast input (``x (2, 3) + y (3,)``: ``J v`` misses ``v_y``), a bug the
differential tests of this backend found.

Layers use PyTensor's own ops where it has them -- ``pytensor.scan`` for
the RNN (the loop construct Theano introduced), ``special.softmax``/
``log_softmax``, ``pt.logsumexp``, ``pt.matmul``. PyTensor 3 has no
convolution or pooling op, so ``conv2d`` is an im2col composition (one
advanced-indexing gather of the padded input's patches, then ``matmul``)
and pooling a max / mean over gathered windows; their gradients are
PyTensor's scatter-adds (``AdvancedIncSubtensor``). ``getitem`` is a gather
of the flattened array at the flat positions numpy's own indexing selects.

float32 and float64 (every constant is created in the spec's dtype, so no
float32 graph is upcast); ``device="cpu"`` only.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping

import numpy as np

from .. import ops
from ..errors import ShapeMismatch, SpecError
from .base import Backend, Lowering, _shape, as_dtype
from .tensorflow import flat_positions

__all__ = ["PyTensorBackend", "PyTensorLowering", "CACHE_SIZE", "import_pytensor"]


def import_pytensor():
    """``import pytensor``, its start-up notice about BLAS silenced unless the user configured that logger.

    PyTensor logs "Using NumPy C-API based implementation for BLAS functions"
    (a warning) when it finds no BLAS library to link; the computation is
    right either way, so the ``pytensor.tensor.blas`` logger is raised to
    ERROR when it has no level of its own.
    """
    import logging
    import sys

    if "pytensor" not in sys.modules:
        blas = logging.getLogger("pytensor.tensor.blas")
        if blas.level == logging.NOTSET:
            blas.setLevel(logging.ERROR)
    import pytensor

    return pytensor

#: Compiled specs kept per backend instance.
CACHE_SIZE = 256


def _patch_index(c: int, h: int, w: int, kernel, stride) -> np.ndarray:
    """Flat positions in a ``(c, h, w)`` array of every window: shape ``(oh * ow, c * kh * kw)``."""
    kh, kw = kernel
    sh, sw = stride
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    grid = np.arange(c * h * w).reshape(c, h, w)
    rows = [grid[:, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(-1) for i in range(oh) for j in range(ow)]
    return np.stack(rows) if rows else np.zeros((0, c * kh * kw), dtype=np.int64)


class PyTensorLowering(Lowering):
    """PyTensor symbolic primitives and native layers for one dtype."""

    def __init__(self, dtype: np.dtype):
        super().__init__(dtype)
        pytensor = import_pytensor()
        import pytensor.tensor as pt
        from pytensor.tensor import special

        self.pytensor, self.pt = pytensor, pt
        dt = self.dtype.name

        def reduce(fn):
            return lambda x, axis, keepdims: fn(x, axis=list(axis), keepdims=keepdims) if axis else x

        def softmax(fn_one, x, axis):
            if not axis:
                return x
            if len(axis) == 1:
                return fn_one(x, axis=axis[0])
            s = x - pt.logsumexp(x, axis=list(axis), keepdims=True)
            return s if fn_one is special.log_softmax else pt.exp(s)

        def getitem(x, index):
            pos = flat_positions(_shape(x), index)
            return x.flatten()[pt.constant(pos.reshape(-1))].reshape(pos.shape)

        def pad2(x, ph, pw):
            if not (ph or pw):
                return x
            n, c, h, w = _shape(x)
            z = pt.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dt)
            return pt.set_subtensor(z[:, :, ph:ph + h, pw:pw + w], x)

        def conv2d(x, w, stride, padding):
            xp = pad2(x, *padding)
            n, c, h, wd = _shape(xp)
            o, _, kh, kw = _shape(w)
            idx = _patch_index(c, h, wd, (kh, kw), stride)
            oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
            patches = xp.reshape((n, c * h * wd))[:, pt.constant(idx)]          # (n, oh*ow, c*kh*kw)
            y = pt.matmul(patches, w.reshape((o, c * kh * kw)).T)                # (n, oh*ow, o)
            return y.transpose(0, 2, 1).reshape((n, o, oh, ow))

        def pool(kind):
            def run(x, kernel, stride):
                n, c, h, w = _shape(x)
                idx = _patch_index(1, h, w, kernel, stride)
                oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
                win = x.reshape((n, c, h * w))[:, :, pt.constant(idx)]          # (n, c, oh*ow, kh*kw)
                y = pt.max(win, axis=-1) if kind == "max" else pt.mean(win, axis=-1)
                return y.reshape((n, c, oh, ow))
            return run

        def expand_dims(x, axis):
            for a in axis:
                x = pt.expand_dims(x, a)
            return x

        prims = {
            "add": pt.add, "sub": pt.sub, "mul": pt.mul, "div": pt.true_div, "pow": pt.pow,
            "maximum": pt.maximum, "minimum": pt.minimum, "where": pt.switch,
            "neg": pt.neg, "square": pt.sqr, "exp": pt.exp, "log": pt.log, "sqrt": pt.sqrt,
            "abs": pt.abs, "sin": pt.sin, "cos": pt.cos, "tanh": pt.tanh, "sigmoid": pt.sigmoid,
            "relu": lambda x: pt.maximum(x, pt.zeros((), dtype=dt)), "softplus": pt.softplus,
            "sum": reduce(pt.sum), "mean": reduce(pt.mean), "max": reduce(pt.max),
            "logsumexp": reduce(pt.logsumexp),
            "softmax": lambda x, axis: softmax(special.softmax, x, axis),
            "log_softmax": lambda x, axis: softmax(special.log_softmax, x, axis),
            "reshape": lambda x, shape: x.reshape(shape),
            "transpose": lambda x, axes: x.transpose(*axes),
            "broadcast_to": lambda x, shape: pt.broadcast_to(x, shape),
            "expand_dims": expand_dims,
            "squeeze": lambda x, axis: pt.squeeze(x, axis=axis) if axis else x,
            "getitem": getitem,
            "concatenate": lambda *xs, axis: pt.concatenate(xs, axis=axis),
            "stack": lambda *xs, axis: pt.stack(xs, axis=axis),
            "matmul": pt.matmul,
            "conv2d": conv2d,
            "max_pool2d": pool("max"),
            "avg_pool2d": pool("avg"),
        }
        missing = set(ops.public_primitives()) - set(prims)
        assert not missing, f"pytensor lowering lacks {sorted(missing)}"
        self.prims = prims

    # -- constants --------------------------------------------------------------
    def const(self, value):
        return self.pt.constant(np.asarray(value, dtype=self.dtype))

    def mask(self, array):
        return self.pt.constant(np.asarray(array, dtype=bool))

    def int_array(self, array):
        return np.asarray(array, dtype=np.int64)

    def constant(self, array):
        return self.pt.constant(np.asarray(array, dtype=self.dtype))

    def index(self, index):
        return index.numpy()

    # -- native layers ----------------------------------------------------------
    def layer_rnn(self, layer, x, p):
        pt, pytensor = self.pt, self.pytensor
        n = _shape(x)[0]
        h0 = pt.zeros((n, _shape(p["Wh"])[0]), dtype=self.dtype.name)

        def step(xt, h, wx, wh, b):
            return pt.tanh(pt.dot(xt, wx) + pt.dot(h, wh) + b)

        hs = pytensor.scan(step, sequences=[x.transpose(1, 0, 2)], outputs_info=[h0],
                           non_sequences=[p["Wx"], p["Wh"], p["b"]], return_updates=False)
        hs = pt.specify_shape(hs, (_shape(x)[1], n, _shape(p["Wh"])[0]))     # scan forgets static shapes
        return hs.transpose(1, 0, 2) if layer.return_sequences else hs[-1]

    def attention_core(self, q, k, v, causal):
        pt = self.pt
        from pytensor.tensor import special

        s = pt.matmul(q, k.transpose(0, 1, 3, 2)) * self.const(1.0 / math.sqrt(_shape(q)[-1]))
        if causal:
            t = _shape(q)[-2]
            s = pt.switch(self.mask(np.tril(np.ones((t, t), dtype=bool))), s, self.const(-np.inf))
        return pt.matmul(special.softmax(s, axis=-1), v)

    def loss_cross_entropy(self, loss, y, constants):
        from pytensor.tensor import special

        labels = np.asarray(constants["labels"], dtype=np.int64)
        lp = special.log_softmax(y, axis=-1)
        return -self.pt.mean(lp[self.pt.constant(np.arange(len(labels))), self.pt.constant(labels)])


class PyTensorBackend(Backend):
    """PyTensor: one compiled function per spec and dtype for values, ``Lop`` VJPs and ``Rop`` JVPs."""

    name = "pytensor"
    extra = "pytensor"
    modules = ("pytensor",)
    #: The compilation mode. ``"FAST_COMPILE"`` (few graph rewrites, Python
    #: implementations of the ops) compiles a spec in a fraction of a second;
    #: ``"FAST_RUN"`` generates and builds C code for every new op (tens of
    #: seconds per spec on a cold cache), which only pays for big arrays.
    mode = "FAST_COMPILE"

    def _import(self):
        self.pytensor = import_pytensor()
        self._compiled: collections.OrderedDict = collections.OrderedDict()
        #: Compilations made (a spec and dtype compile once; the tests read this).
        self.compilations = 0

    def _make_lowering(self, dtype):
        return PyTensorLowering(dtype)

    def _key(self, spec: Any, dt: np.dtype) -> tuple:
        try:
            return (hash(spec), spec, dt.name)
        except TypeError:
            return (spec.to_json(), None, dt.name)

    def compiled(self, spec: Any, dtype: Any = np.float64):
        """``(names, fn)``: the spec's compiled function for ``dtype`` (built on first use, then cached).

        ``fn(*arrays, cotangent, *tangents)`` returns ``[output, vjp per array..., jvp]``.
        Cost: one graph construction and one ``pytensor.function`` compilation per spec and dtype.
        """
        dt = as_dtype(dtype)
        key = self._key(spec, dt)
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        pt = self.pytensor.tensor
        from pytensor import gradient as G

        pullback = getattr(G, "pullback", None) or G.Lop          # PyTensor 3 renamed Lop / Rop
        pushforward = getattr(G, "pushforward", None) or G.Rop

        names, f = self.function(spec, dt)
        base = spec.arrays(dt)
        xs = [pt.tensor(dtype=dt.name, shape=base[n].shape, name=n) for n in names]
        out = f(*xs)
        if out.dtype != dt.name:
            raise SpecError(f"pytensor computed the spec in {out.dtype}, not {dt.name} (an upcasting constant?)")
        ct = pt.tensor(dtype=dt.name, shape=tuple(out.type.shape), name="cotangent")
        ts = [pt.tensor(dtype=dt.name, shape=base[n].shape, name=f"tangent_{n}") for n in names]
        grads = pullback(out, xs, ct, disconnected_inputs="ignore")
        # One pushforward per input, summed: PyTensor 3.0's pushforward of several inputs at once
        # drops the tangent of an input that is broadcast (x(2,3) + y(3,): J v misses v_y).
        jv = None
        for x, t in zip(xs, ts):
            part = pushforward(out, x, t, disconnected_outputs="ignore")
            jv = part if jv is None else jv + part
        fn = self.pytensor.function(xs + [ct] + ts, [out] + list(grads) + [jv], on_unused_input="ignore",
                                    mode=self.mode)
        self.compilations += 1
        self._compiled[key] = (names, fn, tuple(int(s) for s in out.type.shape))
        while len(self._compiled) > CACHE_SIZE:
            self._compiled.popitem(last=False)
        return self._compiled[key]

    def _run(self, spec, arrays, dtype, cotangent=None, tangents=None):
        names, vals = self._prepare(spec, arrays, dtype)
        dt = as_dtype(dtype)
        _, fn, oshape = self.compiled(spec, dt)
        ct = np.zeros(oshape, dtype=dt) if cotangent is None else np.asarray(cotangent, dtype=dt)
        if ct.shape != oshape:
            raise ShapeMismatch(f"cotangent has shape {ct.shape}, but the output has shape {oshape}; "
                                "give one cotangent entry per output entry")
        ts = [np.zeros_like(v) if tangents is None or tangents.get(n) is None else tangents[n]
              for n, v in zip(names, vals)]
        res = [np.array(r, copy=True) for r in fn(*vals, ct, *ts)]
        return names, res[0], dict(zip(names, res[1:-1])), res[-1]

    def value(self, spec: Any, arrays: Mapping[str, Any] | None = None, *, dtype: Any = np.float64) -> np.ndarray:
        """The spec's output (one call of the compiled function; compiles on first use)."""
        return self._run(spec, arrays, dtype)[1]

    def vjp(self, spec: Any, cotangent: Any, arrays: Mapping[str, Any] | None = None, *,
            dtype: Any = np.float64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Output and ``cotangent^T J`` (``pytensor.gradient.pullback``) for every array."""
        _, out, grads, _ = self._run(spec, arrays, dtype, cotangent=cotangent)
        return out, grads

    def jvp(self, spec: Any, tangents: Mapping[str, Any], arrays: Mapping[str, Any] | None = None, *,
            dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """Output and ``J v`` (``pytensor.gradient.pushforward``) for tangents ``v`` (missing names are zero)."""
        names, vals = self._prepare(spec, arrays, dtype)
        unknown = sorted(set(tangents) - set(names))
        if unknown:
            raise SpecError(f"tangents has unknown name(s) {unknown}; the spec's arrays are {names}")
        dt = as_dtype(dtype)
        tans = {}
        for n, v in zip(names, vals):
            t = np.zeros_like(v) if tangents.get(n) is None else np.asarray(tangents[n], dtype=dt)
            if t.shape != v.shape:
                raise ShapeMismatch(f"tangent {n!r} has shape {t.shape}, its array has shape {v.shape}")
            tans[n] = t
        _, out, _, jv = self._run(spec, arrays, dtype, tangents=tans)
        return out, jv
