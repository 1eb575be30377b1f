"""gradverify: is this backward pass right, and if not, where and by how much?

``import gradverify`` imports numpy only; the reference engine lives in
:mod:`gradverify.engine`, finite differences in :mod:`gradverify.numeric`.
"""

from .api import assert_gradients, assert_layer, assert_pair, check, check_layer, check_pair
from .compare import TOLERANCES, compare_gradients, tolerance_for
from .errors import (
    BackendUnavailable,
    GradientMismatch,
    GradVerifyError,
    MissingGradient,
    NoDerivativeRule,
    NoDifferentiableInputs,
    NondeterministicError,
    NonFiniteError,
    ProtocolError,
    ShapeMismatch,
    SpecError,
)
from .verdict import CheckResult, InputSummary, Location, Worst

__version__ = "0.1.0"

__all__ = [
    "check",
    "check_layer",
    "check_pair",
    "assert_gradients",
    "assert_layer",
    "assert_pair",
    "compare_gradients",
    "tolerance_for",
    "TOLERANCES",
    "CheckResult",
    "Worst",
    "Location",
    "InputSummary",
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
    "__version__",
]
