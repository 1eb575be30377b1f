"""Framework adapters: torch, JAX, TensorFlow and PyTensor code under test as a :class:`~gradverify.layers.Target`.

:func:`callable_target` and :func:`module_target` are the only entry points
the checks use. Each returns None when the object is plain numpy, so the
numpy path runs, and ``import gradverify`` never imports a framework: torch,
jax, tensorflow or pytensor is imported only when an input, the function or
the layer already comes from it (its module is then in ``sys.modules``).

TensorFlow: tensors and variables as inputs, callables from ``tensorflow``
or ``keras`` modules (``tf.function``, ``tf.custom_gradient`` functions),
and Keras layers (:func:`module_target`). PyTensor: an ``Op`` instance, or
a function whose output (on the numpy inputs) is a PyTensor variable --
a function building a graph (see :mod:`gradverify.frameworks._pytensor`).

Which framework a callable belongs to is decided, in order, by:

1. its inputs -- torch tensors or JAX arrays (mixing both is an error);
2. the callable itself -- a ``torch.nn.Module``, a
   ``torch.autograd.Function.apply``, a bound method of a module, or an
   object defined in a ``torch``/``jax``/``jaxlib`` module (``torch.sin``,
   ``jax.jit``-ed and ``jax.custom_vjp`` functions, ``jnp.tanh``...);
3. where torch or jax is already imported and neither of the above
   decides, one probe call of ``fn`` on copies of the numpy inputs: an
   output that is a tensor or a JAX array names the framework (a plain
   Python function written with ``jnp`` and fed numpy arrays is a JAX
   function). The probe costs one extra call and is skipped when neither
   framework is imported.

Numpy inputs of a framework callable become tensors/arrays of the same
dtype; Python scalars and other non-array inputs are passed through
unchanged as constants (wrap a scalar in a tensor to check its gradient).

With ``vjp=``, the framework only runs the function; the gradient under
test is ``vjp(dout, *inputs)`` (keywords for dict inputs), which receives
``dout`` and the inputs as the framework's arrays (torch tensors on the
inputs' device, or JAX arrays) in the caller's dtype and may return
framework or numpy arrays, one per input (None for constants). This is how
gradients from another autodiff engine are checked.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SpecError

__all__ = ["callable_target", "module_target", "framework_of", "framework_inputs"]

_JAX_ROOTS = ("jax", "jaxlib")
_TF_ROOTS = ("tensorflow", "keras", "tf_keras")
#: The frameworks whose import makes the probe call worth its cost.
_PROBED = ("torch", "jax", "tensorflow", "pytensor")


def _root(module: Any) -> str:
    return module.split(".")[0] if isinstance(module, str) else ""


def _value_framework(value: Any) -> str | None:
    root = _root(type(value).__module__)
    if root == "torch":
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            return "torch"
    elif root in _JAX_ROOTS:
        jax = sys.modules.get("jax")
        if jax is not None and isinstance(value, getattr(jax, "Array", ())):
            return "jax"
    elif root in _TF_ROOTS:
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(value, (tf.Tensor, tf.Variable)):
            return "tensorflow"
    elif root == "pytensor":
        graph = sys.modules.get("pytensor.graph.basic")
        if graph is not None and isinstance(value, graph.Variable):
            return "pytensor"
    return None


def _callable_framework(fn: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(fn, torch.nn.Module):
            return "torch"
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
            return "torch"
        if isinstance(owner, torch.nn.Module):
            return "torch"
    op = sys.modules.get("pytensor.graph.op")
    if op is not None and isinstance(fn, op.Op):
        return "pytensor"
    for module in (getattr(fn, "__module__", None), type(fn).__module__):
        root = _root(module)
        if root == "torch":
            return "torch"
        if root in _JAX_ROOTS:
            return "jax"
        if root in _TF_ROOTS:
            return "tensorflow"
        if root == "pytensor":
            return "pytensor"
    if isinstance(fn, functools.partial):
        return _callable_framework(fn.func)
    return None


def _top_values(inputs: Any) -> list:
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    return [inputs]


def _first_framework_leaf(out: Any, depth: int = 0) -> str | None:
    kind = _value_framework(out)
    if kind is not None or depth > 8:
        return kind
    items = out.values() if isinstance(out, Mapping) else out if isinstance(out, (list, tuple)) else ()
    for item in items:
        kind = _first_framework_leaf(item, depth + 1)
        if kind is not None:
            return kind
    return None


def _probe(fn: Callable, inputs: Any) -> str | None:
    if not any(m in sys.modules for m in _PROBED):
        return None

    def copy(v):
        return np.array(v) if isinstance(v, (np.ndarray, np.generic, int, float)) and not isinstance(v, bool) else v

    def call():
        if isinstance(inputs, Mapping):
            return fn(**{str(k): copy(v) for k, v in inputs.items()})
        if isinstance(inputs, (list, tuple)):
            return fn(*[copy(v) for v in inputs])
        return fn(copy(inputs))

    from ..layers import RandomGuard

    try:
        # Random streams the probe consumes are put back: the check proper
        # must see them as the caller left them.
        out = RandomGuard(fn).watch(call)
    except Exception:  # noqa: BLE001 - not decisive; the numpy path reports its own errors
        return None
    return _first_framework_leaf(out)


def framework_of(fn: Callable, inputs: Any, *, probe: bool = True) -> str | None:
    """``"torch"``, ``"jax"`` or None (numpy) for a callable and its inputs (see the module docstring).

    Raises:
        SpecError: the inputs mix torch tensors and JAX arrays.
    """
    kinds = {_value_framework(v) for v in _top_values(inputs)} - {None}
    if len(kinds) > 1:
        raise SpecError(f"the inputs mix arrays of {' and '.join(sorted(kinds))}; pass the inputs of one framework")
    if kinds:
        return kinds.pop()
    kind = _callable_framework(fn)
    if kind is None and probe:
        kind = _probe(fn, inputs)
    return kind


def callable_target(fn: Callable, inputs: Any, vjp: Callable | None, constants: Any = ()):
    """A Target for a torch or JAX callable, or None for numpy code.

    The analytic gradient comes from the framework's autodiff in the
    caller's dtype (``torch.autograd.grad``, ``jax.vjp``) unless ``vjp`` is
    given; the finite differences evaluate ``fn`` in float64. Cost: at most
    one probe call of ``fn`` (see the module docstring), plus what the
    target's own construction costs (one call when torch code in a dtype
    other than float64 is checked for random draws).
    """
    if not callable(fn):
        return None
    kind = framework_of(fn, inputs)
    if kind == "torch":
        from ._torch import TorchFunctionTarget

        return TorchFunctionTarget(fn, inputs, vjp, constants)
    if kind == "jax":
        from ._jax import JaxFunctionTarget

        return JaxFunctionTarget(fn, inputs, vjp, constants)
    if kind == "tensorflow":
        from ._tensorflow import TensorFlowFunctionTarget

        return TensorFlowFunctionTarget(fn, inputs, vjp, constants)
    if kind == "pytensor":
        from ._pytensor import PyTensorFunctionTarget

        return PyTensorFunctionTarget(fn, inputs, vjp, constants)
    return None


def module_target(layer: Any, input_shape: Any, *, inputs: Any, dtype: Any, rng: Any):
    """A Target for a ``torch.nn.Module``, or None for a numpy layer.

    Given ``input_shape``, the input is drawn from ``rng`` (standard normal)
    in ``dtype``, by default the dtype of the module's first floating-point
    parameter (else torch's default dtype), on the module's device. Cost:
    two deep copies of the module at most (float64, and the caller's dtype
    where needed), one forward to detect random draws when the module is not
    float64.
    """
    tf = sys.modules.get("tensorflow")
    if tf is not None and not (sys.modules.get("torch") and isinstance(layer, sys.modules["torch"].nn.Module)):
        from ._tensorflow import is_keras_layer, keras_layer_target

        if is_keras_layer(layer):
            return keras_layer_target(layer, input_shape, inputs=inputs, dtype=dtype, rng=rng)
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(layer, torch.nn.Module):
        return None
    from ._torch import TorchModuleTarget, module_inputs

    return TorchModuleTarget(layer, module_inputs(layer, input_shape, inputs, dtype, rng))


def framework_inputs(layer: Any, input_shape: Any, *, dtype: Any, rng: Any):
    """The drawn input of a ``torch.nn.Module`` check (as :func:`module_target` draws it), or None for other layers."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(layer, torch.nn.Module):
        return None
    from ._torch import module_inputs

    return module_inputs(layer, input_shape, None, dtype, rng)
