"""Explain backprop on a small scalar expression: its graph, local partials, adjoints and their cost.

``gradverify explain "(a + b) * (b + 1)" --at a=2,b=1`` is built from three
existing pieces and adds no derivative knowledge of its own:

* the expression is parsed with Python's :mod:`ast` and checked against a
  whitelist of node types (numbers, names, ``+ - * / **``, unary minus, and
  calls of the one-argument and two-argument elementwise primitives of
  :data:`gradverify.ops.PRIMITIVES`); nothing is ever ``eval``-ed;
* it is evaluated with the reference engine's primitive functions
  (:mod:`gradverify.engine`), which record the computational graph; a
  repeated subexpression is evaluated once and becomes one shared node;
* the local partial derivative on each edge is the engine's own VJP rule
  (:func:`gradverify.engine.vjps.vjp_rule`) applied to a unit cotangent, and
  the adjoints come from one call of :func:`gradverify.engine.backward`.

The cost comparison counts multiplications of local partials: summing over
all paths from each input to the output needs ``k - 1`` per path of ``k``
edges; one reverse sweep needs one per edge (adjoint of the child times the
local partial), except the edges into the output, whose adjoint is the seed 1
(a multiplication by 1 is counted by neither). Path counts are computed by
dynamic programming over the graph, never by listing the paths, so an
expression with exponentially many paths is explained in linear time.

Cost: parsing and evaluating are linear in the expression's size.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import SpecError

__all__ = ["Node", "Edge", "Explanation", "explain", "parse_at", "functions", "format_text", "format_dot"]

_BINOPS = {ast.Add: ("add", "+"), ast.Sub: ("sub", "-"), ast.Mult: ("mul", "*"),
           ast.Div: ("div", "/"), ast.Pow: ("pow", "**")}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "**": 4}


def functions() -> dict[str, int]:
    """The functions an expression may call, name -> arity, read from the primitive table; O(table)."""
    from .ops import PRIMITIVES

    return {p.name: p.arity for p in PRIMITIVES.values()
            if p.public and p.kind == "elementwise" and p.arity in (1, 2)}


@dataclass(frozen=True)
class Node:
    """One node of the graph.

    Attributes:
        name: ``a``, ``b`` for inputs; ``c``, ``d``... for intermediates; the
            output's name (``e`` unless the expression names it).
        op: the primitive's name, or None for an input.
        expr: how it is computed from its parents, e.g. ``"a + b"``.
        value: the forward value.
        adjoint: d(output)/d(node), accumulated over every path.
        parents: the names of the traced arguments, in argument order.
    """

    name: str
    op: str | None
    expr: str
    value: float
    adjoint: float
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edge:
    """An edge parent -> child with its local partial derivative d(child)/d(parent) via one argument."""

    parent: str
    child: str
    argnum: int
    partial: float


@dataclass(frozen=True)
class Explanation:
    """The annotated graph of an expression at a point, and the cost of the two ways to get its gradient.

    Attributes:
        source: the expression as given.
        expression: the right-hand side, normalised by ``ast.unparse``.
        output: the output's name.
        inputs: ``(name, value)`` per variable, in order of first use.
        nodes: every node, parents before children (creation order).
        edges: every edge, in the children's order then argument order.
        gradient: ``(variable, d output / d variable)`` per input.
        paths: ``variable -> number of paths`` from it to the output.
        path_multiplications: multiplications when summing over all paths.
        sweep_multiplications: multiplications in one reverse sweep.
        notes: kinks met, non-finite partials.
    """

    source: str
    expression: str
    output: str
    inputs: tuple[tuple[str, float], ...]
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    gradient: tuple[tuple[str, float], ...]
    paths: Mapping[str, int] = field(default_factory=dict)
    path_multiplications: int = 0
    sweep_multiplications: int = 0
    notes: tuple[str, ...] = ()

    def node(self, name: str) -> Node:
        """The node called ``name``; O(n)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become strings)."""
        def num(x: float) -> Any:
            return x if math.isfinite(x) else str(x)

        return {
            "source": self.source, "expression": self.expression, "output": self.output,
            "inputs": {k: num(v) for k, v in self.inputs},
            "nodes": [{"name": n.name, "op": n.op, "expr": n.expr, "value": num(n.value),
                       "adjoint": num(n.adjoint), "parents": list(n.parents)} for n in self.nodes],
            "edges": [{"parent": e.parent, "child": e.child, "argnum": e.argnum, "partial": num(e.partial)}
                      for e in self.edges],
            "gradient": {k: num(v) for k, v in self.gradient},
            "paths": dict(self.paths),
            "path_multiplications": self.path_multiplications,
            "sweep_multiplications": self.sweep_multiplications,
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

def parse_at(text: str | Sequence[str]) -> dict[str, float]:
    """Parse ``"a=2,b=1"`` (or several such strings) into ``{"a": 2.0, "b": 1.0}``; O(len).

    Raises:
        SpecError: a part is not ``name=number``, a name is repeated or not an identifier.
    """
    parts = [text] if isinstance(text, str) else list(text)
    out: dict[str, float] = {}
    for chunk in parts:
        for item in str(chunk).split(","):
            item = item.strip()
            if not item:
                continue
            name, eq, val = item.partition("=")
            name, val = name.strip(), val.strip()
            if not eq or not name.isidentifier():
                raise SpecError(f"--at: expected name=value pairs such as a=2,b=1, got {item!r}")
            try:
                number = float(val)
            except ValueError:
                raise SpecError(f"--at: the value of {name} must be a number, got {val!r}") from None
            if not math.isfinite(number):
                raise SpecError(f"--at: the value of {name} must be finite, got {val!r}")
            if name in out:
                raise SpecError(f"--at: {name} is given twice")
            out[name] = number
    return out


def _parse(source: str) -> tuple[str | None, ast.expr]:
    try:
        tree = ast.parse(source.strip(), mode="exec")
    except SyntaxError as exc:
        raise SpecError(f"cannot parse {source!r}: {exc.msg} (column {exc.offset})") from None
    except (RecursionError, MemoryError):
        raise SpecError("the expression is nested too deeply for Python's parser") from None
    if len(tree.body) != 1:
        raise SpecError(f"give one expression (optionally named, as in 'y = ...'), got {len(tree.body)} statements")
    stmt = tree.body[0]
    if isinstance(stmt, ast.Expr):
        return None, stmt.value
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    raise SpecError("give an expression such as '(a + b) * (b + 1)' or a named one such as 'y = a * b'")


def _check(node: ast.AST, funcs: Mapping[str, int]) -> None:
    """Walk the tree; reject every node type outside the whitelist (never evaluates anything)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.BinOp):
            if type(n.op) not in _BINOPS:
                raise SpecError(f"operator {type(n.op).__name__} is not supported; use + - * / **")
            stack += [n.left, n.right]
        elif isinstance(n, ast.UnaryOp):
            if not isinstance(n.op, (ast.USub, ast.UAdd)):
                raise SpecError(f"unary operator {type(n.op).__name__} is not supported; use - or +")
            stack.append(n.operand)
        elif isinstance(n, ast.Call):
            if not isinstance(n.func, ast.Name) or n.func.id not in funcs:
                what = n.func.id if isinstance(n.func, ast.Name) else ast.unparse(n.func)
                raise SpecError(f"unknown function {what!r}; known: {', '.join(sorted(funcs))}")
            if n.keywords or any(isinstance(a, ast.Starred) for a in n.args):
                raise SpecError(f"{n.func.id}() takes positional arguments only")
            if len(n.args) != funcs[n.func.id]:
                raise SpecError(f"{n.func.id}() takes {funcs[n.func.id]} argument(s), got {len(n.args)}")
            stack += list(n.args)
        elif isinstance(n, ast.Name):
            if n.id in funcs:
                raise SpecError(f"{n.id!r} is a function; call it, as in {n.id}(x)")
        elif isinstance(n, ast.Constant):
            if isinstance(n.value, bool) or not isinstance(n.value, (int, float)):
                raise SpecError(f"only real numbers may appear as constants, got {n.value!r}")
        else:
            raise SpecError(f"{type(n).__name__} is not allowed in an expression "
                            "(numbers, variables, + - * / **, unary minus and function calls only)")


