"""The exception hierarchy of gradverify.

Verdicts are values (:class:`gradverify.CheckResult`); exceptions are for two
things only:

* bad input -- a subclass of :class:`GradVerifyError`, whose message says what
  to fix (never a raw traceback from deep inside numpy);
* the thin ``assert_*`` wrappers -- :class:`GradientMismatch`, an
  ``AssertionError`` that carries the failing result.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

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
    "CodeUnderTestError",
    "TraceLost",
    "InsufficientMemory",
    "GradientMismatch",
    "install_hint",
    "raised_at_call",
]

#: extra -> the package(s) ``pip`` installs for it (what the extra pulls in).
_EXTRA_PACKAGES = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow-cpu", "pytensor": "pytensor",
                   "frameworks": "tensorflow-cpu pytensor", "report": "matplotlib tqdm",
                   "campaign": '"dask[distributed]"', "all": "torch jax"}


def raised_at_call(entry: _F) -> _F:
    """Decorate a public entry point: its bad-input errors show the caller's line, not gradverify's internals.

    A :class:`GradVerifyError` leaving ``entry`` is re-raised with its
    traceback cut at the entry point (the message says what to fix; an error
    of the code under test keeps its original, with the user's line, as
    ``__cause__``). The wrapper is hidden from pytest tracebacks
    (``__tracebackhide__``). Other exceptions pass untouched.
    """

    @functools.wraps(entry)
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True
        try:
            return entry(*args, **kwargs)
        except GradVerifyError as exc:
            raise exc.with_traceback(None) from exc.__cause__

    return wrapper  # type: ignore[return-value]


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


class CodeUnderTestError(GradVerifyError, RuntimeError):
    """The code under test raised while gradverify ran it (its forward, backward or vjp).

    The original exception is ``__cause__`` (its traceback shows the line of
    the user's code that raised). Raised by
    :func:`gradverify.layers.call_user`, the one place every call of the code
    under test goes through.

    Attributes:
        call: what raised, e.g. ``"Dense.forward"``, ``"backward"``, ``"vjp"``.
        stage: ``"forward"``, ``"backward"`` or ``"vjp"``.
        shapes: the shapes of the array arguments of that call, by name.
        original: the exception the code raised.
    """

    def __init__(self, call: str, stage: str, shapes: dict, original: BaseException):
        self.call, self.stage, self.shapes, self.original = call, stage, dict(shapes), original
        got = ", ".join(f"{k}: {v}" for k, v in self.shapes.items()) or "no array arguments"
        super().__init__(f"{call} raised {type(original).__name__}: {original}\n"
                         f"  ({stage} called with {got})")

    #: Words in an error message that say it is about shapes.
    SHAPE_WORDS = ("shape", "size", "dimension", "broadcast", "aligned", "mismatch", "axis", "dim ", "dims",
                   "matmul", "mat1", "mat2", "reshape", "index", "out of bounds", "incompatible")

    @property
    def about_shapes(self) -> bool:
        """Whether the original error is about array shapes (an IndexError, or its message says so)."""
        text = str(self.original).lower()
        return isinstance(self.original, IndexError) or any(w in text for w in self.SHAPE_WORDS)

    def __reduce__(self):  # picklable (pytest-xdist, multiprocessing): the original may not be
        return (_rebuild_code_error, (self.call, self.stage, self.shapes, type(self.original).__name__,
                                      str(self.original)))


def _rebuild_code_error(call, stage, shapes, kind, text):
    original = type(kind, (Exception,), {})(text)
    return CodeUnderTestError(call, stage, shapes, original)
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


class InsufficientMemory(GradVerifyError, MemoryError):
    """A stage of a check would need more memory than the machine has available, even on its leanest path.

    Raised before anything is allocated; the message says how much the
    stage needs, how much is available, and what to do instead (a fast
    check instead of a full one, or a machine with more memory).
    """


class GradientMismatch(AssertionError):
    """Raised by the ``assert_*`` wrappers when a check does not pass.

    Attributes:
        result: the :class:`gradverify.CheckResult` that failed.
    """

    def __init__(self, result: Any):
        self.result = result
        super().__init__(str(result))
