"""The demo report in headless Chromium: every section shows, nothing is fetched, links relative.

Chromium (Debian's ``/usr/bin/chromium``; ``make test`` installs it on CI) is driven over the
DevTools protocol: ``Network`` events record every request the page makes, ``Page`` gives
the full-page screenshot, ``Runtime`` reads the rendered page. The report folder is copied
elsewhere first, as an analyst would copy it to another machine. A net log
(``--log-net-log``) is checked as a second witness that no http(s) request left the browser.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lacrima import report
from lacrima.storage import LocalStorage

CHROMIUM = os.environ.get("LACRIMA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,1000", "--remote-debugging-port=0"]
SECTIONS = ("summary", "flow", "descriptives", "invariance", "families", "methods",
            "provenance")
STARTUP_S = 20.0

# No skip when Chromium is missing: `make test` installs it, and a missing browser must fail.
pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module", autouse=True)
def chromium_present():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `make system-deps` (Debian chromium)")


@pytest.fixture(scope="module")
def report_inputs(study, sites, memory_analyses):
    """The demo's inputs in memory with the full comparison (IPD models included)."""
    from lacrima import steps

    comparison = steps.compare_sites(memory_analyses, study, list(sites))
    prov = steps.provenance("run-1", memory_analyses, study, list(sites))
    return memory_analyses, comparison, study, list(sites), prov


class DevTools:
    """A minimal DevTools client on one page target (websockets, sync API)."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=STARTUP_S)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for msg in self.events:
            if msg.get("method") == event:
                return msg
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(msg)
            if msg.get("method") == event:
                return msg
        raise TimeoutError(event)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def copied_report(tmp_path_factory, report_inputs, store_memory):
    """The demo run written to storage, then its folder copied to a fresh place."""
    analyses, comparison, study, sites, prov = report_inputs
    storage = store_memory(LocalStorage(tmp_path_factory.mktemp("store")))
    report.write_outputs(storage, "run-1", analyses, comparison, study, sites, prov)
    elsewhere = tmp_path_factory.mktemp("other-machine") / "lacrima-report"
    shutil.copytree(storage.local_path("reports/run-1"), elsewhere)
    return elsewhere


@pytest.fixture(scope="module")
def browser(tmp_path_factory, copied_report):
    """Chromium showing the copied report.html; yields (devtools, requests, netlog path)."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    netlog = profile.parent / f"{profile.name}-netlog.json"
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                             f"--log-net-log={netlog}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + STARTUP_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        # The test's own connection to Chromium's local DevTools endpoint, not the page's.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        dt.call("Network.enable")
        dt.call("Page.enable")
        dt.call("Page.navigate", url=(copied_report / "report.html").as_uri())
        dt.wait_for("Page.loadEventFired")
        yield dt, copied_report, netlog
        dt.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _requested_urls(dt: DevTools) -> list[str]:
    return [e["params"]["request"]["url"] for e in dt.events
            if e.get("method") == "Network.requestWillBeSent"]


def test_the_page_requests_nothing_but_itself(browser):
    dt, folder, _ = browser
    urls = _requested_urls(dt)
    assert urls, "the Network domain saw no request at all: the check would be blind"
    assert [u for u in urls if not u.startswith("file://")] == []
    assert urls == [(folder / "report.html").as_uri()]     # no images, styles or scripts fetched


def test_every_section_is_rendered_and_visible(browser, report_inputs):
    dt, *_ = browser
    _, _, study, _, _ = report_inputs
    ids = list(SECTIONS) + [f"family-{f['id']}" for f in study.families]
    heights = dt.evaluate(
        "JSON.stringify(Object.fromEntries(%s.map(id => [id, "
        "document.getElementById(id) ? document.getElementById(id).offsetHeight : -1])))"
        % json.dumps(ids))
    heights = json.loads(heights)
    assert all(h > 20 for h in heights.values()), heights
    order = json.loads(dt.evaluate(
        "JSON.stringify(%s.map(id => document.getElementById(id).getBoundingClientRect().top"
        " + window.scrollY))" % json.dumps(list(SECTIONS))))
    assert order == sorted(order), "sections out of the order the issue lists"
    n_svgs = dt.evaluate("document.querySelectorAll('figure.forest svg').length")
    assert n_svgs == 44               # one per pooled effect of the current plan
    # Heterogeneity beside each plot, with the IPD interaction test for H1-H4 effects.
    h1 = dt.evaluate("document.getElementById('family-H1').innerText")
    assert h1.count("Heterogeneity: \u03c4\u00b2 =") == 8
    assert h1.count("IPD x-by-site interaction: F(2, ") == 8


