"""Open the written reports in headless Chromium and check what a user would see.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4), with a small client below, so no
extra Python dependency is needed. The checks: the page loads with no console error, no
uncaught exception and no network request; every Plotly div has data; clicking a Pareto point
shows that candidate's YAML; a full-page screenshot PNG is written.

Chromium is the Debian package ``chromium`` (``make test`` installs it). Without it these
tests FAIL, on purpose; deselect them with ``-m "not browser"``. Set
``ARCHSEARCH_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from report_helpers import make_study

from archsearch.report import write_compare, write_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("ARCHSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WIDTH, HEIGHT = 1400, 1000



class DevTools:
    """A minimal synchronous DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile_dir: str, log_path: Path) -> None:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
            f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        # Chromium reads commands on fd 3 and writes replies on fd 4: map our pipes there.
        cmd = ["sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", binary, *flags]
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        fd = self.proc.stdout.fileno()
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def evaluate(self, session: str, expression: str) -> Any:
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session,
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may close before answering
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium not found ({CHROMIUM}): `make test` installs it "
            "(apt-get install -y chromium); deselect this check with -m 'not browser'",
            pytrace=False,
        )
    logs = tmp_path_factory.mktemp("chromium")
    profile = tempfile.mkdtemp(prefix="archsearch-chromium-")
    dt = DevTools(CHROMIUM, profile, logs / "chromium.log")
    try:
        yield dt
    finally:
        dt.close()
        shutil.rmtree(profile, ignore_errors=True)


PLOTS_READY = """
(() => {
  const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  return divs.length > 0 && divs.every(el => el.classList.contains('js-plotly-plot') && el._fullLayout);
})()
"""

PLOT_DATA = """
(() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => ({
  id: el.id,
  traces: el.data.length,
  points: el.data.reduce((n, t) => n + ((t.x && t.x.length) || (t.dimensions && t.dimensions.length
          ? t.dimensions[0].values.length : 0)), 0),
  rendered: el.querySelectorAll('svg.main-svg').length,
})))()
"""


