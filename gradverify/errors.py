"""The exception hierarchy of gradverify.

Verdicts are values (:class:`gradverify.CheckResult`); exceptions are for two
things only:

* bad input -- a subclass of :class:`GradVerifyError`, whose message says what
  to fix (never a raw traceback from deep inside numpy);
* the thin ``assert_*`` wrappers -- :class:`GradientMismatch`, an
  ``AssertionError`` that carries the failing result.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GradVerifyError",
    "SpecError",
    "BackendUnavailable",
    "ProtocolError",
    "ShapeMismatch",
    "NonFiniteError",
    "MissingGradient",
    "NoDifferentiableInputs",
    "NoDerivativeRule",
    "NondeterministicError",
    "TraceLost",
    "GradientMismatch",
]


class GradVerifyError(Exception):
    """Base class of every bad-input error raised by gradverify."""


class SpecError(GradVerifyError, ValueError):
    """An argument, option or spec is malformed (unknown key, bad shape...)."""


class BackendUnavailable(GradVerifyError, ImportError):
    """A framework backend was requested but its package is not installed."""


class ProtocolError(GradVerifyError, TypeError):
    """An object does not follow the protocol it is used under.

    For example a layer without ``forward``/``backward``, a ``backward`` that
    returns the wrong number of gradients, or a ``grads`` dict that lacks a
    parameter.
    """


class ShapeMismatch(GradVerifyError, ValueError):
    """A gradient's shape differs from the shape of what it differentiates."""


class NonFiniteError(GradVerifyError, FloatingPointError):
    """A forward value or gradient is NaN or infinite."""


class MissingGradient(ProtocolError):
    """A gradient is ``None`` or absent where one is required."""


class NoDifferentiableInputs(GradVerifyError, ValueError):
    """Every input is a constant (integer or boolean): nothing to check."""


class NoDerivativeRule(GradVerifyError, NotImplementedError):
    """The engine has no derivative rule for a primitive's argument."""


class NondeterministicError(GradVerifyError, RuntimeError):
    """Repeated evaluations at the same point gave different values."""


class TraceLost(GradVerifyError, RuntimeError):
    """Plain numpy code left the engine's trace, so its gradient would be wrong.

    Raised while :func:`gradverify.engine.numpy_vjp` traces a numpy forward:
    a traced value was turned into a plain array or Python number
    (``np.asarray``, ``float``, ``.item()``, a write into a plain ndarray),
    an ``out=`` argument named a plain ndarray, a numpy function has no
    derivative rule, or an output does not depend on the inputs.

    Attributes:
        reason: what happened, naming the function or conversion.
        where: ``file:line`` of the innermost user frame (outside gradverify,
            numpy and scipy), or ``None`` when no such frame was found.
    """

    def __init__(self, reason: str, where: str | None = None):
        self.reason = reason
        self.where = where
        super().__init__(reason if where is None else f"{reason} (at {where})")


class GradientMismatch(AssertionError):
    """Raised by the ``assert_*`` wrappers when a check does not pass.

    Attributes:
        result: the :class:`gradverify.CheckResult` that failed.
    """

    def __init__(self, result: Any):
        self.result = result
        super().__init__(str(result))
