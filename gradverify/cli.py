"""The ``gradverify`` command line: ``check`` a layer's gradients, ``explain`` backprop on an expression.

Each subcommand is a thin wiring of the library: ``check`` calls
:func:`gradverify.check_layer`, ``explain`` calls
:func:`gradverify.explain.explain`. Exit statuses (the contract scripts and CI
rely on):

* ``0`` -- the gradients agree (``check``), or the command succeeded;
* ``1`` -- the gradients do not agree (``check``);
* ``2`` -- the command could not run: bad arguments, a missing file, module
  or name, an unparsable shape or expression, a
  :class:`gradverify.GradVerifyError`, or an exception raised by the code
  under test while it was being checked.

Other subcommands plug in through :data:`PLUGGABLE`: a module listed there
that exists defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; it is registered as a subcommand, and it is simply
absent while the module does not exist (``gradverify report`` arrives that
way, from ``gradverify.report.cli``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from typing import Any, Sequence

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_MISMATCH", "EXIT_BAD_INPUT", "PLUGGABLE"]

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2

#: Subcommands implemented in other modules: name -> module path. Registered
#: only when the module exists; it must define ``HELP``, ``add_arguments`` and ``run``.
PLUGGABLE: dict[str, str] = {"report": "gradverify.report.cli", "campaign": "gradverify.campaign.cli"}


class _BadInput(Exception):
    """A CLI-level bad-input error (exit status 2)."""


# ---------------------------------------------------------------------------
# gradverify check
# ---------------------------------------------------------------------------

def parse_shape(text: str) -> tuple[int, ...]:
    """``"4,3"`` (also ``"4x3"``, ``"(4, 3)"``, ``"5"``) -> ``(4, 3)``; O(len).

    Raises:
        _BadInput: not a list of non-negative integers.
    """
    body = str(text).strip().strip("()[]").strip()
    parts = [p.strip() for p in re.split(r"[,x]", body)] if body else []
    if parts and parts[-1] == "":
        parts.pop()                                  # "(4,)"
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise _BadInput(f"--input-shape must be comma-separated non-negative integers such as 4,3; got {text!r}")
    return tuple(int(p) for p in parts)


def _package_module_name(path: str) -> tuple[str, str] | None:
    """``(root directory, dotted name)`` of a ``.py`` file inside a package, or None for a plain script.

    Walks up the directories that hold an ``__init__.py``: the first one
    without is the root put on ``sys.path``, so the module imports by its
    dotted name and its relative imports work. O(depth).
    """
    directory, filename = os.path.split(path)
    stem = os.path.splitext(filename)[0]
    if not os.path.isfile(os.path.join(directory, "__init__.py")):
        return None
    parts = [] if stem == "__init__" else [stem]
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        if not package.isidentifier():
            return None
        parts.insert(0, package)
    return directory, ".".join(parts)


def _import_dotted(name: str, where: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise _BadInput(f"no module named {name!r} (nor a file {where}.py); give FILE.py:NAME or "
                            "module:NAME importable from the current directory") from None
        raise _BadInput(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise _BadInput(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc


def _load_module(where: str) -> Any:
    """Import ``where``: a path to a ``.py`` file, or a dotted module name (found from the current directory).

    A file inside a package (its directory has an ``__init__.py``) is
    imported by its dotted name from the package's root, so relative
    imports work; a file outside any package is run as a script would be,
    with its directory on ``sys.path``.
    """
    looks_like_file = where.endswith(".py") or os.sep in where or (os.altsep and os.altsep in where)
    if looks_like_file:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise _BadInput(f"no such file: {where}")
        packaged = _package_module_name(path)
        if packaged is not None:
            root, dotted = packaged
            if root not in sys.path:
                sys.path.insert(0, root)
            return _import_dotted(dotted, where)
        name = "_gradverify_target_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise _BadInput(f"cannot import {where} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module                   # dataclasses and pickling look it up
        sys.path.insert(0, os.path.dirname(path))    # its sibling modules import, as for a script
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file failed to import: report it, exit 2
            sys.modules.pop(name, None)
            raise _BadInput(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return _import_dotted(where, where)


def _is_layer(obj: Any) -> bool:
    return hasattr(obj, "forward") and not inspect.isclass(obj)


def _needs_arguments(fn: Any) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def parse_init(text: str | None) -> dict[str, Any]:
    """``--init`` JSON (an object of keyword arguments) -> dict; None -> {}.

    Raises:
        _BadInput: not JSON, or not a JSON object.
    """
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadInput(f"--init must be a JSON object of keyword arguments such as '{{\"n\": 3}}'; {exc}") from None
    if not isinstance(value, dict):
        raise _BadInput(f"--init must be a JSON object of keyword arguments such as '{{\"n\": 3}}', "
                        f"got a {type(value).__name__}")
    return value


def load_layer(target: str, init: dict[str, Any] | None = None) -> Any:
    """Resolve ``FILE.py:NAME`` or ``module:NAME`` to a layer instance.

    ``NAME`` (dotted attributes allowed) is a class or factory, called with
    the keyword arguments ``init`` (none by default), or an instance.

    Raises:
        _BadInput: malformed target, missing file, module or name, a class or
            factory that needs arguments it was not given or fails, ``init``
            given for an instance, or something that is not a layer.
    """
    init = init or {}
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise _BadInput(f"expected FILE.py:NAME or module:NAME, got {target!r}")
    module = _load_module(where)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            candidates = [k for k, v in vars(module).items()
                          if not k.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v) or _is_layer(v))
                          and getattr(v, "__module__", module.__name__) == module.__name__]
            hint = f"; candidates: {', '.join(sorted(candidates))}" if candidates else ""
            raise _BadInput(f"{where} has no attribute {name!r}{hint}")
        obj = getattr(obj, part)
    if not _is_layer(obj):
        if not callable(obj):
            raise _BadInput(f"{name} is a {type(obj).__name__}, not a layer, class or factory")
        missing = [m for m in _needs_arguments(obj) if m not in init]
        if missing:
            example = json.dumps({m: "..." for m in missing})
            raise _BadInput(f"{name} needs arguments ({', '.join(missing)}); give them as JSON keyword "
                            f"arguments, e.g. --init '{example}'")
        try:
            obj = obj(**init)
        except Exception as exc:  # noqa: BLE001
            args = ", ".join(f"{k}={v!r}" for k, v in init.items())
            raise _BadInput(f"{name}({args}) raised {type(exc).__name__}: {exc}") from exc
    elif init:
        raise _BadInput(f"{name} is already an instance; --init applies to a class or factory")
    if not _is_layer(obj):
        raise _BadInput(f"{name} gave a {type(obj).__name__}, which has no forward(); a layer has params, "
                        "forward(x) and backward(dy) (or is a torch.nn.Module)")
    return obj


def parse_against_option(text: str) -> tuple[str, ...]:
    """``--against`` text (comma-separated names) -> the tuple ``against=`` takes.

    Raises:
        _BadInput: an unknown name, or ``auto`` combined with others.
    """
    from .errors import SpecError
    from .references import parse_against

    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    try:
        return parse_against(names)
    except SpecError as exc:
        raise _BadInput(f"--against: {exc}") from None


def _check_arguments(p: argparse.ArgumentParser) -> None:
    from .api import MODES
    from .references import AGAINST

    p.add_argument("target", metavar="FILE.py:NAME|module:NAME",
                   help="the layer: a class or factory (called with --init's arguments, none by default), or an "
                        "instance; FILE.py may sit inside a package (relative imports work), module is dotted")
    p.add_argument("--input-shape", required=True, metavar="SHAPE",
                   help="shape of the input drawn for the layer, e.g. 4,3")
    p.add_argument("--init", default=None, metavar="JSON",
                   help="keyword arguments of the class or factory as a JSON object, e.g. '{\"n\": 3}' "
                        "(default: none)")
    p.add_argument("--against", default="auto", metavar="REFS",
                   help=f"what the backward is compared with, comma-separated, from {','.join(AGAINST)} "
                        "(default: auto, an exact reference where one applies, else finite differences)")
    p.add_argument("--examples", type=int, default=None, metavar="N",
                   help="check N Hypothesis-drawn inputs (scales, signs, ties) and report the shrunk failing one "
                        "(default: one drawn input)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="seconds mode=auto may spend on finite differences of every element (default: 5)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (no progress bar)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the input and cotangent (default: 0)")
    p.add_argument("--mode", choices=MODES, default="auto", help="how to check (default: auto)")
    p.add_argument("--dtype", choices=("float16", "float32", "float64"), default=None,
                   help="dtype of the drawn input (default: the layer's parameter dtype, else float64)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: by dtype)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: by dtype)")


def _emit_error(args: argparse.Namespace, message: str, kind: str = "BadInput") -> int:
    print(f"gradverify {args.command}: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"status": "error", "passed": False, "target": getattr(args, "target", None),
                          "error": {"type": kind, "message": message}}, indent=2))
    return EXIT_BAD_INPUT


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def _run_check(args: argparse.Namespace) -> int:
    from . import CodeUnderTestError, GradVerifyError, check_layer

    try:
        shape = parse_shape(args.input_shape)
        against = parse_against_option(args.against)
        layer = load_layer(args.target, parse_init(args.init))
    except _BadInput as exc:
        return _emit_error(args, str(exc))
    try:
        result = check_layer(layer, shape, mode=args.mode, seed=args.seed, rtol=args.rtol, atol=args.atol,
                             dtype=args.dtype, against=against, examples=args.examples, budget=args.budget,
                             progress=False if args.json else None)
    except CodeUnderTestError as exc:
        message = str(exc)
        if exc.stage == "forward" and exc.about_shapes:
            # the evidence points at the drawn input: the forward refused its shape
            message += f"\n  is --input-shape {','.join(map(str, shape))} right for this layer?"
        return _emit_error(args, message, type(exc).__name__)
    except GradVerifyError as exc:
        return _emit_error(args, str(exc), type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - gradverify itself failed: report it, exit 2
        return _emit_error(args, f"checking {args.target} failed: {type(exc).__name__}: {exc}", type(exc).__name__)
    code = EXIT_OK if result.passed else EXIT_MISMATCH
    if args.json:
        data = {"target": args.target, "input_shape": list(shape), "input_dtype": args.dtype,
                "against": list(against), "exit_status": code}
        data.update(result.to_dict())
        print(json.dumps(_plain(data), indent=2))
    else:
        drawn = f", input dtype {args.dtype}" if args.dtype else ""
        print(f"{args.target} with input shape {shape}{drawn}, against={','.join(against)}:")
        print(result)
        if args.dtype and result.dtype != args.dtype:
            print(f"note: the input was drawn in {args.dtype}; the layer computed its gradients in {result.dtype} "
                  "(its parameters' dtype), so they were checked at that precision")
    return code


# ---------------------------------------------------------------------------
# gradverify explain
# ---------------------------------------------------------------------------

def _explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("expression", metavar="EXPR",
                   help='an arithmetic expression such as "(a + b) * (b + 1)", or a named one "y = a * b"; '
                        "+ - * / **, unary minus, and exp, log, sqrt, abs, sin, cos, tanh, sigmoid, relu, "
                        "softplus, square, maximum, minimum")
    p.add_argument("--at", action="append", default=[], metavar="NAME=VALUE,...",
                   help="the point, e.g. --at a=2,b=1 (repeatable)")
    p.add_argument("--dot", action="store_true", help="print Graphviz DOT of the annotated graph instead of text")


def _run_explain(args: argparse.Namespace) -> int:
    from .errors import GradVerifyError
    from .explain import explain, format_dot, format_text, parse_at

    try:
        ex = explain(args.expression, parse_at(args.at))
    except GradVerifyError as exc:
        return _emit_error(args, str(exc), type(exc).__name__)
    print(format_dot(ex) if args.dot else format_text(ex))
    return EXIT_OK


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------

_CHECK_EPILOG = """\
exit status: 0 the gradients agree, 1 they do not, 2 the check could not run
(bad arguments, missing file or name, bad shape, or the layer raised).

