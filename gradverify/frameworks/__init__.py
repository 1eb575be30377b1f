"""Framework adapters: torch and JAX code under test as a :class:`~gradverify.layers.Target`.

:func:`callable_target` and :func:`module_target` are the only entry points
the checks use. Each returns None when the object is plain numpy, so
``import gradverify`` never imports a framework: torch or jax is imported
only when an input or a layer already comes from it (its module is then in
``sys.modules``).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["callable_target", "module_target"]


def callable_target(fn: Callable, inputs: Any, vjp: Callable | None):
    """A Target for a torch or JAX callable, or None for numpy code."""
    return None


def module_target(layer: Any, input_shape: Any, *, inputs: Any, dtype: Any, rng: Any):
    """A Target for a ``torch.nn.Module``, or None for a numpy layer."""
    return None
