#!/usr/bin/env python3
"""Open a report's ``report.html`` in headless Chromium and check what a reader sees.

    python scripts/check_report_html.py REPORT_DIR [--screenshot docs/report_screenshot.png]

Checks, in the rendered page (not the HTML source), in a window 1,366 px wide (``--width``):

- every figure of the report (``figures/*.png``) is an image that loaded (decoded, with a width
  and a height, laid out on the page), and no image on the page failed;
- every table of the report (``tables/*.csv`` and the summary ``best__*.csv``) is a table on the
  page, with rows, laid out;
- the page opens with the summary: its first section heading is "Best method per data set ...";
- nothing overflows sideways: the document's scroll width is at most the window's width and
  its client width (no horizontal scroll bar), both as the page opens and with every folded
  section (``<details>``) opened.

It prints the page's scroll width and height (the height as the page opens, folded sections
closed, and with every one opened).

The page is rendered from a copy with a small script added that writes these facts into the DOM
once the page has loaded; ``--dump-dom`` hands them back. Nothing but Chromium is needed (no
Selenium, no Playwright). A report directory holding files of an older report (a metric since
dropped) shows them as missing: write reports into a fresh directory.

Exit status: 0 all checks passed, 1 a check failed, 2 no Chromium (``--chromium`` or
``$CHROMIUM`` name one) or no report.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
            "headless_shell")
MARKER = "cytotune-check"
SUMMARY_HEADING = "Best method per data set"
WINDOW_WIDTH, WINDOW_HEIGHT = 1366, 768  # a common laptop screen: the page must fit its width
_PROBE = """
<script>
window.addEventListener('load', function () {
  var box = function (e) { var r = e.getBoundingClientRect(); return [r.width, r.height]; };
  var doc = document.documentElement;
  var size = function () {
    return {scroll_width: Math.max(doc.scrollWidth, document.body.scrollWidth),
            scroll_height: Math.max(doc.scrollHeight, document.body.scrollHeight),
            client_width: doc.clientWidth, window_width: window.innerWidth};
  };
  var closed = size();
  Array.prototype.forEach.call(document.querySelectorAll('details'),
                               function (d) { d.open = true; });
  var opened = size();
  var images = Array.prototype.map.call(document.images, function (i) {
    return {figure: i.getAttribute('data-figure'), complete: i.complete,
            width: i.naturalWidth, height: i.naturalHeight, shown: box(i)};
  });
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    return {table: t.getAttribute('data-table'), rows: t.rows.length, shown: box(t)};
  });
  var h2 = document.querySelector('h2');
  var out = document.createElement('pre');
  out.id = '%s';
  out.textContent = JSON.stringify({title: document.title, images: images, tables: tables,
                                    first_heading: h2 ? h2.textContent : null,
                                    layout: closed, layout_opened: opened});
  document.body.appendChild(out);
});
</script>
""" % MARKER


@dataclass
class PageCheck:
    """What the browser saw, and the problems found (empty: all good)."""

    images: list[dict] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    first_heading: Optional[str] = None
    layout: dict = field(default_factory=dict)  # sizes as the page opens (folded sections shut)
    layout_opened: dict = field(default_factory=dict)  # with every <details> opened
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        loaded = sum(1 for i in self.images if _loaded(i))
        shown = sum(1 for t in self.tables if t.get("rows", 0) > 0)
        out = [f"images loaded: {loaded}/{len(self.images)}",
               f"tables with rows: {shown}/{len(self.tables)}",
               f"first section: {self.first_heading!r}"]
        if self.layout:
            out.append(f"window {self.layout.get('window_width')} px wide: scroll width "
                       f"{self.layout.get('scroll_width')} px, height "
                       f"{self.layout.get('scroll_height')} px (folded sections opened: "
                       f"{self.layout_opened.get('scroll_width')} x "
                       f"{self.layout_opened.get('scroll_height')} px)")
        out += [f"PROBLEM: {p}" for p in self.problems] or ["all checks passed"]
        return out


def find_chromium(explicit: Optional[str] = None) -> Optional[str]:
    """The Chromium (or Chrome) executable to use: ``explicit``, ``$CHROMIUM``, else the first
    of :data:`BROWSERS` on the PATH; None when there is none."""
    for name in (explicit, os.environ.get("CHROMIUM"), *BROWSERS):
        if name:
            found = shutil.which(name)
            if found:
                return found
    return None


def expected_from_dir(report_dir: Path) -> tuple[list[str], list[str]]:
    """(table names, figure file names) a report directory holds: ``tables/<stem>.csv`` and the
    summary ``best__<metric>.csv`` (named ``best__<metric>`` on the page), ``figures/*.png``."""
    tables = sorted(p.stem for p in (report_dir / "tables").glob("*.csv"))
    tables += sorted(p.stem for p in report_dir.glob("best__*.csv"))
    figures = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    return tables, figures


def _loaded(image: dict) -> bool:
    shown = image.get("shown") or [0, 0]
    return bool(image.get("complete")) and image.get("width", 0) > 0 \
        and image.get("height", 0) > 0 and shown[0] > 0 and shown[1] > 0


def evaluate(facts: dict, tables: Sequence[str], figures: Sequence[str]) -> PageCheck:
    """Compare what the page showed (``facts``, from the probe) with the expected tables and
    figures."""
    check = PageCheck(images=facts.get("images", []), tables=facts.get("tables", []),
                      first_heading=facts.get("first_heading"), layout=facts.get("layout") or {},
                      layout_opened=facts.get("layout_opened") or {})
    by_figure = {i.get("figure"): i for i in check.images}
    for name in figures:
        image = by_figure.get(name)
        if image is None:
            check.problems.append(f"figure {name} is not on the page")
        elif not _loaded(image):
            check.problems.append(f"figure {name} did not load (naturalWidth "
                                  f"{image.get('width')}, complete {image.get('complete')})")
    for image in check.images:
        if image.get("figure") not in figures and not _loaded(image):
            check.problems.append(f"an image ({image.get('figure')}) did not load")
    by_table = {t.get("table"): t for t in check.tables}
    for name in tables:
        table = by_table.get(name)
        if table is None:
            check.problems.append(f"table {name} is not on the page")
        elif table.get("rows", 0) < 2 or not (table.get("shown") or [0, 0])[1] > 0:
            check.problems.append(f"table {name} is empty or not laid out "
                                  f"({table.get('rows')} rows)")
    heading = (check.first_heading or "").strip()
    if tables and not heading.startswith(SUMMARY_HEADING):
        check.problems.append(f"the page does not open with the summary (first section: "
                              f"{heading!r})")
    for state, layout in (("", check.layout), (" with its folded sections opened",
                                               check.layout_opened)):
        if not layout:
            check.problems.append(f"the page's size{state} was not measured")
            continue
        limit = min(layout.get("window_width") or 0, layout.get("client_width") or 0)
        if layout.get("scroll_width", 0) > limit:
            check.problems.append(f"the page{state} overflows sideways: scroll width "
                                  f"{layout.get('scroll_width')} px in a window "
                                  f"{layout.get('window_width')} px wide (client width "
                                  f"{layout.get('client_width')} px)")
    return check


def render_facts(page: Path, chromium: str, timeout: float = 120.0, width: int = WINDOW_WIDTH,
                 height: int = WINDOW_HEIGHT) -> dict:
    """Load ``page`` in headless Chromium, in a ``width`` x ``height`` window, and return what
    the probe recorded."""
    with tempfile.TemporaryDirectory(prefix="cytotune-check-") as tmp:
        copy = Path(tmp) / "page.html"
        text = page.read_text(encoding="utf-8")
        at = text.rfind("</body>")
        copy.write_text((text[:at] + _PROBE + text[at:]) if at >= 0 else text + _PROBE,
                        encoding="utf-8")
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={tmp}/profile",
                   f"--window-size={width},{height}", "--virtual-time-budget=15000",
                   "--dump-dom", copy.as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    match = re.search(rf'<pre id="{MARKER}">(.*?)</pre>', done.stdout, re.S)
    if match is None:
        raise RuntimeError(f"Chromium returned no page facts (exit {done.returncode}): "
                           f"{done.stderr.strip()[-600:]}")
    return json.loads(html.unescape(match.group(1)))


def screenshot(page: Path, chromium: str, out: Path, width: int = WINDOW_WIDTH,
               height: int = 1500,
               timeout: float = 120.0, colours: int = 64) -> Path:
    """A PNG of the top of ``page`` (``width`` x ``height``), reduced to ``colours`` colours
    (Pillow, when installed) to stay small enough for the docs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cytotune-shot-") as tmp:
        raw = Path(tmp) / "shot.png"
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                   f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
                   "--virtual-time-budget=15000", f"--screenshot={raw}", page.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if not raw.is_file():
            raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}): "
                               f"{done.stderr.strip()[-600:]}")
        try:
            from PIL import Image
        except ImportError:
            shutil.copyfile(raw, out)
        else:
            with Image.open(raw) as image:
                image.convert("RGB").quantize(colors=colours).save(out, optimize=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a report directory (or its report.html)")
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the page's top here")
    parser.add_argument("--chromium", help="the browser executable (default: $CHROMIUM, then "
                                           "chromium, chromium-browser, google-chrome ...)")
    parser.add_argument("--width", type=int, default=WINDOW_WIDTH,
                        help="window width in px for the checks and the screenshot (default "
                             "%(default)s)")
    parser.add_argument("--height", type=int, default=1500, help="screenshot height in px")
    args = parser.parse_args(argv)
    page = args.report if args.report.suffix == ".html" else args.report / "report.html"
    if not page.is_file():
        print(f"no report page at {page}", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no Chromium found (tried $CHROMIUM, " + ", ".join(BROWSERS) + "); install one, "
              "e.g. apt-get install chromium", file=sys.stderr)
        return 2
    tables, figures = expected_from_dir(page.parent)
    check = evaluate(render_facts(page, chromium, width=args.width), tables, figures)
    print(f"{page} in {chromium}:")
    for line in check.lines():
        print(f"  {line}")
    if args.screenshot:
        shot = screenshot(page, chromium, args.screenshot, args.width, args.height)
        print(f"screenshot: {shot} ({shot.stat().st_size // 1024} KiB)")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
