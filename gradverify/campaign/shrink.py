"""A deterministic minimiser: the smallest spec that still shows the same disagreement.

:func:`shrink` is greedy over a fixed list of simplifications, tried in a
fixed order, keeping the first one that is smaller and still fails:

* a network: drop a layer (also inside a residual block), drop the loss,
  shrink an integer field of a layer (units, channels, hidden, heads,
  kernel...) to 1 or by one, turn a boolean field off (``bias``,
  ``affine``), shrink a dimension of the input shape to 1 or by one;
* an expression: replace an operation by one of its arguments, drop an
  unused input, shrink a dimension of an input (its values sliced).

A candidate that is not a valid spec, or that raises when computed, does
not count. "Still fails" is the same pair failing on the same quantity, with
only the two backends of the pair computed
(:func:`shrink_disagreement`). The size order is lexicographic: (structure:
layers or nodes, input elements, sum of integer fields, length of the repr).
Cost: at most ``max_tries`` agreement runs of ever smaller specs, and at most
``max_seconds``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["shrink", "shrink_disagreement", "size"]


def _layer_ints(layer: Any) -> int:
    total = 0
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if isinstance(v, bool):
            total += int(v)
        elif isinstance(v, int):
            total += v
        elif isinstance(v, tuple) and v and all(isinstance(x, int) for x in v):
            total += sum(v)
        elif isinstance(v, tuple):
            total += sum(_layer_ints(x) + 1 for x in v if dataclasses.is_dataclass(x))
    return total


def _nodes(node: Any) -> int:
    return 1 + sum(_nodes(c) for c in node.children())


def size(spec: Any) -> tuple[int, int, int, int]:
    """The order shrinking decreases: (structure, input elements, integer fields, len(repr))."""
    from ..spec import Expression

    if isinstance(spec, Expression):
        elems = sum(int(np.prod(i.shape, dtype=np.int64)) for i in spec.inputs)
        return (_nodes(spec.root) + len(spec.inputs), elems, 0, len(repr(spec)))
    layers = sum(1 + len(getattr(layer, "layers", ())) for layer in spec.layers) + (spec.loss is not None)
    return (layers, int(np.prod(spec.input_shape, dtype=np.int64)), sum(_layer_ints(la) for la in spec.layers),
            len(repr(spec)))


def _smaller_ints(v: int) -> list[int]:
    return [c for c in dict.fromkeys([1, v - 1, v // 2]) if 0 < c < v]


def _layer_variants(layer: Any) -> Iterator[Callable[[], Any]]:
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if isinstance(v, bool):
            if v:
                yield lambda f=f: dataclasses.replace(layer, **{f.name: False})
        elif isinstance(v, int):
            for c in _smaller_ints(v):
                yield lambda f=f, c=c: dataclasses.replace(layer, **{f.name: c})
        elif isinstance(v, tuple) and v and all(dataclasses.is_dataclass(x) for x in v):
            for j in range(len(v)):
                if len(v) > 1:
                    yield lambda f=f, v=v, j=j: dataclasses.replace(layer, **{f.name: v[:j] + v[j + 1:]})
            for j, inner in enumerate(v):
                for w in _layer_variants(inner):
                    yield lambda f=f, v=v, j=j, w=w: dataclasses.replace(layer, **{f.name: v[:j] + (w(),) + v[j + 1:]})


def _network_candidates(net: Any) -> Iterator[Callable[[], Any]]:
    layers = tuple(net.layers)
    for j in range(len(layers)):
        if len(layers) > 1:
            yield lambda j=j: dataclasses.replace(net, layers=layers[:j] + layers[j + 1:])
    for j, layer in enumerate(layers):
        inner = getattr(layer, "layers", None)
        if inner:
            yield lambda j=j, inner=inner: dataclasses.replace(net, layers=layers[:j] + tuple(inner) + layers[j + 1:])
    if net.loss is not None:
        yield lambda: dataclasses.replace(net, loss=None)
    shape = tuple(net.input_shape)
    for d, n in enumerate(shape):
        for c in _smaller_ints(n):
            yield lambda d=d, c=c: dataclasses.replace(net, input_shape=shape[:d] + (c,) + shape[d + 1:])
    for j, layer in enumerate(layers):
        for w in _layer_variants(layer):
            yield lambda j=j, w=w: dataclasses.replace(net, layers=layers[:j] + (w(),) + layers[j + 1:])


def _paths(node: Any, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Any]]:
    yield path, node
    for i, c in enumerate(node.children()):
        yield from _paths(c, path + (i,))


def _replace(node: Any, path: tuple[int, ...], new: Any) -> Any:
    from ..spec import Op

    if not path:
        return new
    args = list(node.args)
    args[path[0]] = _replace(args[path[0]], path[1:], new)
    return Op(node.prim, *args, **node.kwargs)


def _expression_candidates(expr: Any) -> Iterator[Callable[[], Any]]:
    from ..spec import Const, Expression, Input, Op, Var

    for path, node in _paths(expr.root):
        if isinstance(node, Op):
            for child in node.args:
                if isinstance(child, (Op, Var, Const)):
                    yield lambda path=path, child=child: dataclasses.replace(expr, root=_replace(expr.root, path, child))
    used = set(expr.variables())
    if any(i.name not in used for i in expr.inputs) and len(expr.inputs) > 1:
        yield lambda: dataclasses.replace(expr, inputs=tuple(i for i in expr.inputs if i.name in used)
                                          or expr.inputs[:1])
    arrays = expr.arrays(np.float64)
    for k, inp in enumerate(expr.inputs):
        for d, n in enumerate(inp.shape):
            for c in _smaller_ints(n):
                def sliced(k=k, inp=inp, d=d, c=c):
                    vals = np.take(arrays[inp.name], np.arange(c), axis=d)
                    new = Input(inp.name, vals.shape, tuple(vals.ravel().tolist()))
                    return Expression(expr.root, expr.inputs[:k] + (new,) + expr.inputs[k + 1:], expr.seed)

                yield sliced


def candidates(spec: Any) -> Iterator[Any]:
    """Simpler variants of ``spec`` in the fixed order the shrinker tries them (may be invalid)."""
    from ..spec import Expression

    makers = _expression_candidates(spec) if isinstance(spec, Expression) else _network_candidates(spec)
    for make in makers:
        try:
            yield make()
        except Exception:  # noqa: BLE001 - an invalid variant (SpecError, bad shape): skip it
            continue


def shrink(spec: Any, still_fails: Callable[[Any], bool], *, max_tries: int = 300,
           max_seconds: float = 120.0) -> tuple[Any, int]:
    """Greedily minimise ``spec`` while ``still_fails(candidate)`` holds.

    Args:
        spec: a failing :class:`~gradverify.spec.Network` or :class:`~gradverify.spec.Expression`.
        still_fails: True when a candidate still shows the failure; a
            candidate for which it raises does not count.
        max_tries: calls of ``still_fails`` at most.
        max_seconds: wall-time bound.

    Returns:
        ``(smallest failing spec found, calls of still_fails)``. Deterministic
        for a deterministic ``still_fails``.
    """
    deadline = time.perf_counter() + max_seconds
    current, tries, seen = spec, 0, {repr(spec)}
    improved = True
    while improved and tries < max_tries and time.perf_counter() < deadline:
        improved = False
        for cand in candidates(current):
            key = repr(cand)
            if key in seen or size(cand) >= size(current):
                continue
            seen.add(key)
            tries += 1
            try:
                ok = bool(still_fails(cand))
            except Exception:  # noqa: BLE001 - a variant the backends cannot compute is not a reproduction
                ok = False
            if ok:
                current, improved = cand, True
                break
            if tries >= max_tries or time.perf_counter() >= deadline:
                break
    return current, tries


def shrink_disagreement(spec: Any, agreement_result: Any, *, backends: Sequence[str], dtype: str, seed: int,
                        max_tries: int = 300, max_seconds: float = 120.0) -> dict[str, Any]:
    """Shrink a disagreement of :func:`~gradverify.backends.agreement.agreement` to its smallest spec.

    The first failing comparison (pair and quantity) is the one kept failing;
    only its two sides are computed for each candidate.

    Returns:
        ``{"repr", "snippet", "pair", "quantity", "element", "a", "b", "value_a",
        "value_b", "ratio", "tries", "size_before", "size_after"}`` -- ``a``'s
        and ``b``'s values at the worst element of the shrunk case.
    """
    from ..backends.agreement import FD, agreement
    from ..spec import snippet

    first = agreement_result.failures()[0]
    a_name, b_name, quantity = first.a, first.b, first.quantity
    pair_backends = (a_name,) if b_name == FD else (a_name, b_name)
    kw = dict(backends=pair_backends, dtype=dtype, seed=seed, fd=(b_name == FD), jvp=(quantity == "jvp"))

    def failing(s: Any) -> Any:
        a = agreement(s, **kw)
        return next((r for r in a.failures() if (r.a, r.b, r.quantity) == (a_name, b_name, quantity)), None)

    small, tries = shrink(spec, lambda s: failing(s) is not None, max_tries=max_tries, max_seconds=max_seconds)
    r = failing(small) or first
    return {
        "repr": repr(small), "snippet": snippet(small, backends=pair_backends, dtype=dtype, seed=seed),
        "pair": f"{b_name}~{a_name}" if b_name == FD else f"{a_name}~{b_name}", "quantity": quantity,
        "element": r.worst, "a": a_name, "b": b_name, "value_a": r.to_dict()["worst_a"],
        "value_b": r.to_dict()["worst_b"], "ratio": r.to_dict()["ratio"], "tries": tries,
        "size_before": list(size(spec)), "size_after": list(size(small)),
    }
