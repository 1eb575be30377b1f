"""The reference backend: gradverify's own engine (:mod:`gradverify.engine`), numpy only.

Every layer is composed from the engine's primitives by the shared
:class:`~gradverify.backends.base.Lowering`; VJPs come from the engine's
reverse mode (``E.vjp``), JVPs from its forward mode (``E.jvp``). CPU only.

It also offers :meth:`ReferenceBackend.margins`: one traced forward pass,
then every recorded primitive application is measured against its row of
:data:`gradverify.ops.PRIMITIVES` -- how far its arguments are from the
domain boundary and from the nearest kink, and how large the values get. The
strategies use it to keep random cases inside every primitive's domain and
away from its kinks, where finite differences and autodiff are comparable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from .. import ops
from .base import Backend, Lowering, as_dtype

__all__ = ["ReferenceBackend", "ReferenceLowering", "Margins", "TermScale"]


class ReferenceLowering(Lowering):
    """The shared interpreter with the engine's primitive functions."""

    def __init__(self, dtype: np.dtype):
        super().__init__(dtype)
        import gradverify.engine as E

        prims: dict[str, Callable[..., Any]] = {name: getattr(E, name) for name in ops.public_primitives()}
        prims["concatenate"] = lambda *xs, axis: E.concatenate(xs, axis)
        prims["stack"] = lambda *xs, axis: E.stack(xs, axis)
        self.prims = prims

    def const(self, value):
        return np.asarray(value, dtype=self.dtype)

    def mask(self, array):
        return np.asarray(array, dtype=bool)

    def int_array(self, array):
        return np.asarray(array, dtype=np.int64)

    def constant(self, array):
        return np.asarray(array, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class Margins:
    """How safely a case sits inside the primitives' domains and away from their kinks.

    Attributes:
        domain: smallest :func:`gradverify.ops.domain_margin` over all
            primitive applications (``inf`` if none has a domain).
        kink: smallest :func:`gradverify.ops.distance_to_kink` (``inf`` if smooth).
        magnitude: largest finite ``|value|`` of any intermediate result.
        finite: False if some intermediate result is NaN or ``+inf``
            (``-inf`` is allowed: a masked attention score).
        where: the primitive with the smallest domain margin or kink distance.
        output: largest ``|value|`` of the result.
    """

    domain: float
    kink: float
    magnitude: float
    finite: bool
    where: str = ""
    output: float = math.inf

    def safe(self, *, kink_margin: float, domain_margin: float = 0.0, max_magnitude: float = math.inf,
             min_output_ratio: float = 0.0) -> bool:
        """Whether the case is finite, bounded, inside the domains and ``kink_margin`` from any kink.

        ``min_output_ratio`` also asks that the result not cancel to rounding
        residue: ``output >= min_output_ratio * magnitude`` (a function that is
        zero up to rounding, such as the mean of a layer norm's outputs, has
        finite differences made of rounding noise).
        """
        return (self.finite and self.magnitude <= max_magnitude and self.kink >= kink_margin
                and self.domain > domain_margin and self.output >= min_output_ratio * self.magnitude)


@dataclasses.dataclass(frozen=True)
class TermScale:
    """The size of the terms a forward and a backward pass sum, for rounding allowances.

    Attributes:
        value: largest ``|value|`` of any node (the terms a forward pass sums).
        adjoint: largest ``|adjoint|`` of any node in one backward sweep.
        vjp: ``adjoint * max(1, value)``: a bound on the size of the terms
            (adjoint times local partial) accumulated into any gradient entry.
    """

    value: float
    adjoint: float
    vjp: float


class ReferenceBackend(Backend):
    """gradverify's reference engine (always available, CPU only)."""

    name = "reference"
    extra = None
    modules = ()

    def _make_lowering(self, dtype):
        return ReferenceLowering(dtype)

    def _to(self, array):
        return np.array(array, copy=True)

    def _from(self, value):
        from gradverify.engine.tracer import value as raw

        return np.array(raw(value), copy=True)

    def _vjp(self, f, primals):
        import gradverify.engine as E

        out, fn = E.vjp(f, *primals)
        return out, lambda ct: list(fn(ct))

    def _jvp(self, f, primals, tangents):
        import gradverify.engine as E

        return E.jvp(f, primals, tangents)

    def term_scale(self, spec: Any, cotangent: Any, arrays: Mapping[str, Any] | None = None, *,
                   dtype: Any = np.float64) -> TermScale:
        """Trace ``spec``, sweep ``cotangent`` back once, and report the largest values and adjoints.

        Where a gradient cancels to (near) zero -- ``f - f``, ``logsumexp``
        of a ``log_softmax`` -- two exact implementations differ by the
        rounding of the terms they summed, not of the result; this is the
        size of those terms. Cost: one traced forward and one backward pass.
        """
        from gradverify.engine import Tensor, backward, toposort
        from gradverify.engine.tracer import value as raw

        names, vals = self._prepare(spec, arrays, dtype)
        _, f = self.function(spec, as_dtype(dtype))

        def biggest(a: Any) -> float:
            a = np.abs(np.asarray(raw(a), dtype=np.float64))
            a = a[np.isfinite(a)]
            return float(a.max()) if a.size else 0.0

        with np.errstate(all="ignore"):
            leaves = [Tensor(v, requires_grad=True) for v in vals]
            out = f(*leaves)
            if not isinstance(out, Tensor) or not out.requires_grad:
                return TermScale(biggest(out), biggest(cotangent), biggest(cotangent))
            adj = backward(out, np.asarray(cotangent, dtype=out.dtype))
            value = max(biggest(n.value) for n in toposort(out))
            adjoint = max((biggest(a) for a in adj.values()), default=0.0)
        return TermScale(value, adjoint, adjoint * max(1.0, value))

    def margins(self, spec: Any, arrays: Mapping[str, Any] | None = None, *, dtype: Any = np.float64) -> Margins:
        """Trace ``spec`` once and measure every primitive application against ops.py.

        Cost: one traced forward pass plus O(size) numpy work per node.
        """
        from gradverify.engine import Tensor, toposort
        from gradverify.engine.tracer import value as raw

        names, vals = self._prepare(spec, arrays, dtype)
        _, f = self.function(spec, as_dtype(dtype))
        with np.errstate(all="ignore"):
            leaves = [Tensor(v, requires_grad=True) for v in vals]
            out = f(*leaves)
            nodes = toposort(out) if isinstance(out, Tensor) else []
            dom = kink = math.inf
            mag = 0.0
            finite = True
            where = ""
            for node in nodes:
                v = np.asarray(node.value, dtype=np.float64)
                if np.isnan(v).any() or np.isposinf(v).any():
                    finite = False
                fin = v[np.isfinite(v)]
                if fin.size:
                    mag = max(mag, float(np.max(np.abs(fin))))
                if node.prim is None or node.prim not in ops.PRIMITIVES:
                    continue
                row = ops.PRIMITIVES[node.prim]
                args = [raw(a) for a in node.args]
                if row.domain:
                    d = ops.domain_margin(node.prim, *args)
                    if d < dom:
                        dom, where = d, f"{node.prim} (domain)"
                if row.kinks:
                    k = ops.distance_to_kink(node.prim, *args, **node.params)
                    if k < kink:
                        kink, where = k, f"{node.prim} (kink)"
            y = np.asarray(raw(out), dtype=np.float64)
            if np.isnan(y).any() or np.isinf(y).any():
                finite = False
            fin = np.abs(y[np.isfinite(y)])
            mag = max(mag, float(fin.max()) if fin.size else 0.0)
        return Margins(dom, kink, mag, finite, where, float(fin.max()) if fin.size else 0.0)
