"""``gradverify report``: the report dict's keys, rendering from the dict alone, the plots, the CLI.

The measured report is a tiny run (two sizes, three agreement cases on the
reference backend, one timing sample): seconds, not minutes. Rendering is
also checked on a hand-made dict that no measurement produced, so the
renderers provably format what the dict holds and compute nothing. No
timed assertions.

Cost: a few seconds (one tiny measured report, one ``--help`` subprocess).
"""

from __future__ import annotations

import importlib.machinery
import io
import json
import re
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gradverify import cli
from gradverify.report import html, markdown, model, plots
from gradverify.report.cli import write
from gradverify.report.progress import Progress

REPO = Path(__file__).resolve().parents[1]

TINY = model.Options(quick=True, seed=3, cases=3, backends=("reference",), sizes=(10, 30), budget=5.0, repeats=1,
                     sections=("scaling", "agreement"), threads=0, command="gradverify report --test")


@pytest.fixture(scope="module")
def report():
    return model.build(TINY)


# --- the dict -------------------------------------------------------------------

def test_report_has_the_required_keys(report):
    assert {"environment", "seed", "scaling", "agreement", "headline"} <= set(report)
    assert report["seed"] == 3 and report["environment"]["seed"] == 3
    sc = report["scaling"]
    assert sc["rows"] and all({"method", "params", "seconds", "evaluations"} <= set(r) for r in sc["rows"])
    assert set(sc["slopes"]) == {"reverse", "forward_mode", "forward_diff", "central_diff"}
    assert {"reference", "torch", "jax"} == set(sc["cheap_gradient_ratio"])
    assert sc["cheap_gradient_ratio"]["reference"]["ratio"] > 0
    ag = report["agreement"]
    assert ag["cases"] == 3 and isinstance(ag["disagreements"], list)
    assert set(ag["pairs"]) == {"fd~reference"}                    # one backend: only its fd pair
    pair = ag["pairs"]["fd~reference"]
    assert pair["cases"] == 3
    hist = pair["histogram"]
    assert sum(hist["counts"]) + hist["below"] + hist["above"] == 3


def test_report_is_plain_json(report):
    text = json.dumps(report, allow_nan=False)               # no numpy scalars, no inf/nan floats
    assert json.loads(text) == report


def test_environment_records_how_to_reproduce(report):
    env = report["environment"]
    assert env["command"] == "gradverify report --test"
    assert env["versions"]["numpy"] and env["versions"]["python"]
    assert env["threads"]["pinned"] == "not pinned (--threads 0)"
    assert env["settings"]["sizes"] == [10, 30] and env["settings"]["cases"] == 3


def test_agreement_clean_on_the_reference(report):
    """The reference engine against finite differences on three random cases: no disagreement expected
    (a disagreement here is a real finding; report it rather than loosening anything)."""
    assert report["agreement"]["disagreements"] == []


def test_headline_numbers_come_from_the_sections(report):
    head = "\n".join(report["headline"])
    assert "reverse" in head and "agreement: 3 random cases" in head


def test_options_presets():
    assert model.Options(quick=True).settings()["cases"] == model.PRESETS["quick"]["cases"]
    s = model.Options(sizes=(10, 100), cases=7).settings()
    assert s["sizes"] == (10, 100) and s["cases"] == 7 and s["preset"] == "default"
    assert s["ratio_sizes"] == (100,)            # ratio sizes never exceed the scaling sizes
    with pytest.raises(ValueError, match="unknown report section"):
        model.build(model.Options(sections=("nope",), threads=0))


def test_histogram_bins():
    h = model._histogram([0.0, 1e-16, 3e-16, 1e-12, 2.0, float("inf")])
    assert h["below"] == 1 and h["above"] == 2
    assert h["counts"][-16 - h["edges_log10"][0]] == 2 and h["counts"][-12 - h["edges_log10"][0]] == 1


# --- checker comparison: present or not ---------------------------------------------

def _fake_checkers(monkeypatch, compare):
    mod = types.ModuleType("gradverify.checkers")
    mod.__spec__ = importlib.machinery.ModuleSpec("gradverify.checkers", None)
    if compare is not None:
        mod.time_checkers = compare
    monkeypatch.setitem(sys.modules, "gradverify.checkers", mod)


