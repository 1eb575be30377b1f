"""Look at a written report in a real browser: headless Chromium, driven directly (no Selenium, no download).

Used by ``tests/test_report_browser.py`` (does each figure draw, with axis
labels and a legend?) and ``benchmarks/report_screenshots.py`` (the
screenshots in ``docs/``). Chromium is Debian's package (``apt-get install
chromium``); :func:`find_chromium` returns None when it is absent, and
callers skip with that reason.

* :func:`inspect_figures` loads a copy of ``index.html`` with a script
  appended (the report itself has none) that measures every ``<figure>``'s
  SVG as laid out -- drawn data paths with a non-empty box, the axis labels'
  text and box, the legend's box and entries -- and reads the result back
  from ``--dump-dom``.
* :func:`screenshot` saves the whole page at a given width (the height is
  measured first, so nothing is cut off).

Cost: one Chromium start per call, about 1-3 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import Any

__all__ = ["find_chromium", "inspect_figures", "page_height", "screenshot"]

#: The flags every start uses: headless, no sandbox (containers, root), nothing fetched from the network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--disable-dev-shm-usage")

_PROBE = r"""
<script>
(function () {
  function box(el) { if (!el) return null; var r = el.getBoundingClientRect(); return [r.width, r.height]; }
  function text(el) { return el ? el.textContent.replace(/\s+/g, ' ').trim() : ''; }
  var out = {width: window.innerWidth, height: document.documentElement.scrollHeight, figures: []};
  document.querySelectorAll('figure').forEach(function (f) {
    var name = f.id.replace(/^fig-/, ''), svg = f.querySelector('svg');
    var q = function (suffix) { return svg ? svg.querySelector('[id="' + name + '-' + suffix + '"]') : null; };
    var drawn = [];
    if (svg) svg.querySelectorAll('[id^="' + name + '-data-"]').forEach(function (g) {
      var paths = Array.prototype.filter.call(g.querySelectorAll('path, use, text'), function (p) {
        var b = p.getBoundingClientRect();
        return (p.tagName !== 'path' || (p.getAttribute('d') || '').trim().length > 0) && (b.width > 0 || b.height > 0);
      });
      drawn.push(paths.length);
    });
    var legend = q('legend');
    out.figures.push({
      name: name, svg: box(svg), drawn: drawn,
      xlabel: text(q('xlabel')), xlabel_box: box(q('xlabel')),
      ylabel: text(q('ylabel')), ylabel_box: box(q('ylabel')),
      legend_box: box(legend), legend_texts: legend ? legend.querySelectorAll('text').length : 0,
      caption: text(f.querySelector('figcaption'))
    });
  });
  var pre = document.createElement('pre'); pre.id = 'gv-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def find_chromium() -> str | None:
    """The Chromium binary on PATH (``chromium``, ``chromium-browser``, ``google-chrome``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], *, timeout: float) -> str:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="gv-chromium-") as profile:
        out = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                             timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"chromium exited {out.returncode}: {out.stderr[-2000:]}")
    return out.stdout


def _probed_copy(html_path: str, directory: str) -> str:
    with open(html_path, encoding="utf-8") as fh:
        page = fh.read()
    copy = os.path.join(directory, "probe.html")
    with open(copy, "w", encoding="utf-8") as fh:
        fh.write(page.replace("</body>", _PROBE + "</body>", 1))
    return copy


def inspect_figures(html_path: str, *, width: int = 1280, timeout: float = 120.0) -> dict[str, Any]:
    """Lay ``html_path`` out at ``width`` CSS pixels and measure each figure.

    Returns:
        ``{"width", "height", "figures": [{"name", "svg": [w, h], "drawn":
        [visible elements per data series], "xlabel", "xlabel_box", "ylabel",
        "ylabel_box", "legend_box", "legend_texts", "caption"}]}``.
    """
    with tempfile.TemporaryDirectory(prefix="gv-page-") as d:
        copy = _probed_copy(html_path, d)
        dom = _run([f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom",
                    "file://" + os.path.abspath(copy)], timeout=timeout)
    m = re.search(r'<pre id="gv-probe">(.*?)</pre>', dom, flags=re.S)
    if not m:
        raise RuntimeError("the probe script did not run (no result in the dumped DOM)")
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


def page_height(html_path: str, *, width: int, timeout: float = 120.0) -> int:
    """The page's full height in CSS pixels when laid out at ``width``."""
    return int(inspect_figures(html_path, width=width, timeout=timeout)["height"])


def screenshot(html_path: str, png_path: str, *, width: int, height: int | None = None,
               timeout: float = 120.0) -> tuple[int, int]:
    """Save a PNG of the page at ``width`` CSS pixels (whole page unless ``height``); returns its size."""
    h = height or page_height(html_path, width=width, timeout=timeout)
    _run([f"--window-size={width},{h}", "--virtual-time-budget=5000", f"--screenshot={os.path.abspath(png_path)}",
          "file://" + os.path.abspath(html_path)], timeout=timeout)
    return width, h
