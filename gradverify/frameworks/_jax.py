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

Everything is evaluated under ``jax.jit`` (batches under ``jax.jit(jax.vmap)``),
and the compiled callables are kept per function across checks
(:data:`_COMPILED`): a second check of the same function with inputs of the
same shapes traces and compiles nothing (``docs/frameworks.md``, "JAX code
under test: compilation"; JAX's persistent compilation cache, where the
caller set one, carries them across processes).
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ShapeMismatch
from ..layers import call_user
from ._common import Arg, FrameworkFunctionTarget

__all__ = ["JaxFunctionTarget", "is_jax_array", "x64_context"]


#: Compiled callables shared by the checks of one process, per function: the code's key (see
#: :meth:`JaxFunctionTarget._code_key`) -> :class:`_Compiled`, least recently used first. Repeated checks
#: of the same function (``examples=``, a test suite) trace and compile nothing again.
_COMPILED: collections.OrderedDict[tuple, _Compiled] = collections.OrderedDict()
#: Functions kept in :data:`_COMPILED` (the least recently checked dropped first): the cache holds these
#: functions, their pass-through arguments and XLA's executables alive, never a check's arrays.
COMPILED_CACHE_SIZE = 16


class _Code:
    """The code under test and its argument layout, holding no array of a check: what compiled callables close over.

    A compiled callable outlives its check in :data:`_COMPILED`; closing
    over this rather than the target keeps the check's copies of the inputs
    (and the caller's arrays in its argument trees) out of the cache. Its
    pass-through arguments and non-array tree leaves are held, so the ids
    in the cache key stay theirs.
    """

    build_call = FrameworkFunctionTarget.build_call
    call_user = FrameworkFunctionTarget.call_user

    def __init__(self, target: JaxFunctionTarget):
        self.user_fn = target.user_fn
        self.args = [Arg(a.name, a.keyword, a.kind, obj=a.obj, flat=a.flat, rebuild=a.rebuild,
                         leaves=[None if f is not None else leaf for f, leaf in zip(a.flat, a.leaves)])
                     for a in target.args]
        self.complex_inputs = frozenset(target.complex_inputs)

    def framework_values(self, values: dict) -> dict:
        """Arrays by input name as the code gets them: complex inputs from their real views (traceable)."""
        return {n: (_complex_of(v) if n in self.complex_inputs else v) for n, v in values.items()}


class _Compiled:
    """What one function's checks share: compiled callables by role, and which input signatures were checked.

    Attributes:
        code: the :class:`_Code` the callables close over.
        roles: role -> the ``jax.jit`` object (its own cache holds one
            executable per shape and dtype), or the reason the code cannot
            be jitted (a str): ``"call"``, ``"autodiff"``, ``("element",
            name)``, ``("rows", name)``.
        seen: the input signatures (names, shapes, dtypes) checked so far.
        random: input signature -> :meth:`JaxFunctionTarget.random_draws`'s answer.
        custom: input signature -> whether the code calls a ``custom_vjp``/``custom_jvp``.
        inlined: the :class:`~gradverify.frameworks._jax_primal.InlinedPrimal` of the
            function (one object across checks, so its own compiled callables are reused).
    """

    __slots__ = ("code", "custom", "inlined", "random", "roles", "seen")

    def __init__(self, code: _Code):
        self.code = code
        self.roles: dict = {}
        self.seen: set = set()
        self.random: dict = {}
        self.custom: dict = {}
        self.inlined: Any = None


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


