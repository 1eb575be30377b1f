"""Backends: one spec, computed and differentiated by the reference engine, PyTorch, JAX, TensorFlow or PyTensor.

A registry maps names to :class:`~gradverify.backends.base.Backend` classes::

    from gradverify.backends import get_backend
    out, grads = get_backend("torch").vjp(spec, cotangent, dtype="float64")
    out, jv = get_backend("jax").jvp(spec, {"x": v})

* ``"reference"`` -- :mod:`gradverify.engine` (numpy; always available);
* ``"torch"`` -- PyTorch (``pip install torch``, or ``pip install ".[torch]"`` in a checkout);
* ``"jax"`` -- JAX (``pip install jax``, or ``pip install ".[jax]"`` in a checkout);
* ``"tensorflow"`` -- TensorFlow (``pip install tensorflow-cpu``, or ``pip install ".[tensorflow]"``);
* ``"pytensor"`` -- PyTensor, Theano's heir (``pip install pytensor``, or ``pip install ".[pytensor]"``).

Importing this package imports neither framework: availability is checked
with ``importlib.util.find_spec`` and the framework is imported when a
backend is constructed. A missing framework raises
:class:`~gradverify.BackendUnavailable` naming the extra to install. Every
backend computes in float32 or float64 (``dtype=``) on ``device="cpu"``, or
``"cuda"`` where the framework sees a GPU.
"""

from __future__ import annotations

from ..errors import SpecError
from .base import DTYPES, Backend, Lowering, canonical_params
from .jax import JaxBackend
from .pytensor import PyTensorBackend
from .reference import Margins, ReferenceBackend
from .tensorflow import TensorFlowBackend
from .torch import TorchBackend

__all__ = [
    "BACKENDS", "Backend", "Lowering", "Margins", "DTYPES", "canonical_params",
    "register_backend", "get_backend", "available_backends", "backend_names",
    "ReferenceBackend", "TorchBackend", "JaxBackend", "TensorFlowBackend", "PyTensorBackend",
]

#: name -> Backend class, in registration order.
BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a :class:`Backend` subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise SpecError(f"register_backend needs a Backend subclass, got {cls!r}")
    BACKENDS[cls.name] = cls
    return cls


for _cls in (ReferenceBackend, TorchBackend, JaxBackend, TensorFlowBackend, PyTensorBackend):
    register_backend(_cls)

_INSTANCES: dict[tuple[str, str], Backend] = {}


def get_backend(name: str, *, device: str = "cpu") -> Backend:
    """The backend called ``name`` on ``device`` (instances are cached per name and device).

    Raises:
        SpecError: unknown name.
        BackendUnavailable: the framework (or the device) is not available;
            the message names the extra to install.
    """
    if name not in BACKENDS:
        raise SpecError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    key = (name, str(device))
    if key not in _INSTANCES:
        _INSTANCES[key] = BACKENDS[name](device=device)
    return _INSTANCES[key]


def available_backends() -> tuple[str, ...]:
    """Names of the registered backends whose framework is installed (nothing is imported)."""
    return tuple(n for n, cls in BACKENDS.items() if cls.available())


def backend_names() -> tuple[str, ...]:
    """Names of every registered backend."""
    return tuple(BACKENDS)