def test_full_page_screenshot(browser, tmp_path_factory):
    dt, *_ = browser
    metrics = dt.call("Page.getLayoutMetrics")
    size = metrics["cssContentSize"]
    assert size["height"] > 3000          # the whole report, not one screen
    shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                   clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                         "scale": 0.5})
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out = Path(os.environ.get("LACRIMA_SCREENSHOT_DIR", tmp_path_factory.getbasetemp()))
    (out / "report-full.png").write_bytes(png)
    # The PNG's height is the page's, halved by the scale: a full-page capture.
    height = int.from_bytes(png[20:24], "big")
    assert height >= int(size["height"] * 0.5) - 2


def test_links_are_relative_and_resolve_inside_the_copied_folder(browser):
    dt, folder, _ = browser
    links = json.loads(dt.evaluate(
        "JSON.stringify([...document.querySelectorAll('[href],[src]')]"
        ".map(e => e.getAttribute('href') || e.getAttribute('src')))"))
    assert links
    files = [h for h in links if not h.startswith("#")]
    assert files, "the report links none of the run's files"
    for href in files:
        assert "://" not in href and not href.startswith("/"), href
        assert (folder / href).is_file(), f"{href} does not exist in the copied folder"
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {f["name"] for f in manifest["files"]} | {"manifest.json"}
    assert set(files) <= listed


def test_a_site_page_opens_from_the_report(browser):
    dt, folder, _ = browser
    dt.events.clear()
    dt.call("Page.navigate", url=(folder / "site-us.html").as_uri())
    dt.wait_for("Page.loadEventFired")
    assert dt.evaluate("document.querySelector('a[href=\"report.html\"]') !== null")
    for section in ("flow", "descriptives", "analyses"):
        assert dt.evaluate(f"document.getElementById('{section}').offsetHeight") > 20
    assert [u for u in _requested_urls(dt) if not u.startswith("file://")] == []


def _net_log_requests(html: Path, profile: Path) -> list[tuple[str, int]]:
    """(url, traffic annotation) of every request Chromium started while loading ``html``.

    ``--dump-dom`` exits once the page has loaded, so the net log is complete JSON.
    """
    netlog = profile.parent / f"{profile.name}.json"
    flags = [f for f in FLAGS if not f.startswith("--remote-debugging")]
    subprocess.run([CHROMIUM, *flags, f"--user-data-dir={profile}", f"--log-net-log={netlog}",
                    "--dump-dom", html.as_uri()], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60, check=True)
    log = json.loads(netlog.read_text())
    alive = log["constants"]["logEventTypes"]["REQUEST_ALIVE"]
    return [(e["params"]["url"], e["params"].get("traffic_annotation"))
            for e in log["events"] if e["type"] == alive and "url" in e.get("params", {})]


def test_net_log_shows_no_http_request_from_the_page(copied_report, tmp_path):
    """Second witness, outside the DevTools protocol: Chromium's own net log.

    Chromium itself talks to Google services (time, updates, accounts) even with background
    networking disabled, so "no http(s) in the log" cannot be the test. A control page with
    one external image shows which traffic annotation the page's own requests carry; the
    report must start no http(s) request with it.
    """
    control = tmp_path / "control.html"
    control.write_text('<!doctype html><img src="http://lacrima-control.invalid/pixel.png">')
    seen = _net_log_requests(control, tmp_path / "control-profile")
    page_tags = {tag for url, tag in seen if url.startswith("http://lacrima-control.invalid/")}
    assert page_tags, "the net log did not show the control page's request"
    requests = _net_log_requests(copied_report / "report.html", tmp_path / "report-profile")
    from_page = [url for url, tag in requests
                 if tag in page_tags and url.startswith(("http://", "https://"))]
    assert from_page == []


