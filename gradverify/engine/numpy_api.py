"""NumPy's dispatch protocols for the engine's Tensor: differentiate unmodified numpy code.

With this module imported (``gradverify.engine`` imports it), a :class:`Tensor`
implements ``__array_ufunc__`` (NEP 13), ``__array_function__`` (NEP 18) and
the ndarray methods and attributes layer code uses, so ``np.tanh(x @ W + b)``
on Tensors records a graph exactly as the engine's own functions do.

How it is organised (read top to bottom):

1. **New primitives** -- the numpy functions that are not compositions of
   existing ones (``log1p``, ``arctan2``, ``cumsum``, ``linalg.inv``,
   ``einsum``, ``setitem`` ...). Each row puts the forward next to its VJP
   (and its JVP where cheap), registered into the engine's registries
   (``tracer.FORWARD``, ``vjps.VJPS``, ``jvps.JVPS``). They are *not* rows of
   :data:`gradverify.ops.PRIMITIVES`: that table is the user-facing primitive
   set which expression strategies draw from and every backend compiles;
   these numpy-only primitives are reached through numpy calls alone.
2. **Handlers** -- one function per numpy callable, mapping it to engine
   primitives: most are compositions (``np.var`` is mean/sub/square/sum,
   ``np.sort`` is a gather by the sorting permutation, ``np.pad`` is a
   scatter or a gather), so their derivatives come for free.
3. **Dispatch** -- ``__array_ufunc__`` and ``__array_function__`` look the
   callable up in the tables (ufunc ``__call__``/``reduce``/``accumulate``/
   ``at``); the Tensor methods call the same handlers.
4. **Item assignment** -- ``y[idx] = v`` rebinds the Tensor object ``y`` to a
   new ``setitem`` node (see :func:`_rebind` for the reference-swapping scheme).

Derivative rules here are written with numpy functions: on raw arrays (a
first-order backward pass) they run at numpy speed; on Tensors (a gradient of
a gradient) they dispatch back into this module and are traced.

What cannot be traced is said, never guessed: inside the strict context of
``numpy_vjp`` a numpy callable without a rule, an ``out=`` naming a plain
ndarray, or a conversion to a plain array or number raises
:class:`~gradverify.errors.TraceLost` (reason and the user's ``file:line``).
Outside it, callables without a rule run on the raw values (the graph is
dropped, as ``__array__`` always did).

Cost: a dispatched call is one dictionary lookup and the primitive's own
cost; compositions cost their primitives. A 3-layer tanh MLP (batch 8, about
30,000 parameters, float64) costs about 6 plain numpy forwards for
``numpy_vjp`` plus one ``vjp_fn`` call.

Known limits (documented rather than guessed around):

* in-place operators rebind the *name* (``y += 1`` is ``y = y + 1``): another
  name bound to the same Tensor keeps the old value, where numpy would share it;
* assigning into an array after taking a basic-slice view of it does not
  update that view (assigning *into* a view raises TraceLost);
* ``y[idx] = v`` with repeated integer indices: numpy keeps the last write, the
  gradient flows to every duplicate;
* forward mode (``jvp``) has rules for the elementwise, scan, reduction and
  ``inv``/``det`` primitives here; ``solve``, ``cholesky``, ``einsum``
  and ``xlogy`` raise NoDerivativeRule in forward mode.
"""

from __future__ import annotations

import builtins
import math
import sys
from typing import Any, Callable

import numpy as np

from ..errors import SpecError
from . import tracer as T
from .jvps import JVPS
from .tracer import FORWARD, RECORDING, Tensor, _DIFF, apply, shape_of, trace_lost, value
from .vjps import VJPS, _balanced_eq, _keep, _mT, unbroadcast

__all__ = ["numpy_vjp", "numpy_coverage", "UFUNCS", "FUNCTIONS", "METHODS", "NUMPY_PRIMITIVES", "strict"]

LN2, LN10 = math.log(2.0), math.log(10.0)

#: names of the primitives this module adds (numpy-only; not in ops.PRIMITIVES).
NUMPY_PRIMITIVES: list[str] = []


def _prim(name: str, forward: Callable[..., Any], diff: tuple[int, ...] | None, vjp: Any,
          jvp: Any = None) -> None:
    """Register a numpy-only primitive: forward, differentiable args, VJP rules (tuple or
    argnum-rule for variadic ones), JVP rules (tuple, or None: forward mode raises)."""
    FORWARD[name] = forward
    _DIFF[name] = None if diff is None else frozenset(diff)
    VJPS[name] = vjp
    if jvp is not None:
        JVPS[name] = jvp
    NUMPY_PRIMITIVES.append(name)


# ---------------------------------------------------------------------------
# 1. New primitives: forward and derivative side by side.
# ---------------------------------------------------------------------------

def _unary(name: str, f: Callable, d: Callable) -> None:
    """Elementwise ``f`` with derivative ``d(x, ans)``: VJP ``g * d``, JVP ``t * d``."""
    _prim(name, f, (0,), (lambda g, ans, x: g * d(x, ans),), (lambda t, ans, x: t * d(x, ans),))


def _sinc_d(x, ans):
    xv = value(x)
    safe = np.where(xv == 0, 1.0, xv)
    return np.where(xv == 0, 0.0, (np.cos(np.pi * x) - ans) / safe)


_unary("log1p",      np.log1p,      lambda x, a: 1 / (1 + x))
_unary("expm1",      np.expm1,      lambda x, a: a + 1)
_unary("exp2",       np.exp2,       lambda x, a: a * LN2)
_unary("log2",       np.log2,       lambda x, a: 1 / (x * LN2))
_unary("log10",      np.log10,      lambda x, a: 1 / (x * LN10))
_unary("cbrt",       np.cbrt,       lambda x, a: 1 / (3 * a * a))
_unary("reciprocal", np.reciprocal, lambda x, a: -(a * a))
_unary("tan",        np.tan,        lambda x, a: 1 + a * a)
_unary("arcsin",     np.arcsin,     lambda x, a: 1 / np.sqrt(1 - x * x))
_unary("arccos",     np.arccos,     lambda x, a: -1 / np.sqrt(1 - x * x))
_unary("arctan",     np.arctan,     lambda x, a: 1 / (1 + x * x))
_unary("sinh",       np.sinh,       lambda x, a: np.cosh(x))
_unary("cosh",       np.cosh,       lambda x, a: np.sinh(x))
_unary("arcsinh",    np.arcsinh,    lambda x, a: 1 / np.sqrt(x * x + 1))
_unary("arccosh",    np.arccosh,    lambda x, a: 1 / np.sqrt(x * x - 1))
_unary("arctanh",    np.arctanh,    lambda x, a: 1 / (1 - x * x))
_unary("deg2rad",    np.deg2rad,    lambda x, a: np.pi / 180)
_unary("rad2deg",    np.rad2deg,    lambda x, a: 180 / np.pi)
_unary("sinc",       np.sinc,       _sinc_d)


def _binary(name: str, f: Callable, dx: Callable, dy: Callable) -> None:
    """Broadcasting elementwise ``f(x, y)`` with partials ``dx(x, y, ans)``, ``dy(x, y, ans)``."""
    _prim(name, f, (0, 1),
          (lambda g, ans, x, y: unbroadcast(g * dx(x, y, ans), shape_of(x)),
           lambda g, ans, x, y: unbroadcast(g * dy(x, y, ans), shape_of(y))),
          (lambda t, ans, x, y: t * dx(x, y, ans), lambda t, ans, x, y: t * dy(x, y, ans)))


_binary("arctan2",     np.arctan2,     lambda x, y, a: y / (x * x + y * y),
                                       lambda x, y, a: -x / (x * x + y * y))
_binary("hypot",       np.hypot,       lambda x, y, a: x / a, lambda x, y, a: y / a)
_binary("logaddexp",   np.logaddexp,   lambda x, y, a: np.exp(x - a), lambda x, y, a: np.exp(y - a))
_binary("logaddexp2",  np.logaddexp2,  lambda x, y, a: np.exp2(x - a), lambda x, y, a: np.exp2(y - a))
_binary("float_power", np.float_power, lambda x, y, a: y * np.float_power(x, y - 1),
                                       lambda x, y, a: a * np.log(x))
_binary("fmax",        np.fmax,        lambda x, y, a: _balanced_eq(x, a, y),
                                       lambda x, y, a: _balanced_eq(y, a, x))
_binary("fmin",        np.fmin,        lambda x, y, a: _balanced_eq(x, a, y),
                                       lambda x, y, a: _balanced_eq(y, a, x))
_binary("remainder",   np.remainder,   lambda x, y, a: 1.0, lambda x, y, a: -np.floor(value(x) / value(y)))
_binary("fmod",        np.fmod,        lambda x, y, a: 1.0, lambda x, y, a: -np.trunc(value(x) / value(y)))


# scipy.special ufuncs: forward looked up by name (scipy is already imported when one arrives).
def _sp(name: str) -> Any:
    import scipy.special
    return getattr(scipy.special, name)


