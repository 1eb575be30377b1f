"""JAX adapter: JAX functions (``jax.custom_vjp``, ``jax.jit`` included) as a check target.

Imported only when an input or the function already comes from JAX (see
:mod:`gradverify.frameworks`), so ``import gradverify`` never imports jax.

The analytic gradient of ``<u, fn(*xs)>`` is ``jax.vjp`` in the caller's
dtype (for a ``custom_vjp`` function that runs its hand-written ``bwd``
rule), or the caller's ``vjp=``. The finite differences evaluate ``fn`` on
float64 arrays, which JAX only creates in 64-bit mode: every call that
involves a float64 array runs inside the scoped ``jax.enable_x64(True)``
context, so the caller's global configuration is left untouched. Calls in
the caller's own dtype (float32) run under the caller's configuration, as
the function would in their program. Where no scoped switch exists (an old
JAX), the finite differences run in the caller's dtype, with a warning.

Output trees (tuples, dicts, any pytree) are flattened in JAX's own leaf
order; integer leaves get ``float0`` cotangents.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from typing import Any, Callable

import numpy as np
import jax
import jax.numpy as jnp

from ..errors import ShapeMismatch
from ..layers import call_user
from ._common import BatchedEvaluation, FrameworkFunctionTarget

__all__ = ["JaxFunctionTarget", "is_jax_array", "x64_context"]


#: Compiled callables shared by the checks of one process: (role, code, argument layout) -> the
#: ``jax.jit`` object (its own cache holds one executable per shape and dtype), or the reason the code
#: cannot be jitted. Repeated checks of the same function (``examples=``, a test suite) compile once.
_COMPILED: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
#: Entries kept in :data:`_COMPILED` (least recently used dropped first).
COMPILED_CACHE_SIZE = 32


def _real_view(a: np.ndarray) -> np.ndarray:
    """A complex numpy array as real and imaginary parts on a trailing axis of 2 (others unchanged)."""
    return np.stack([a.real, a.imag], axis=-1) if np.iscomplexobj(a) else a


def _real_view_jnp(a):
    """:func:`_real_view` for a JAX array (traceable)."""
    return jnp.stack([a.real, a.imag], axis=-1) if jnp.iscomplexobj(a) else a


def _complex_of(a):
    """The complex JAX array whose real view (trailing axis of 2) is ``a``.

    Convention (as torch's and ``torch.autograd.gradcheck``'s): a real loss
    ``L`` of complex values is differentiated with respect to their real and
    imaginary parts, ``dL/dRe z + i dL/dIm z``. JAX's ``vjp`` returns the
    conjugate of that for the cotangent ``conj(u)``; :meth:`JaxFunctionTarget.autodiff`
    converts both ways.
    """
    return jax.lax.complex(a[..., 0], a[..., 1])


def is_jax_array(value: Any) -> bool:
    """A JAX array of a numeric dtype (PRNG key arrays and other extended dtypes are not)."""
    if not isinstance(value, jax.Array):
        return False
    extended = getattr(getattr(jax, "dtypes", None), "extended", None)
    return not (extended is not None and jnp.issubdtype(value.dtype, extended))


def x64_context() -> Callable[[bool], Any] | None:
    """The scoped 64-bit switch of this JAX version, or None."""
    cm = getattr(jax, "enable_x64", None)
    if cm is None:
        try:
            from jax.experimental import enable_x64 as cm  # older JAX
        except ImportError:
            cm = None
    return cm


def _x64_enabled() -> bool:
    try:
        return bool(jax.config.read("jax_enable_x64"))
    except Exception:  # noqa: BLE001 - attribute style of other versions
        return bool(getattr(jax.config, "jax_enable_x64", False))


def _draws_random(jaxpr, depth: int = 0) -> bool:
    """Whether a jaxpr (or one nested in it: jit, scan, cond...) generates random bits."""
    if depth > 16:
        return False
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if "threefry" in name or name.startswith(("random_bits", "random_seed", "rng_")):
            return True
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and _draws_random(inner, depth + 1):
                    return True
    return False


class JaxFunctionTarget(BatchedEvaluation, FrameworkFunctionTarget):
    """A JAX function (see the module docstring).

    Cost per evaluation: one call of ``fn`` on float64 arrays, compiled with
    ``jax.jit`` (once per dtype) whether or not the caller jitted it: run
    eagerly, every primitive of ``fn`` compiles on its first use in each
    dtype (~0.1 s each), so a small custom_vjp attention took ~9 s per check
    eagerly and 0.6 s jitted. The analytic pass is one ``jax.vjp`` in the
    caller's dtype, jitted likewise. Code that cannot be traced (Python
    control flow on values, numpy calls on traced arrays) runs eagerly, with
    a warning. Full checks evaluate the
    perturbations of an input in batches, ``jax.jit(jax.vmap(fn))`` under
    the same scoped 64-bit mode (one compilation per input: batches are
    padded to one power-of-two size), falling back to a plain loop where
    ``fn`` cannot be traced (:class:`~gradverify.frameworks._common.BatchedEvaluation`).
    """

    framework = "jax"

    def __init__(self, fn: Callable, inputs: Any, vjp: Callable | None, constants: Any = ()):
        #: compiled callables by role (see :meth:`_jitted`); a str: why the code cannot be jitted
        self._jit: dict[str, Any] = {}
        self.complex_inputs: set[str] = set()
        super().__init__(fn, inputs, vjp, constants=constants)
        self._x64 = x64_context()
        if self._x64 is None and not _x64_enabled():
            low = {v.dtype.name for v in self.originals.values() if v.dtype != np.float64}
            for k in self.point:
                self.point[k] = self.originals[k].copy()
            self._warn("this JAX has no scoped 64-bit mode (jax.enable_x64) and 64-bit mode is off, so the finite "
                       f"differences ran in the caller's dtype ({', '.join(sorted(low)) or 'float32'}); the verdict "
                       "is coarser -- enable jax_enable_x64 for a float64 oracle")
        else:
            self.faithful_float64()

    def forget_compiled(self) -> None:
        """A fresh cache of compiled callables (the copy computing the primal's autodiff needs its own)."""
        self._jit = {}

    def random_draws(self) -> str | None:
        """Does ``fn`` draw ``jax.random`` numbers (whose values change in 64-bit mode)?

        One trace (``jax.make_jaxpr``) with every input -- integer keys and
        PRNG key arrays included -- as a traced argument, searched for
        random-number primitives. Keys built from constants inside ``fn``
        are not traced; the output comparison of :meth:`faithful_float64`
        is the net for those.
        """
        if _draws_random(self._jaxpr()):
            return "draws jax.random numbers, whose values change in 64-bit mode"
        return None

    def _jaxpr(self):
        """The jaxpr of one call at the caller's values (traced once per target; raises where it cannot be)."""
        if "_traced" not in self.__dict__:
            flat = {n: (self.originals[n] if n in self.originals else self.constants[n]) for n in self.order}
            keys = {a.name: a.obj for a in self.args if a.kind == "opaque" and isinstance(a.obj, jax.Array)}
            self.__dict__["_traced"] = jax.make_jaxpr(lambda v, k: self.call_user(v, k))(self.convert(flat), keys).jaxpr
        return self.__dict__["_traced"]

    def custom_primal(self, fn: Callable) -> tuple[Callable | None, str]:
        """The undecorated function of a ``jax.custom_vjp``/``custom_jvp`` (also under ``jax.jit``)."""
        inner = fn
        for _ in range(4):
            if isinstance(inner, (jax.custom_vjp, jax.custom_jvp)):
                return inner.fun, f"jax.vjp of the primal of {getattr(inner.fun, '__name__', 'the custom_vjp')}"
            if isinstance(inner, functools.partial):
                base, how = self.custom_primal(inner.func)
                return (None, how) if base is None else (functools.partial(base, *inner.args, **inner.keywords), how)
            inner = getattr(inner, "__wrapped__", None)
            if inner is None:
                break
        from ._jax_primal import InlinedPrimal

        # custom_vjp/custom_jvp calls *inside* the code (a layer, an activation): each runs its primal
        return InlinedPrimal(fn, require_custom=self.user_vjp is None), (
            f"jax.vjp of {getattr(fn, '__name__', type(fn).__name__)} with each custom_vjp/custom_jvp inside "
            "differentiated through its primal")

    def primal_gradients(self, cotangent: np.ndarray, dtype: Any = np.float64):
        """As :meth:`FrameworkFunctionTarget.primal_gradients`, declining at once for plain JAX code.

        One trace (``jax.make_jaxpr``, no compilation) tells whether the
        code calls a ``custom_vjp``/``custom_jvp`` anywhere inside; where it
        calls none and has no user ``vjp=``, JAX's own autodiff is the
        gradient under test and there is no independent reference to run.
        """
        if self.user_vjp is None and not self._calls_custom():
            from ..references import Declined

            raise Declined(f"{getattr(self.user_fn, '__name__', 'the function')} calls no custom_vjp/custom_jvp: "
                           "its gradient comes from jax autodiff itself", applies=False)
        return super().primal_gradients(cotangent, dtype=dtype)

    def _calls_custom(self) -> bool:
        """Whether the code calls a custom-derivative function (traced once per target; True if it cannot be)."""
        known = self.__dict__.get("_custom_calls")
        if known is None:
            from ._jax_primal import calls_custom

            try:
                known = calls_custom(self._jaxpr())
            except Exception:  # noqa: BLE001 - untraceable code: the reference run itself decides
                known = True
            self.__dict__["_custom_calls"] = known
        return known

    # -- framework specifics ----------------------------------------------------
    def is_array(self, value: Any) -> bool:
        return is_jax_array(value)

    def to_numpy(self, value: Any, name: str) -> np.ndarray:
        if jnp.iscomplexobj(value):
            self.complex_inputs.add(name)
        return _real_view(np.array(value))

    def to_framework(self, value: np.ndarray, name: str | None, dtype=None) -> Any:
        if name in self.complex_inputs:
            return _complex_of(jnp.asarray(value))
        return jnp.asarray(value, dtype=dtype)

    def flatten_input(self, value: Any):
        """Any pytree with at least one leaf: paths in JAX's notation (``['W']``, ``[0]``, ``.attr``)."""
        if is_jax_array(value) or isinstance(value, (np.ndarray, np.generic)):
            return None
        pairs, treedef = jax.tree_util.tree_flatten_with_path(value)
        if not pairs or (len(pairs) == 1 and pairs[0][1] is value):
            return None
        return ([jax.tree_util.keystr(path) for path, _ in pairs], [leaf for _, leaf in pairs],
                lambda new: jax.tree_util.tree_unflatten(treedef, list(new)))

    def float_leaf(self, value: Any) -> bool:
        return is_jax_array(value) and (jnp.issubdtype(value.dtype, jnp.floating)
                                        or jnp.issubdtype(value.dtype, jnp.complexfloating))

    def leaf_to_numpy(self, value: Any) -> np.ndarray:
        return _real_view(np.array(value, copy=True))

    def leaf_shape(self, value: Any) -> tuple:
        return tuple(value.shape) + ((2,) if jnp.issubdtype(value.dtype, jnp.complexfloating) else ())

    def leaves_of(self, out: Any) -> list:
        return [v for v in jax.tree_util.tree_leaves(out) if is_jax_array(v)]

    def rebuild(self, tree: Any, leaves: list) -> Any:
        flat, treedef = jax.tree_util.tree_flatten(tree)
        it = iter(leaves)
        return jax.tree_util.tree_unflatten(treedef, [next(it) if self.float_leaf(v) else None for v in flat])

    def context(self, flat):
        wide = any(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in flat.values())
        if wide and self._x64 is not None and not _x64_enabled():
            return self._x64(True)
        return contextlib.nullcontext()

    def _jitted(self, role: str, build: Callable[[], Callable], eager: Callable, *args) -> Any:
        """``jax.jit(build())(*args)``, compiled once per role; ``eager(*args)`` where the code cannot be jitted.

        A failure under ``jit`` is retried eagerly: if the eager call fails
        too, that error (the code's own) is raised; if it succeeds, the code
        cannot be traced (value-dependent Python control flow, numpy calls on
        traced arrays...) and runs eagerly for the rest of the check, with a
        warning saying why.
        """
        __tracebackhide__ = True
        key = self._compile_key(role)
        compiled = self._jit.get(role)
        if compiled is None and key is not None:
            compiled = _COMPILED.get(key)
            if compiled is not None:
                _COMPILED.move_to_end(key)
        if isinstance(compiled, str):
            self._jit[role] = compiled
            self._warn(compiled)
            return eager(*args)
        try:
            if compiled is None:
                compiled = jax.jit(build())
                if key is not None:
                    _COMPILED[key] = compiled
                    while len(_COMPILED) > COMPILED_CACHE_SIZE:
                        _COMPILED.popitem(last=False)
            self._jit[role] = compiled
            return compiled(*args)
        except Exception as exc:  # noqa: BLE001 - retried eagerly below
            out = eager(*args)
            self._not_jittable(role, exc)
            return out

    def _not_jittable(self, role: str, exc: BaseException) -> None:
        """Remember (for this check and later ones) and say that ``role`` runs eagerly, and why."""
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        why = (f"{self.what if role == 'autodiff' else 'the function'} could not be compiled with jax.jit "
               f"({type(cause).__name__}: {first[:200]}), so it ran eagerly: every primitive compiles on its "
               "first use, which is much slower -- make it traceable (jax.lax.cond/where instead of Python "
               "branches on values, jnp instead of np)")
        self._jit[role] = why
        key = self._compile_key(role)
        if key is not None:
            _COMPILED[key] = why
        self._warn(why)

    def _compile_key(self, role: str) -> tuple | None:
        """What a compiled callable of ``role`` depends on beyond its array arguments, or None (not shareable).

        The code (function, vjp), which inputs are differentiated, and the
        layout of the arguments: names, keyword or not, kind, and the
        identity of every non-array argument and tree leaf (they are baked
        into the compiled function as constants).
        """
        layout = []
        for a in self.args:
            if a.kind == "opaque":
                layout.append((a.name, a.keyword, a.kind, id(a.obj)))
            elif a.kind == "tree":
                layout.append((a.name, a.keyword, a.kind, tuple(map(str, a.flat)),
                               tuple(id(leaf) for leaf, f in zip(a.leaves, a.flat) if f is None)))
            else:
                layout.append((a.name, a.keyword, a.kind))
        try:
            key = (role, self.user_fn, self.user_vjp, tuple(self.point), tuple(layout))
            hash(key)
        except TypeError:
            return None
        return key

    def run(self, flat):
        """Evaluate ``fn`` on numpy arguments, under ``jax.jit`` (see :meth:`_jitted`)."""
        values = self.convert(flat)
        return self._jitted("call", lambda: self.call_user, self.call_user, values)

    #: A compilation costs ~0.1-0.3 s, about 2000 plain evaluations: smaller
    #: requests run as a loop.
    batch_min_rows = 2048

    def _rows_per_call(self, name: str) -> int:
        """A power of two (every call of an input is padded to one size: one compilation)."""
        return 1 << (super()._rows_per_call(name).bit_length() - 1)

    def _vectorised(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """One call of the compiled ``vmap`` of ``fn`` over single-element perturbations of input ``name``.

        Rows are padded (with copies of the first) to a power of two, at
        least the largest batch seen for ``name``, so a check compiles about
        once per input.
        """
        (idx_p, vals_p), n = self._padded(("element", name), idx.astype(np.int32), vals)
        return self._compiled(("element", name), self._element_fn, idx_p, vals_p)[:n]

    def _vectorised_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """One call of the compiled ``vmap`` of ``fn`` over whole values of input ``name`` (padded likewise)."""
        (rows_p,), n = self._padded(("rows", name), rows)
        return self._compiled(("rows", name), self._rows_fn, rows_p)[:n]

    def _padded(self, key, *arrays):
        sizes = self.__dict__.setdefault("_vmapped_rows", {})
        n = len(arrays[0])
        rows = max(sizes.get(key, 1), 1 << max(0, (n - 1).bit_length()))
        sizes[key] = rows
        out = []
        for a in arrays:
            p = np.empty((rows,) + a.shape[1:], dtype=a.dtype)
            p[:n] = a
            p[n:] = a[0]
            out.append(p)
        return out, n

    def _compiled(self, key, build, *batched):
        fns = self.__dict__.setdefault("_vmapped", {})
        with self.context(self.point):
            if key not in fns:
                fns[key] = build(key[1])
            base = self.convert(dict(zip(self.order, self._args(self.point))))
            return np.asarray(fns[key](base, *[jnp.asarray(b) for b in batched]))

    def _output(self, out):
        if self.float_leaf(out):
            return _real_view_jnp(out)
        leaves = [leaf for leaf in self.leaves_of(out) if self.float_leaf(leaf)]
        if not leaves:
            raise TypeError(f"the function returned {type(out).__name__} with no floating-point array")
        return jnp.concatenate([jnp.reshape(_real_view_jnp(leaf), -1) for leaf in leaves])

    def _element_fn(self, name: str):
        shape = self.point[name].shape

        def one(base, i, v):
            values = dict(base)
            values[name] = _real_view_jnp(base[name]).reshape(-1).at[i].set(v).reshape(shape)
            if name in self.complex_inputs:
                values[name] = _complex_of(values[name])
            return self._output(self.call_user(values))

        return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))

    def _rows_fn(self, name: str):
        def one(base, row):
            values = dict(base)
            values[name] = _complex_of(row) if name in self.complex_inputs else row
            return self._output(self.call_user(values))

        return jax.jit(jax.vmap(one, in_axes=(None, 0)))

    def autodiff(self, pieces, flat):
        """``jax.vjp`` of ``fn`` at ``flat`` against the cotangent ``pieces``: forward and backward in one jit.

        The output's structure comes from one abstract evaluation
        (``jax.eval_shape``, no computation); integer output leaves get
        ``float0`` cotangents.
        """
        values = self.convert(flat)
        diff = list(self.point)

        def closed(base, *dv):
            full = dict(base)
            full.update(zip(diff, dv))
            return self.call_user(full)

        def cotangent(out):  # arrays or shape/dtype structs
            leaves, treedef = jax.tree_util.tree_flatten(out)
            it = iter(pieces)
            cts = []
            for leaf in leaves:
                if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
                    # JAX's vjp is the transpose of the R-linear map (no conjugation): the cotangent of the real
                    # loss sum(Re u Re y + Im u Im y) is conj(u) (see _complex_of)
                    cts.append(jnp.conj(_complex_of(jnp.asarray(next(it)))).astype(leaf.dtype))
                elif jnp.issubdtype(leaf.dtype, jnp.floating):
                    cts.append(jnp.asarray(next(it), dtype=leaf.dtype))
                else:
                    cts.append(np.zeros(np.shape(leaf), dtype=jax.dtypes.float0))
            return jax.tree_util.tree_unflatten(treedef, cts)

        def pull(f_vjp, ct):
            try:
                return f_vjp(ct)
            except ValueError as exc:
                if "bwd rule must produce" in str(exc):
                    raise ShapeMismatch(f"{self.what}: the custom_vjp bwd rule returned a gradient of the wrong shape "
                                        f"({exc}); sum over broadcast axes?") from exc
                raise

        def vjp(base, ct):
            out, f_vjp = jax.vjp(lambda *dv: closed(base, *dv), *[base[n] for n in diff])
            return out, pull(f_vjp, ct)

        def eager(base):
            out, f_vjp = jax.vjp(lambda *dv: closed(base, *dv), *[base[n] for n in diff])
            return out, pull(f_vjp, cotangent(out))

        def backward(base):
            if not isinstance(self._jit.get("autodiff"), str):
                try:  # the output's structure, abstractly (a trace, no computation)
                    ct = cotangent(jax.eval_shape(closed, base, *[base[n] for n in diff]))
                except Exception as exc:  # noqa: BLE001 - not traceable: eager below (which raises a real error)
                    out = eager(base)
                    self._not_jittable("autodiff", exc)
                    return out
                return self._jitted("autodiff", lambda: vjp, vjp, base, ct)
            self._warn(self._jit["autodiff"])
            return eager(base)

        out, grads = call_user(self.what, "backward", backward, (values,), names=("inputs",))
        self._record_output(out)
        # JAX returns dL/dRe - i dL/dIm for a complex input; its conjugate's real view is what finite
        # differences of the real and imaginary parts measure (torch's convention)
        return {n: _real_view(np.conj(np.array(g)) if n in self.complex_inputs else np.array(g))
                for n, g in zip(diff, grads)}