def test_html_names_no_http_address_at_all(copied_report):
    for page in [copied_report / "report.html", *copied_report.glob("site-*.html")]:
        text = page.read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text), page.name
        assert not re.search(r"url\(\s*[\"']?\s*(https?:)?//", text), page.name
        assert "http://" not in text and "https://" not in text, page.name


# ---------------------------------------------------------------------------
# Issue 23: nothing cut off at 1280 and 390 px (Selenium: Debian's chromium + chromedriver)
# ---------------------------------------------------------------------------

CHROMEDRIVER = os.environ.get("LACRIMA_CHROMEDRIVER", "/usr/bin/chromedriver")
WIDTHS = (1280, 390)                  # a laptop, a phone (CSS px)


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not Path(CHROMEDRIVER).exists():
        pytest.fail(f"{CHROMEDRIVER} missing: run `make system-deps` (Debian chromium-driver)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update"):
        options.add_argument(flag)
    d = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield d
    d.quit()


def _open(driver, page: Path, width: int) -> None:
    """``page`` in a viewport exactly ``width`` CSS px wide (device metrics, not the window's
    outer size, which includes the browser's own frame)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 900, "deviceScaleFactor": 1,
                            "mobile": False})
    driver.get(page.as_uri())


# What overflows the viewport outside a scrolling container (a table's div.scroll, a forest
# plot's figure), and every table not in a scrolling container.
_LAYOUT = """
const vw = window.innerWidth;
const inScroller = e => { for (let p = e.parentElement; p; p = p.parentElement) {
    const o = getComputedStyle(p).overflowX; if (o === 'auto' || o === 'scroll') return p; }
  return null; };