def _sp_unary(name: str, d: Callable) -> None:
    _unary("scipy_" + name, lambda x, _n=name: _sp(_n)(x), d)


_SQRT_PI = math.sqrt(math.pi)
_sp_unary("erf",     lambda x, a: 2 / _SQRT_PI * np.exp(-x * x))
_sp_unary("erfc",    lambda x, a: -2 / _SQRT_PI * np.exp(-x * x))
_sp_unary("erfinv",  lambda x, a: _SQRT_PI / 2 * np.exp(a * a))
_sp_unary("expit",   lambda x, a: a * (1 - a))
_sp_unary("logit",   lambda x, a: 1 / (x * (1 - x)))
_sp_unary("gammaln", lambda x, a: _sp("digamma")(x))
_sp_unary("gamma",   lambda x, a: a * _sp("digamma")(x))
_sp_unary("digamma", lambda x, a: _sp("polygamma")(1, value(x)))
_sp_unary("ndtr",    lambda x, a: np.exp(-x * x / 2) / math.sqrt(2 * math.pi))
_sp_unary("log_ndtr", lambda x, a: np.exp(-x * x / 2 - a) / math.sqrt(2 * math.pi))
_prim("scipy_xlogy", lambda x, y: _sp("xlogy")(x, y), (0, 1),
      (lambda g, ans, x, y: unbroadcast(g * np.log(y), shape_of(x)),
       lambda g, ans, x, y: unbroadcast(g * x / y, shape_of(y))))


# Reductions and scans.
_prim("prod", lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims), (0,),
      (lambda g, ans, x, axis, keepdims: _keep(g, axis, keepdims) * _keep(ans, axis, keepdims) / x,),
      (lambda t, ans, x, axis, keepdims: T.sum(t * _keep(ans, axis, keepdims) / x, axis, keepdims),))
_prim("cumsum", lambda x, axis: np.cumsum(x, axis=axis), (0,),
      (lambda g, ans, x, axis: np.flip(np.cumsum(np.flip(g, axis), axis), axis),),
      (lambda t, ans, x, axis: np.cumsum(t, axis),))
_prim("cumprod", lambda x, axis: np.cumprod(x, axis=axis), (0,),     # needs x != 0
      (lambda g, ans, x, axis: np.flip(np.cumsum(np.flip(g * ans, axis), axis), axis) / x,),
      (lambda t, ans, x, axis: ans * np.cumsum(t / x, axis),))
_prim("astype", lambda x, dtype: np.asarray(x).astype(dtype), (0,),
      (lambda g, ans, x, dtype: _cast(g, np.result_type(value(x))),),
      (lambda t, ans, x, dtype: _cast(t, dtype),))


def _cast(x: Any, dtype: Any) -> Any:
    return apply("astype", x, dtype=np.dtype(dtype)) if isinstance(x, Tensor) else np.asarray(x).astype(dtype)


# Linear algebra (batched over leading axes like numpy.linalg).
def _inv(x):
    return np.linalg.inv(x)


_prim("inv", np.linalg.inv, (0,),
      (lambda g, ans, x: -(_mT(ans) @ g @ _mT(ans)),),
      (lambda t, ans, x: -(ans @ t @ ans),))
_prim("det", np.linalg.det, (0,),
      (lambda g, ans, x: np.expand_dims(g * ans, (-2, -1)) * _mT(_inv(x)),),
      (lambda t, ans, x: ans * np.sum(_mT(_inv(x)) * t, axis=(-2, -1)),))
_prim("logabsdet", lambda x: np.linalg.slogdet(x)[1], (0,),
      (lambda g, ans, x: np.expand_dims(g, (-2, -1)) * _mT(_inv(x)),),
      (lambda t, ans, x: np.sum(_mT(_inv(x)) * t, axis=(-2, -1)),))


def _solve_vjp_b(g, ans, a, b):
    return unbroadcast(np.linalg.solve(_mT(a), g), shape_of(b))


def _solve_vjp_a(g, ans, a, b):
    gb = np.linalg.solve(_mT(a), g)
    if len(shape_of(b)) == 1:
        return unbroadcast(-(np.expand_dims(gb, -1) * np.expand_dims(ans, -2)), shape_of(a))
    return unbroadcast(-(gb @ _mT(ans)), shape_of(a))


_prim("solve", np.linalg.solve, (0, 1), (_solve_vjp_a, _solve_vjp_b))


def _cholesky_vjp(g, L, x):
    """Murray (2016): Abar = sym(L^-T Phi(L^T Lbar) L^-1), Phi = lower triangle, half diagonal."""
    n = shape_of(L)[-1]
    phi = np.tril(_mT(L) @ g) * (1 - 0.5 * np.eye(n))
    s = np.linalg.solve(_mT(L), _mT(np.linalg.solve(_mT(L), _mT(phi))))
    return 0.5 * (s + _mT(s))


_prim("cholesky", np.linalg.cholesky, (0,), (_cholesky_vjp,))


# einsum over explicit, ellipsis-free subscripts (normalised by _einsum below).
def _einsum_vjp(i, g, ans, *xs, subscripts):
    ins, out = subscripts.split("->")
    ins = ins.split(",")
    target = ins[i]
    sizes = {}
    for s, x in zip(ins, xs):
        for c, n in zip(s, shape_of(x)):
            sizes[c] = n
    ops, subs = [g], [out]
    for j, (s, x) in enumerate(zip(ins, xs)):
        if j != i:
            ops.append(x)
            subs.append(s)
    have = set("".join(subs))
    free = iter(c for c in _LETTERS if c not in sizes)
    res = []
    seen: dict[str, str] = {}
    for c in target:
        if c in seen:                    # a repeated index (a diagonal): embed with an identity
            d = next(free)
            ops.append(np.eye(sizes[c], dtype=_np_dtype(g)))
            subs.append(c + d)
            res.append(d)
            continue
        seen[c] = c
        if c not in have:               # summed inside x alone: broadcast with ones
            ops.append(np.ones(sizes[c], dtype=_np_dtype(g)))
            subs.append(c)
            have.add(c)
        res.append(c)
    return np.einsum(",".join(subs) + "->" + "".join(res), *ops)


def _np_dtype(x):
    return np.result_type(value(x))


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_prim("einsum", lambda *xs, subscripts, optimize: np.einsum(subscripts, *xs, optimize=optimize), None,
      lambda i, g, ans, *xs, subscripts, optimize: _einsum_vjp(i, g, ans, *xs, subscripts=subscripts))


# Functional item assignment: y[index] = v as a new node.
def _setitem_forward(x, v, index):
    out = np.array(x, copy=True)
    out[index] = v
    return out


def _mask(shape, index):
    m = np.zeros(shape, dtype=bool)
    m[index] = True
    return m


_prim("setitem", _setitem_forward, (0, 1),
      (lambda g, ans, x, v, index: np.where(_mask(shape_of(x), index), 0.0, g).astype(_np_dtype(g))
       if not isinstance(g, Tensor) else T.where(_mask(shape_of(x), index), 0.0, g),
       lambda g, ans, x, v, index: unbroadcast(T.getitem(g, index), shape_of(v))),
      (lambda t, ans, x, v, index: apply("setitem", t, 0.0, index=index),
       lambda t, ans, x, v, index: apply("setitem", np.zeros(shape_of(x), _np_dtype(t)), t, index=index)))


# ---------------------------------------------------------------------------
# 2. Handlers: numpy callables -> engine primitives and compositions.
# ---------------------------------------------------------------------------

def _tensor_in(obj: Any) -> bool:
    """Whether a traced Tensor occurs in ``obj`` (lists, tuples, dicts searched)."""
    if isinstance(obj, Tensor):
        return obj.requires_grad
    if isinstance(obj, (list, tuple)):
        return builtins.any(_tensor_in(o) for o in obj)
    if isinstance(obj, dict):
        return builtins.any(_tensor_in(o) for o in obj.values())
    return False


