"""``gradverify report``: the report dict's keys, rendering from the dict alone, the figures, progress, the CLI.

The measured report is a tiny run (two sizes, three agreement cases on the
reference backend, one timing sample): seconds, not minutes. Rendering is
also checked on a hand-made dict that no measurement produced, so the
renderers provably format what the dict holds and compute nothing. The
matplotlib figures are checked on their Figure objects (log axes the right
way round, the dict's data, units, slopes in the legend, margins, bar
heights, the tolerance lines) and as SVG/PNG; those tests skip only when
matplotlib is not installed, and the page without matplotlib is checked
too. How the page looks in a browser is ``tests/test_report_browser.py``'s.
No timed assertions.

Cost: a few seconds (one tiny measured report, two small subprocesses, some
figures drawn).
"""

from __future__ import annotations

import importlib.machinery
import io
import json
import math
import re
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gradverify import cli
from gradverify.progress import progress
from gradverify.report import html, markdown, model, plots
from gradverify.report.cli import write

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
                   "not measured", "predicted 99 s", "REPRO-SNIPPET <&>", "case 2", "4242", "openblas=1"):
        assert needle in md, needle
    if plots.available():                        # each figure linked, with its caption's measured numbers
        for needle in ("plots/scaling-relative.png", "plots/agreement.png",
                       "Reverse mode costs 2.5–2.5 forward passes from P = 10 to P = 1,000 (fitted slope +0.01)"):
            assert needle in md, needle
    else:
        assert plots.MISSING in md
    assert "```python\nprint('REPRO-SNIPPET <&>')\n```" in md


def test_html_renders_what_the_dict_holds_and_is_self_contained():
    page = html.render(_hand_made())
    for needle in ("HEADLINE-LINE-ONE", "PROBLEM-TEXT", "+0.01", "2.72", "CHECKERS-MISSING", "not measured",
                   "REPRO-SNIPPET &lt;&amp;&gt;", "4242", "openblas=1"):
        assert needle in page, needle
    if plots.available():
        assert page.count("<svg") == 4                           # three scaling figures, the agreement histograms
        assert page.count("<figcaption>") == 4
    assert "<script" not in page and "<link" not in page and " src=" not in page
    # only XML namespace names, never a resource to fetch (matplotlib's markers use xlink:href="#id")
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg",
                                                               "http://www.w3.org/1999/xlink"}


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


# --- the figures -----------------------------------------------------------------------------

def _need_matplotlib():
    pytest.importorskip("matplotlib", reason="the figures need matplotlib (pip install 'gradverify[report]')")


def _lines(ax):
    """The data lines of an axes (the ones carrying a gid), as (label, xs, ys)."""
    return [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines() if ln.get_gid()]


def test_scaling_figures_axes_point_the_right_way_and_say_their_units():
    """log-log axes, x grows to the right and y upwards, data exactly the dict's, labels with units, slopes in
    the legend, no point on the frame."""
    _need_matplotlib()
    sc = _hand_made()["scaling"]
    figs = plots.scaling_figures(sc)
    ax = figs["relative"].axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < x1 and y0 < y1                                   # not inverted
    assert "P" in ax.get_xlabel() and "count" in ax.get_xlabel() and "forward pass" in ax.get_ylabel()
    lines = {label.split("  ")[0]: (xs, ys) for label, xs, ys in _lines(ax)}
    assert lines["reverse mode"] == ([10.0, 1000.0], [2.5, 2.5])
    assert lines["central differences"] == ([10.0], [20.0])     # the unmeasured P = 1000 is not drawn
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "reverse mode  (slope +0.01)" in legend and "forward mode  (slope +0.99)" in legend
    assert any("one forward pass" in t for t in legend)          # the reference line
    for _, xs, ys in _lines(ax):                                 # a margin on every side (log axes: ratios)
        assert all(x0 * 1.05 < x < x1 / 1.05 for x in xs) and all(y0 * 1.05 < y < y1 / 1.05 for y in ys)
    ax = figs["seconds"].axes[0]
    assert "(s," in ax.get_ylabel() and any("one forward pass" in t.get_text() for t in ax.get_legend().get_texts())
    assert "count" in figs["evaluations"].axes[0].get_ylabel()
    assert ax.yaxis.get_minor_locator().tick_values(1e-5, 1e-2).size > 0      # minor ticks between decades


def test_scaling_figure_without_points_says_so():
    _need_matplotlib()
    sc = _hand_made()["scaling"]
    sc["rows"] = [dict(r, relative=None, seconds=None, measured=False) for r in sc["rows"]]
    ax = plots.scaling_figures(sc)["relative"].axes[0]
    assert "no measured points" in [t.get_text() for t in ax.texts]


def test_agreement_histogram_bar_heights_follow_counts_and_mark_the_tolerance():
    _need_matplotlib()
    ag = _hand_made()["agreement"]
    ag["pairs"]["fd~reference"]["histogram"] = {"edges_log10": [-3, -2, -1, 0], "counts": [2, 4, 0], "below": 1,
                                                "above": 0}
    fig = plots.agreement_figure(ag)
    ax = fig.axes[0]
    heights = [round(b.get_height()) for b in ax.patches]
    assert heights == [2, 4, 0, 1, 0]                            # the decades, then exact (0) and above 1
    assert ax.get_xlabel() and ax.get_ylabel() == "cases (count)"
    xs = sorted(ln.get_xdata()[0] for ln in ax.get_lines())      # the two tolerance lines, in log10 units
    assert xs == pytest.approx([-8, math.log10(1e-5 + 1e-8)])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("tolerance" in t for t in legend)