class JaxFunctionTarget(FrameworkFunctionTarget):
    """A JAX function (see the module docstring).

    Cost per evaluation: one call of ``fn`` on float64 arrays, compiled with
    ``jax.jit`` whether or not the caller jitted it (run eagerly, every
    primitive of ``fn`` compiles on its first use in each dtype, ~0.1 s
    each: a small custom_vjp attention took ~9 s per check eagerly and 0.6 s
    jitted), the numpy arguments handed to the compiled call as they are (no
    per-array conversion). The analytic pass is one ``jax.vjp`` in the
    caller's dtype, forward, cotangent and backward in one compiled call.
    Compiled callables are kept per function across checks
    (:data:`_COMPILED`): a second check of the same function with inputs of
    the same shapes traces and compiles nothing. Code that cannot be traced
    (Python control flow on values, numpy calls on traced arrays) runs
    eagerly, with a warning.

    Batched requests (:class:`~gradverify.batching.BatchedEvaluation`:
    a full check's perturbations, fast mode's probes) run as one call of
    ``jax.jit(jax.vmap(fn))`` per tensor under the same scoped 64-bit mode,
    batches padded to a power of two (about one compilation per tensor),
    falling back to a plain loop where ``fn`` cannot be traced. A
    compilation costs about as much as 1000-2000 plain evaluations, so on a
    function's first check only requests of :attr:`batch_min_rows` rows and
    more are vectorised; once the same function has been checked with
    inputs of the same shapes (:attr:`warm_batch_min_rows`), every request
    of that many rows is.
    """

    framework = "jax"

    #: On a function's first check, requests of fewer rows run as a loop (a
    #: compilation, ~0.1-0.3 s, costs about 2000 plain evaluations).
    batch_min_rows = 2048
    #: Once the function was checked before with inputs of these shapes
    #: (its compiled batch calls cached, or worth compiling for the checks to
    #: come), requests of this many rows and more are vectorised.
    warm_batch_min_rows = 8

    def __init__(self, fn: Callable, inputs: Any, vjp: Callable | None, constants: Any = ()):
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

    # -- compiled callables, shared by the checks of one function --------------
    def forget_compiled(self) -> None:
        """Look the compiled callables up afresh (the copy computing the primal's autodiff has another function)."""
        self.__dict__.pop("_entry", None)
        self.__dict__.pop("_repeat", None)

    def _compiled_entry(self) -> _Compiled:
        """This function's :class:`_Compiled`: from :data:`_COMPILED` where an earlier check left it, else new."""
        entry = self.__dict__.get("_entry")
        if entry is None:
            key = self._code_key()
            entry = None if key is None else _COMPILED.get(key)
            if entry is None:
                entry = _Compiled(_Code(self))
                if key is not None:
                    _COMPILED[key] = entry
                    while len(_COMPILED) > COMPILED_CACHE_SIZE:
                        _COMPILED.popitem(last=False)
            else:
                _COMPILED.move_to_end(key)
            self._entry = entry
        return entry

    def _code_key(self) -> tuple | None:
        """What compiled callables depend on beyond their array arguments, or None (not shareable).

        The code (function, vjp), which inputs are differentiated and which
        are complex, and the layout of the arguments: names, keyword or not,
        kind, and the identity of every non-array argument and tree leaf
        (they are baked into the compiled function as constants; the cache
        entry holds them, so their ids stay theirs). What ``jax.jit`` itself
        keys on beyond that (shapes, dtypes, 64-bit mode) its own cache sees.
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
            key = (self.user_fn, self.user_vjp, tuple(self.point), tuple(sorted(self.complex_inputs)), tuple(layout))
            hash(key)
        except TypeError:
            return None
        return key

    def _signature(self, source: dict) -> tuple:
        """Names, shapes and dtypes of the call's arrays (``source`` for the inputs, constants as they are)."""
        return tuple((n, a.shape, a.dtype.str) for n, a in zip(self.order, self._arrays(source)))

    def _arrays(self, source: dict) -> list:
        """The call's arrays by position in ``self.order``, not copied (a compiled call only reads them)."""
        return [source[n] if n in source else self.constants[n] for n in self.order]

    def _checked_before(self) -> bool:
        """Whether this function was checked earlier in this process with inputs of the same shapes and dtypes."""
        known = self.__dict__.get("_repeat")
        if known is None:
            entry = self._compiled_entry()
            sig = self._signature(self.point)
            known = self._repeat = sig in entry.seen
            entry.seen.add(sig)
        return known

    def _min_rows(self, name: str) -> int:
        """:attr:`batch_min_rows` on a function's first check; :attr:`warm_batch_min_rows` (if lower) after."""
        if self.warm_batch_min_rows < self.batch_min_rows and self._checked_before():
            return self.warm_batch_min_rows
        return self.batch_min_rows

    def _jitted(self, role: str, build: Callable[[_Code], Callable], eager: Callable, *args) -> Any:
        """``jax.jit(build(code))(*args)``, compiled once per function and role; ``eager(*args)`` where it cannot be.

        A failure under ``jit`` is retried eagerly: if the eager call fails
        too, that error (the code's own) is raised; if it succeeds, the code
        cannot be traced (value-dependent Python control flow, numpy calls on
        traced arrays...) and runs eagerly for the rest of the check and
        later checks of the function, with a warning saying why.
        """
        __tracebackhide__ = True
        entry = self._compiled_entry()
        compiled = entry.roles.get(role)
        if isinstance(compiled, str):
            self._warn(compiled)
            return eager(*args)
        try:
            if compiled is None:
                compiled = entry.roles[role] = jax.jit(build(entry.code))
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
        self._compiled_entry().roles[role] = why
        self._warn(why)

    def random_draws(self) -> str | None:
        """Does ``fn`` draw ``jax.random`` numbers (whose values change in 64-bit mode)?

        One trace (``jax.make_jaxpr``) with every input -- integer keys and
        PRNG key arrays included -- as a traced argument, searched for
        random-number primitives; the answer is kept per function and input
        signature. Keys built from constants inside ``fn`` are not traced;
        the output comparison of :meth:`faithful_float64` is the net for those.
        """
        entry = self._compiled_entry()
        keys = {a.name: a.obj for a in self.args if a.kind == "opaque" and isinstance(a.obj, jax.Array)}
        sig = self._signature(self.originals) + tuple((n, k.shape, str(k.dtype)) for n, k in keys.items())
        if sig not in entry.random:
            entry.random[sig] = ("draws jax.random numbers, whose values change in 64-bit mode"
                                 if _draws_random(self._jaxpr()) else None)
        return entry.random[sig]

    def _jaxpr(self):
        """The jaxpr of one call at the caller's values (traced once per target; raises where it cannot be)."""
        if "_traced" not in self.__dict__:
            flat = dict(zip(self.order, self._arrays(self.originals)))
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
        entry = self._compiled_entry() if fn is self.user_fn else None
        primal = None if entry is None else entry.inlined
        if primal is None or primal.fn is not fn:
            primal = InlinedPrimal(fn, require_custom=self.user_vjp is None)
            if entry is not None:
                entry.inlined = primal
        return primal, (
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
        """Whether the code calls a custom-derivative function (traced once per function and input signature;
        True where it cannot be traced: the reference run itself decides then)."""
        entry = self._compiled_entry()
        sig = self._signature(self.originals)
        if sig not in entry.custom:
            from ._jax_primal import calls_custom

            try:
                entry.custom[sig] = calls_custom(self._jaxpr())
            except Exception:  # noqa: BLE001 - untraceable code: the reference run itself decides
                entry.custom[sig] = True
        return entry.custom[sig]

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
        return _float_leaf(value)

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

    # -- evaluations ---------------------------------------------------------------
    def run(self, flat):
        """Evaluate ``fn`` on numpy arguments, under ``jax.jit`` (see :meth:`_jitted`).

        The numpy arrays go to the compiled call as they are (its C++ path
        transfers them in one step; ``jnp.asarray`` per array cost ~50 us
        each); only an eager call converts them first.
        """
        return self._jitted("call", _call_of, lambda v: self.call_user(self.convert(v)), dict(flat))

    def _rows_per_call(self, name: str, given: bool = False) -> int:
        """A power of two (every call of an input is padded to one size: one compilation)."""
        return 1 << (super()._rows_per_call(name, given).bit_length() - 1)

    def _vectorised(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """One call of the compiled ``vmap`` of ``fn`` over single-element perturbations of input ``name``.

        Rows are padded (with copies of the first) to a power of two, at
        least the largest batch seen for ``name``, so a check compiles about
        once per input (and a later check of the function not at all).
        """
        (idx_p, vals_p), n = self._padded(("element", name), idx.astype(np.int32), vals)
        return self._vmapped(("element", name), _element_fn, idx_p, vals_p)[:n]

    def _vectorised_rows(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """One call of the compiled ``vmap`` of ``fn`` over whole values of the inputs ``rows`` names (padded likewise)."""
        names = tuple(rows)
        padded, n = self._padded(("rows", names), *rows.values())
        return self._vmapped(("rows", names), _rows_fn, dict(zip(names, padded)))[:n]

    def _padded(self, key, *arrays):
        sizes = self.__dict__.setdefault("_vmapped_rows", {})
        n = len(arrays[0])
        rows = max(sizes.get(key, 1), 1 << max(0, (n - 1).bit_length()))
        sizes[key] = rows
        if rows == n:  # already the size compiled for: no copy
            return list(arrays), n
        out = []
        for a in arrays:
            p = np.empty((rows,) + a.shape[1:], dtype=a.dtype)
            p[:n] = a
            p[n:] = a[0]
            out.append(p)
        return out, n

    def _vmapped(self, role, build, *batched):
        """The compiled batch call of ``role`` (built once per function and role) on the point and ``batched``."""
        entry = self._compiled_entry()
        fn = entry.roles.get(role)
        if fn is None:
            fn = entry.roles[role] = build(entry.code, role[1])
        with self.context(self.point):
            return np.asarray(fn(dict(zip(self.order, self._arrays(self.point))), *batched))

    def autodiff(self, pieces, flat):
        """``jax.vjp`` of ``fn`` at ``flat`` against the cotangent ``pieces``: forward and backward in one jit.

        The cotangent is built inside the compiled call from the output's
        structure (integer output leaves get ``float0`` cotangents), so the
        call traces once per function, dtype and shape.
        """
        diff = list(self.point)

        def eager(base, cts):
            return _vjp_at(self.call_user, diff, self.convert(base), cts, self.what)

        def backward(base, cts):
            return self._jitted("autodiff", lambda code: _autodiff_of(code, diff, self.what), eager, base, cts)

        cts = [np.asarray(p) for p in pieces]
        out, grads = call_user(self.what, "backward", backward, (dict(flat), cts), names=("inputs", "cotangent"))
        self._record_output(out)
        # JAX returns dL/dRe - i dL/dIm for a complex input; its conjugate's real view is what finite
        # differences of the real and imaginary parts measure (torch's convention)
        return {n: _real_view(np.conj(np.array(g)) if n in self.complex_inputs else np.array(g))
                for n, g in zip(diff, grads)}


# -- the compiled callables: functions of a _Code, never of a target (see _COMPILED) -----------------

def _float_leaf(value: Any) -> bool:
    return is_jax_array(value) and (jnp.issubdtype(value.dtype, jnp.floating)
                                    or jnp.issubdtype(value.dtype, jnp.complexfloating))


def _flat_output(out):
    """The floating leaves of an output, real views, as one array (one leaf: its real view as is)."""
    if _float_leaf(out):
        return _real_view_jnp(out)
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(out) if _float_leaf(leaf)]
    if not leaves:
        raise TypeError(f"the function returned {type(out).__name__} with no floating-point array")
    return jnp.concatenate([jnp.reshape(_real_view_jnp(leaf), -1) for leaf in leaves])


def _call_of(code: _Code) -> Callable:
    """``values -> fn(...)`` on numpy/traced arrays by input name (complex inputs as real views)."""
    def call(values):
        return code.call_user(code.framework_values(values))

    return call


def _element_fn(code: _Code, name: str) -> Callable:
    """``jit(vmap(...))``: the outputs with element ``i`` of input ``name`` (its real view, flattened) set to ``v``."""
    def one(base, i, v):
        values = dict(base)
        arr = base[name]
        values[name] = arr.reshape(-1).at[i].set(v).reshape(arr.shape)
        return _flat_output(code.call_user(code.framework_values(values)))

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def _rows_fn(code: _Code, names: tuple) -> Callable:
    """``jit(vmap(...))``: the outputs with the inputs ``names`` replaced by each row of theirs together."""
    def one(base, rows):
        values = dict(base)
        values.update(rows)
        return _flat_output(code.call_user(code.framework_values(values)))

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def _cotangent(out, pieces):
    """The cotangent tree of ``out`` from the pieces of the joined cotangent (one per floating leaf).

    A complex leaf's piece is the real view of ``u``: JAX's vjp is the
    transpose of the R-linear map (no conjugation), so the cotangent of the
    real loss ``sum(Re u Re y + Im u Im y)`` is ``conj(u)`` (see
    :func:`_complex_of`); integer leaves get ``float0`` zeros.
    """
    leaves, treedef = jax.tree_util.tree_flatten(out)
    it = iter(pieces)
    cts = []
    for leaf in leaves:
        dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype
        if jnp.issubdtype(dtype, jnp.complexfloating):
            cts.append(jnp.conj(_complex_of(jnp.asarray(next(it)))).astype(dtype))
        elif jnp.issubdtype(dtype, jnp.floating):
            cts.append(jnp.asarray(next(it), dtype=dtype))
        else:
            cts.append(np.zeros(np.shape(leaf), dtype=jax.dtypes.float0))
    return jax.tree_util.tree_unflatten(treedef, cts)


def _vjp_at(call: Callable, diff: list, values: dict, pieces: list, what: str):
    """``(fn(values), vjp against the cotangent pieces)`` for the inputs ``diff`` (framework values)."""
    def closed(*dv):
        full = dict(values)
        full.update(zip(diff, dv))
        return call(full)

    out, f_vjp = jax.vjp(closed, *[values[n] for n in diff])
    try:
        return out, f_vjp(_cotangent(out, pieces))
    except ValueError as exc:
        if "bwd rule must produce" in str(exc):
            raise ShapeMismatch(f"{what}: the custom_vjp bwd rule returned a gradient of the wrong shape "
                                f"({exc}); sum over broadcast axes?") from exc
        raise


def _autodiff_of(code: _Code, diff: list, what: str) -> Callable:
    """``(base, pieces) -> (output, gradients)``: :func:`_vjp_at` on numpy/traced arrays, to be jitted."""
    def vjp(base, pieces):
        return _vjp_at(code.call_user, diff, code.framework_values(base), pieces, what)

    return vjp