def _raw(obj: Any) -> Any:
    """``obj`` with every Tensor replaced by its value (lists, tuples, dicts searched)."""
    if isinstance(obj, Tensor):
        return obj.value
    if isinstance(obj, list):
        return [_raw(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_raw(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _raw(v) for k, v in obj.items()}
    return obj


def _const(x: Any) -> Tensor:
    """A constant (untraced) Tensor holding ``x``."""
    return Tensor._leaf(np.asarray(x))


def _view(out: Any, x: Any) -> Any:
    """Mark ``out`` as a view of Tensor ``x`` (numpy would share memory): assigning into it
    raises TraceLost, since numpy would write through to ``x``."""
    if isinstance(out, Tensor) and isinstance(x, Tensor):
        out.base = x
    return out


def _nd(x: Any) -> int:
    return len(shape_of(x))


def _ax(axis: int, nd: int) -> int:
    if not -nd <= axis < nd:
        raise np.exceptions.AxisError(axis, nd)
    return axis % nd


def _dtype_out(r: Any, dtype: Any) -> Any:
    if dtype is None:
        return r
    dt = np.dtype(dtype)
    if dt.kind in "fc":
        return _cast(r, dt) if value(r).dtype != dt else r
    return value(r).astype(dt)


def _unsupported(name: str, **kw: Any) -> None:
    for k, v in kw.items():
        if v is not None and v is not np._NoValue and v is not True:
            trace_lost(f"{name}(..., {k}=...) is not supported by gradverify's engine")


def _reduce(fn):
    def h(a, axis=None, dtype=None, out=None, keepdims=False, initial=np._NoValue, where=np._NoValue):
        _unsupported(fn.__name__, initial=initial if initial is not np._NoValue else None,
                     where=where if where is not np._NoValue else None)
        return _dtype_out(fn(a, axis, keepdims), dtype)
    return h


def _sum(a, axis, keepdims): return T.sum(a, axis, keepdims)
def _mean(a, axis, keepdims): return T.mean(a, axis, keepdims)
def _max(a, axis, keepdims): return T.max(a, axis, keepdims)
def _min(a, axis, keepdims): return T.neg(T.max(T.neg(a), axis, keepdims))
def _prod(a, axis, keepdims): return apply("prod", a, axis=T._axes(axis, _nd(a)), keepdims=bool(keepdims))


def _minmax(fn):
    def h(a, axis=None, out=None, keepdims=False, initial=np._NoValue, where=np._NoValue):
        _unsupported("max/min", initial=initial if initial is not np._NoValue else None,
                     where=where if where is not np._NoValue else None)
        return fn(a, axis, keepdims)
    return h


def _var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=np._NoValue, mean=np._NoValue,
         correction=np._NoValue):
    if correction is not np._NoValue:
        ddof = correction
    axes = T._axes(axis, _nd(a))
    n = math.prod(shape_of(a)[i] for i in axes)
    d = a - T.mean(a, axes, True)
    return _dtype_out(T.sum(d * d, axes, keepdims) / (n - ddof), dtype)


def _std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **kw):
    return T.sqrt(_var(a, axis, dtype, None, ddof, keepdims, **kw))


def _scan(name):
    def h(a, axis=None, dtype=None, out=None):
        if axis is None:
            a, axis = T.reshape(a, (-1,)), 0
        return _dtype_out(apply(name, a, axis=_ax(axis, _nd(a))), dtype)
    return h


def _clip(a, a_min=np._NoValue, a_max=np._NoValue, out=None, *, min=np._NoValue, max=np._NoValue, **kw):
    lo = min if a_min is np._NoValue else a_min
    hi = max if a_max is np._NoValue else a_max
    lo = None if lo is np._NoValue else lo
    hi = None if hi is np._NoValue else hi
    r = a
    if lo is not None:
        r = T.where(value(a) < value(lo), lo, r)
    if hi is not None:
        r = T.where(value(a) > value(hi), hi, r)
    return r if r is not a else T.identity(a)


def _where(condition, x=np._NoValue, y=np._NoValue):
    if x is np._NoValue and y is np._NoValue:
        return np.where(value(condition))
    return T.where(np.asarray(value(condition), dtype=bool), x, y)


def _tensordot(a, b, axes=2):
    na, nb = _nd(a), _nd(b)
    if isinstance(axes, (int, np.integer)):
        axa, axb = list(range(na - axes, na)), list(range(axes))
    else:
        axa, axb = axes
        axa = [axa] if isinstance(axa, (int, np.integer)) else list(axa)
        axb = [axb] if isinstance(axb, (int, np.integer)) else list(axb)
    axa = [_ax(i, na) for i in axa]
    axb = [_ax(i, nb) for i in axb]
    sa, sb = shape_of(a), shape_of(b)
    fa = [i for i in range(na) if i not in axa]
    fb = [i for i in range(nb) if i not in axb]
    k = math.prod(sa[i] for i in axa)
    am = T.reshape(T.transpose(a, fa + axa), (math.prod(sa[i] for i in fa), k))
    bm = T.reshape(T.transpose(b, axb + fb), (k, math.prod(sb[i] for i in fb)))
    return T.reshape(am @ bm, tuple(sa[i] for i in fa) + tuple(sb[i] for i in fb))


def _dot(a, b, out=None):
    na, nb = _nd(a), _nd(b)
    if na == 0 or nb == 0:
        return T.mul(a, b)
    if na <= 2 and nb <= 2:
        return T.matmul(a, b)
    return _tensordot(a, b, ([na - 1], [nb - 2 if nb > 1 else 0]))


def _vdot(a, b):
    return T.sum(T.reshape(a, (-1,)) * T.reshape(b, (-1,)))


def _inner(a, b):
    if _nd(a) == 0 or _nd(b) == 0:
        return T.mul(a, b)
    return _tensordot(a, b, ([-1], [-1]))


def _outer(a, b, out=None):
    return T.reshape(a, (-1, 1)) * T.reshape(b, (1, -1))


def _kron(a, b):
    nd = builtins.max(_nd(a), _nd(b))
    sa = (1,) * (nd - _nd(a)) + tuple(shape_of(a))
    sb = (1,) * (nd - _nd(b)) + tuple(shape_of(b))
    ea = T.reshape(a, tuple(x for s in sa for x in (s, 1)))
    eb = T.reshape(b, tuple(x for s in sb for x in (1, s)))
    return T.reshape(ea * eb, tuple(p * q for p, q in zip(sa, sb)))


def _einsum(*operands, out=None, optimize=False, **kw):
    if not isinstance(operands[0], str):
        trace_lost("np.einsum in the interleaved (operand, sublist) form is not supported; "
                   "pass a subscripts string")
    subs, xs = operands[0].replace(" ", ""), operands[1:]
    ins_s, _, out_s = subs.partition("->")
    ins = ins_s.split(",")
    if len(ins) != len(xs):
        raise ValueError(f"einsum: {len(ins)} subscripts but {len(xs)} operands")
    used = set(subs) - set(".,->")
    pool = [c for c in _LETTERS if c not in used]
    ell = builtins.max([_nd(x) - len(s.replace("...", "")) for s, x in zip(ins, xs) if "..." in s],
                       default=0)
    ell_letters = "".join(pool[:ell])
    pool = pool[ell:]
    bshape = [1] * ell
    for s, x in zip(ins, xs):
        if "..." in s:
            k = _nd(x) - len(s.replace("...", ""))
            pre = s.index("...")
            for j, n in enumerate(shape_of(x)[pre:pre + k]):
                if n != 1:
                    bshape[ell - k + j] = n
    canon = []
    for s, x in zip(ins, xs):
        if "..." in s:
            k = _nd(x) - len(s.replace("...", ""))
            pre = s.index("...")
            letters = list(ell_letters[ell - k:])
            for j, n in enumerate(shape_of(x)[pre:pre + k]):   # a stretched axis: its own letter
                if n == 1 and bshape[ell - k + j] != 1:
                    letters[j] = pool.pop(0)
            s = s.replace("...", "".join(letters))
        canon.append(s)
    if "->" in subs:
        out_c = out_s.replace("...", ell_letters)
    else:
        flat = "".join(canon)
        out_c = ell_letters + "".join(sorted(c for c in set(flat) if flat.count(c) == 1
                                             and c not in ell_letters))
    return apply("einsum", *xs, subscripts=",".join(canon) + "->" + out_c, optimize=optimize)


def _norm(x, ord=None, axis=None, keepdims=False):
    nd = _nd(x)
    if axis is None and (ord is None or (nd == 2 and ord == "fro")):
        return T.sqrt(T.sum(x * x, None, keepdims))
    if axis is None:
        axis = tuple(range(nd))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if len(axes) == 1:
        a = axes
        if ord is None or ord == 2:
            return T.sqrt(T.sum(x * x, a, keepdims))
        if ord == np.inf:
            return T.max(T.abs(x), a, keepdims)
        if ord == -np.inf:
            return _min(T.abs(x), a, keepdims)
        if ord == 1:
            return T.sum(T.abs(x), a, keepdims)
        if isinstance(ord, (int, float)) and ord != 0:
            return T.sum(T.abs(x) ** ord, a, keepdims) ** (1.0 / ord)
    elif len(axes) == 2:
        r, c = (_ax(i, nd) for i in axes)
        if ord in (None, "fro"):
            return T.sqrt(T.sum(x * x, axes, keepdims))
        if ord in (1, -1, np.inf, -np.inf):
            inner, outer = (r, c) if ord in (1, -1) else (c, r)
            s = T.sum(T.abs(x), inner, True)
            red = T.max if ord > 0 else _min
            res = red(s, outer, True)
            return res if keepdims else T.squeeze(res, axes)
    trace_lost(f"np.linalg.norm(ord={ord!r}, axis={axis!r}) has no VJP rule in gradverify's engine")


