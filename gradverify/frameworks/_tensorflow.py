"""TensorFlow adapter: TensorFlow functions (eager, ``tf.function``, ``tf.custom_gradient``) and Keras layers.

Imported only when an input, the function or the layer already comes from
TensorFlow or Keras (see :mod:`gradverify.frameworks`), so ``import
gradverify`` never imports tensorflow.

* :class:`TensorFlowFunctionTarget` -- the analytic gradient of
  ``<u, fn(*xs)>`` is ``tf.GradientTape.gradient(outputs, inputs,
  output_gradients=u)`` in the caller's dtype (for a ``tf.custom_gradient``
  function that runs its hand-written gradient function), or the caller's
  ``vjp=``; the finite differences evaluate ``fn`` on float64 tensors. The
  exact reference of a ``tf.custom_gradient`` function is TensorFlow's
  autodiff of its undecorated primal (the function that returns ``(y,
  grad_fn)``, wrapped to return ``y``): ``against="tensorflow"``; code that
  calls ``tf.custom_gradient`` functions inside is run with each of them
  as its primal for the reference.
* :func:`keras_layer_target` -- a Keras 3 layer on the TensorFlow backend
  (``tf.keras.layers.Layer``) as a function of its input and its trainable
  weights through ``layer.stateless_call``: the layer itself is never
  modified. Weights are named as Keras names them -- ``variable.name``
  (``"kernel"``, ``"bias"``), or ``variable.path`` (``"dense/kernel"``)
  where two names clash (nested layers).

Full checks evaluate perturbations in batches with ``tf.vectorized_map``
(:class:`~gradverify.batching.BatchedEvaluation`), traced once per tensor
into a ``tf.function`` the check keeps, falling back to a loop where the
code cannot be vectorised.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable

import numpy as np

from ..backends.tensorflow import import_tensorflow
from ..errors import ProtocolError, SpecError
from ..layers import draw_input
from ._common import FrameworkFunctionTarget, NestedPrimal

tf = import_tensorflow()

__all__ = ["TensorFlowFunctionTarget", "keras_layer_target", "is_tf_tensor"]


def is_tf_tensor(value: Any) -> bool:
    """A numeric TensorFlow tensor or variable (strings and resources are not)."""
    if not isinstance(value, (tf.Tensor, tf.Variable)) and not _is_keras_variable(value):
        return False
    dt = tf.as_dtype(value.dtype)
    return dt.is_floating or dt.is_integer or dt.is_bool


def _is_keras_variable(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "keras" and hasattr(value, "value") and hasattr(value, "path")


def _primal_of(fn: Callable) -> Callable | None:
    """The function a ``tf.custom_gradient`` decorated (also under ``tf.function`` or ``functools.partial``)."""
    inner = fn
    for _ in range(6):
        if isinstance(inner, functools.partial):
            base = _primal_of(inner.func)
            return None if base is None else functools.partial(base, *inner.args, **inner.keywords)
        deco = getattr(inner, "_tf_decorator", None)
        if deco is not None and getattr(deco, "decorator_name", "") == "custom_gradient":
            return deco.decorated_target
        nxt = getattr(inner, "python_function", None) or getattr(inner, "__wrapped__", None)
        if nxt is None or nxt is inner:
            return None
        inner = nxt
    return None


@contextlib.contextmanager
def _custom_gradients_as_primals(seen: list):
    """Within the context, every ``tf.custom_gradient`` function runs as its primal (TensorFlow differentiates it).

    ``tf.custom_gradient``'s wrapper looks up its eager and graph
    implementations in its module on every call; for the duration both
    return the decorated function's ``y`` (recorded on the tape like any
    TensorFlow code), and the names of the functions met are appended to
    ``seen``. ``tf.function``s run eagerly meanwhile, so a trace cached
    with the hand-written gradient is not reused.
    """
    from tensorflow.python.ops import custom_gradient as cg

    saved = cg._eager_mode_decorator, cg._graph_mode_decorator
    eager = tf.config.functions_run_eagerly()

    def primal(f, args, kwargs):
        seen.append(getattr(f, "__name__", "custom_gradient"))
        out = f(*args, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
            raise ProtocolError("a tf.custom_gradient function must return (y, grad_fn)")
        return out[0]

    cg._eager_mode_decorator = cg._graph_mode_decorator = primal
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        cg._eager_mode_decorator, cg._graph_mode_decorator = saved
        tf.config.run_functions_eagerly(eager)


class _Inlined(NestedPrimal):
    """TensorFlow code whose reference runs in :meth:`scope`: each ``tf.custom_gradient`` inside as its primal."""

    def scope(self):
        return _custom_gradients_as_primals(self._seen)


class _Primal:
    """A ``tf.custom_gradient`` primal ``(y, grad_fn)`` seen as ``y``: TensorFlow differentiates its forward."""

    def __init__(self, fn: Callable):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
            raise ProtocolError("a tf.custom_gradient function must return (y, grad_fn)")
        return out[0]


class TensorFlowFunctionTarget(FrameworkFunctionTarget):
    """A TensorFlow callable (see the module docstring).

    Cost per evaluation: one call of ``fn`` on float64 tensors (plus a copy
    of each input); the analytic pass is one forward under a
    ``tf.GradientTape`` and one ``tape.gradient`` in the caller's dtype.
    """

    framework = "tensorflow"
    #: ``tf.vectorized_map`` traces the function on a set of inputs' first
    #: call (a tanh MLP of 5,000 weights: 115 ms, the time of 85 eager
    #: calls; the traced call of 64 rows then takes 3.5 ms), so a first
    #: request of fewer rows runs as a loop of eager calls.
    batch_min_rows = 128
    #: Once the vectorised call of a set of inputs is traced (a
    #: ``tf.function`` kept by the check, any batch size), requests of this
    #: many rows and more are vectorised.
    warm_batch_min_rows = 8

    def __init__(self, fn: Callable, inputs: Any, vjp: Callable | None, constants: Any = (), *,
                 names_from: Callable | None = None):
        super().__init__(fn, inputs, vjp, names_from=names_from if names_from is not None else _names_source(fn),
                         constants=constants)
        self.faithful_float64()

    def custom_primal(self, fn: Callable) -> tuple[Callable | None, str]:
        """The undecorated primal of a ``tf.custom_gradient`` function, returning ``y`` only."""
        base = _primal_of(fn)
        if base is not None:
            name = getattr(base, "__name__", "the custom_gradient function")
            return _Primal(base), f"tensorflow autodiff of the primal of {name}"
        # tf.custom_gradient functions *inside* the code (a layer's activation): each runs its primal
        return _Inlined(fn, require_custom=self.user_vjp is None), (
            f"tensorflow autodiff of {getattr(fn, '__name__', type(fn).__name__)} with each tf.custom_gradient "
            "inside differentiated through its primal")

    # -- framework specifics ----------------------------------------------------
    def is_array(self, value: Any) -> bool:
        return is_tf_tensor(value)

    def to_numpy(self, value: Any, name: str) -> np.ndarray:
        return np.array(tf.convert_to_tensor(value).numpy(), copy=True)

    def to_framework(self, value: np.ndarray, name: str | None, dtype=None) -> Any:
        return tf.constant(np.asarray(value), dtype=dtype)

    def float_leaf(self, value: Any) -> bool:
        return isinstance(value, (tf.Tensor, tf.Variable)) and tf.as_dtype(value.dtype).is_floating

    def leaf_to_numpy(self, value: Any) -> np.ndarray:
        return np.array(value.numpy(), copy=True)

    def autodiff(self, pieces, flat):
        values = self.convert(flat)
        names = list(self.point)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for n in names:
                tape.watch(values[n])
            out = self.call_user(values)
        outs = self._record_output(out)
        if len(outs) != len(pieces):
            raise ProtocolError("the function returned a different number of outputs on this call")
        cts = [tf.constant(np.asarray(p), dtype=o.dtype) for o, p in zip(outs, pieces)]
        grads = tape.gradient(outs, [values[n] for n in names], output_gradients=cts,
                              unconnected_gradients=tf.UnconnectedGradients.NONE)
        if all(g is None for g in grads):
            self._warn("no output of the function is connected to the inputs on the gradient tape (computed "
                       "outside TensorFlow, or through tf.stop_gradient?); the gradient under test is zero")
        result = {}
        for n, g in zip(names, grads):
            if g is None:
                result[n] = np.zeros(self.point[n].shape, dtype=self.originals[n].dtype)
            else:
                if isinstance(g, tf.IndexedSlices):
                    g = tf.convert_to_tensor(g)
                result[n] = np.array(g.numpy(), copy=True)
        return result

    # -- batched evaluation -------------------------------------------------------
    def _vectorised(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Single-element perturbations of input ``name`` as whole rows, one ``tf.vectorized_map`` call."""
        base = self.point[name]
        rows = np.repeat(base.reshape(1, -1), len(idx), axis=0)
        rows[np.arange(len(idx)), idx] = vals
        return self._vectorised_rows({name: rows.reshape((len(idx),) + base.shape)})

    def _vectorised_rows(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """One ``tf.vectorized_map`` call of ``fn`` over whole values of the inputs ``rows`` names.

        The call is a ``tf.function`` traced on the first request for these
        inputs (their rows of any number, the point as arguments: nothing
        of it is baked in) and kept for the rest of the check, so later
        requests run the traced graph instead of tracing ``fn`` again.
        """
        self.random.restore()
        base = self.convert(dict(zip(self.order, self._args(self.point))))
        names = tuple(rows)
        batched = tuple(tf.constant(rows[k]) for k in names)
        traced = self.__dict__.setdefault("_traced_rows", {})
        call = traced.get(names)
        if call is None:
            order = tuple(base)

            def mapped(xs, point):
                at = dict(zip(order, point))

                def one(row):
                    values = dict(at)
                    values.update(zip(names, row))
                    out = self.call_user(values)
                    leaves = [out] if self.float_leaf(out) else [v for v in self.leaves_of(out) if self.float_leaf(v)]
                    if len(leaves) == 1 and self.float_leaf(out):
                        return leaves[0]
                    return tf.concat([tf.reshape(v, [-1]) for v in leaves], axis=0)

                return tf.vectorized_map(one, xs, fallback_to_while_loop=False)

            signature = (tuple(tf.TensorSpec((None,) + tuple(x.shape[1:]), x.dtype) for x in batched),
                         tuple(tf.TensorSpec(v.shape, v.dtype) for v in base.values()))
            # (autograph as tf.vectorized_map has it in eager mode: its own tf.function converts the function)
            call = tf.function(mapped, input_signature=signature)
        with _quiet_tensorflow_log(), _float64_graph():
            out = np.asarray(call(batched, tuple(base.values())))
        traced[names] = call  # (kept once it ran: a call that raised is not reused)
        return out

    def _min_rows(self, name) -> int:
        """:attr:`batch_min_rows` until the vectorised call for ``name`` is traced; :attr:`warm_batch_min_rows` after."""
        names = name if isinstance(name, tuple) else (name,)
        if names in self.__dict__.get("_traced_rows", {}):
            return min(self.warm_batch_min_rows, self.batch_min_rows)
        return self.batch_min_rows


@contextlib.contextmanager
def _quiet_tensorflow_log():
    """TensorFlow's logger above ERROR for the duration: pfor logs every op it cannot vectorise (a convolution
    with a batched kernel: 180 lines) before it raises, and the check then takes the loop, saying why in
    ``batch_fallbacks``; the refusal is not the user's error."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _float64_graph():
    """Grappler's remapper off while a traced call runs: its fusions are for float32 and bfloat16 kernels, and
    on float64 graphs, where torch was imported first, it logs "Not handling type DT_DOUBLE" for ops it looks
    at. (Every call: a function is optimised again for each configuration it runs under.) The user's setting
    is put back after (on, the default, where none was set)."""
    options = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": options.get("remapping", True)})


def _names_source(fn: Callable) -> Callable:
    """What to read parameter names from: the undecorated function of a ``tf.function``/``custom_gradient``."""
    inner = fn
    for _ in range(6):
        nxt = getattr(inner, "python_function", None) or getattr(inner, "__wrapped__", None)
        if nxt is None or nxt is inner:
            break
        inner = nxt
    return inner


# ---------------------------------------------------------------------------
# Keras layers
# ---------------------------------------------------------------------------

def is_keras_layer(layer: Any) -> bool:
    """A Keras layer whose backend is TensorFlow (``tf.keras.layers.Layer``)."""
    Layer = getattr(getattr(tf, "keras", None), "layers", None)
    Layer = getattr(Layer, "Layer", None)
    return Layer is not None and isinstance(layer, Layer)


def _weight_names(variables: list) -> list[str]:
    names = [v.name for v in variables]
    if len(set(names)) == len(names):
        return names
    return [getattr(v, "path", v.name) for v in variables]


def keras_layer_target(layer: Any, input_shape: Any, *, inputs: Any, dtype: Any, rng: Any):
    """A Keras layer as a TensorFlow function of its input ``x`` and its trainable weights (see the module docstring).

    Given ``input_shape``, the input is drawn from ``rng`` (standard normal)
    in ``dtype``, by default the layer's variable dtype; an unbuilt layer is
    built for the input's shape. Cost: one ``stateless_call`` per evaluation.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SpecError(f"Keras runs on the {keras.backend.backend()!r} backend; gradverify checks Keras layers on "
                        "the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    if not hasattr(layer, "stateless_call"):
        raise SpecError(f"{type(layer).__name__} has no stateless_call: gradverify checks Keras 3 layers")
    default = np.dtype(getattr(layer, "variable_dtype", None) or "float32")
    x = draw_input(input_shape, inputs, dtype, default, rng, what="layer")
    if x is None:
        x = inputs
        if dtype is not None:
            x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.dtype(dtype))
    x = np.asarray(x.numpy() if hasattr(x, "numpy") else x)
    if not layer.built:
        layer.build(x.shape)
    train = list(layer.trainable_variables)
    frozen = list(layer.non_trainable_variables)
    names = _weight_names(train)
    xname = "input" if "x" in names else "x"
    frozen_values = [tf.convert_to_tensor(v.value) for v in frozen]
    copies: dict[str, Any] = {np.dtype(layer.variable_dtype).name: layer}

    def layer_in(dt: str):
        """The layer computing in ``dt``: Keras casts weights to a layer's own variable dtype, so float64
        evaluations run a float64 copy (``from_config`` with ``dtype="float64"``, built for the input)."""
        if dt not in copies:
            config = dict(layer.get_config())
            config["dtype"] = dt
            try:
                twin = type(layer).from_config(config)
                twin.build(x.shape)
            except Exception as exc:  # noqa: BLE001 - say what to fix
                raise ProtocolError(f"{type(layer).__name__} could not be rebuilt in {dt} from its get_config() "
                                    f"({type(exc).__name__}: {exc}); the float64 oracle needs a float64 copy "
                                    "of the layer") from None
            if _weight_names(list(twin.trainable_variables)) != names:
                raise ProtocolError(f"{type(layer).__name__} rebuilt from get_config() has other weights")
            copies[dt] = twin
        return copies[dt]

    def fn(**kw):
        weights = [kw[n] for n in names]
        dt = weights[0].dtype.name if weights else kw[xname].dtype.name
        const = [tf.cast(v, dt) if v.dtype.is_floating else v for v in frozen_values]
        out, _ = layer_in(dt).stateless_call(weights, const, kw[xname])
        return out

    fn.__name__ = fn.__qualname__ = type(layer).__name__
    values = {xname: tf.constant(x)}
    for n, v in zip(names, train):
        w = np.array(tf.convert_to_tensor(v.value).numpy())
        values[n] = tf.constant(w.astype(x.dtype) if dtype is not None else w)
    target = TensorFlowFunctionTarget(fn, values, None)
    target.kind = "layer"
    return target
