"""The HTML report in a real browser: headless Debian Chromium, driven over the Chrome DevTools Protocol.

It must load with no console error (a Content-Security-Policy violation is one) and request nothing but its own
file:// URL, render to a non-trivial screenshot (written next to the report) and print to PDF."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certify.report.html import render_html
from tests.helpers.report_run import write_run

websocket = pytest.importorskip("websocket", reason="pip install websocket-client (in the dev extra)")

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync")
START_TIMEOUT_S, LOAD_TIMEOUT_S, CALL_TIMEOUT_S = 30.0, 30.0, 60.0
SIGNATURE = {"signed": True, "keyid": "5f0c1a2b3c4d", "dev_key": True, "certificate": "certificate.json",
             "verify_command": "certify verify run/certificate.json --key run/dev-key.pub --allow-dev-key",
             "reason_unsigned": None}


@dataclass
class DevTools:
    """A minimal CDP client over one page's websocket: commands by id, events collected as they arrive."""

    ws: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 0

    def call(self, method: str, timeout: float = CALL_TIMEOUT_S, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method} failed: {message['error']}")
                return dict(message.get("result", {}))

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == event for e in self.events):
            self._receive(deadline, event)
        return next(e for e in self.events if e["method"] == event)

    def drain(self, seconds: float) -> None:
        """Collect whatever events arrive within ``seconds`` (late console errors, late requests)."""
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            while True:
                self._receive(deadline, "")

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer from Chromium for {waiting_for or 'events'}")
        self.ws.settimeout(remaining)
        try:
            message: dict[str, Any] = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise TimeoutError(f"no answer from Chromium for {waiting_for or 'events'}") from None
        if "method" in message:
            self.events.append(message)
        return message


def _devtools_endpoint(profile: Path, browser: subprocess.Popen[bytes], log: Path) -> str:
    """The browser's websocket URL, from the DevToolsActivePort file Chromium writes once it listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            pytest.fail(f"Chromium exited with {browser.returncode} at start:\n{log.read_text(errors='replace')}")
        lines = marker.read_text().splitlines() if marker.exists() else []
        if len(lines) >= 2 and lines[0].strip().isdigit():
            return f"ws://127.0.0.1:{int(lines[0])}{lines[1].strip()}"
        time.sleep(0.1)
    pytest.fail(f"Chromium did not write {marker} within {START_TIMEOUT_S:.0f}s:\n{log.read_text(errors='replace')}")


def _stop(browser: subprocess.Popen[bytes]) -> None:
    """End the browser we started, then any helper left in its own process group (both by id)."""
    if browser.poll() is None:
        browser.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            browser.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(browser.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        browser.wait(timeout=10)


def chromium_binary() -> str:
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if found is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    return found


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium with a fresh profile; yields its browser websocket URL; always killed at teardown."""
    binary = chromium_binary()
    profile, log = tmp_path / "profile", tmp_path / "chromium.log"
    profile.mkdir()
    with open(log, "wb") as out:
        browser = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        yield _devtools_endpoint(profile, browser, log)
    finally:
        _stop(browser)


@contextlib.contextmanager
def page(browser_url: str) -> Iterator[DevTools]:
    """A new tab on its own websocket, with Page, Runtime, Log and Network events enabled."""
    control = websocket.create_connection(browser_url, timeout=CALL_TIMEOUT_S, suppress_origin=True)
    try:
        target = DevTools(control).call("Target.createTarget", url="about:blank")["targetId"]
        origin = browser_url.split("/devtools/")[0]
        ws = websocket.create_connection(f"{origin}/devtools/page/{target}", timeout=CALL_TIMEOUT_S,
                                         suppress_origin=True)
        try:
            tools = DevTools(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.call(f"{domain}.enable")
            yield tools
        finally:
            ws.close()
    finally:
        control.close()


def open_report(tools: DevTools, report: Path, width: int = 1280) -> None:
    tools.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
    tools.call("Page.navigate", url=report.resolve().as_uri())
    tools.wait_for("Page.loadEventFired", LOAD_TIMEOUT_S)
    tools.drain(0.5)


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and Log entries of level error (CSP violations land here)."""
    out = []
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif event["method"] == "Runtime.exceptionThrown":
            out.append(str(params.get("exceptionDetails", {}).get("text", params)))
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
    return out


def requested_urls(events: list[dict[str, Any]]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]


def evaluate(tools: DevTools, expression: str) -> Any:
    answer = tools.call("Runtime.evaluate", expression=expression, returnByValue=True)
    assert "exceptionDetails" not in answer, answer
    return answer["result"].get("value")


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Decode a PNG far enough to prove it is one: signature, chunk CRCs, IHDR, and inflated IDAT of the size
    the header promises. Returns width, height and the raw (filtered) scanlines."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body, crc = data[pos + 8:pos + 8 + length], struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND" and depth == 8 and colour in (2, 6)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * (3 if colour == 2 else 4))
    return width, height, raw


def write_report(folder: Path, signature: dict[str, Any] | None = SIGNATURE) -> Path:
    results, records = write_run(folder)
    report = folder / "report.html"
    report.write_text(render_html(results, records, signature), encoding="utf-8")
    return report


# --- tests -----------------------------------------------------------------------------------------------------


def test_report_loads_offline_without_errors_and_screenshots(chromium: str, tmp_path: Path) -> None:
    report = write_report(tmp_path / "run")
    with page(chromium) as tools:
        open_report(tools, report)
        assert console_errors(tools.events) == []
        assert requested_urls(tools.events), "Network events were not recorded: the check below would be vacuous"
        own = report.resolve().as_uri()
        stray = [u for u in requested_urls(tools.events) if u != own and not u.startswith("data:")]
        assert stray == [], f"the report fetched something besides itself: {stray}"
        assert evaluate(tools, "document.querySelector('.banner .verdict').innerText.trim()") == "NOT CERTIFIED"
        sizes = evaluate(tools, "[...document.querySelectorAll('svg.chart')].map(s => s.getBoundingClientRect().width)")
        assert len(sizes) >= 8 and min(sizes) > 200, f"charts did not lay out: {sizes}"
        assert evaluate(tools, "document.documentElement.scrollWidth") <= 1280, "the page overflows horizontally"
        height = evaluate(tools, "document.documentElement.scrollHeight")
        shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": 1280, "height": min(height, 16000), "scale": 1})
    png = base64.b64decode(shot["data"])
    screenshot = report.with_suffix(".png")
    screenshot.write_bytes(png)
    width, rows, pixels = png_pixels(png)
    assert (width, rows) == (1280, min(height, 16000))
    assert len(png) > 50_000, "the screenshot is nearly empty"
    assert len(set(pixels[:: 1 + len(pixels) // 5000])) > 20, "the screenshot is (nearly) a single colour"


def test_report_prints_to_pdf(chromium: str, tmp_path: Path) -> None:
    report = write_report(tmp_path / "run", signature=None)
    with page(chromium) as tools:
        open_report(tools, report)
        printed = tools.call("Page.printToPDF", printBackground=True, preferCSSPageSize=True)
        assert console_errors(tools.events) == []
    pdf = base64.b64decode(printed["data"])
    report.with_suffix(".pdf").write_bytes(pdf)
    assert pdf.startswith(b"%PDF")
    assert len(pdf) > 20_000
