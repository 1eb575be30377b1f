"""The ``gradverify`` command line: every exit status of ``check``, its JSON, and ``explain``.

Subprocess tests run ``python -m gradverify.cli`` exactly as a user or a CI
script would (the console script ``gradverify`` calls the same ``main``);
the finer cases of bad input call :func:`gradverify.cli.main` in process.

``explain``'s printed gradients are checked against the reference engine
(``E.grad``); they are printed with 10 significant digits, hence
``rtol=1e-9``.

Cost: about ten subprocesses (a few seconds) and in-process calls (milliseconds).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradverify.engine as E
from gradverify import cli

REPO = Path(__file__).resolve().parents[1]

LAYERS = '''
import numpy as np

class Dense:
    def __init__(self, n_in=3, n_out=2, bug=False):
        rng = np.random.default_rng(0)
        self.params = {"weight": rng.standard_normal((n_in, n_out)), "bias": rng.standard_normal(n_out)}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        db = dy.sum(0)
        self.grads = {"weight": self.x.T @ dy, "bias": 2 * db if self.bug else db}
        return dy @ self.params["weight"].T


def make_buggy():
    return Dense(bug=True)


instance = Dense()


class NeedsArgs:
    def __init__(self, n):
        self.n = n


class NoGrads(Dense):
    def backward(self, dy):
        self.grads = {"weight": self.x.T @ dy}          # the bias gradient is missing
        return dy @ self.params["weight"].T


not_a_layer = 42
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mylayers.py").write_text(LAYERS, encoding="utf-8")
    return tmp_path


def gv(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "gradverify.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------
# gradverify check: exit statuses (subprocess)
# ---------------------------------------------------------------------------

def test_check_exit_0_when_gradients_agree(workdir):
    r = gv("check", "mylayers.py:Dense", "--input-shape", "4,3", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "gradient check PASS" in r.stdout


def test_check_exit_1_when_they_do_not_and_json_parses(workdir):
    r = gv("check", "mylayers.py:make_buggy", "--input-shape", "4,3", "--json", "--seed", "7", cwd=workdir)
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["passed"] is False and data["status"] == "fail" and data["exit_status"] == 1
    assert data["worst"]["input"] == "bias" and data["seed"] == 7
    assert data["target"] == "mylayers.py:make_buggy" and data["input_shape"] == [4, 3]


def test_check_module_name_form_and_instance(workdir):
    r = gv("check", "mylayers:instance", "--input-shape", "2,3", "--json", "--mode", "full", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["passed"] is True


@pytest.mark.parametrize("args, message", [
    (["check", "missing.py:Dense", "--input-shape", "4,3"], "no such file: missing.py"),
    (["check", "mylayers.py:Nope", "--input-shape", "4,3"], "has no attribute 'Nope'; candidates:"),
    (["check", "mylayers.py:Dense", "--input-shape", "4,a"], "--input-shape must be comma-separated"),
    (["check", "mylayers.py:Dense", "--input-shape", "4,5"], "Dense.forward raised ValueError"),
    (["check", "mylayers.py:NoGrads", "--input-shape", "4,3"], "bias"),          # MissingGradient
    (["check", "mylayers.py:Dense"], "the following arguments are required: --input-shape"),
    (["explain", "(a + b) *", "--at", "a=1,b=2"], "cannot parse"),
])
def test_exit_2_on_bad_input(workdir, args, message):
    r = gv(*args, cwd=workdir)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_json_error_output_parses(workdir):
    r = gv("check", "mylayers.py:NoGrads", "--input-shape", "4,3", "--json", cwd=workdir)
    assert r.returncode == 2
    data = json.loads(r.stdout)
    assert data["status"] == "error" and data["error"]["type"] == "MissingGradient"


def test_help_lists_subcommands_and_exit_statuses(workdir):
    r = gv("--help", cwd=workdir)
    assert r.returncode == 0
    assert re.search(r"^\s+check\s", r.stdout, re.M) and re.search(r"^\s+explain\s", r.stdout, re.M)
    r = gv("check", "--help", cwd=workdir)
    assert r.returncode == 0
    assert "--input-shape SHAPE" in r.stdout and "--json" in r.stdout and "--seed N" in r.stdout
    assert "exit status: 0 the gradients agree, 1 they do not, 2" in r.stdout
    r = gv("explain", "--help", cwd=workdir)
    assert r.returncode == 0 and "--at NAME=VALUE" in r.stdout and "--dot" in r.stdout


def test_report_is_a_subcommand(capsys):
    # gradverify.report.cli plugs into the PLUGGABLE slot
    with pytest.raises(SystemExit) as info:
        cli.main(["report", "--help"])
    assert info.value.code == 0
    assert "--quick" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# gradverify check: finer cases (in process)
# ---------------------------------------------------------------------------

@pytest.fixture
def in_workdir(workdir, monkeypatch):
    """Run main() in the project directory; undo its sys.path entries and the target modules it imports."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield workdir
    for name in [m for m in sys.modules if m.startswith("_gradverify_target_") or m == "mylayers"]:
        del sys.modules[name]