def _diagonal(a, offset=0, axis1=0, axis2=1):
    nd = _nd(a)
    a1, a2 = _ax(axis1, nd), _ax(axis2, nd)
    rest = [i for i in range(nd) if i not in (a1, a2)]
    m = T.transpose(a, rest + [a1, a2])
    n1, n2 = shape_of(a)[a1], shape_of(a)[a2]
    i = np.arange(builtins.max(0, builtins.min(n1 - builtins.max(-offset, 0), n2 - builtins.max(offset, 0))))
    return T.getitem(m, (Ellipsis, i + builtins.max(-offset, 0), i + builtins.max(offset, 0)))


def _trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    return _dtype_out(T.sum(_diagonal(a, offset, axis1, axis2), -1), dtype)


def _diag(v, k=0):
    if _nd(v) == 2:
        return _diagonal(v, k)
    n = shape_of(v)[0]
    m = n + builtins.abs(k)
    i = np.arange(n)
    return T.scatter_add(v, (i + builtins.max(-k, 0), i + builtins.max(k, 0)), (m, m))


def _tri_mask(x, k, lower):
    n, m = shape_of(x)[-2:]
    return np.tri(n, m, k, dtype=bool) if lower else ~np.tri(n, m, k - 1, dtype=bool)


def _tril(m, k=0): return T.where(_tri_mask(m, k, True), m, 0.0)
def _triu(m, k=0): return T.where(_tri_mask(m, k, False), m, 0.0)


def _reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    if order != "C":
        trace_lost("np.reshape(order=...) other than 'C' is not supported by gradverify's engine")
    return _view(T.reshape(a, shape if shape is not None else newshape), a)


def _transpose(a, axes=None): return _view(T.transpose(a, axes), a)


def _swapaxes(a, axis1, axis2):
    nd = _nd(a)
    perm = list(range(nd))
    i, j = _ax(axis1, nd), _ax(axis2, nd)
    perm[i], perm[j] = perm[j], perm[i]
    return _view(T.transpose(a, perm), a)


