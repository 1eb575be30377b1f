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
    "GradientMismatch",
    "install_hint",
]

#: extra -> the package(s) ``pip`` installs for it (what the extra pulls in).
_EXTRA_PACKAGES = {"torch": "torch", "jax": "jax", "all": "torch jax"}


def install_hint(extra: str) -> str:
    """The command that installs an optional framework, valid from wherever the user runs it.

    gradverify is not on the package index yet, so ``pip install
    gradverify[torch]`` would fail; the framework's own package installs
    from anywhere, and the extra from a checkout of gradverify.
    """
    package = _EXTRA_PACKAGES.get(extra, extra)
    return f'pip install {package} (or, in a gradverify checkout: pip install ".[{extra}]")'


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


class GradientMismatch(AssertionError):
    """Raised by the ``assert_*`` wrappers when a check does not pass.

    Attributes:
        result: the :class:`gradverify.CheckResult` that failed.
    """

    def __init__(self, result: Any):
        self.result = result
        super().__init__(str(result))
