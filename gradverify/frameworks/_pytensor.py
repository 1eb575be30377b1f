"""PyTensor adapter: a PyTensor ``Op`` (with a custom ``grad``/``L_op``) or a graph-building function as a check target.

Imported only when the callable or its output already comes from PyTensor
(see :mod:`gradverify.frameworks`), so ``import gradverify`` never imports
pytensor.

The code under test is symbolic: called on symbolic inputs it returns the
output graph. :class:`PyTensorFunctionTarget` builds that graph once per
input dtype signature (the inputs as ``pt.tensor`` variables of the given
shapes) and compiles two functions from it, reused for every evaluation:

* the value, ``inputs -> outputs`` (float64 for the finite differences);
* the VJP, ``(inputs, cotangents) -> (outputs, gradients)`` with
  ``pytensor.gradient.pullback`` (``Lop``) in the caller's dtype -- for an
  ``Op`` that is its own ``grad``/``L_op``, the gradient under test.

Inputs are numpy arrays (PyTensor has no eager arrays); shared variables
and constants given as inputs are read once. Compilation uses
``mode="FAST_COMPILE"`` (see :class:`~gradverify.backends.pytensor.PyTensorBackend`).
The exact reference ``against="pytensor"`` applies with ``vjp=`` (PyTensor's
autodiff of the function itself) and to graphs holding an ``OpFromGraph``
(whose custom ``pullback``/``lop_overrides`` is the gradient under test):
the reference is PyTensor's autodiff of the graph with every
``OpFromGraph`` replaced by its inner graph (:func:`inline_op_from_graph`).
An ``Op``'s ``perform`` is numpy that PyTensor cannot differentiate, so a
custom ``Op`` has no independent exact reference.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..backends.pytensor import import_pytensor

pytensor = import_pytensor()
import pytensor.tensor as pt  # noqa: E402
from pytensor import gradient as G  # noqa: E402
from pytensor.graph.basic import Variable  # noqa: E402
from pytensor.graph.op import Op  # noqa: E402

from ..errors import ProtocolError  # noqa: E402
from ._common import FrameworkFunctionTarget, NestedPrimal, flatten_tree  # noqa: E402

__all__ = ["PyTensorFunctionTarget", "is_pytensor_variable", "MODE"]

#: Compilation mode of the code under test's functions.
MODE = "FAST_COMPILE"
_pullback = getattr(G, "pullback", None) or G.Lop


def is_pytensor_variable(value: Any) -> bool:
    return isinstance(value, Variable)


def _is_np(value: Any) -> bool:
    return isinstance(value, np.ndarray)


class PyTensorFunctionTarget(FrameworkFunctionTarget):
    """A PyTensor ``Op`` or graph-building function (see the module docstring).

    Cost: one graph construction and two compilations per dtype signature
    (float64, and the caller's dtype when it differs); then one call of a
    compiled function per evaluation.
    """

    framework = "pytensor"
    #: No batched evaluation: a compiled graph has no vmap here, and a batch axis would build and compile
    #: a graph per batch shape (each costlier than the evaluations it would save); the checks loop.
    evaluate_batch = None
    evaluate_rows = None
    batch_strategies = ()

    def __init__(self, fn: Callable, inputs: Any, vjp: Callable | None, constants: Any = ()):
        self._graphs: dict = {}
        names_from = fn.make_node if isinstance(fn, Op) else None
        super().__init__(fn, inputs, vjp, names_from=names_from, constants=constants)
        self.faithful_float64()

    def forget_compiled(self) -> None:
        """A fresh graph cache: the reference's copy builds (and inlines) its own graph."""
        self._graphs = {}

    def custom_primal(self, fn: Callable) -> tuple[Callable | None, str]:
        """The graph with each ``OpFromGraph`` inlined (declines afterwards where there is none)."""
        if isinstance(fn, Op):
            return super().custom_primal(fn)
        return _Inlined(fn, require_custom=self.user_vjp is None), (
            f"pytensor autodiff of {getattr(fn, '__name__', type(fn).__name__)} with each OpFromGraph inside "
            "inlined (its custom gradient left out)")

    # -- framework specifics ----------------------------------------------------
    def is_array(self, value: Any) -> bool:
        return isinstance(value, Variable) and (hasattr(value, "get_value") or hasattr(value, "data"))

    def to_numpy(self, value: Any, name: str) -> np.ndarray:
        return np.array(value.get_value() if hasattr(value, "get_value") else value.data, copy=True)

    def to_framework(self, value: np.ndarray, name: str | None, dtype=None) -> Any:
        return np.asarray(value, dtype=dtype)

    def float_leaf(self, value: Any) -> bool:
        return isinstance(value, np.ndarray) and value.dtype.kind == "f"

    def leaf_to_numpy(self, value: Any) -> np.ndarray:
        return np.array(value, copy=True)

    def leaves_of(self, out: Any) -> list:
        return flatten_tree(out, _is_np)

    # -- the graph ----------------------------------------------------------------
    def _graph(self, flat):
        """Symbolic inputs, the output leaves and the output tree for ``flat``'s dtypes (cached)."""
        key = tuple((n, v.dtype.str, v.shape) for n, v in flat.items())
        g = self._graphs.get(key)
        if g is None:
            sym = {n: pt.tensor(dtype=v.dtype.name, shape=v.shape, name=n) for n, v in flat.items()}
            out = self.call_user(sym)
            if isinstance(out, Variable):
                leaves, tree = [out], None
            else:
                leaves = flatten_tree(out, lambda v: isinstance(v, Variable))
                tree = out
            leaves = [v for v in leaves if v.dtype.startswith("float")]
            if isinstance(self.user_fn, _Inlined):
                leaves = inline_op_from_graph(leaves, self.user_fn._seen)
            if not leaves:
                raise ProtocolError(f"{self.what}: the function returned no floating-point PyTensor variable; "
                                    "return the output of the graph (a TensorVariable)")
            g = self._graphs[key] = {"sym": sym, "leaves": leaves, "tree": tree}
        return g

    def _structure(self, g, values: list) -> Any:
        if g["tree"] is None:
            return values[0]
        it = iter(values)
        return _rebuild(g["tree"], it)

    def run(self, flat):
        g = self._graph(flat)
        if "value" not in g:
            g["value"] = pytensor.function(list(g["sym"].values()), g["leaves"], mode=MODE, on_unused_input="ignore")
        outs = g["value"](*[flat[n] for n in g["sym"]])
        return self._structure(g, [np.asarray(o) for o in outs])

    def autodiff(self, pieces, flat):
        g = self._graph(flat)
        names = list(self.point)
        if "vjp" not in g:
            cts = [v.type() for v in g["leaves"]]
            wrt = [g["sym"][n] for n in names]
            grads = _pullback(g["leaves"], wrt, cts, disconnected_inputs="ignore")
            g["vjp"] = pytensor.function(list(g["sym"].values()) + cts, g["leaves"] + list(grads), mode=MODE,
                                         on_unused_input="ignore")
        leaves = g["leaves"]
        if len(pieces) != len(leaves):
            raise ProtocolError("the function returned a different number of outputs on this call")
        res = g["vjp"](*[flat[n] for n in g["sym"]], *[np.asarray(p, dtype=l.dtype) for p, l in zip(pieces, leaves)])
        outs = [np.asarray(o) for o in res[:len(leaves)]]
        self._record_output(self._structure(g, outs))
        return {n: np.array(r, copy=True) for n, r in zip(names, res[len(leaves):])}


class _Inlined(NestedPrimal):
    """A graph-building function whose graph the reference inlines (``intercepted``: the OpFromGraphs met)."""


def inline_op_from_graph(outputs: list, seen: list[str]) -> list:
    """``outputs`` rebuilt with every ``OpFromGraph`` node (nested ones too) replaced by its inner graph.

    The inner graph carries the Op's forward computation; its custom
    gradient (``pullback``/``lop_overrides``) is left behind, so PyTensor's
    autodiff of the result is the independent reference. The names of the
    inlined Ops are appended to ``seen``.
    """
    from pytensor.compile.builders import OpFromGraph
    from pytensor.graph.replace import clone_replace

    memo: dict = {}

    def visit(var):
        if var in memo:
            return memo[var]
        node = var.owner
        if node is None:
            memo[var] = var
            return var
        inputs = [visit(i) for i in node.inputs]
        if isinstance(node.op, OpFromGraph):
            seen.append(getattr(node.op, "name", None) or type(node.op).__name__)
            inner = clone_replace(list(node.op.inner_outputs),
                                  replace=dict(zip(node.op.inner_inputs, inputs)))
            new = inline_op_from_graph(list(inner), seen)
        elif any(a is not b for a, b in zip(inputs, node.inputs)):
            new = node.clone_with_new_inputs(inputs, strict=False).outputs
        else:
            new = node.outputs
        for o, n in zip(node.outputs, new):
            memo[o] = n
        return memo[var]

    return [visit(o) for o in outputs]


def _rebuild(node, it):
    if isinstance(node, Variable):
        return next(it) if node.dtype.startswith("float") else None
    if isinstance(node, dict):
        return {k: _rebuild(v, it) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        items = [_rebuild(v, it) for v in node]
        return items if isinstance(node, list) else tuple(items)
    return None