examples:
  gradverify check layers.py:Dense --input-shape 4,3
  gradverify check mypkg/layers.py:Dense --input-shape 4,3 --init '{"n_in": 3, "n_out": 2}'
  gradverify check mypkg.layers:make_layer --input-shape 2,8 --json
  gradverify check layers.py:Dense --input-shape 4,3 --dtype float32 --against reference,fd
"""

_EXPLAIN_EPILOG = """\
examples:
  gradverify explain "(a + b) * (b + 1)" --at a=2,b=1
  gradverify explain "y = tanh(w * x + b)" --at w=0.5,x=2,b=-1 --dot | dot -Tsvg > graph.svg
"""


def _pluggable() -> dict[str, Any]:
    """The PLUGGABLE modules that exist, imported (import errors inside them propagate)."""
    found = {}
    for name, modname in PLUGGABLE.items():
        try:
            spec = importlib.util.find_spec(modname)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found[name] = importlib.import_module(modname)
    return found


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gradverify",
        description="Gradient verification: is this backward pass right, and if not, where and by how much?",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gradverify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = [
        ("check", "check a layer's backward against an exact reference or finite differences (exit 0 agree, "
                  "1 disagree, 2 bad input)",
         _check_arguments, _run_check, _CHECK_EPILOG),
        ("explain", "show the computational graph of an expression: values, local partials, adjoints, cost",
         _explain_arguments, _run_explain, _EXPLAIN_EPILOG),
    ]
    for name, module in _pluggable().items():
        commands.append((name, module.HELP, module.add_arguments, module.run, None))
    for name, help_, add_arguments, run, epilog in commands:
        p = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 agree/ok, 1 disagree, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)        # argparse itself exits with status 2 on bad usage
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("gradverify: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
