"""Drive ``medsam-slicer web`` in Debian's headless Chromium, as a person would (mouse, buttons, keys).

Used by the ``test_web*.py`` tests and the browser benches (``bench/web_latency.py``, ``bench/simulated_reader.py``).  Real parts only: an engine server process on loopback, the
web app process on it, Chromium through Playwright.  The page is queried through trame's ``trigger`` RPC
(``app_state``, ``ijk_to_view``) to learn where things are; every action is a real mouse or key event.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWS = ("Red", "Yellow", "Green", "ThreeD")

# Page helpers: a view's <img> (found through the marker span the app puts in each view) and its frames.
INIT_JS = r"""
window.__img = (tag) => {
  const m = document.getElementById('view-' + tag);
  return m ? m.parentElement.querySelector('img.image-display-area') : null;
};
window.__frames = {};
window.__overlay = (img) => {   // pixels where a saturated colour (segment or box outline) dominates the grey scan
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const mx = Math.max(d[i], d[i+1], d[i+2]), mn = Math.min(d[i], d[i+1], d[i+2]);
    if (mx - mn > 30) n++;
  }
  return n;
};
window.__watch = (tag) => {
  const img = window.__img(tag); if (!img || img.__watched) return !!img;
  img.__watched = true; window.__frames[tag] = [];
  img.addEventListener('load', () => window.__frames[tag].push({t: performance.now(), overlay: window.__overlay(img)}));
  return true;
};
"""


def _unverified():
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the tests' own self-signed certificate
    return context


UNVERIFIED = _unverified()


def self_signed_pair(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for 127.0.0.1 (openssl), for the TLS tests."""
    cert, key = folder / "web.pem", folder / "web.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def missing_browser_parts() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    import importlib.util

    for name in ("playwright", "trame_slicer"):
        if importlib.util.find_spec(name) is None:
            return f"the web extra is not installed ({name}): pip install -e '.[web]'"
    if not Path(CHROMIUM).exists():
        return "no chromium browser (apt-get install chromium; .ci/setup does it where apt works)"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "MedSAMSlicer"), env.get("PYTHONPATH", "")) if p)
    return env


def start_engine(folder: Path, cache_dir: str | None = None) -> tuple[subprocess.Popen, str, Path]:
    """``medsam-slicer serve`` on a free loopback port: (process, url, token file)."""
    token = folder / "token"
    command = [sys.executable, "-m", "MedSAMSlicerLib.cli", "serve", "--port", "0", "--token-file", str(token),
               "--device", "cpu"]
    if cache_dir:
        command += ["--cache-dir", cache_dir]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(folder / "engine.log", "w"), text=True,
                               env=_env(), start_new_session=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise RuntimeError(f"engine did not start: {(folder / 'engine.log').read_text()[-2000:]}")
    return process, url, token