return {
  innerWidth: vw, scrollWidth: document.documentElement.scrollWidth,
  overflowing: [...document.querySelectorAll('main *')]
    .filter(e => e.getBoundingClientRect().right > vw + 0.5 && !inScroller(e))
    .map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 10),
  tablesOutsideScroller: [...document.querySelectorAll('table')].filter(t => !inScroller(t)).length,
  tables: document.querySelectorAll('table').length,
  scrolling: [...document.querySelectorAll('div.scroll')]
    .filter(c => c.scrollWidth > c.clientWidth + 1).length,
};
"""


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", ["report.html", "site-us.html"])
def test_the_page_is_as_wide_as_the_screen_and_wide_tables_scroll_inside(driver, copied_report,
                                                                         page, width):
    _open(driver, copied_report / page, width)
    layout = driver.execute_script(_LAYOUT)
    assert layout["innerWidth"] == width
    assert layout["scrollWidth"] <= layout["innerWidth"], layout       # the page itself
    assert layout["overflowing"] == [], layout
    assert layout["tables"] >= 5 and layout["tablesOutsideScroller"] == 0, layout
    if width == 390:
        assert layout["scrolling"] >= 1, "no table is wider than a phone: the check is blind"
    elif page == "report.html":
        assert layout["scrolling"] == 0, "a table is cut off at 1280 px"


def test_a_wide_table_scrolls_inside_its_container_with_its_first_column_kept(driver,
                                                                              copied_report):
    _open(driver, copied_report / "report.html", 390)
    moved = driver.execute_script("""
      const box = document.getElementById('verdict-table').parentElement;
      const row = box.querySelector('tbody tr');
      const first = row.cells[0], later = row.cells[row.cells.length - 1];
      const before = [first.getBoundingClientRect().left, later.getBoundingClientRect().left];
      box.scrollLeft = box.scrollWidth;
      const after = [first.getBoundingClientRect().left, later.getBoundingClientRect().left];
      return {box: box.className, overflow: getComputedStyle(box).overflowX,
              wider: box.scrollWidth - box.clientWidth, scrolled: box.scrollLeft,
              first: after[0] - before[0], later: after[1] - before[1],
              firstVisible: after[0] >= box.getBoundingClientRect().left - 0.5};
    """)
    assert moved["box"] == "scroll" and moved["overflow"] == "auto"
    assert moved["wider"] > 100 and moved["scrolled"] > 100, moved   # it does scroll
    # the table moved, its first column (the effect names) did not
    assert moved["later"] == pytest.approx(-moved["scrolled"], abs=1)
    assert moved["first"] == pytest.approx(0, abs=0.5) and moved["firstVisible"], moved


def test_the_verdict_table_names_each_effects_metric(driver, copied_report, report_inputs):
    study = report_inputs[2]
    _open(driver, copied_report / "report.html", 1280)
    header, rows = driver.execute_script("""
      const t = document.getElementById('verdict-table');
      return [[...t.tHead.rows[0].cells].map(c => c.innerText),
              [...t.tBodies[0].rows].map(r => [r.dataset.family,
                                               ...[...r.cells].map(c => c.innerText)])];
    """)
    col = header.index("Metric")
    by_family = {}
    for r in rows:
        by_family.setdefault(r[0], set()).add(r[1 + col])
    # the metric follows the family's kind in the plan (lacrima.tables.METRICS), not its name
    kinds = {"correlation": "r", "partial_correlation": "partial r", "group_comparison": "g",
             "contingency": "OR"}
    pooled = set(study.section("pooling")["families"])
    assert by_family == {f["id"]: {kinds[f["kind"]]} for f in study.families if f["id"] in pooled}
    note = driver.find_element("id", "verdict-metrics").text
    for text in ("r: Pearson r, pooled as Fisher z", "g: Hedges' g, pooled as is",
                 "OR: odds ratio, pooled as log OR"):
        assert text in note


def test_forest_plot_text_is_as_large_as_the_body_text(driver, copied_report):
    _open(driver, copied_report / "report.html", 1280)
    sizes = driver.execute_script("""
      const body = parseFloat(getComputedStyle(document.querySelector('#summary p')).fontSize);
      const out = [];
      for (const svg of document.querySelectorAll('figure.forest svg, .plots svg')) {
        const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
        const texts = [...svg.querySelectorAll('text')];
        out.push([svg.closest('[id]').id, texts.length,
                  Math.min(...texts.map(t => parseFloat(getComputedStyle(t).fontSize) * scale))]);
      }
      return [body, out];
    """)
    body, plots = sizes
    assert body >= 15 and len(plots) == 49
    for anchor, n_texts, smallest in plots:
        assert n_texts >= 8, anchor               # labels, estimate [CI] and weight columns
        assert smallest >= body - 0.01, (anchor, smallest, body)


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, small_plan, small_memory_sites, small_store_memory):
    """The small plan's run (every kind of table and plot, a few effects each): the report
    whose screenshots are in docs/."""
    from lacrima import steps

    analyses = [a for a, _ in small_memory_sites.values()]
    study, sites = small_plan.study, list(small_plan.sites)
    comparison = steps.compare_sites(analyses, study, sites)
    prov = steps.provenance("run-1", analyses, study, sites)
    storage = small_store_memory(LocalStorage(tmp_path_factory.mktemp("small-store")))
    report.write_outputs(storage, "run-1", analyses, comparison, study, sites, prov)
    return storage.local_path("reports/run-1")


def test_screenshots_at_1280_and_390_px(driver, small_report, tmp_path_factory):
    """Whole-page screenshots of the report and a site page at both widths, nothing cut off.

    ``LACRIMA_SCREENSHOT_DIR=docs pytest -m browser tests/test_report_browser.py -k
    screenshots`` rewrites docs/report-1280.png, docs/report-390.png, docs/site-1280.png
    and docs/site-390.png.
    """
    out = Path(os.environ.get("LACRIMA_SCREENSHOT_DIR", tmp_path_factory.mktemp("shots")))
    for page, stem in (("report.html", "report"), ("site-us.html", "site")):
        for width in WIDTHS:
            _open(driver, small_report / page, width)
            layout = driver.execute_script(_LAYOUT)
            assert layout["scrollWidth"] <= width and layout["overflowing"] == [], layout
            height = driver.execute_script("return document.documentElement.scrollHeight")
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
            png = base64.b64decode(shot["data"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            # the whole page: the PNG is exactly the page's width and height
            assert int.from_bytes(png[16:20], "big") == width
            assert int.from_bytes(png[20:24], "big") == height
            _write_small_png(png, out / f"{stem}-{width}.png")


def _write_small_png(png: bytes, path: Path) -> None:
    """256 colours (octree: the sites' colours stay apart), a third of the bytes for docs/."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                   dither=Image.Dither.NONE).save(path, optimize=True)