def test_checkers_section_copies_the_modules_rows(monkeypatch):
    rows = [{"method": "gradverify full (torch)", "params": 10, "seconds": 0.02, "cpu_seconds": 0.01,
             "status": "measured"},
            {"method": "torch gradcheck", "params": 10, "seconds": 0.07, "cpu_seconds": 0.05, "status": "measured"},
            {"method": "torch gradcheck", "params": 99, "seconds": None, "cpu_seconds": None, "status": "not measured",
             "note": "budget"}]
    seen = {}

    def time_checkers(params, *, repeats, budget_s, seed, progress):
        seen.update(params=params, budget_s=budget_s, seed=seed)
        progress("one step")
        return rows

    _fake_checkers(monkeypatch, time_checkers)
    settings = model.Options(quick=True).settings()
    sec = model.measure_checkers_section(settings, seed=9)
    assert sec["available"] and [{k: v for k, v in r.items() if k != "reported_seconds"} for r in sec["rows"]] == rows
    assert [r["reported_seconds"] for r in sec["rows"]] == [0.01, 0.05, None]        # the cpu clock by default
    assert seen == {"params": settings["checker_sizes"], "budget_s": settings["checker_budget"], "seed": 9}
    head = model.headline({"checkers": sec})
    assert head == ["seconds per check at P=10 (cpu time): gradverify full (torch) 0.01, torch gradcheck 0.05"]
    wall = model.measure_checkers_section(model.Options(quick=True, clock="wall").settings(), seed=9)
    assert [r["reported_seconds"] for r in wall["rows"]] == [0.02, 0.07, None]
    md = markdown.render({"seed": 0, "checkers": sec})
    assert "torch gradcheck" in md and "not measured" in md and "budget" in md
    assert "<svg" in html.render({"seed": 0, "checkers": sec})


def test_checkers_section_without_the_module_says_so(monkeypatch):
    _fake_checkers(monkeypatch, None)
    sec = model.measure_checkers_section(model.Options(quick=True).settings())
    assert not sec["available"] and sec["rows"] == [] and "time_checkers" in sec["reason"]
    assert "not available" in model.headline({"checkers": sec})[0]


