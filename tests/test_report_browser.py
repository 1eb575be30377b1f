"""The report page as a reader sees it: rendered by headless Chromium, every figure measured as laid out.

A small measured report (two sizes, two agreement cases on the reference
backend) plus a hand-made checker section, so that all five figures are on
the page, is written to ``index.html`` and loaded in Chromium at a desktop
and the narrowest width it lays out (500 px) (:mod:`gradverify.report.browser`). For each figure: its
SVG has a size on the page, every data series has drawn elements with a
non-empty box (paths with a ``d``), both axis labels have text and a box,
the legend has a box and entries, and the caption carries numbers.

Skipped with the reason when Chromium (Debian's ``chromium`` package;
``.ci/run`` installs it) or matplotlib is missing. Cost: a few seconds of
measuring, about two seconds per Chromium start.
"""

from __future__ import annotations

import pytest

from gradverify.report import browser, model, plots
from gradverify.report.cli import write

pytestmark = [
    pytest.mark.skipif(browser.find_chromium() is None,
                       reason="chromium is not installed (apt-get install chromium; .ci/run installs it)"),
    pytest.mark.skipif(not plots.available(), reason="the figures need matplotlib (pip install 'gradverify[report]')"),
]

FIGURES = ["scaling-relative", "scaling-seconds", "scaling-evaluations", "checkers", "agreement"]


def _checkers() -> dict:
    rows = []
    for method, t in (("gradverify full (torch)", 0.01), ("gradverify fast (torch)", 0.002),
                      ("torch gradcheck", 0.03), ("torch gradcheck fast", 0.001), ("jax check_grads", 0.001)):
        for p in (100, 1000):
            rows.append({"method": method, "params": p, "seconds": t * p / 100, "reported_seconds": t * p / 100,
                         "evaluations": 2 * p, "status": "measured", "passed": True, "note": ""})
    return {"available": True, "reason": "", "clock": "cpu", "budget_seconds": 5.0, "rows": rows}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    opts = model.Options(quick=True, seed=2, cases=2, backends=("reference",), sizes=(10, 100), budget=5.0,
                         repeats=1, sections=("scaling", "agreement"), threads=0, command="gradverify report --test")
    report = model.build(opts)
    report["checkers"] = _checkers()
    out = tmp_path_factory.mktemp("browser")
    return write(report, str(out))["html"]


@pytest.mark.parametrize("width", [1280, 500])        # 500: the narrowest window headless Chromium lays out
def test_every_figure_draws_with_axis_labels_and_a_legend(page, width):
    seen = browser.inspect_figures(page, width=width)
    assert seen["width"] == width
    figs = {f["name"]: f for f in seen["figures"]}
    assert list(figs) == FIGURES
    for name, f in figs.items():
        w, h = f["svg"]
        assert w >= 300 and h >= 200, (name, f["svg"])                     # laid out, not collapsed
        assert f["drawn"] and sum(f["drawn"]) > 0, name                   # data drawn (non-empty paths)
        if name != "agreement":                                           # every line series shows up
            assert all(n > 0 for n in f["drawn"]), (name, f["drawn"])
        for axis in ("xlabel", "ylabel"):
            bw, bh = f[f"{axis}_box"]
            assert f[axis] and bw > 0 and bh > 0, (name, axis, f[axis], f[f"{axis}_box"])
        assert "P" in f["xlabel"] or "error" in f["xlabel"], (name, f["xlabel"])
        lw, lh = f["legend_box"]
        assert lw > 0 and lh > 0 and f["legend_texts"] >= 2, (name, f["legend_box"], f["legend_texts"])
        assert any(c.isdigit() for c in f["caption"]), (name, f["caption"])


def test_screenshot_is_a_png_of_the_whole_page(page, tmp_path):
    png = tmp_path / "shot.png"
    width, height = browser.screenshot(page, str(png), width=800)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and width == 800 and height > 1500