def _moveaxis(a, source, destination):
    nd = _nd(a)
    src = [_ax(s, nd) for s in np.atleast_1d(source)]
    dst = [_ax(d, nd) for d in np.atleast_1d(destination)]
    order = [n for n in range(nd) if n not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return _view(T.transpose(a, order), a)


def _expand_dims(a, axis): return _view(T.expand_dims(a, axis), a)
def _squeeze(a, axis=None): return _view(T.squeeze(a, axis), a)
def _ravel(a, order="C"): return _view(T.reshape(a, (-1,)), a)


def _broadcast_to(array, shape, subok=False):
    return _view(T.broadcast_to(array, shape), array)


def _broadcast_arrays(*args, subok=False):
    shape = np.broadcast_shapes(*(shape_of(a) for a in args))
    return tuple(_broadcast_to(a, shape) for a in args)


def _atleast(n):
    def one(a):
        s = shape_of(a)
        if len(s) >= n:
            return a
        if n == 1:
            return T.reshape(a, (1,))
        if n == 2:
            return T.reshape(a, (1,) * (2 - len(s)) + tuple(s))
        return T.reshape(a, {0: (1, 1, 1), 1: (1,) + tuple(s) + (1,), 2: tuple(s) + (1,)}[len(s)])

    def h(*arys):
        res = [_view(one(a), a) for a in arys]
        return res[0] if len(res) == 1 else tuple(res)
    return h


_at1, _at2, _at3 = _atleast(1), _atleast(2), _atleast(3)


def _concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = list(arrays)
    if axis is None:
        arrays, axis = [T.reshape(a, (-1,)) for a in arrays], 0
    return _dtype_out(T.concatenate(arrays, axis), dtype)


def _stack(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    return _dtype_out(T.stack(list(arrays), axis), dtype)


def _vstack(tup, dtype=None, casting="same_kind"):
    return _concatenate([_at2(a) for a in tup], 0, dtype=dtype)


def _hstack(tup, dtype=None, casting="same_kind"):
    arrs = [_at1(a) for a in tup]
    return _concatenate(arrs, 0 if _nd(arrs[0]) == 1 else 1, dtype=dtype)


def _dstack(tup):
    return _concatenate([_at3(a) for a in tup], 2)


def _column_stack(tup):
    return _concatenate([T.reshape(a, (-1, 1)) if _nd(a) < 2 else a for a in tup], 1)


def _split_impl(ary, parts, axis):
    axis = _ax(axis, _nd(ary))
    out = []
    for p in parts:
        sl = slice(int(p[0]), int(p[-1]) + 1) if len(p) else slice(0, 0)
        out.append(_view(T.getitem(ary, (slice(None),) * axis + (sl,)), ary))
    return out


def _split(ary, indices_or_sections, axis=0):
    n = shape_of(ary)[_ax(axis, _nd(ary))]
    return _split_impl(ary, np.split(np.arange(n), indices_or_sections), axis)


def _array_split(ary, indices_or_sections, axis=0):
    n = shape_of(ary)[_ax(axis, _nd(ary))]
    return _split_impl(ary, np.array_split(np.arange(n), indices_or_sections), axis)


def _hsplit(ary, indices_or_sections):
    return _split(ary, indices_or_sections, 1 if _nd(ary) > 1 else 0)


def _vsplit(ary, indices_or_sections):
    return _split(ary, indices_or_sections, 0)


def _tile(A, reps):
    reps = tuple(int(r) for r in np.atleast_1d(reps))
    s = tuple(shape_of(A))
    nd = builtins.max(len(s), len(reps))
    s = (1,) * (nd - len(s)) + s
    reps = (1,) * (nd - len(reps)) + reps
    x = T.reshape(A, tuple(v for n in s for v in (1, n)))
    x = T.broadcast_to(x, tuple(v for r, n in zip(reps, s) for v in (r, n)))
    return T.reshape(x, tuple(r * n for r, n in zip(reps, s)))


def _repeat(a, repeats, axis=None):
    if axis is None:
        a, axis = T.reshape(a, (-1,)), 0
    axis = _ax(axis, _nd(a))
    idx = np.repeat(np.arange(shape_of(a)[axis]), value(repeats))
    return T.getitem(a, (slice(None),) * axis + (idx,))


def _pad(array, pad_width, mode="constant", **kwargs):
    nd = _nd(array)
    pw = np.broadcast_to(np.asarray(pad_width, dtype=int).reshape(-1, 2) if np.ndim(pad_width) else
                         np.asarray([[pad_width, pad_width]], dtype=int), (nd, 2))
    s = shape_of(array)
    if mode == "constant":
        cv = kwargs.pop("constant_values", 0)
        if kwargs or np.ndim(value(cv)) != 0:
            trace_lost("np.pad(mode='constant') with per-axis constant_values or other options is not "
                       "supported by gradverify's engine")
        new = tuple(int(n + a + b) for n, (a, b) in zip(s, pw))
        idx = tuple(slice(int(a), int(a) + n) for n, (a, _) in zip(s, pw))
        out = T.scatter_add(array, idx, new)
        if _tensor_in(cv) or value(cv) != 0:
            out = out + cv * (~_mask(new, idx))
        return out
    if mode in ("edge", "reflect", "symmetric", "wrap") and not kwargs:
        idx = [np.pad(np.arange(n), (int(a), int(b)), mode=mode) for n, (a, b) in zip(s, pw)]
        return T.getitem(array, np.ix_(*idx))
    trace_lost(f"np.pad(mode={mode!r}, {', '.join(kwargs)}) is not supported by gradverify's engine")


def _flip(m, axis=None):
    nd = _nd(m)
    axes = range(nd) if axis is None else [_ax(a, nd) for a in np.atleast_1d(axis)]
    idx = [slice(None)] * nd
    for a in axes:
        idx[a] = slice(None, None, -1)
    return _view(T.getitem(m, tuple(idx)), m)


def _fliplr(m): return _flip(m, 1)
def _flipud(m): return _flip(m, 0)


def _roll(a, shift, axis=None):
    if axis is None:
        return T.reshape(_roll(T.reshape(a, (-1,)), shift, 0), shape_of(a))
    shifts, axes = np.broadcast_arrays(np.atleast_1d(shift), np.atleast_1d(axis))
    nd = _nd(a)
    idx = [slice(None)] * nd
    total = [0] * nd
    for sft, ax in zip(shifts, axes):
        total[_ax(int(ax), nd)] += int(sft)
    for ax, sft in enumerate(total):
        if sft:
            n = shape_of(a)[ax]
            idx[ax] = (np.arange(n) - sft) % n
    if builtins.sum(not isinstance(i, slice) for i in idx) > 1:
        return T.getitem(a, np.ix_(*[np.arange(shape_of(a)[k]) if isinstance(i, slice) else i
                                     for k, i in enumerate(idx)]))
    return T.getitem(a, tuple(idx))


def _rot90(m, k=1, axes=(0, 1)):
    k %= 4
    a0, a1 = axes
    if k == 0:
        return T.identity(m)
    if k == 2:
        return _flip(_flip(m, a0), a1)
    nd = _nd(m)
    perm = list(range(nd))
    perm[_ax(a0, nd)], perm[_ax(a1, nd)] = perm[_ax(a1, nd)], perm[_ax(a0, nd)]
    if k == 1:
        return T.transpose(_flip(m, a1), perm)
    return _flip(T.transpose(m, perm), a1)


def _take(a, indices, axis=None, out=None, mode="raise"):
    if axis is None:
        a, axis = T.reshape(a, (-1,)), 0
    axis = _ax(axis, _nd(a))
    return T.getitem(a, (slice(None),) * axis + (np.asarray(value(indices)),))


def _along(arr, indices, axis):
    """The fancy index that ``take_along_axis(arr, indices, axis)`` gathers with."""
    nd = _nd(arr)
    axis = _ax(axis, nd)
    indices = np.asarray(value(indices))
    shape = [1] * nd
    idx = []
    for d in range(nd):
        if d == axis:
            idx.append(indices)
        else:
            s = shape.copy()
            s[d] = shape_of(arr)[d] if indices.shape[d] != 1 else 1
            idx.append(np.arange(s[d]).reshape(s))
    return tuple(idx)


def _take_along_axis(arr, indices, axis=-1):
    if axis is None:
        arr, axis = T.reshape(arr, (-1,)), 0
    return T.getitem(arr, _along(arr, indices, axis))


def _put_along_axis(arr, indices, values, axis):
    if not isinstance(arr, Tensor):
        if _tensor_in(values):
            trace_lost("np.put_along_axis writes traced values into a plain ndarray")
        return np.put_along_axis(arr, _raw(indices), _raw(values), axis)
    arr[_along(arr, indices, axis)] = values


def _sort(a, axis=-1, kind=None, order=None, *, stable=None):
    if axis is None:
        a, axis = T.reshape(a, (-1,)), 0
    idx = np.argsort(value(a), axis=axis, kind="stable")
    return T.getitem(a, _along(a, idx, axis))


def _partition(a, kth, axis=-1, kind="introselect", order=None):
    if axis is None:
        a, axis = T.reshape(a, (-1,)), 0
    idx = np.argpartition(value(a), kth, axis=axis)
    return T.getitem(a, _along(a, idx, axis))


def _select(condlist, choicelist, default=0):
    out = default
    for c, v in reversed(list(zip(condlist, choicelist))):
        out = T.where(np.asarray(value(c), dtype=bool), v, out)
    return out


def _nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    v = value(x)
    if v.dtype.kind not in "fc" or np.all(np.isfinite(v)):
        return T.identity(x) if isinstance(x, Tensor) else np.array(v)
    big = np.finfo(v.dtype).max
    r = T.where(np.isnan(v), nan, x)
    r = T.where(np.isposinf(v), big if posinf is None else posinf, r)
    return T.where(np.isneginf(v), -big if neginf is None else neginf, r)


def _like(fn):
    def h(a, *args, dtype=None, order="K", subok=True, shape=None, device=None, **kw):
        return _const(fn(np.empty(shape_of(a) if shape is None else shape, dtype=_np_dtype(a)),
                         *args, dtype=dtype))
    return h


def _zeros_like_fn(a, dtype=None): return np.zeros_like(a, dtype=dtype)
def _ones_like_fn(a, dtype=None): return np.ones_like(a, dtype=dtype)


def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, device=None):
    shp = shape_of(a) if shape is None else shape
    dt = dtype or _np_dtype(a)
    if isinstance(fill_value, Tensor) and fill_value.requires_grad:
        return T.add(np.zeros(shp, dt), fill_value)
    return _const(np.full(shp, value(fill_value), dtype=dt))


def _copy(a, order="K", subok=False):
    return T.identity(a) if isinstance(a, Tensor) else np.copy(a)


def _real(val):
    if np.iscomplexobj(value(val)):
        trace_lost("np.real of a complex traced value is not supported by gradverify's engine")
    return val


def _average(a, axis=None, weights=None, returned=False, *, keepdims=False):
    if weights is None:
        avg = T.mean(a, axis, keepdims)
        scl = np.broadcast_to(math.prod(shape_of(a)) / math.prod(shape_of(avg)), shape_of(avg))
    else:
        if shape_of(weights) != shape_of(a):
            if axis is None or _nd(weights) != 1:
                raise TypeError("np.average: weights must match a, or be 1-D along axis")
            sh = [1] * _nd(a)
            sh[_ax(axis, _nd(a))] = -1
            weights = T.reshape(weights, tuple(sh))
        w = weights * np.ones(shape_of(a), dtype=_np_dtype(a))
        scl = T.sum(w, axis, keepdims)
        avg = T.sum(a * w, axis, keepdims) / scl
    return (avg, scl) if returned else avg


def _diff(a, n=1, axis=-1, prepend=np._NoValue, append=np._NoValue):
    if prepend is not np._NoValue or append is not np._NoValue:
        trace_lost("np.diff(prepend=/append=) is not supported by gradverify's engine")
    axis = _ax(axis, _nd(a))
    pre = (slice(None),) * axis
    for _ in range(n):
        a = T.getitem(a, pre + (slice(1, None),)) - T.getitem(a, pre + (slice(None, -1),))
    return a


def _append(arr, values, axis=None):
    if axis is None:
        return T.concatenate([T.reshape(arr, (-1,)), T.reshape(values, (-1,))], 0)
    return T.concatenate([arr, values], axis)


def _matrix_transpose(x): return _swapaxes(x, -1, -2)


def _round(a, decimals=0, out=None):
    return _const(np.round(value(a), decimals))


def _slogdet(a):
    v = value(a)
    sign = np.linalg.slogdet(v)[0]
    return type(np.linalg.slogdet(np.eye(1)))(sign, apply("logabsdet", a))


def _prim_fn(name):
    return lambda *args: apply(name, *args)


#: numpy function (by dotted name) -> handler; resolved to the function objects below.
_FUNCTION_HANDLERS: dict[str, Callable[..., Any]] = {
    "sum": _reduce(_sum), "mean": _reduce(_mean), "prod": _reduce(_prod),
    "max": _minmax(_max), "min": _minmax(_min), "amax": _minmax(_max), "amin": _minmax(_min),
    "var": _var, "std": _std, "cumsum": _scan("cumsum"), "cumprod": _scan("cumprod"),
    "clip": _clip, "where": _where, "select": _select, "nan_to_num": _nan_to_num,
    "sinc": _prim_fn("sinc"), "round": _round,
    "dot": _dot, "vdot": _vdot, "inner": _inner, "outer": _outer, "tensordot": _tensordot,
    "einsum": _einsum, "kron": _kron, "trace": _trace, "diagonal": _diagonal, "diag": _diag,
    "tril": _tril, "triu": _triu,
    "linalg.inv": _prim_fn("inv"), "linalg.det": _prim_fn("det"), "linalg.slogdet": _slogdet,
    "linalg.solve": _prim_fn("solve"), "linalg.cholesky": _prim_fn("cholesky"), "linalg.norm": _norm,
    "reshape": _reshape, "transpose": _transpose, "swapaxes": _swapaxes, "moveaxis": _moveaxis,
    "expand_dims": _expand_dims, "squeeze": _squeeze, "ravel": _ravel,
    "broadcast_to": _broadcast_to, "broadcast_arrays": _broadcast_arrays,
    "atleast_1d": _at1, "atleast_2d": _at2, "atleast_3d": _at3,
    "concatenate": _concatenate, "stack": _stack, "vstack": _vstack, "hstack": _hstack,
    "dstack": _dstack, "column_stack": _column_stack, "append": _append,
    "split": _split, "array_split": _array_split, "hsplit": _hsplit, "vsplit": _vsplit,
    "tile": _tile, "repeat": _repeat, "pad": _pad, "flip": _flip, "fliplr": _fliplr,
    "flipud": _flipud, "roll": _roll, "rot90": _rot90,
    "take": _take, "take_along_axis": _take_along_axis, "put_along_axis": _put_along_axis,
    "sort": _sort, "partition": _partition,
    "zeros_like": _like(_zeros_like_fn), "ones_like": _like(_ones_like_fn),
    "empty_like": _like(_zeros_like_fn), "full_like": _full_like,
    "copy": _copy, "real": _real, "average": _average, "diff": _diff,
    "matrix_transpose": _matrix_transpose, "linalg.matrix_transpose": _matrix_transpose,
}

#: numpy functions that return constants (indices, shapes, tests): run on the raw values.
_CONSTANT_FUNCTIONS = (
    "argmax", "argmin", "argsort", "argpartition", "nonzero", "flatnonzero", "argwhere",
    "count_nonzero", "shape", "ndim", "size", "result_type", "iscomplexobj", "isrealobj",
    "isclose", "allclose", "array_equal", "array_equiv", "any", "all", "searchsorted", "unique",
    "may_share_memory", "shares_memory", "isneginf", "isposinf", "can_cast", "min_scalar_type",
    "histogram", "bincount", "digitize", "iscomplex", "isreal", "sometrue", "alltrue",
    "around", "fix",
)


def _resolve(dotted: str) -> Any:
    obj: Any = np
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


#: numpy function object -> handler.
FUNCTIONS: dict[Any, Callable[..., Any]] = {}
_FUNCTION_NAMES: dict[Any, str] = {}
for _n, _h in _FUNCTION_HANDLERS.items():
    _f = _resolve(_n)
    if _f is not None:
        FUNCTIONS[_f] = _h
        _FUNCTION_NAMES[_f] = "np." + _n
_CONSTANTS = {f for f in (_resolve(n) for n in _CONSTANT_FUNCTIONS) if f is not None}


# ---------------------------------------------------------------------------
# Ufuncs
# ---------------------------------------------------------------------------

def _zero_grad(f):
    """Piecewise-constant ufuncs (floor, sign, ...): a constant result, zero gradient."""
    return lambda *xs: _const(f(*_raw(xs)))


def _identity(x):
    return T.identity(x) if isinstance(x, Tensor) else np.positive(x)


#: ufunc name -> handler for ``ufunc(*inputs)``.
_UFUNC_HANDLERS: dict[str, Callable[..., Any]] = {
    "add": T.add, "subtract": T.sub, "multiply": T.mul, "divide": T.div, "true_divide": T.div,
    "power": T.pow, "negative": T.neg, "positive": _identity, "square": T.square, "exp": T.exp,
    "log": T.log, "sqrt": T.sqrt, "absolute": T.abs, "fabs": T.abs, "sin": T.sin, "cos": T.cos,
    "tanh": T.tanh, "maximum": T.maximum, "minimum": T.minimum, "matmul": T.matmul,
    "conjugate": _identity, "degrees": _prim_fn("rad2deg"), "radians": _prim_fn("deg2rad"),
    "mod": _prim_fn("remainder"),
    "sign": _zero_grad(np.sign), "floor": _zero_grad(np.floor), "ceil": _zero_grad(np.ceil),
    "rint": _zero_grad(np.rint), "trunc": _zero_grad(np.trunc), "floor_divide": _zero_grad(np.floor_divide),
    "heaviside": _zero_grad(np.heaviside),
}
for _n in ("log1p", "expm1", "exp2", "log2", "log10", "cbrt", "reciprocal", "tan", "arcsin", "arccos",
           "arctan", "sinh", "cosh", "arcsinh", "arccosh", "arctanh", "deg2rad", "rad2deg",
           "arctan2", "hypot", "logaddexp", "logaddexp2", "float_power", "fmax", "fmin",
           "remainder", "fmod"):
    _UFUNC_HANDLERS[_n] = _prim_fn(_n)

#: ufuncs whose results are constants (comparisons, tests): plain ndarrays.
_CONSTANT_UFUNCS = (
    "less", "less_equal", "greater", "greater_equal", "equal", "not_equal", "logical_and",
    "logical_or", "logical_xor", "logical_not", "isnan", "isinf", "isfinite", "signbit",
    "bitwise_and", "bitwise_or", "bitwise_xor", "invert", "left_shift", "right_shift", "isnat",
)

UFUNCS: dict[Any, Callable[..., Any]] = {getattr(np, n): h for n, h in _UFUNC_HANDLERS.items()}
_CONSTANT_UFUNC_SET = {getattr(np, n) for n in _CONSTANT_UFUNCS if hasattr(np, n)}
#: scipy.special ufunc name -> primitive name (matched by identity with scipy.special's attribute).
_SCIPY = {n: "scipy_" + n for n in ("erf", "erfc", "erfinv", "expit", "logit", "gammaln", "gamma",
                                     "digamma", "ndtr", "log_ndtr", "xlogy")}
_SCIPY_ALIASES = {"psi": "digamma"}

_REDUCE_HANDLERS = {np.add: _sum, np.maximum: _max, np.minimum: _min, np.multiply: _prod,
                    np.fmax: _max, np.fmin: _min,
                    np.logaddexp: lambda a, axis, keepdims: T.logsumexp(a, axis, keepdims)}
_ACCUMULATE = {np.add: "cumsum", np.multiply: "cumprod"}


def _ufunc_name(ufunc: Any) -> str:
    sp = sys.modules.get("scipy.special")
    if sp is not None and getattr(sp, ufunc.__name__, None) is ufunc:
        return "scipy.special." + ufunc.__name__
    return "np." + ufunc.__name__


def _scipy_handler(ufunc: Any) -> Callable[..., Any] | None:
    sp = sys.modules.get("scipy.special")
    name = _SCIPY_ALIASES.get(ufunc.__name__, ufunc.__name__)
    if sp is None or name not in _SCIPY or getattr(sp, ufunc.__name__, None) is not ufunc:
        return None
    return _prim_fn(_SCIPY[name])


def _no_rule(name: str, args: tuple, kwargs: dict, call: Callable[..., Any]) -> Any:
    """A callable without a rule: TraceLost when strict and traced values reach it;
    otherwise run it on the raw values (a constant result, as ``__array__`` did)."""
    if RECORDING.strict and (_tensor_in(args) or _tensor_in(kwargs)):
        trace_lost(f"{name} has no VJP rule in gradverify's engine")
    return call(*_raw(args), **_raw(kwargs))


def _write_out(out: Any, result: Any, name: str) -> Any:
    """Honour ``out=``: a Tensor is rebound to the result; a plain ndarray may only take constants."""
    outs = out if isinstance(out, tuple) else (out,)
    results = result if isinstance(result, tuple) else (result,)
    for o, r in zip(outs, results):
        if o is None:
            continue
        if isinstance(o, Tensor):
            o[...] = r
        elif _tensor_in(r):
            trace_lost(f"{name}(..., out=...) names a plain ndarray: the traced result would be "
                       "written into it and its gradient lost")
        else:
            o[...] = value(r)
    return out if isinstance(out, tuple) and len(out) > 1 else outs[0]


def _array_ufunc(self: Tensor, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
    """NEP 13 dispatch: ``ufunc.method(*inputs, **kwargs)`` with Tensors among the inputs."""
    out = kwargs.pop("out", None)
    name = _ufunc_name(ufunc)
    if method == "__call__":
        if ufunc in _CONSTANT_UFUNC_SET:
            return ufunc(*_raw(inputs), **_raw(kwargs), **({} if out is None else {"out": out}))
        h = UFUNCS.get(ufunc) or _scipy_handler(ufunc)
        dtype = kwargs.pop("dtype", None)
        if kwargs.get("where", True) is True:
            kwargs.pop("where", None)
        kwargs.pop("casting", None)
        kwargs.pop("subok", None)
        if h is None or kwargs:
            what = name if h is None else f"{name}(..., {', '.join(kwargs)}=...)"
            return _no_rule(what, inputs, kwargs, lambda *a, **k: ufunc(*a, **k, out=out) if out is not None
                            else ufunc(*a, **k))
        res = _dtype_out(h(*inputs), dtype)
    elif method == "reduce" and ufunc in _REDUCE_HANDLERS:
        axis = kwargs.pop("axis", 0)
        keepdims = kwargs.pop("keepdims", False)
        dtype = kwargs.pop("dtype", None)
        if kwargs:
            return _no_rule(f"{name}.reduce(..., {', '.join(kwargs)}=...)", inputs, kwargs,
                            getattr(ufunc, method))
        res = _dtype_out(_REDUCE_HANDLERS[ufunc](inputs[0], axis, keepdims), dtype)
    elif method == "accumulate" and ufunc in _ACCUMULATE:
        axis = kwargs.pop("axis", 0)
        dtype = kwargs.pop("dtype", None)
        res = _dtype_out(_scan(_ACCUMULATE[ufunc])(inputs[0], axis), dtype)
    elif method == "at" and ufunc in (np.add, np.subtract):
        a, idx = inputs[0], inputs[1]
        vals = inputs[2] if len(inputs) > 2 else None
        if not isinstance(a, Tensor):
            if _tensor_in(vals):
                trace_lost(f"{name}.at(a, ...) with a plain ndarray a would write traced values into it "
                           "(use a Tensor, e.g. np.zeros_like of a traced value)")
            return ufunc.at(a, _raw(idx), _raw(vals))
        index = T._index(idx)
        sub = np.zeros(shape_of(a), dtype=bool)[index].shape
        upd = T.broadcast_to(vals if ufunc is np.add else T.neg(vals), sub)
        _rebind(a, lambda old: old + T.scatter_add(upd, index, shape_of(a)))
        return None
    else:
        return _no_rule(f"{name}.{method}", inputs, kwargs, getattr(ufunc, method))
    if out is not None:
        return _write_out(out, res, name)
    return res


def _array_function(self: Tensor, func: Any, types: tuple, args: tuple, kwargs: dict) -> Any:
    """NEP 18 dispatch: ``func(*args, **kwargs)`` with Tensors among the arguments."""
    h = FUNCTIONS.get(func)
    if h is None:
        if func in _CONSTANTS:
            return func(*_raw(args), **_raw(kwargs))
        mod = getattr(func, "__module__", "") or ""
        mod = "np" + mod[len("numpy"):] if mod.startswith("numpy") else mod
        mod = mod.replace("._core", "").replace(".core", "").replace("._linalg", "")
        if mod in ("np.fromnumeric", "np.numeric", "np.multiarray", "np.shape_base", "np.function_base",
                   "np.lib._function_base_impl", "np.lib._shape_base_impl", "np._multiarray_umath"):
            mod = "np"
        mod = mod.replace("np.lib._", "np.").split("_impl")[0]
        return _no_rule(f"{mod}.{func.__name__}", args, kwargs, func)
    out = kwargs.pop("out", None)
    res = h(*args, **kwargs)
    if out is not None:
        return _write_out(out, res, _FUNCTION_NAMES.get(func, func.__name__))
    return res


# ---------------------------------------------------------------------------
# 4. Item assignment: rebind the Tensor object to a new node.
# ---------------------------------------------------------------------------

_FIELDS = ("value", "prim", "args", "params", "id", "requires_grad", "parents", "raw_args", "base")


def _clone(t: Tensor) -> Tensor:
    c = Tensor.__new__(Tensor)
    for f in _FIELDS:
        setattr(c, f, getattr(t, f))
    return c


def _rebind(t: Tensor, make: Callable[[Tensor], Any]) -> None:
    """Rebind Tensor object ``t`` to ``make(old)``, where ``old`` is ``t``'s current node; O(nodes
    recorded since ``t``'s node).

    The scheme: the Python object ``t`` is what the user's variable names, so it must
    become the new node; but nodes recorded earlier that consumed ``t`` must keep seeing
    the old value. So ``t``'s current fields move to a clone ``old`` (same id: it *is*
    the old node), which replaces ``t`` on the tape and in the ``args``/``parents`` of
    every node recorded after it (they are all on the tape, later in creation order);
    then ``t`` takes the fields of the new node, which replaces it on the tape.
    A constant ``t`` needs no swap: nodes record constants by value.

    Raises:
        TraceLost: ``t`` is an input leaf (numpy would modify the caller's array), a
            view of another array (numpy would write through to it), or a traced node
            recorded outside the current trace (its consumers cannot all be found).
    """
    if t.base is not None:
        trace_lost("assignment into a view of another array (a basic slice, reshape, transpose, ...): "
                   "numpy would also modify that array; copy it first (.copy()) or assign into the "
                   "array itself")
    if t.requires_grad and t.prim is None:
        trace_lost("assignment into an input leaf: numpy would modify the caller's array; "
                   "assign into a copy (x = x.copy()) instead")
    tape = RECORDING.tape
    if not t.requires_grad:
        new = make(t)
        if not isinstance(new, Tensor):
            new = _const(new)
        for f in _FIELDS:
            setattr(t, f, getattr(new, f))
        t.base = None
        if tape and tape[-1] is new:
            tape[-1] = t
        return
    pos = -1
    if tape is not None:
        for i in range(len(tape) - 1, -1, -1):
            n = tape[i]
            if n is t:
                pos = i
                break
            if n.id < t.id:
                break
    if pos < 0:
        trace_lost("item assignment into a traced Tensor outside the trace that recorded it "
                   "(use numpy_vjp, or assign into a copy)")
    old = _clone(t)
    tape[pos] = old
    for node in tape[pos + 1:]:
        if builtins.any(p is t for _, p in node.parents):
            node.args = tuple(old if a is t else a for a in node.args)
            node.parents = tuple((i, old if p is t else p) for i, p in node.parents)
    new = make(old)
    for f in _FIELDS:
        setattr(t, f, getattr(new, f))
    t.base = None
    if tape and tape[-1] is new:
        tape[-1] = t


def _setitem(self: Tensor, index: Any, v: Any) -> None:
    index = T._index(index)
    if isinstance(v, (list, tuple)) and _tensor_in(v):
        v = _asarray_list(v)
    _rebind(self, lambda old: apply("setitem", old, v, index=index))


# ---------------------------------------------------------------------------
# 3. The Tensor surface: protocols, methods, operators.
# ---------------------------------------------------------------------------

def _getitem(self, index):
    index = T._index(index)
    out = apply("getitem", self, index)
    return _view(out, self) if T._is_basic(index) else out


def _iter(self):
    if not self.shape:
        raise TypeError("iteration over a 0-d Tensor")
    for i in range(self.shape[0]):
        yield _getitem(self, i)


def _item(self, *args):
    if RECORDING.strict and self.requires_grad:
        trace_lost(".item() of a traced Tensor drops its gradient")
    return self.value.item(*args)


def _tolist(self):
    if RECORDING.strict and self.requires_grad:
        trace_lost(".tolist() of a traced Tensor drops its gradient")
    return self.value.tolist()


def _int(self):
    if RECORDING.strict and self.requires_grad:
        trace_lost("int() of a traced Tensor drops its gradient")
    return int(self.value)


def _astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
    dt = np.dtype(dtype)
    if dt.kind in "fc":
        return apply("astype", self, dtype=dt) if dt != self.dtype or copy else self
    return self.value.astype(dt)


def _method(np_name: str):
    h = FUNCTIONS[_resolve(np_name)]
    return lambda self, *a, **k: h(self, *a, **k)


def _shape_method(fn):
    def m(self, *shape, **kw):
        if len(shape) == 1 and (shape[0] is None or isinstance(shape[0], (tuple, list))):
            shape = shape[0]
        return fn(self, shape if shape != () else None, **kw)
    return m


def _binop(f, reflected=False):
    if reflected:
        return lambda self, o: f(o, self)
    return f


_METHODS: dict[str, Any] = {
    "sum": _method("sum"), "mean": _method("mean"), "prod": _method("prod"),
    "max": _method("max"), "min": _method("min"), "var": _method("var"), "std": _method("std"),
    "cumsum": _method("cumsum"), "cumprod": _method("cumprod"), "clip": _method("clip"),
    "dot": _method("dot"), "swapaxes": _method("swapaxes"), "squeeze": _method("squeeze"),
    "ravel": _method("ravel"), "take": _method("take"), "repeat": _method("repeat"),
    "diagonal": _method("diagonal"), "trace": _method("trace"),
    "reshape": _shape_method(lambda self, shape, order="C": _reshape(self, shape, order)),
    "transpose": _shape_method(lambda self, axes: _transpose(self, axes)),
    "flatten": lambda self, order="C": T.reshape(self, (-1,)) if self.ndim != 1 else T.identity(self),
    "copy": lambda self, order="C": T.identity(self),
    "astype": _astype, "conj": _identity, "conjugate": _identity,
    "round": lambda self, decimals=0, out=None: _round(self, decimals),
    "argmax": lambda self, *a, **k: np.argmax(self.value, *a, **k),
    "argmin": lambda self, *a, **k: np.argmin(self.value, *a, **k),
    "argsort": lambda self, *a, **k: np.argsort(self.value, *a, **k),
    "nonzero": lambda self: self.value.nonzero(),
    "all": lambda self, *a, **k: self.value.all(*a, **k),
    "any": lambda self, *a, **k: self.value.any(*a, **k),
    "sort": lambda self, axis=-1, kind=None, order=None: self.__setitem__(Ellipsis, _sort(self, axis)),
    "item": _item, "tolist": _tolist, "__int__": _int, "__index__": None,
    "__iter__": _iter, "__getitem__": _getitem, "__setitem__": _setitem,
    "__array_ufunc__": _array_ufunc, "__array_function__": _array_function,
    "__floordiv__": lambda self, o: np.floor_divide(self, o),
    "__rfloordiv__": lambda self, o: np.floor_divide(o, self),
    "__mod__": lambda self, o: np.remainder(self, o),
    "__rmod__": lambda self, o: np.remainder(o, self),
    "__divmod__": lambda self, o: (np.floor_divide(self, o), np.remainder(self, o)),
    "__eq__": lambda self, o: self.value == value(o),
    "__ne__": lambda self, o: self.value != value(o),
    "__hash__": object.__hash__,
    "__pos__": _identity,
    "T": property(lambda self: _transpose(self, None), doc="axes reversed, like ndarray.T (a view)"),
    "mT": property(lambda self: _swapaxes(self, -1, -2), doc="last two axes swapped (a view)"),
    "real": property(lambda self: _real(self), doc="the value itself (real dtypes only)"),
}
for _k, _m in _METHODS.items():
    if _m is None:
        continue
    setattr(Tensor, _k, _m)

#: ndarray methods and attributes with derivative rules (for numpy_coverage).
METHODS = ("sum", "mean", "prod", "max", "min", "var", "std", "cumsum", "cumprod", "clip", "dot",
           "swapaxes", "squeeze", "ravel", "take", "repeat", "diagonal", "trace", "reshape",
           "transpose", "flatten", "copy", "astype", "conj", "sort", "T", "mT", "__getitem__",
           "__setitem__", "__matmul__", "__add__", "__sub__", "__mul__", "__truediv__", "__pow__",
           "__neg__", "__abs__", "__mod__", "__floordiv__", "__iter__")


# ---------------------------------------------------------------------------
# np.array / np.asarray of lists holding Tensors (not dispatchable: patched while strict).
# ---------------------------------------------------------------------------

def _asarray_list(obj: Any) -> Any:
    """Stack a (nested) list/tuple holding Tensors into one Tensor, like np.array would."""
    if isinstance(obj, (list, tuple)):
        if _tensor_in(obj) or builtins.any(isinstance(o, (list, tuple)) for o in obj):
            return T.stack([_asarray_list(o) for o in obj], 0)
        return np.asarray(obj)
    return obj


_ORIGINAL: dict[str, Any] = {}


def _patched(name: str) -> Callable[..., Any]:
    orig = _ORIGINAL[name]

    def conv(obj, *args, **kwargs):
        if isinstance(obj, (list, tuple)) and _tensor_in(obj):
            dtype = kwargs.get("dtype", args[0] if args else None)
            return _dtype_out(_asarray_list(obj), dtype)
        return orig(obj, *args, **kwargs)
    conv.__wrapped__ = orig
    conv.__name__ = name
    return conv


class strict:
    """Context manager: the strict tracing context used by ``numpy_vjp``.

    While active on this thread, leaving the trace raises TraceLost (see the
    module docstring), and ``np.array``/``np.asarray``/``np.asanyarray`` of a
    list holding traced Tensors stacks them (these constructors are not
    dispatchable, so the ``numpy`` module attributes are wrapped while any
    strict context is active; the wrappers defer to the originals for
    everything else). Cost: O(1) to enter and leave.
    """

    _active = 0

    def __enter__(self) -> "strict":
        RECORDING.strict += 1
        if strict._active == 0:
            for n in ("array", "asarray", "asanyarray"):
                _ORIGINAL[n] = getattr(np, n)
                setattr(np, n, _patched(n))
        strict._active += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        RECORDING.strict -= 1
        strict._active -= 1
        if strict._active == 0:
            for n, f in _ORIGINAL.items():
                setattr(np, n, f)


def numpy_coverage() -> list[str]:
    """Sorted names of every numpy callable and ndarray method with derivative rules; O(n).

    E.g. ``"np.tanh"``, ``"np.linalg.inv"``, ``"ndarray.sum"``, ``"scipy.special.erf"``.
    Piecewise-constant ones (``np.floor``, ``np.sign``) are included: their rule is zero.
    """
    names = {"np." + n for n in _UFUNC_HANDLERS}
    names |= {"np." + n for n in _FUNCTION_HANDLERS if _resolve(n) is not None}
    names |= {"np.abs", "np.add.reduce", "np.maximum.reduce", "np.minimum.reduce",
              "np.multiply.reduce", "np.logaddexp.reduce", "np.add.accumulate",
              "np.multiply.accumulate", "np.add.at", "np.subtract.at", "np.array", "np.asarray"}
    names |= {"scipy.special." + n for n in list(_SCIPY) + list(_SCIPY_ALIASES)}
    names |= {"ndarray." + m for m in METHODS}
    return sorted(names)


# ---------------------------------------------------------------------------
# The entry point: trace a plain-numpy forward strictly, return value and VJP.
# ---------------------------------------------------------------------------

def _flatten(obj: Any, path: str, out: list) -> Any:
    """Replace every array leaf of ``obj`` (tuple/list/dict nesting) by its position in ``out``."""
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_flatten(o, f"{path}[{i}]", out) for i, o in enumerate(obj))
    if isinstance(obj, tuple):                                  # a namedtuple (slogdet)
        return type(obj)(*(_flatten(o, f"{path}.{f}", out) for o, f in zip(obj, obj._fields)))
    if isinstance(obj, list):
        return [_flatten(o, f"{path}[{i}]", out) for i, o in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: _flatten(v, f"{path}[{k!r}]", out) for k, v in obj.items()}
    if isinstance(obj, Tensor):
        out.append((path, obj))
        return _Slot(len(out) - 1)
    if isinstance(obj, (np.ndarray, np.generic)) and np.result_type(obj).kind in "fc":
        trace_lost(f"the output is not traced: {path} is a plain {type(obj).__name__} "
                   "(the computation left the engine, or never used the inputs)")
    return obj


class _Slot:
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def _unflatten(struct: Any, fill: Callable[[int], Any]) -> Any:
    if isinstance(struct, _Slot):
        return fill(struct.i)
    if isinstance(struct, tuple) and hasattr(struct, "_fields"):
        return type(struct)(*(_unflatten(o, fill) for o in struct))
    if isinstance(struct, tuple):
        return tuple(_unflatten(o, fill) for o in struct)
    if isinstance(struct, list):
        return [_unflatten(o, fill) for o in struct]
    if isinstance(struct, dict):
        return {k: _unflatten(v, fill) for k, v in struct.items()}
    return struct


def _cotangents(ct: Any, struct: Any, found: dict[int, Any]) -> None:
    """Walk the cotangent alongside the output structure, collecting one entry per slot."""
    if ct is None:
        return
    if isinstance(struct, _Slot):
        found[struct.i] = ct
    elif isinstance(struct, (tuple, list)):
        if not isinstance(ct, (tuple, list)) or len(ct) != len(struct):
            raise SpecError(f"the cotangent must mirror the output: expected a sequence of "
                            f"{len(struct)}, got {type(ct).__name__}")
        for c, s in zip(ct, struct):
            _cotangents(c, s, found)
    elif isinstance(struct, dict):
        if not isinstance(ct, dict):
            raise SpecError(f"the cotangent must mirror the output: expected a dict, got {type(ct).__name__}")
        for k, s in struct.items():
            _cotangents(ct.get(k), s, found)


def numpy_vjp(call: Callable[[dict], Any], leaves: dict[str, np.ndarray]) -> tuple[Any, Callable[[Any], dict]]:
    """Trace ``call(tensors)`` where ``tensors`` maps each name of ``leaves`` to a Tensor leaf
    (requires_grad) under the strict context.

    Cost: one traced forward (the numpy forward plus about a microsecond per
    operation); each ``vjp_fn`` call is one backward sweep over the recorded tape.

    Returns (output value(s) as plain numpy -- an ndarray, or a tuple/list/dict of
    ndarrays mirroring call's output structure, and vjp_fn(cotangent mirroring that
    structure) -> {name: gradient ndarray shaped like the leaf; zeros where unused}).
    Non-array output leaves (ints, None) are returned as they are and take no
    cotangent; cotangent entries may be None to skip an output.

    Raises:
        TraceLost: (reason + where) if the code left the trace, if an output leaf is a
            plain ndarray/not a Tensor ("the output is not traced: ..."), or if no output
            depends on any leaf.
    """
    from .core import _gradient, _seed, sweep
    tensors = {}
    for name, a in leaves.items():
        arr = np.asarray(value(a))
        tensors[name] = Tensor._leaf(arr, arr.dtype.kind in "fc")
    outer, RECORDING.tape = RECORDING.tape, []
    tape = RECORDING.tape
    RECORDING.depth += 1
    from ..errors import TraceLost
    outer_lost, RECORDING.lost = RECORDING.lost, None
    try:
        with strict():
            try:
                out = call(tensors)
            except Exception as e:
                # numpy turns some exceptions into its own (a[i] = t: ValueError); say what happened.
                if RECORDING.lost is not None and not isinstance(e, TraceLost):
                    raise RECORDING.lost from e
                raise
            if RECORDING.lost is not None:        # raised, then caught inside the user's code
                raise RECORDING.lost
            slots: list = []
            struct = _flatten(out, "output", slots)
    finally:
        RECORDING.lost = outer_lost
        RECORDING.depth -= 1
        RECORDING.tape = outer
        if outer is not None:
            outer.extend(tape)
    if not builtins.any(t.requires_grad for _, t in slots):
        what = ", ".join(p for p, _ in slots) or "the output"
        raise TraceLost(f"no output depends on any leaf ({what} is constant): nothing to differentiate",
                        T.user_frame())
    stop = list(tensors.values())
    value_out = _unflatten(struct, lambda i: np.array(slots[i][1].value, copy=True))

    def vjp_fn(cotangent: Any) -> dict[str, np.ndarray]:
        found: dict[int, Any] = {}
        if isinstance(struct, _Slot):
            if cotangent is not None:
                found[0] = cotangent
        else:
            _cotangents(cotangent, struct, found)
        adjoints: dict[int, Any] = {}
        for i, ct in found.items():
            t = slots[i][1]
            if not t.requires_grad:
                continue
            seed = _seed(ct, t, False)
            adjoints[t.id] = seed if t.id not in adjoints else adjoints[t.id] + seed
        if adjoints:
            sweep(adjoints, tape, stop)
        return {n: _gradient(adjoints.get(t.id), t, False) for n, t in tensors.items()}

    return value_out, vjp_fn