def test_checkers_section_failure_is_contained(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("no")

    _fake_checkers(monkeypatch, boom)
    sec = model.measure_checkers_section(model.Options(quick=True).settings())
    assert not sec["available"] and "RuntimeError" in sec["reason"]


# --- rendering from the dict alone -----------------------------------------------------

def _hand_made() -> dict:
    """A report dict written by hand: every number in it is recognisable."""
    methods = {"reverse": "1 forward pass + 1 backward sweep", "forward_mode": "P JVPs",
               "forward_diff": "P + 1 forward passes", "central_diff": "2P forward passes"}
    rows, forward = [], []
    for p in (10, 1000):
        forward.append({"method": "forward", "params": p, "seconds": 1e-5, "measured": True})
        for m, rel in (("reverse", 2.5), ("forward_mode", 3.0 * p), ("forward_diff", p + 1), ("central_diff", 2 * p)):
            measured = not (m == "central_diff" and p == 1000)
            rows.append({"method": m, "params": p, "evaluations": {"reverse": 1}.get(m, p), "measured": measured,
                         "seconds": rel * 1e-5 if measured else None, "relative": rel if measured else None,
                         "reason": "" if measured else "predicted 99 s is over the budget of 1 s",
                         "max_rel_diff_vs_reverse": 0.0 if measured else None})
    hist = {"edges_log10": list(model.HIST_EDGES), "counts": [0] * 18, "below": 4, "above": 0}
    hist["counts"][5] = 7
    return {
        "seed": 4242, "headline": ["HEADLINE-LINE-ONE"], "wall_seconds": 1.0,
        "scaling": {"problem": "PROBLEM-TEXT", "methods": methods, "rows": rows, "forward": forward,
                    "budget_seconds": 1.0, "sizes_requested": [10, 1000], "repeats": 1,
                    "slopes": {"reverse": 0.0123, "forward_mode": 0.987, "forward_diff": 1.0, "central_diff": None},
                    "slopes_seconds": {"reverse": 0.5, "forward_mode": 1.5, "forward_diff": 1.5, "central_diff": None},
                    "fits": {"reverse": {"slope": 0.0123, "intercept": 0.39}, "forward_mode": None,
                             "forward_diff": None, "central_diff": None},
                    "not_measured": [{"method": "central_diff", "params": 1000,
                                      "reason": "predicted 99 s is over the budget of 1 s"}],
                    "cheap_gradient_ratio": {"reference": {"ratio": 2.71828, "params": 1000},
                                             "torch": {"ratio": None, "params": None, "reason": "torch missing"},
                                             "jax": {"ratio": None, "params": None, "reason": "jax missing"}},
                    "cheap_gradient_rows": [{"framework": "reference", "params": 1000, "forward_seconds": 1e-5,
                                             "gradient_seconds": 2.71828e-5, "ratio": 2.71828, "available": True,
                                             "reason": ""}]},
        "checkers": {"available": False, "reason": "CHECKERS-MISSING", "rows": []},
        "agreement": {"cases": 11, "seed": 4242, "dtype": "float64", "backends": ["reference"], "skipped": [],
                      "error_measure": "per case: ERROR-MEASURE", "by_kind": {"network": {"cases": 11,
                                                                                            "disagreements": 1,
                                                                                            "seconds": 1.0}},
                      "pairs": {"fd~reference": {"cases": 11, "exact": 4, "median_scaled_err": 3e-13,
                                                 "max_scaled_err": 4e-9, "max_abs_err": 5e-9, "max_ratio": 1.5,
                                                 "disagreements": 1, "worst_case": 2, "histogram": hist}},
                      "disagreements": [{"case": 2, "kind": "network", "seed": 77, "repr": "Network(...)",
                                         "failures": [{"a": "reference", "b": "fd", "quantity": "fd",
                                                       "status": "fail", "ratio": 1.5, "worst": "0.W[1, 2]"}],
                                         "snippet": "print('REPRO-SNIPPET <&>')\n"}]},
        "environment": {"command": "gradverify report --seed 4242", "seed": 4242, "versions": {"numpy": "9.9"},
                        "threads": {"blas": "openblas=1"}, "gpus": ["none found"], "settings": {"preset": "quick"}},
    }


def test_markdown_renders_what_the_dict_holds():
    md = markdown.render(_hand_made())
    for needle in ("HEADLINE-LINE-ONE", "PROBLEM-TEXT", "+0.01", "+0.99", "n/a", "2.72", "CHECKERS-MISSING",
                   "not measured", "predicted 99 s", "REPRO-SNIPPET <&>", "case 2", "4242", "openblas=1",
                   "plots/scaling-relative.svg", "plots/agreement-fd-vs-reference.svg"):
        assert needle in md, needle
    assert "```python\nprint('REPRO-SNIPPET <&>')\n```" in md


def test_html_renders_what_the_dict_holds_and_is_self_contained():
    page = html.render(_hand_made())
    for needle in ("HEADLINE-LINE-ONE", "PROBLEM-TEXT", "+0.01", "2.72", "CHECKERS-MISSING", "not measured",
                   "REPRO-SNIPPET &lt;&amp;&gt;", "4242", "openblas=1"):
        assert needle in page, needle
    assert page.count("<svg") == 4                               # three scaling plots, one histogram
    assert "<script" not in page and "<link" not in page and " src=" not in page
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_renderers_measure_nothing(report, monkeypatch):
    """With every measurement disabled, rendering the measured dict still works."""
    def refuse(*a, **k):
        raise AssertionError("rendering must not measure")

    from gradverify import scaling
    from gradverify.backends import agreement as agreement_mod

    for mod, name in ((scaling, "measure_scaling"), (scaling, "cheap_gradient_ratios"), (scaling, "time_call"),
                      (agreement_mod, "agreement"), (model, "build")):
        monkeypatch.setattr(mod, name, refuse)
    assert "gradverify report" in markdown.render(report)
    assert "<svg" in html.render(report)


def test_write_then_rerender_from_json_is_identical(report, tmp_path):
    paths = write(report, str(tmp_path / "a"))
    assert {Path(p).name for p in paths.values()} == {"report.json", "report.md", "index.html"}
    assert sorted(p.name for p in (tmp_path / "a" / "plots").iterdir())       # the SVGs the Markdown links
    code = cli.main(["report", "--from-json", paths["json"], "--out", str(tmp_path / "b")])
    assert code == 0
    for name in ("report.md", "index.html", "report.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    for link in re.findall(r"\]\((plots/[^)]+)\)", (tmp_path / "a" / "report.md").read_text()):
        assert (tmp_path / "a" / link).is_file(), link


# --- the plots -----------------------------------------------------------------------------

def _points(svg: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]