def start_app(folder: Path, image: Path | str, engine_url: str, token: Path, extra: tuple = (),
              reader: str | None = "tester", scheme: str = "http", cli_options: tuple = (),
              env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``medsam-slicer [cli_options] web`` on a free loopback port, once it answers: (process, url).  ``env`` adds
    variables to the app's environment (the PACS credentials)."""
    port = free_port()
    command = [sys.executable, "-m", "MedSAMSlicerLib.cli", *cli_options, "web",
               *([str(image)] if image else []),  # "": --study, --dicomweb
               "--server", engine_url, "--token-file", str(token), "--port", str(port),
               "--log-folder", str(folder / "logs"), "--out-folder", str(folder),
               *(["--reader", reader] if reader else []), *extra]
    process = subprocess.Popen(command, stdout=open(folder / "app.log", "w"), stderr=subprocess.STDOUT,
                               env={**_env(), **(env or {})}, start_new_session=True)
    url = f"{scheme}://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"web app exited: {(folder / 'app.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2, context=UNVERIFIED).read()
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("web app did not answer in 180 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Served:
    """An engine on loopback (``url``, ``token`` file) and, once :meth:`start_app` ran, the web app on it."""

    folder: Path
    engine: subprocess.Popen
    url: str
    token: Path
    app: subprocess.Popen | None = None

    def start_app(self, image: Path | str, **options) -> str:
        """The web app on this engine (``start_app``'s options); its url.  Stopped with the engine."""
        self.app, url = start_app(self.folder, image, self.url, self.token, **options)
        return url


@contextmanager
def served(folder: Path, cache_dir: str | None = None,
           start: Callable[[Path, str | None], tuple[subprocess.Popen, str, Path]] = start_engine) -> Iterator[Served]:
    """``with served(folder) as s:`` an engine now (``start``, by default this tree's), the app by
    ``s.start_app(...)``; when the block ends, however it ends, the app stops, then the engine."""
    engine, url, token = start(folder, cache_dir)
    running = Served(folder, engine, url, token)
    try:
        yield running
    finally:
        if running.app is not None:
            stop(running.app)
        stop(engine)


class Page:
    """One Chromium page on the app, with the few moves a person makes."""

    def __init__(self, playwright, url: str, token: str | None = None) -> None:
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 900}, ignore_https_errors=True)
        self.page.set_default_timeout(60_000)
        self.page.goto(url)
        if token is not None:  # the login page first
            self.page.fill("#token", token)
            self.page.click("#login")
        self.watch_views()

    def watch_views(self) -> None:
        """Wait for the views, then install the page helpers (the view images and their frames)."""
        self.page.wait_for_function("() => !!document.getElementById('view-Red')")
        self.page.evaluate(INIT_JS)
        self.page.wait_for_function(f"() => {list(VIEWS)}.every(t => window.__watch(t))")
        self.page.wait_for_function(
            f"() => {list(VIEWS)}.every(t => {{ const i = window.__img(t);"
            " return i && i.style.display !== 'none' && i.complete && i.naturalWidth > 0; })")

    def close(self) -> None:
        self.browser.close()

    def ask(self, name: str, *args):
        """A server trigger's answer (trame RPC)."""
        return self.page.evaluate("([n, a]) => window.trame.trigger(n, a)", [name, list(args)])

    def state(self) -> dict:
        return self.ask("app_state")

    def wait_state(self, predicate, what: str, timeout: float = 300.0) -> dict:
        """Poll the server until ``predicate(state)``; page.wait_for_function does not await async predicates."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last state {state}")
            self.page.wait_for_timeout(100)

    def click(self, selector: str) -> None:
        self.page.click(selector)

    def view_point(self, tag: str, ijk) -> tuple[float, float]:
        """Page coordinates of voxel ``ijk`` in a slice view's image."""
        fx, fy = self.ask("ijk_to_view", tag, [float(v) for v in ijk])
        rect = self.page.evaluate(f"() => {{ const r = window.__img('{tag}').getBoundingClientRect();"
                                  " return [r.x, r.y, r.width, r.height]; }")
        return rect[0] + fx * rect[2], rect[1] + fy * rect[3]

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move(*end, steps=12)
        mouse.up()

    def frames(self, tag: str) -> list:
        return self.page.evaluate(f"window.__frames['{tag}'] || []")

    def screenshot(self, path: Path, clip_tag: str | None = None) -> None:
        """A PNG of the page (or of one view), in 256 colours: small enough to commit."""
        import io

        from PIL import Image

        png = (self.page.screenshot() if clip_tag is None
               else self.page.locator(f"#view-{clip_tag}").locator("xpath=..").screenshot())
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
        image.save(path, optimize=True)


class RawClient:
    """A websocket client that speaks wslink/trame's protocol itself (msgpack, chunked), as a script on the network
    would: no browser, no page, only what it chooses to send.  ``cookie``: a session cookie, or none."""

    def __init__(self, url: str, cookie: str | None = None) -> None:
        import asyncio
        import threading

        # Its own loop in its own thread: Playwright's sync API already runs a loop in this one.
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.ws_url = url.replace("http", "ws", 1).rstrip("/") + "/ws"
        self.cookie = cookie
        self.session = self.ws = None
        self.client_id = None
        self.counter = 0

    def connect(self) -> None:
        """Open the websocket (aiohttp.WSServerHandshakeError when the server refuses the upgrade)."""
        import aiohttp

        async def go():
            self.session = aiohttp.ClientSession()
            headers = {"Cookie": self.cookie} if self.cookie else {}
            try:
                self.ws = await self.session.ws_connect(self.ws_url, headers=headers, ssl=UNVERIFIED)
            except Exception:
                await self.session.close()
                raise
        self._run(go())

    def hello(self) -> dict:
        reply = self._call("system:c0:0", "wslink.hello", [{"secret": "wslink-secret"}])
        if "result" in reply:
            self.client_id = reply["result"]["clientID"]
        return reply

    def call(self, method: str, *args) -> dict:
        """One RPC: the reply's ``result`` or ``error`` (wslink's wrapper)."""
        self.counter += 1
        return self._call(f"rpc:{self.client_id or 'c0'}:{self.counter}", method, list(args))

    def _call(self, rpc_id: str, method: str, args: list) -> dict:
        import asyncio

        import aiohttp
        import msgpack
        from wslink.chunking import UnChunker, generate_chunks

        async def go():
            message = msgpack.packb({"wslink": "1.0", "id": rpc_id, "method": method, "args": args, "kwargs": {}})
            try:
                for chunk in generate_chunks(message, 4_000_000):
                    await self.ws.send_bytes(chunk)
            except aiohttp.ClientConnectionError as error:  # the server closed this websocket
                return {"closed": str(error)}
            unchunker = UnChunker()
            unchunker.set_max_message_size(1 << 30)
            while True:
                received = await asyncio.wait_for(self.ws.receive(), 30)
                if received.type != aiohttp.WSMsgType.BINARY:
                    return {"closed": str(received.type)}
                full = unchunker.process_chunk(received.data)
                if full is not None:
                    reply = full if isinstance(full, dict) else msgpack.unpackb(full)
                    if reply.get("id") == rpc_id:
                        return reply
        return self._run(go())

    def close(self) -> None:
        async def go():
            if self.ws is not None:
                await self.ws.close()
            if self.session is not None:
                await self.session.close()
        self._run(go())
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _run(self, coroutine):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)
