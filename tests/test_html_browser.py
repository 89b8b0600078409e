"""The interactive HTML export (plotting/export.py write_html) opened in a real browser: Debian's headless
Chromium loads the file with the network cut off, plotly draws the page (its plot container, SVG layers and
title, the 3D scene's WebGL canvas, no script error) and the screenshot shows the surface in its colormap.

Negative controls in this file show that each check can fail: the same page with plotly.js taken from a CDN
instead of embedded is not drawn offline, the same page without WebGL draws no surface, and the offline flags
do stop a request to a server on this machine.

Chromium is a test requirement (scripts/install.sh installs it): without it the test is skipped, which fails
the run unless LANDSCAPE_MPI_ALLOW_SKIP=1 (tests/conftest.py).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from plotting import export
from plotting.reader import read_surface
from test_plotting import partial2d  # noqa: F401  (the fixture: a partial 2D surface file)

WIDTH, HEIGHT = 800, 600
#: Generous: a loaded CI machine; Chromium itself ends when the virtual time budget is spent.
TIMEOUT = 180
#: Headless Chromium (--no-sandbox: the tests run as root), with nothing from the network: every request goes
#: to a proxy on the discard port, where nothing listens (loopback included: Chromium bypasses a proxy for
#: loopback unless told not to), and host names do not resolve. WebGL (plotly's 3D scene) from SwiftShader,
#: the CPU renderer, since there is no GPU: --disable-gpu, then --enable-unsafe-swiftshader opts in to
#: SwiftShader's WebGL (the automatic fallback to it is deprecated). --virtual-time-budget: the page's load,
#: scripts and timers run on virtual time, which advances only when the page is idle, and Chromium dumps the
#: DOM and screenshot when 10 s of it have passed, however slow the machine. --enable-logging=stderr
#: --log-level=0: the page's console messages (an uncaught script error among them) come out on stderr.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=10000", "--enable-logging=stderr",
         "--log-level=0")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (apt-get install chromium; scripts/install.sh does), so the HTML export "
                "was not opened in a browser")


@dataclass
class Rendered:
    dom: str
    console: list[str]  # the page's console messages
    png: np.ndarray  # the screenshot, HEIGHT x WIDTH x 3, 0..255


def render(chromium: str, page: Path, tmp_path: Path, *extra: str) -> Rendered:
    """Open `page` in headless Chromium (FLAGS): its DOM once the virtual time budget is spent, its console
    messages and a WIDTH x HEIGHT screenshot."""
    from matplotlib import image

    shot = tmp_path / f"{page.stem}.png"
    p = subprocess.run([chromium, *FLAGS, *extra, f"--user-data-dir={tmp_path / f'{page.stem}-profile'}",
                        f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and shot.is_file(), f"chromium exited {p.returncode}:\n{p.stderr[-3000:]}"
    console = [m.group(1) for m in re.finditer(r":CONSOLE[^\]]*\] (.*)", p.stderr)]
    png = np.round(image.imread(shot)[..., :3] * 255).astype(int)
    return Rendered(p.stdout, console, png)


class Elements(HTMLParser):
    """The DOM's elements (tag, classes, their ancestors' classes) and the text of plotly's title; the text
    of scripts (plotly.js names all its classes) is not parsed as elements."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.found: list[tuple[str, set[str], set[str]]] = []
        self.stack: list[tuple[str, set[str]]] = []
        self.title = ""
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        self.found.append((tag, classes, set().union(*(c for _, c in self.stack))))
        if tag not in VOID:
            self.stack.append((tag, classes))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if any("gtitle" in c for _, c in self.stack):
            self.title += data

    def has(self, tag: str, cls: str | None = None, inside: str | None = None) -> bool:
        """Whether an element `tag` of class `cls` (any class: None) exists, inside one of class `inside`."""
        return any(t == tag and (cls is None or cls in c) and (inside is None or inside in a) for t, c, a in self.found)


def plot_problems(r: Rendered, title: str) -> list[str]:
    """What is missing from a drawn plotly 3D surface page (empty: drawn): plotly's elements in the DOM, its
    title, the WebGL canvas of the 3D scene, no "WebGL is not supported" notice, no uncaught script error."""
    el = Elements(r.dom)
    problems = [f"no <{tag} class={cls}>" for tag, cls in (("div", "plot-container"), ("svg", "main-svg"),
                                                           ("div", "gl-container")) if not el.has(tag, cls)]
    if not el.has("canvas", inside="gl-container"):
        problems.append("no <canvas> in the 3D scene's gl-container")
    if el.has("div", "no-webgl"):
        problems.append("plotly says WebGL is not supported (div.no-webgl)")
    if title not in el.title:
        problems.append(f"title {el.title!r}, expected {title!r}")
    problems += [f"script error: {m}" for m in r.console if "Uncaught" in m]
    return problems


