"""Numerical differentiation, as one import: the finite-difference reference's public names.

The code lives in :mod:`gradverify.references`, split along its seams:
:mod:`~gradverify.references.stencils` (steps, quotients, Richardson,
Jacobians), :mod:`~gradverify.references.stepwalk` (the step walk),
:mod:`~gradverify.references.screen` (batched first pass, one-difference
screen), :mod:`~gradverify.references.elementwise`
(:func:`projected_gradients`, full mode) and
:mod:`~gradverify.references.projections` (fast mode's directional checks
and the Taylor-remainder test). This module re-exports them so that
``from gradverify.numeric import jacobian`` keeps working.
"""

from __future__ import annotations

from .references.elementwise import ElementDerivative, projected_gradients
from .references.projections import Projection, TaylorTest, directional_mismatch, directional_mismatches, taylor_test
from .references.stencils import (
    FAIL, MEMORY_BUDGET, METHODS, OK, REFINE, Derivative, default_step, derivative, gradient, jacobian,
)

__all__ = [
    "METHODS", "MEMORY_BUDGET", "OK", "REFINE", "FAIL", "Derivative", "ElementDerivative", "default_step",
    "derivative", "jacobian", "gradient", "projected_gradients", "directional_mismatch", "directional_mismatches",
    "Projection", "taylor_test", "TaylorTest",
]
