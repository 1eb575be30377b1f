"""gradverify: is this backward pass right, and if not, where and by how much?

The public names below are loaded on first use (PEP 562), so importing the
package -- as pytest does for the plugin in every run -- costs nothing until
a check is made; a check pulls in numpy and never torch or jax, which are
imported only when the code under test comes from them. The reference
engine lives in :mod:`gradverify.engine`, finite differences in
:mod:`gradverify.numeric`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> submodule that defines it
_EXPORTS = {
    "check": "api",
    "check_layer": "api",
    "check_pair": "api",
    "assert_gradients": "api",
    "assert_layer": "api",
    "assert_pair": "api",
    "compare_gradients": "compare",
    "tolerance_for": "compare",
    "TOLERANCES": "compare",
    "CheckResult": "verdict",
    "Worst": "verdict",
    "Location": "verdict",
    "InputSummary": "verdict",
    "GradVerifyError": "errors",
    "SpecError": "errors",
    "BackendUnavailable": "errors",
    "ProtocolError": "errors",
    "ShapeMismatch": "errors",
    "NonFiniteError": "errors",
    "MissingGradient": "errors",
    "NoDifferentiableInputs": "errors",
    "NoDerivativeRule": "errors",
    "NondeterministicError": "errors",
    "CodeUnderTestError": "errors",
    "TraceLost": "errors",
    "InsufficientMemory": "errors",
    "GradientMismatch": "errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradverify' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