def test_loglog_axes_point_the_right_way():
    """x grows to the right, y grows upwards, equal ratios are equal distances (log axes)."""
    svg = plots.loglog([{"name": "a", "x": [10, 100, 1000], "y": [1, 10, 100]}], title="t", xlabel="x",
                       ylabel="y")
    ET.fromstring(svg)                                          # well-formed XML
    (x1, y1), (x2, y2), (x3, y3), legend = _points(svg)          # the data, then the legend's marker
    assert x1 < x2 < x3 and y1 > y2 > y3                        # SVG y runs downwards
    assert x2 - x1 == pytest.approx(x3 - x2, abs=0.2) and y1 - y2 == pytest.approx(y2 - y3, abs=0.2)


def test_loglog_skips_missing_points_and_handles_empty():
    svg = plots.loglog([{"name": "a", "x": [10, 100, 1000], "y": [1, None, 100]}], title="t", xlabel="x",
                       ylabel="y")
    assert len(_points(svg)) == 2 + 1                           # two points and the legend's marker
    empty = plots.loglog([{"name": "a", "x": [10], "y": [None]}], title="t", xlabel="x", ylabel="y")
    assert "no measured points" in empty
    ET.fromstring(empty)


def test_histogram_bar_heights_follow_counts():
    hist = {"edges_log10": [-3, -2, -1, 0], "counts": [2, 4, 0], "below": 1, "above": 0}
    svg = plots.histogram(hist, title="h")
    ET.fromstring(svg)
    bar = r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)" fill="[^"]+"><title>'
    heights = [float(h) for h in re.findall(bar, svg)]
    assert len(heights) == 3                                    # zero-count bars are not drawn
    below, two, four = heights
    assert four == pytest.approx(2 * two, rel=1e-2) and two == pytest.approx(2 * below, rel=1e-2)


def test_every_report_plot_is_valid_svg(report):
    for name, svg in markdown.plot_files(report).items():
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg"), name


# --- progress --------------------------------------------------------------------------------

def test_progress_bar_in_a_log_prints_at_most_every_tenth():
    buf = io.StringIO()
    bar = Progress("scaling", 100, stream=buf, tty=False)
    for i in range(100):
        bar.step(f"item {i}")
    bar.close()
    lines = buf.getvalue().splitlines()
    assert 2 <= len(lines) <= 12 and "100/100" in lines[-1] and "done in" in lines[-1]


def test_progress_bar_on_a_terminal_redraws_in_place():
    buf = io.StringIO()
    bar = Progress("agreement", 3, stream=buf, tty=True)
    bar.step("a")
    bar.close("finished")
    assert buf.getvalue().count("\r") >= 2 and buf.getvalue().endswith("finished\n")


# --- the command line --------------------------------------------------------------------------

def test_cli_runs_a_tiny_report(tmp_path, capsys):
    out = tmp_path / "r"
    code = cli.main(["report", "--quick", "--sizes", "10", "30", "--budget", "5", "--repeats", "1", "--cases", "2",
                     "--backends", "reference", "--sections", "agreement", "--threads", "0", "--seed", "5",
                     "--out", str(out)])
    assert code == 0
    for name in ("index.html", "report.md", "report.json"):
        assert (out / name).is_file()
    data = json.loads((out / "report.json").read_text())
    assert data["seed"] == 5 and data["agreement"]["cases"] == 2
    assert data["environment"]["command"].startswith("gradverify report --quick --seed 5 --cases 2")
    printed = capsys.readouterr()
    assert "report written to" in printed.out and "agreement: 2 random cases" in printed.out
    assert "agreement" in printed.err                                        # the progress bar


@pytest.mark.parametrize("argv, message", [
    (["--cases", "0"], "--cases"),
    (["--backends", "tensorflow"], "unknown backend"),
    (["--budget", "-1"], "--budget"),
    (["--sizes", "0"], "--sizes"),
])
def test_cli_bad_input_exits_2(argv, message, tmp_path, capsys):
    assert cli.main(["report", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_unreadable_json_exits_2(tmp_path, capsys):
    assert cli.main(["report", "--from-json", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_exits_1_when_references_disagree(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps(_hand_made()))
    assert cli.main(["report", "--from-json", str(path), "--out", str(tmp_path / "o")]) == 1
    assert (tmp_path / "o" / "index.html").is_file()


def test_cli_help_lists_report():
    out = subprocess.run([sys.executable, "-m", "gradverify.cli", "report", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for flag in ("--out", "--quick", "--cases", "--seed", "--backends"):
        assert flag in out.stdout
