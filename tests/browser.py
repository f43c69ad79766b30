"""A real headless Chromium (Debian's package), driven over the DevTools protocol.

Chromium starts with ``--remote-debugging-port=0`` and writes the port it took into
``DevToolsActivePort`` in its profile folder; a page target is opened and spoken to over
a websocket (aiohttp's client). What the page says is collected as it happens:
``console.error`` and ``console.assert`` calls, uncaught exceptions, the browser's own
error log (a Content-Security-Policy violation, a resource that failed to load) and every
network request. So "no console error" is proved by what the browser reports, not by
reading the page's text; ``test_report_browser.py`` plants errors to show each is caught.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from devstack.localstack import die_with_parent

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--remote-debugging-port=0", "--remote-allow-origins=*")
START_SECONDS = 30.0
LOAD_SECONDS = 30.0

# Run in the page once it has loaded: every chart figure, whether its SVG was laid out
# with a size and draws something; the sections; the page's size for the screenshot.
INSPECT = """(() => {
  const charts = [...document.querySelectorAll('figure.chart')].map(figure => {
    const svg = figure.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const drawn = svg ? svg.querySelectorAll('path, rect, line, polyline, text, use').length : 0;
    return {id: figure.id, width: box.width, height: box.height, drawn: drawn,
            visible: !!svg && getComputedStyle(svg).visibility !== 'hidden' && getComputedStyle(svg).display !== 'none'};
  });
  const sections = [...document.querySelectorAll('section')].map(s => ({id: s.id, height: s.getBoundingClientRect().height}));
  return {charts, sections, declared: Number(document.body.dataset.charts || -1),
          width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
          title: document.title};
})()"""


@dataclass
class PageReport:
    errors: list[str] = field(default_factory=list)       # console errors, exceptions, error log entries
    requests: list[str] = field(default_factory=list)     # every URL the page asked for
    inspected: dict = field(default_factory=dict)
    screenshot: bytes = b""


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("`chromium` is not installed: apt-get install -y chromium (deploy/dev setup does it)")
    return path


class Chromium:
    """One headless browser for a test; stopped by ``close`` (by its pid, bounded)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=(self.profile.parent / "chromium.log").open("wb"),
            preexec_fn=die_with_parent,
        )
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_SECONDS
        while not (marker.exists() and marker.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"chromium did not open its DevTools port within {START_SECONDS:g}s")
            time.sleep(0.05)
        self.port = int(marker.read_text().splitlines()[0])
        return self

    def close(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    async def visit(self, url: str, screenshot_width: int = 1100) -> PageReport:
        """Load ``url`` in a new tab; what the page reported, what it holds, and a screenshot."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LOAD_SECONDS)) as http:
            async with http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
                target = await response.json()
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                return await _Session(socket).visit(url, screenshot_width)


class _Session:
    def __init__(self, socket) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.report = PageReport()
        self.loaded = asyncio.Event()
        self.answers: dict[int, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None

    async def visit(self, url: str, width: int) -> PageReport:
        self.reader = asyncio.create_task(self._read())
        try:
            for method in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
                await self.call(method)
            await self.call("Emulation.setDeviceMetricsOverride",
                            width=width, height=900, deviceScaleFactor=1, mobile=False)
            await self.call("Page.navigate", url=url)
            await asyncio.wait_for(self.loaded.wait(), LOAD_SECONDS)
            # Errors raised while the load event fires reach us a moment later: ask the page
            # something first, and every event sent before its answer has arrived.
            result = await self.call("Runtime.evaluate", expression=INSPECT, returnByValue=True)
            if "exceptionDetails" in result:
                raise AssertionError(f"inspecting the page failed: {result['exceptionDetails']}")
            self.report.inspected = result["result"]["value"]
            shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                   clip={"x": 0, "y": 0, "width": width, "scale": 1,
                                         "height": self.report.inspected["height"]})
            self.report.screenshot = base64.b64decode(shot["data"])
            return self.report
        finally:
            self.reader.cancel()

    async def call(self, method: str, **params) -> dict:
        number = next(self.ids)
        answer = self.answers[number] = asyncio.get_running_loop().create_future()
        await self.socket.send_json({"id": number, "method": method, "params": params})
        reply = await asyncio.wait_for(answer, LOAD_SECONDS)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def _read(self) -> None:
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            body = message.json()
            if "id" in body:
                future = self.answers.pop(body["id"], None)
                if future is not None and not future.done():
                    future.set_result(body)
                continue
            self._event(body["method"], body.get("params", {}))

    def _event(self, method: str, params: dict) -> None:
        if method == "Page.loadEventFired":
            self.loaded.set()
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.report.errors.append("console." + params["type"] + ": " + " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.report.errors.append("uncaught: " + str(details.get("exception", {}).get("description")
                                                          or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.report.errors.append(f"log ({entry.get('source')}): {entry.get('text')}")
        elif method == "Network.requestWillBeSent":
            self.report.requests.append(params["request"]["url"])