def test_figures_serialise_to_svg_and_png(report):
    _need_matplotlib()
    specs = plots.figures(report)
    assert [s.name for s in specs] == ["scaling-relative", "scaling-seconds", "scaling-evaluations", "agreement"]
    for spec in specs:
        svg = plots.svg(spec)
        root = ET.fromstring(svg)                               # well-formed XML, an <svg> root
        assert root.tag.endswith("svg") and "<text" in svg      # text stays text (readable, searchable)
        assert f'id="{spec.name}-xlabel"' in svg and f'id="{spec.name}-legend"' in svg
        assert svg == plots.svg(spec)                           # same dict, same bytes (no date, salted ids)
        assert spec.caption.endswith(".") and any(ch.isdigit() for ch in spec.caption)
    for name, data in markdown.plot_files(report).items():
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name


def test_figures_leave_the_users_matplotlib_settings_alone(report):
    _need_matplotlib()
    import matplotlib

    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    html.render(report)
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend


def test_without_matplotlib_the_tables_are_written_and_the_page_says_how(report, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    assert not plots.available() and plots.figures(report) == []
    page, md = html.render(report), markdown.render(report)
    assert "<svg" not in page and "gradverify[report]" in page and "<table" in page
    assert "gradverify[report]" in md and "![" not in md
    write(report, str(tmp_path))
    assert not any((tmp_path / "plots").iterdir())


def test_import_gradverify_imports_neither_matplotlib_nor_tqdm():
    code = ("import sys, gradverify, gradverify.pytest_plugin, gradverify.report, gradverify.progress, "
            "gradverify.cli; bad = [m for m in ('matplotlib', 'tqdm') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# --- progress --------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_prints_at_most_every_tenth():
    buf = io.StringIO()
    bar = progress("scaling", 100, stream=buf)
    for i in range(100):
        bar.step(f"item {i}")
    seconds = bar.close()
    lines = buf.getvalue().splitlines()
    assert 2 <= len(lines) <= 12 and "100/100" in lines[-1] and "done in" in lines[-1]
    assert bar.close() == seconds and len(buf.getvalue().splitlines()) == len(lines)     # closing twice: once


def test_progress_on_a_terminal_is_a_tqdm_bar_with_rate_and_time_left():
    pytest.importorskip("tqdm", reason="the terminal bar is tqdm's (pip install 'gradverify[report]')")
    buf = _Terminal()
    with progress("agreement", 3, stream=buf) as bar:
        bar.step("a")
        bar.step("b", n=2)
    out = buf.getvalue()
    assert bar.mode == "tqdm" and out.count("\r") >= 2 and "3/3" in out
    assert "step/s" in out and "<" in out                         # the rate and the time left
    assert "done in" in out


def test_progress_disabled_prints_nothing_and_still_times():
    buf = _Terminal()
    with progress("campaign", 5, enabled=False, stream=buf) as bar:
        bar.step("x")
        bar("y")
    assert buf.getvalue() == "" and bar.close() >= 0.0


def test_progress_without_tqdm_falls_back_to_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    buf = _Terminal()
    bar = progress("scaling", 4, stream=buf)
    bar.step("one")
    bar.close("end")
    assert bar.mode == "lines" and buf.getvalue().splitlines()[-1].rstrip().endswith("end")


def test_checkers_section_that_cannot_run_starts_no_bar(monkeypatch):
    _fake_checkers(monkeypatch, lambda *a, **k: [])
    mod = sys.modules["gradverify.checkers"]
    mod.METHODS = {"x": types.SimpleNamespace(framework="nosuchframework")}
    mod._available = lambda framework: False
    started = []
    sec = model.measure_checkers_section(model.Options(quick=True).settings(),
                                         progress=lambda s, n: started.append(s))
    assert not sec["available"] and "nosuchframework" in sec["reason"] and started == []


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


def test_cli_json_prints_json_and_no_progress(tmp_path, capsys):
    code = cli.main(["report", "--quick", "--cases", "1", "--backends", "reference", "--sections", "agreement",
                     "--threads", "0", "--json", "--out", str(tmp_path / "j")])
    assert code == 0
    printed = capsys.readouterr()
    data = json.loads(printed.out)
    assert data["disagreements"] == 0 and data["paths"]["html"].endswith("index.html")
    assert printed.err == ""


@pytest.mark.parametrize("argv, message", [
    (["--cases", "0"], "--cases"),
    (["--backends", "theano"], "unknown backend"),
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


def test_every_checker_of_the_benchmark_has_a_style_of_its_own():
    """Each method of the checker comparison is told apart in the figure: its (colour, marker, dash) is unique.

    (The TensorFlow and PyTensor checkers fell back to one black style: three solid black lines with
    the same marker, which no reader could tell apart.)
    """
    from gradverify import checkers

    styles = {m: plots._checker_style(m) for m in checkers.METHODS}
    assert len(set(styles.values())) == len(styles), styles
    assert all(s[0] != "#777777" for s in styles.values()), styles  # none falls back to the unstyled grey