def screenshot_problems(png: np.ndarray) -> list[str]:
    """Why a screenshot is blank or shows no surface (empty: fine). A blank page has one colour; the plot has
    thousands. The surface: Viridis colours (shaded, so within a distance of the colormap), many of them, left
    of the colorbar (its right fifth), which is Viridis too and drawn without WebGL."""
    from matplotlib import colormaps

    problems = []
    if png.shape != (HEIGHT, WIDTH, 3):
        problems.append(f"screenshot of shape {png.shape}, expected {(HEIGHT, WIDTH, 3)}")
    pixels = png.reshape(-1, 3)
    distinct = len(np.unique(pixels, axis=0))
    drawn = float((pixels < 245).any(axis=1).mean())
    if distinct < 500 or drawn < 0.05:
        problems.append(f"blank: {distinct} distinct colours, {drawn:.1%} of the pixels not white")
    viridis = colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255
    scene = png[:, : int(0.8 * png.shape[1])].reshape(-1, 3).astype(float)
    scene = scene[np.ptp(scene, axis=1) > 40]  # not grey
    distance = np.sqrt(((scene[:, None, :] - viridis[None]) ** 2).sum(-1)).min(axis=1)
    surface = scene[distance < 30]  # near the colormap
    shades = len(np.unique(surface, axis=0))
    if len(surface) < 1000 or shades < 100:
        problems.append(f"no surface: {len(surface)} pixels in the colormap ({shades} shades) left of the colorbar")
    return problems


def surface_page(partial2d, tmp_path: Path) -> tuple[Path, str]:  # noqa: F811
    path, _, _ = partial2d
    surface = read_surface(path)
    page = Path(export.write_html(surface, "train_loss", str(tmp_path / "surface.html")))
    return page, f"{surface.label()}: train_loss"


def test_html_export_draws_the_surface_offline(chromium, partial2d, tmp_path):  # noqa: F811
    page, title = surface_page(partial2d, tmp_path)
    r = render(chromium, page, tmp_path)
    assert plot_problems(r, title) == []
    assert screenshot_problems(r.png) == []


def test_browser_checks_detect_a_page_not_drawn(chromium, partial2d, tmp_path):  # noqa: F811
    """Negative controls: the same page with plotly.js from a CDN (what include_plotlyjs="cdn" writes) is not
    drawn offline; the page itself without WebGL draws its colorbar but no surface."""
    page, title = surface_page(partial2d, tmp_path)
    html = page.read_text()
    cdn, n = re.subn(r"<script[^>]*>/\*\*\s*\*\s*plotly\.js v([\d.]+).*?</script>",
                     lambda m: f'<script charset="utf-8" src="https://cdn.plot.ly/plotly-{m.group(1)}.min.js"></script>',
                     html, count=1, flags=re.S)
    assert n == 1 and len(cdn) < len(html) // 100, "the embedded plotly.js was not found in the page"
    cdn_page = tmp_path / "cdn.html"
    cdn_page.write_text(cdn)
    r = render(chromium, cdn_page, tmp_path)
    problems = plot_problems(r, title)
    assert "no <div class=plot-container>" in problems and any("Plotly is not defined" in p for p in problems), problems
    assert any(p.startswith("blank") for p in screenshot_problems(r.png))

    r = render(chromium, page, tmp_path, "--disable-webgl")
    assert "plotly says WebGL is not supported (div.no-webgl)" in plot_problems(r, title)
    assert any(p.startswith("no surface") for p in screenshot_problems(r.png))


def test_offline_flags_stop_a_request_to_this_machine(chromium, tmp_path):
    """The proxy flags cut off loopback too: a script from a local HTTP server loads without FLAGS' proxy
    settings and not with them (so a CDN script could not load either, on a machine with a network)."""
    (tmp_path / "marker.js").write_text('document.title = "loaded from the network";\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = tmp_path / "net.html"
        page.write_text(f'<html><head><script src="http://127.0.0.1:{server.server_port}/marker.js"></script>'
                        '</head><body>offline</body></html>')
        online = [f for f in FLAGS if not f.startswith(("--proxy", "--host-resolver"))]
        titles = []
        for flags in (online, FLAGS):
            p = subprocess.run([chromium, *flags, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                                page.as_uri()], capture_output=True, text=True, timeout=TIMEOUT)
            assert p.returncode == 0, p.stderr[-3000:]
            titles.append("<title>loaded from the network</title>" in p.stdout)
    finally:
        server.shutdown()
        server.server_close()
    assert titles == [True, False]