def open_page(browser: DevTools, path: Path) -> tuple[str, list[dict]]:
    """Open ``path`` in a fresh tab; wait for the load and for every plot. Returns the session
    id and the protocol events seen while loading."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    sid = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable", session=sid)
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        sid,
    )
    browser.events.clear()
    browser.send("Page.navigate", {"url": path.resolve().as_uri()}, sid)
    browser.wait_event("Page.loadEventFired", timeout=60)
    deadline = time.monotonic() + 30
    while not browser.evaluate(sid, PLOTS_READY):
        assert time.monotonic() < deadline, "plots did not render within 30 s"
        time.sleep(0.2)
    time.sleep(0.3)  # let late console messages arrive
    browser.evaluate(sid, "1")
    return sid, [ev for ev in browser.events if ev.get("sessionId") == sid]


def problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, error log entries and non-local requests."""
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"exception: {(d.get('exception') or {}).get('description') or d.get('text')}")
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append("log: " + p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                out.append("network request: " + url)
    return out


def screenshot(browser: DevTools, sid: str, out: Path) -> bytes:
    height = int(browser.evaluate(sid, "document.documentElement.scrollHeight"))
    shot = browser.send(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True,
         "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}},
        sid,
    )  # fmt: skip
    png = base64.b64decode(shot["data"])
    out.write_bytes(png)
    keep = os.environ.get("ARCHSEARCH_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / out.name)
    return png


def assert_real_png(png: bytes, min_height: int) -> None:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.width == WIDTH and img.height >= min_height
    colours = img.resize((200, 200)).getcolors(maxcolors=200 * 200)
    assert colours is not None and len(colours) > 50, "screenshot looks blank"


CLICK_TARGET = """
(() => {
  const gd = document.getElementById('fig-front');
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData.find(t => t.name.startsWith('Pareto'));
  const i = Math.floor(t.x.length / 2);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.getBoundingClientRect();
  return {x: r.left + xa._offset + xa.l2p(t.x[i]), y: r.top + ya._offset + ya.l2p(t.y[i]),
          id: t.customdata[i]};
})()
"""


def test_the_browser_check_catches_errors_and_network_use(browser: DevTools, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
        "<div class='plotly-graph-div js-plotly-plot'></div>"
        "<img src='http://archsearch.invalid/x.png'>"
        "<script>console.error('boom'); undefinedFunction();</script>"
        "<script>document.querySelector('div')._fullLayout = {};</script></body></html>"
    )
    _, events = open_page(browser, page)
    found = problems(events)
    assert any(p.startswith("console.error: boom") for p in found), found
    assert any(p.startswith("exception:") and "undefinedFunction" in p for p in found), found
    assert any(p == "network request: http://archsearch.invalid/x.png" for p in found), found


def test_report_page_in_chromium(browser: DevTools, tmp_path: Path) -> None:
    folder = make_study(tmp_path / "reports", name="unet_mobile", xss_id=True)
    out = write_report(folder)
    sid, events = open_page(browser, out)
    assert problems(events) == []
    assert browser.evaluate(sid, "document.title") == "archsearch report: unet_mobile"
    plots = browser.evaluate(sid, PLOT_DATA)
    assert [p["id"] for p in plots] == [
        "fig-front", "fig-breakdown-stage", "fig-breakdown-type", "fig-progress",
        "fig-parcoords", "fig-validation",
    ]  # fmt: skip
    for p in plots:
        assert p["traces"] > 0 and p["points"] > 0 and p["rendered"] > 0, p
    # the injected markup stayed text: no element was created from a user string
    assert browser.evaluate(sid, "document.querySelectorAll('img').length") == 0
    assert "<img src=x" in browser.evaluate(sid, "document.getElementById('candidates').textContent")
    # the page says what it cannot tell: no noise estimate in this store, no recorded pick
    assert all(w in browser.evaluate(sid, "document.getElementById('summary').textContent")
               for w in ("quality noise", "no estimate", "suggested pick"))

    # click a Pareto point: its YAML appears below the plot
    target = browser.evaluate(sid, CLICK_TARGET)
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        browser.send(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": target["x"], "y": target["y"], "button": "left", "clickCount": 1},
            sid,
        )
        time.sleep(0.15)
    deadline = time.monotonic() + 10
    while browser.evaluate(sid, "document.getElementById('yaml-view').textContent") == "(nothing selected)":
        assert time.monotonic() < deadline, "clicking a point did not show its YAML"
        time.sleep(0.2)
    title = browser.evaluate(sid, "document.getElementById('yaml-title').textContent")
    shown = browser.evaluate(sid, "document.getElementById('yaml-view').textContent")
    assert title == f"Candidate {target['id']}"
    assert shown == (folder / "pareto" / f"{target['id']}.yaml").read_text(encoding="utf-8")

    png = screenshot(browser, sid, tmp_path / "report.png")
    assert_real_png(png, min_height=3000)
    assert problems([ev for ev in browser.events if ev.get("sessionId") == sid]) == []


def test_compare_page_in_chromium(browser: DevTools, tmp_path: Path) -> None:
    a = make_study(tmp_path / "reports", "nsga2", seed=1)
    b = make_study(tmp_path / "reports", "random", seed=2, sampler="random")
    out = write_compare([a, b], tmp_path / "reports" / "compare_nsga2_vs_random.html")
    sid, events = open_page(browser, out)
    assert problems(events) == []
    plots = browser.evaluate(sid, PLOT_DATA)
    assert [p["id"] for p in plots] == ["fig-compare-front", "fig-compare-progress"]
    for p in plots:
        assert p["traces"] >= 2 and p["points"] > 0 and p["rendered"] > 0, p
    png = screenshot(browser, sid, tmp_path / "compare.png")
    assert_real_png(png, min_height=1000)


def test_report_figures_as_static_pngs_through_kaleido(tmp_path: Path) -> None:
    """``archsearch report --png DIR``: every figure of the page as a PNG picture, drawn by
    kaleido with the same Chromium; the HTML page is written as without it."""
    import struct

    from typer.testing import CliRunner

    from archsearch.cli.main import app

    study = make_study(tmp_path / "reports", "unet_mobile")
    figs = tmp_path / "figs"
    res = CliRunner().invoke(app, ["report", str(study), "--png", str(figs)])
    assert res.exit_code == 0, res.output
    assert (study / "index.html").is_file() and f"figures: {figs}/*.png" in res.output
    pngs = sorted(p.name for p in figs.glob("*.png"))
    assert {"front.png", "progress.png", "parcoords.png"} <= set(pngs), pngs
    assert not list(figs.glob(".*"))  # no temporary file left
    for name in pngs:
        head = (figs / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", head[16:24])
        assert width >= 400 and height >= 300, (name, width, height)
