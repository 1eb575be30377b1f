"""Screenshots of the report page at two widths, the README's figure, and the report's time with and without extras.

Usage::

    python benchmarks/report_screenshots.py                              # a --quick report, measured now
    python benchmarks/report_screenshots.py --from-json gradverify-report/report.json   # a saved one
    python benchmarks/report_screenshots.py --timing                     # also: --quick with / without extras

Writes into ``--docs`` (default ``docs/``):

* ``report-page-1280.png`` and ``report-page-500.png``: the whole of
  ``index.html`` as headless Chromium lays it out at 1280 and at 500 CSS
  pixels (500 is the narrowest window headless Chromium lays out);
* ``report-scaling.png``: the cost-relative-to-one-forward-pass figure, the
  image the README shows (from the same report).

``--timing`` runs ``gradverify report --quick`` twice in fresh processes,
once as installed and once with matplotlib and tqdm made unimportable, and
prints both wall times (and the time to re-render ``--from-json`` both
ways), so the cost of the extras is measured, not guessed.

Needs matplotlib and Debian's ``chromium`` (``apt-get install chromium``).
Cost: the report (half a minute or so for ``--quick``; nothing with
``--from-json``), plus about 10 s of drawing and screenshots.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gradverify.report import browser, plots  # noqa: E402
from gradverify.report.cli import write  # noqa: E402

WIDTHS = (1280, 500)

_BLOCK = ("import sys; sys.modules['matplotlib'] = None; sys.modules['tqdm'] = None; "
          "sys.modules['tqdm.auto'] = None; from gradverify.cli import main; sys.exit(main(sys.argv[1:]))")
_PLAIN = "import sys; from gradverify.cli import main; sys.exit(main(sys.argv[1:]))"


def _timed(code: str, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def timing(json_path: str, workdir: str) -> dict[str, float]:
    """Wall seconds of ``report --quick`` and of a ``--from-json`` re-render, with and without the extras."""
    out = {}
    for label, code in (("with matplotlib and tqdm", _PLAIN), ("without them", _BLOCK)):
        out[f"report --quick, {label}"] = _timed(code, ["report", "--quick", "--out",
                                                        os.path.join(workdir, label.split()[0])])
        out[f"--from-json re-render, {label}"] = _timed(code, ["report", "--from-json", json_path, "--out",
                                                               os.path.join(workdir, "re-" + label.split()[0])])
    return out


def _shrink(png_path: str) -> None:
    """Re-save a screenshot with a 256-colour palette (a page of text and flat colours: a third of the bytes)."""
    from PIL import Image                      # Pillow comes with matplotlib

    with Image.open(png_path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png_path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from-json", default=None, metavar="FILE", help="render this saved report.json (default: "
                                                                       "measure a --quick report now)")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"), metavar="DIR", help="where the PNGs go")
    ap.add_argument("--timing", action="store_true", help="also time --quick with and without the extras")
    a = ap.parse_args(argv)
    if browser.find_chromium() is None or not plots.available():
        print("needs chromium (apt-get install chromium) and matplotlib (pip install 'gradverify[report]')",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gv-shots-") as work:
        if a.from_json:
            with open(a.from_json, encoding="utf-8") as fh:
                report = json.load(fh)
        else:
            from gradverify.report import Options, build

            report = build(Options(quick=True, command="gradverify report --quick"))
        start = time.perf_counter()
        paths = write(report, os.path.join(work, "report"))
        print(f"rendered in {time.perf_counter() - start:.1f} s: {paths['html']}")
        os.makedirs(a.docs, exist_ok=True)
        for width in WIDTHS:
            target = os.path.join(a.docs, f"report-page-{width}.png")
            size = browser.screenshot(paths["html"], target, width=width)
            _shrink(target)
            print(f"{target}: {size[0]} x {size[1]} CSS px, {os.path.getsize(target) // 1024} KiB")
        spec = next((s for s in plots.figures(report) if s.name == "scaling-relative"), None)
        if spec is not None:
            with open(os.path.join(a.docs, "report-scaling.png"), "wb") as fh:
                fh.write(plots.png(spec, dpi=110))
            print(f"{os.path.join(a.docs, 'report-scaling.png')}: {spec.caption}")
        if a.timing:
            for what, seconds in timing(paths["json"], work).items():
                print(f"{what}: {seconds:.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