# ---------------------------------------------------------------------------
# Evaluation on the engine
# ---------------------------------------------------------------------------

def _fmt(x: float) -> str:
    """A compact number: integers without a decimal point, else 10 significant digits."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.10g}"


def _fmt_factor(x: float) -> str:
    """A number inside a product: negative ones in parentheses."""
    text = _fmt(x)
    return f"({text})" if text.startswith("-") else text


def _label(prim: str, args: Sequence[str], precs: Sequence[int]) -> tuple[str, int]:
    """Infix text of one node from its arguments' texts, with parentheses where needed."""
    ops = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
    if prim == "neg":
        a = args[0] if precs[0] > _PRECEDENCE["neg"] else f"({args[0]})"
        return f"-{a}", _PRECEDENCE["neg"]
    if prim in ops:
        sym = ops[prim]
        p = _PRECEDENCE[sym]
        right_assoc = sym == "**"
        left = args[0] if precs[0] > p or (precs[0] == p and not right_assoc) else f"({args[0]})"
        right = args[1] if precs[1] > p or (precs[1] == p and right_assoc) else f"({args[1]})"
        return f"{left} {sym} {right}", p
    if prim == "identity":
        return args[0], precs[0]
    return f"{prim}({', '.join(args)})", 9


class _Builder:
    """Evaluate the checked AST with the engine, one shared node per distinct subexpression."""

    def __init__(self, at: Mapping[str, float]):
        from . import engine as E
        from .engine.tracer import Tensor

        self.E, self.Tensor = E, Tensor
        self.at = at
        self.leaves: dict[str, Any] = {}
        self.memo: dict[tuple, Any] = {}

    def leaf(self, name: str) -> Any:
        if name not in self.leaves:
            if name not in self.at:
                raise SpecError(f"no value for {name}: add {name}=... to --at")
            self.leaves[name] = self.Tensor(np.asarray(self.at[name], dtype=np.float64), requires_grad=True)
        return self.leaves[name]

    def _key(self, value: Any) -> tuple:
        """O(1) identity of an evaluated operand: its graph node, or its constant value."""
        return ("node", value.id) if isinstance(value, self.Tensor) else ("const", value)

    def build(self, root: ast.expr) -> Any:
        """Evaluate ``root`` bottom-up, left to right, with an explicit stack (no recursion limit).

        An operation already applied to the same operands returns the same
        node, so a repeated subexpression is one node of the graph.
        """
        results: dict[int, Any] = {}
        stack: list[tuple[ast.expr, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in results:
                continue
            children = _operands(node)
            if children and not ready:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(children))
                continue
            results[id(node)] = self._apply(node, [results[id(c)] for c in children])
        return results[id(root)]

    def _apply(self, node: ast.expr, args: list[Any]) -> Any:
        if isinstance(node, ast.Name):
            return self.leaf(node.id)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                return args[0]
            op = "neg"
        elif isinstance(node, ast.BinOp):
            op = _BINOPS[type(node.op)][0]
        else:  # ast.Call, checked by _check
            op = node.func.id
        key = (op,) + tuple(self._key(a) for a in args)
        if key not in self.memo:
            out = getattr(self.E, op)(*args)
            if not isinstance(out, self.Tensor):
                out = float(np.asarray(out))        # a constant subexpression: fold it
            self.memo[key] = out
        return self.memo[key]


def _operands(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.Call):
        return list(node.args)
    return []


def _domain_message(prim: str) -> str:
    from .ops import primitive

    p = primitive(prim)
    needs = []
    for b in p.domain:
        what = p.arg_names[b.arg] if b.arg < len(p.arg_names) else f"argument {b.arg}"
        needs.append(f"{what} {'>' if b.op == 'gt' else '!='} {_fmt(b.value)}"
                     + (f" (unless {p.arg_names[b.unless_integer_arg]} is an integer)"
                        if b.unless_integer_arg is not None else ""))
    return f"{prim} needs {' and '.join(needs)}"


def explain(source: str, at: Mapping[str, float] | str) -> Explanation:
    """Build, evaluate and differentiate ``source`` at the point ``at``; return the annotated graph.

    Args:
        source: ``"(a + b) * (b + 1)"`` or a named expression ``"y = a * b"``.
        at: values of the variables, a mapping or ``"a=2,b=1"``.

    Returns:
        An :class:`Explanation`. Cost: linear in the expression's size.

    Raises:
        SpecError: unsupported syntax, unknown function, a variable without a
            value, no variable at all, or a point outside a primitive's domain.
    """
    values = parse_at(at) if isinstance(at, str) else {str(k): float(v) for k, v in at.items()}
    named, tree = _parse(source)
    funcs = functions()
    _check(tree, funcs)
    builder = _Builder(values)
    with np.errstate(all="ignore"):     # a point outside a domain is reported below, by name
        return _annotate(source, named, tree, funcs, values, builder, builder.build(tree))


def _annotate(source: str, named: str | None, tree: ast.expr, funcs: Mapping[str, int],
              values: Mapping[str, float], builder: _Builder, out: Any) -> Explanation:
    """Name the nodes, check domains, read partials and adjoints from the engine, count paths."""
    from .engine import backward, toposort
    from .engine.tracer import identity
    from .engine.vjps import vjp_rule
    from .ops import distance_to_kink, in_domain

    if not isinstance(out, builder.Tensor):
        raise SpecError(f"{source!r} has no variables: nothing to differentiate")
    if out.prim is None:                          # the expression is a bare variable
        out = identity(out)

    variables = list(builder.leaves)
    for name in values:                           # given but unused: an input with gradient 0
        if name not in builder.leaves:
            builder.leaf(name)
            variables.append(name)
    output = named or ("e" if "e" not in values else "out")
    if output in values:
        raise SpecError(f"the output name {output!r} is also a variable; name the output, as in 'y = ...'")

    graph = toposort(out)
    inner = [n for n in graph if n.prim is not None]
    taken = set(values) | {output} | set(funcs)
    letters = (c for c in "abcdefghijklmnopqrstuvwxyz" if c not in taken)
    names: dict[int, str] = {leaf.id: name for name, leaf in builder.leaves.items()}
    counter = 0
    for n in inner:
        if n is out:
            names[n.id] = output
            continue
        name = next(letters, None)
        while name is None:
            counter += 1
            if f"t{counter}" not in taken:
                name = f"t{counter}"
        names[n.id] = name

    adjoints = backward(out, np.ones((), dtype=np.float64))
    nodes: list[Node] = []
    edges: list[Edge] = []
    notes: list[str] = []
    for name in variables:
        leaf = builder.leaves[name]
        nodes.append(Node(name, None, name, float(leaf.value), float(np.asarray(adjoints.get(leaf.id, 0.0)))))
    for n in inner:
        raw = [a.value if isinstance(a, builder.Tensor) else a for a in n.args]
        arg_text = [(names[a.id], 10) if isinstance(a, builder.Tensor) else (_fmt(a), 10 if a >= 0 else 0)
                    for a in n.args]
        text, _ = _label(n.prim, [t for t, _ in arg_text], [p for _, p in arg_text])
        if not in_domain(n.prim, *raw):
            shown = ", ".join(f"{t} = {_fmt(v)}" for (t, _), v in zip(arg_text, raw)
                              if not _is_number_text(t))
            raise SpecError(f"{names[n.id]} = {text} is undefined at {shown}: {_domain_message(n.prim)}")
        if distance_to_kink(n.prim, *raw, **n.params) == 0:
            notes.append(f"{names[n.id]} = {text} is at a kink of {n.prim} (not differentiable there); "
                         "the partials shown are the engine's choice, as in PyTorch and JAX")
        parents = []
        for i, a in enumerate(n.args):
            if not isinstance(a, builder.Tensor):
                continue
            partial = float(np.asarray(vjp_rule(n.prim, i)(np.ones((), dtype=np.float64), n.value, *raw,
                                                           **n.params)))
            if not math.isfinite(partial):
                notes.append(f"d{names[n.id]}/d{names[a.id]} is not finite at this point")
            edges.append(Edge(names[a.id], names[n.id], i, partial))
            parents.append(names[a.id])
        nodes.append(Node(names[n.id], n.prim, text, float(n.value),
                          float(np.asarray(adjoints.get(n.id, 0.0))), tuple(parents)))

    # Paths to the output and their multiplications, by dynamic programming (children first).
    # count[n]: paths n -> output; length[n]: edges summed over those paths.
    children: dict[str, list[str]] = {n.name: [] for n in nodes}
    for e in edges:
        children[e.parent].append(e.child)
    count: dict[str, int] = {output: 1}
    length: dict[str, int] = {output: 0}
    for node in reversed(nodes):
        if node.name != output:
            count[node.name] = sum(count[c] for c in children[node.name])
            length[node.name] = sum(length[c] + count[c] for c in children[node.name])
    paths = {v: count[v] for v in variables}
    path_mults = sum(length[v] - count[v] for v in variables)
    sweep_mults = sum(1 for e in edges if e.child != output)
    adjoint = {n.name: n.adjoint for n in nodes}
    return Explanation(
        source=source.strip(), expression=_unparse(tree, source, named is not None), output=output,
        inputs=tuple((v, values[v]) for v in variables), gradient=tuple((v, adjoint[v]) for v in variables),
        nodes=tuple(nodes), edges=tuple(edges), paths=paths,
        path_multiplications=path_mults, sweep_multiplications=sweep_mults, notes=tuple(notes),
    )


def _unparse(tree: ast.expr, source: str, named: bool) -> str:
    """The expression normalised by ``ast.unparse``; the source's right-hand side if it is too deep for it."""
    try:
        return ast.unparse(tree)
    except RecursionError:
        return source.split("=", 1)[1].strip() if named else source.strip()


def _is_number_text(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

def _edge_names(ex: Explanation) -> dict[tuple[str, str, int], str]:
    """``dc/da`` for each edge, with ``#k`` appended when one parent feeds one child twice."""
    seen: dict[tuple[str, str], int] = {}
    for e in ex.edges:
        seen[(e.parent, e.child)] = seen.get((e.parent, e.child), 0) + 1
    out = {}
    for e in ex.edges:
        base = f"d{e.child}/d{e.parent}"
        out[(e.parent, e.child, e.argnum)] = base + (f"#{e.argnum + 1}" if seen[(e.parent, e.child)] > 1 else "")
    return out


def format_text(ex: Explanation) -> str:
    """The explanation as text: graph, local partials, backward sweep, cost, then the gradient lines."""
    o = ex.output
    names = _edge_names(ex)
    lines = [f"expression: {o} = {ex.expression}",
             "at:         " + ", ".join(f"{k} = {_fmt(v)}" for k, v in ex.inputs), ""]

    lines.append("forward pass (each node's value, parents before children):")
    rows = [(f"{n.name} = {_fmt(n.value)}", "input") if n.op is None else
            (f"{n.name} = {n.expr}", f"= {_fmt(n.value)}" + ("   (output)" if n.name == o else ""))
            for n in ex.nodes]
    width = max(len(left) for left, _ in rows)
    lines.extend(f"  {left:<{width}}   {right}" for left, right in rows)
    lines.append("")

    lines.append("edges (local partial derivative of child with respect to parent):")
    for e in ex.edges:
        lines.append(f"  {e.parent} -> {e.child}   {names[(e.parent, e.child, e.argnum)]} = {_fmt(e.partial)}")
    lines.append("")

    lines.append(f"backward pass (adjoint adj[n] = d{o}/dn of each node n, summed over the edges leaving n, "
                 "children before parents):")
    adjoint = {n.name: n.adjoint for n in ex.nodes}
    leaving: dict[str, list[Edge]] = {n.name: [] for n in ex.nodes}
    for e in ex.edges:
        leaving[e.parent].append(e)
    for n in reversed(ex.nodes):
        if n.name == o:
            lines.append(f"  adj[{o}] = 1   (seed: d{o}/d{o} = 1)")
            continue
        out_edges = leaving[n.name]
        if not out_edges:
            lines.append(f"  adj[{n.name}] = 0   ({n.name} does not reach {o})")
            continue
        symbolic = " + ".join(f"adj[{e.child}] * {names[(e.parent, e.child, e.argnum)]}" for e in out_edges)
        numeric = " + ".join(f"{_fmt_factor(adjoint[e.child])} * {_fmt_factor(e.partial)}"
                             for e in out_edges)
        lines.append(f"  adj[{n.name}] = {symbolic} = {numeric} = {_fmt(n.adjoint)}")
    lines.append("")

    n_paths = sum(ex.paths.values())
    per = ", ".join(f"{v}: {p}" for v, p in ex.paths.items())
    lines.append("cost (multiplications of local partials; multiplying by the seed 1 is not counted):")
    lines.append(f"  summing over all paths: {_count(ex.path_multiplications, 'multiplication')} "
                 f"over {_count(n_paths, 'path')} ({per})")
    lines.append(f"  one reverse sweep:      {_count(ex.sweep_multiplications, 'multiplication')} "
                 f"(one per edge not into {o}; {len(ex.edges)} edges), every input's derivative at once")
    for note in ex.notes:
        lines.append(f"note: {note}")
    lines.append("")
    lines.append("gradient:")
    lines.extend(f"d{o}/d{v} = {_fmt(g)}" for v, g in ex.gradient)
    return "\n".join(lines)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_dot(ex: Explanation) -> str:
    """Graphviz DOT of the annotated graph: values and adjoints on nodes, local partials on edges."""
    o = ex.output
    names = _edge_names(ex)
    lines = [f"digraph {_dot_str(o)} {{", "  rankdir=LR;",
             f"  label={_dot_str(f'{o} = {ex.expression}  at  ' + ', '.join(f'{k} = {_fmt(v)}' for k, v in ex.inputs))};",
             '  node [shape=box, fontname="Helvetica"];', '  edge [fontname="Helvetica"];']
    for n in ex.nodes:
        head = n.name if n.op is None else f"{n.name} = {n.expr}"
        label = f"{head}\\nvalue {_fmt(n.value)}\\nadjoint d{o}/d{n.name} = {_fmt(n.adjoint)}"
        shape = ", shape=ellipse" if n.op is None else (", peripheries=2" if n.name == o else "")
        lines.append(f"  {_dot_str(n.name)} [label=\"{label}\"{shape}];")
    for e in ex.edges:
        lines.append(f"  {_dot_str(e.parent)} -> {_dot_str(e.child)} "
                     f"[label={_dot_str(f'{names[(e.parent, e.child, e.argnum)]} = {_fmt(e.partial)}')}];")
    lines.append("}")
    return "\n".join(lines)