@pytest.mark.parametrize("target, message", [
    ("mylayers.py:NeedsArgs", "NeedsArgs needs arguments (n)"),
    ("mylayers.py:not_a_layer", "not_a_layer is a int, not a layer"),
    ("no_such_module:Dense", "no module named 'no_such_module'"),
    ("Dense", "expected FILE.py:NAME or module:NAME"),
])
def test_check_bad_targets(in_workdir, capsys, target, message):
    assert cli.main(["check", target, "--input-shape", "4,3"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text, shape", [("4,3", (4, 3)), ("4x3", (4, 3)), ("(4, 3)", (4, 3)), ("5", (5,)),
                                         ("(5,)", (5,)), ("2,0", (2, 0))])
def test_parse_shape(text, shape):
    assert cli.parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "4,-3", "4.5", "a", "4,,3", "()"])
def test_parse_shape_rejects(text):
    with pytest.raises(cli._BadInput):
        cli.parse_shape(text)


def test_check_dtype_option(in_workdir, capsys):
    assert cli.main(["check", "mylayers.py:Dense", "--input-shape", "2,3", "--dtype", "float32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float32"     # dtype of the gradients checked
    assert cli.main(["check", "mylayers.py:Dense", "--input-shape", "2,3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float64"     # default: the params' dtype


# ---------------------------------------------------------------------------
# gradverify explain
# ---------------------------------------------------------------------------

def test_explain_classic_example(workdir):
    r = gv("explain", "(a + b) * (b + 1)", "--at", "a=2,b=1", cwd=workdir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-2:] == ["de/da = 2", "de/db = 5"]
    for expected in ("  c = a + b   = 3", "  d = b + 1   = 2", "  e = c * d   = 6   (output)",
                     "  c -> e   de/dc = 2", "  d -> e   de/dd = 3",
                     "  adj[b] = adj[c] * dc/db + adj[d] * dd/db = 2 * 1 + 3 * 1 = 5"):
        assert expected in lines
    assert any("summing over all paths" in line for line in lines)
    assert any("one reverse sweep" in line for line in lines)


def test_explain_dot(workdir):
    r = gv("explain", "(a + b) * (b + 1)", "--at", "a=2", "--at", "b=1", "--dot", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('digraph "e" {') and '"c" -> "e" [label="de/dc = 2"];' in r.stdout


EXPLAIN_CASES = [
    ("y = tanh(w * x + b)", {"w": 0.5, "x": 2.0, "b": -1.3}, lambda w, x, b: E.tanh(w * x + b)),
    ("sigmoid(a) * log(b) - exp(-a / b) ** 2", {"a": 0.3, "b": 1.7},
     lambda a, b: E.sigmoid(a) * E.log(b) - E.exp(-a / b) ** 2),
    ("sin(x) * cos(x) + relu(x) ** y", {"x": 1.2, "y": 0.7}, lambda x, y: E.sin(x) * E.cos(x) + E.relu(x) ** y),
]


@pytest.mark.parametrize("source, point, fn", EXPLAIN_CASES, ids=[c[0] for c in EXPLAIN_CASES])
def test_explain_gradients_match_the_engine(in_workdir, capsys, source, point, fn):
    at = ",".join(f"{k}={v}" for k, v in point.items())
    assert cli.main(["explain", source, "--at", at]) == 0
    out = capsys.readouterr().out
    name = source.split("=")[0].strip() if "=" in source.split("(")[0] else "e"
    printed = dict(re.findall(rf"^d{name}/d(\w+) = (\S+)$", out, re.M))
    grads = E.grad(fn, tuple(range(len(point))))(*[np.float64(v) for v in point.values()])
    assert list(printed) == list(point)
    for (var, text), want in zip(printed.items(), grads):
        assert float(text) == pytest.approx(float(want), rel=1e-9, abs=1e-12), var


def test_explain_errors_exit_2_in_process(capsys):
    assert cli.main(["explain", "log(a)", "--at", "a=-1"]) == 2
    assert "log needs x > 0" in capsys.readouterr().err
    assert cli.main(["explain", "a * b", "--at", "a=1"]) == 2
    assert "no value for b" in capsys.readouterr().err
    assert cli.main(["explain", "a * b", "--at", "a=1,b"]) == 2
    assert "expected name=value pairs" in capsys.readouterr().err


def test_docs_show_the_real_classic_output(capsys):
    """docs/cli.md quotes the classic example's output verbatim; keep it true."""
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    quoted = doc.split('$ gradverify explain "(a + b) * (b + 1)" --at a=2,b=1\n')[1].split("```")[0]
    assert cli.main(["explain", "(a + b) * (b + 1)", "--at", "a=2,b=1"]) == 0
    assert capsys.readouterr().out == quoted


def test_check_a_torch_module_factory(in_workdir, capsys):
    pytest.importorskip("torch")
    (in_workdir / "tlayers.py").write_text(
        "import torch\n\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Linear(3, 2).double()\n", encoding="utf-8")
    assert cli.main(["check", "tlayers.py:make", "--input-shape", "4,3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True
    assert {s["name"] for s in data["inputs"]} == {"x", "weight", "bias"}


# ---------------------------------------------------------------------------
# issue 12: packages, --init, --against, --dtype, the --input-shape hint
# ---------------------------------------------------------------------------

PACKAGE_LAYER = '''
import numpy as np
from ..act import tanh


class Dense:
    def __init__(self, n, m=2):
        self.params = {"W": np.random.default_rng(0).standard_normal((n, m))}

    def forward(self, x):
        self.x = x
        self.y = tanh(x @ self.params["W"])
        return self.y

    def backward(self, dy):
        dz = dy * (1 - self.y ** 2)
        self.grads = {"W": self.x.T @ dz}
        return dz @ self.params["W"].T
'''


@pytest.fixture
def package(in_workdir):
    """gvpkg/sub/layers.py with a relative import of gvpkg/act.py; its modules are dropped afterwards."""
    sub = in_workdir / "gvpkg" / "sub"
    sub.mkdir(parents=True)
    (in_workdir / "gvpkg" / "__init__.py").write_text("", encoding="utf-8")
    (sub / "__init__.py").write_text("", encoding="utf-8")
    (in_workdir / "gvpkg" / "act.py").write_text("import numpy as np\n\ndef tanh(z):\n    return np.tanh(z)\n",
                                                 encoding="utf-8")
    (sub / "layers.py").write_text(PACKAGE_LAYER, encoding="utf-8")
    yield in_workdir
    for name in [m for m in sys.modules if m == "gvpkg" or m.startswith("gvpkg.")]:
        del sys.modules[name]


@pytest.mark.parametrize("target", [os.path.join("gvpkg", "sub", "layers.py") + ":Dense", "gvpkg.sub.layers:Dense"])
def test_check_a_module_inside_a_package_with_init_arguments(package, capsys, target):
    assert cli.main(["check", target, "--input-shape", "4,3", "--init", '{"n": 3}', "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True and data["inputs"][1]["name"] == "W" and data["inputs"][1]["shape"] == [3, 2]


def test_a_file_inside_a_package_from_another_directory(package, capsys, monkeypatch):
    monkeypatch.chdir(package.parent)        # the package root is found from the file, not the cwd
    target = os.path.join(package.name, "gvpkg", "sub", "layers.py") + ":Dense"
    assert cli.main(["check", target, "--input-shape", "4,3", "--init", '{"n": 3, "m": 5}']) == 0


@pytest.mark.parametrize("init, message", [
    (None, "Dense needs arguments (n); give them as JSON keyword arguments, e.g. --init '{\"n\": \"...\"}'"),
    ("{n: 3}", "--init must be a JSON object"),
    ("[3]", "--init must be a JSON object of keyword arguments such as '{\"n\": 3}', got a list"),
    ('{"n": 3, "bogus": 1}', "Dense(n=3, bogus=1) raised TypeError"),
])
def test_init_errors_say_what_to_fix(package, capsys, init, message):
    args = ["check", "gvpkg.sub.layers:Dense", "--input-shape", "4,3"] + ([] if init is None else ["--init", init])
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_init_for_an_instance_is_an_error(in_workdir, capsys):
    assert cli.main(["check", "mylayers.py:instance", "--input-shape", "4,3", "--init", '{"n_in": 3}']) == 2
    assert "instance is already an instance; --init applies to a class or factory" in capsys.readouterr().err


def test_against_option(in_workdir, capsys):
    assert cli.main(["check", "mylayers.py:Dense", "--input-shape", "4,3", "--against", "fd", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["against"] == ["fd"] and data["reference"] == "fd"
    assert not any("declined" in w for w in data["warnings"])     # no exact reference was asked for
    assert cli.main(["check", "mylayers.py:Dense", "--input-shape", "4,3", "--against", "reference,fd"]) == 0
    out = capsys.readouterr().out
    assert "against=reference,fd:" in out and "reference=" in out
    assert cli.main(["check", "mylayers.py:Dense", "--input-shape", "4,3", "--against", "fd,bogus"]) == 2
    assert "--against: against= takes names from" in capsys.readouterr().err


def test_dtype_is_shown_in_the_printed_output(in_workdir, capsys):
    assert cli.main(["check", "mylayers.py:Dense", "--input-shape", "2,3", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "mylayers.py:Dense with input shape (2, 3), input dtype float32, against=auto:"
    assert cli.main(["check", "mylayers.py:Dense", "--input-shape", "2,3", "--dtype", "float32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_dtype"] == "float32"


RAISING = '''
import numpy as np

class Dense:
    params = {"W": np.ones((3, 2))}

    def forward(self, x):
        self.x = x
        return x @ self.params["W"]

    def backward(self, dy):
        self.grads = {"W": self.x.T @ dy}
        return dy @ self.params["W"].T


class ForwardKeyError(Dense):
    def forward(self, x):
        return {"a": x}["b"]


class BackwardBroadcast(Dense):
    def backward(self, dy):
        self.grads = {"W": self.x.T @ dy}
        return dy @ self.params["W"].T + np.ones(7)
'''


@pytest.mark.parametrize("name, shape, pieces, hint", [
    ("Dense", "4,5", ["CodeUnderTestError", "Dense.forward raised ValueError", "(forward called with x: (4, 5))"],
     True),
    ("ForwardKeyError", "4,3", ["ForwardKeyError.forward raised KeyError: 'b'", "(forward called with x: (4, 3))"],
     False),
    ("BackwardBroadcast", "4,3", ["BackwardBroadcast.backward raised ValueError: operands could not be broadcast",
                                  "(backward called with dy: (4, 2))"], False),
])
def test_code_under_test_errors_and_the_input_shape_hint(in_workdir, capsys, name, shape, pieces, hint):
    (in_workdir / "raising.py").write_text(RAISING, encoding="utf-8")
    assert cli.main(["check", f"raising.py:{name}", "--input-shape", shape, "--json"]) == 2
    captured = capsys.readouterr()
    for piece in pieces[1:] if pieces[0] == "CodeUnderTestError" else pieces:
        assert piece in captured.err
    assert json.loads(captured.out)["error"]["type"] == "CodeUnderTestError"
    assert ("is --input-shape" in captured.err) is hint
