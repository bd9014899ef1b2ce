"""The web page in headless Chromium (Debian package ``chromium``), driven over the DevTools protocol:
pick a user, see the list with titles and reasons, open a movie to see similar ones, rate it and watch
the list refresh without it. A screenshot must show a rendered page, not a blank one."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import struct
import subprocess
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")


class Page:
    """A Chromium tab over the DevTools protocol: just navigate, evaluate and screenshot."""

    def __init__(self, tmp: Path) -> None:
        from websockets.sync.client import connect

        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={tmp}", "--window-size=1280,900",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = None
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(m.group(1)) if m else None
        assert port, "Chromium did not open its DevTools port"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = connect(target["webSocketDebuggerUrl"], max_size=50_000_000, open_timeout=10)
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == i:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expr: str) -> Any:
        out = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in out, out
        return out["result"].get("value")

    def wait(self, expr: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}; status: {self.js('document.body.innerText.slice(0, 500)')}")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)


def decode_png(data: bytes) -> np.ndarray:
    """(H, W, C) uint8 pixels of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    prev = np.zeros(width * channels, dtype=np.int32)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        row = np.zeros_like(line)
        if f == 0:
            row = line
        elif f == 2:
            row = (line + prev) & 255
        else:  # Sub, Average, Paeth depend on the pixel to the left: go pixel by pixel
            for x in range(len(line)):
                a = row[x - channels] if x >= channels else 0
                b, c = prev[x], prev[x - channels] if x >= channels else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[x] = (line[x] + pred) & 255
        out[y], prev = row, row
    return out.reshape(height, width, channels).astype(np.uint8)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    p = Page(tmp_path_factory.mktemp("chromium"))
    yield p
    p.close()


def test_page_shows_recommendations_similar_and_rating(serving_app, page, tmp_path) -> None:
    user = 7
    with urllib.request.urlopen(f"{serving_app.url}/recommend?user_id={user}&k=10", timeout=30) as r:
        expected = [i["title"] for i in json.load(r)["items"]]
    page.send("Page.enable")
    page.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    page.send("Page.navigate", url=f"{serving_app.url}/?user_id={user}")
    page.wait("document.querySelectorAll('#recs li.item').length >= 10")
    titles = page.js("[...document.querySelectorAll('#recs li.item .title')].map(e => e.firstChild.textContent)")
    assert titles == expected
    reasons = page.js("[...document.querySelectorAll('#recs li.item .reason')].map(e => e.textContent)")
    scores = page.js("[...document.querySelectorAll('#recs li.item .score')].map(e => parseFloat(e.textContent))")
    assert len(reasons) == 10 and all(reasons) and scores == sorted(scores, reverse=True)

    shot = base64.b64decode(page.send("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "page.png").write_bytes(shot)
    pixels = decode_png(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1280)
    colours = np.unique(pixels[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 50, "the screenshot looks blank"
    assert (pixels.std(axis=(0, 1)) > 10).all()

    # click the first movie: the side panel shows it and similar movies
    first_id = page.js("document.querySelector('#recs li.item').dataset.movieId")
    page.js("document.querySelector('#recs li.item').click()")
    page.wait("document.querySelectorAll('#similar li.item').length > 0")
    assert page.js("document.getElementById('detail-title').textContent") == expected[0]
    similar = page.js("[...document.querySelectorAll('#similar li.item')].map(e => e.dataset.movieId)")
    assert first_id not in similar

    # rate it 5 stars: the list refreshes without it
    page.js("document.querySelector('#rate button[data-rating=\"5\"]').click()")
    page.wait("document.getElementById('rate-status').textContent.startsWith('Rated 5')")
    page.wait(f"![...document.querySelectorAll('#recs li.item')].some(e => e.dataset.movieId === '{first_id}')"
              " && document.querySelectorAll('#recs li.item').length >= 10")  # fmt: skip
