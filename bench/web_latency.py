"""Browser latency of "Segment slice" on a cached slice: from the click in Chromium to the first frame of the red
view that shows the mask, measured in the page (``performance.now()`` at the click, ``load`` of the view's image).

    .venv/bin/python bench/web_latency.py [--image lung2_image.nrrd --label lung2_label.nrrd] [--runs 10]
        [--before REV]   # also the app as it was at git revision REV, side by side (default: BEFORE; "" = skip)

For each app (the working tree's, and the one of ``--before``, exported with ``git archive``): a fresh engine server
of the same tree (since 2026-12-07: the engine's side of a click changed too, the worker's lane for a decoder call
beside a prefetch) and ``medsam-slicer web`` on it; a box dragged around the lesion on its largest slice, one
segmentation (encodes the slice: not counted), then ``--runs`` times: undo, click "Segment slice", time the mask.
Two rounds: first while the engine still encodes the neighbouring slices that drawing the box asked it to prefetch
(a click used to wait for the encoder call in progress: one model worker serialises the network), then again once
the engine is idle (the cached-slice figure).  Prints p50/p95/max of each, and the ratios now/before (goal, issue
21: p50 <= 200 ms and p95 <= 300 ms on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "MedSAMSlicer"), str(REPO / "Testing" / "Python")]
web_driver = importlib.import_module("web_driver")  # the tests' browser driver, found through the path above
Page, missing_browser_parts, start_app, start_engine, stop = (
    web_driver.Page, web_driver.missing_browser_parts, web_driver.start_app, web_driver.start_engine, web_driver.stop)

DATA = REPO.parent / "shared" / "data" / "pyradiomics"
# The app before the latency work of issue 21 (push instead of a 0.1 s poll, slice writes, the reader's view first):
# the commit that split the web app, whose request path was the one measured at p50 ~490 ms.
BEFORE = "e0387d1"
MORE_PIXELS = 80  # the final view differs from the view before the click in at least this many pixels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(DATA / "lung2_image.nrrd"))
    parser.add_argument("--label", default=str(DATA / "lung2_label.nrrd"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--before", default=BEFORE, help="git revision of the app to compare with ('' = none)")
    parser.add_argument("--now-first", action="store_true", help="measure this app first (the machine's load may "
                        "drift during a run: alternate the order between runs)")
    args = parser.parse_args()
    why = missing_browser_parts()
    if why:
        print(f"web_latency: {why}", file=sys.stderr)
        return 2
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    label = read_label(args.label, read_volume(args.image)) > 0
    k = int(np.argmax(label.sum(axis=(1, 2))))
    j, i = np.nonzero(label[k])
    box = (int(i.min()) - 3, int(j.min()) - 3, int(i.max()) + 3, int(j.max()) + 3)
    folder = Path(tempfile.mkdtemp(prefix="web-latency-"))
    apps = {"now": None}
    if args.before:
        apps = {f"before ({args.before})": _export(args.before, folder / "before"), "now": None}
        if args.now_first:
            apps = dict(reversed(list(apps.items())))
    print(f"CPU {_cpu()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    results = {}
    for name, source in apps.items():
        results[name] = _measure(folder / name.split()[0], args, box, k, source)
        print(name, {title: [round(t) for t in times] for title, times in results[name].items()}, flush=True)
    print(f"\nSegment slice, click -> mask drawn in the red view, {args.runs} runs per round (ms)")
    print(f"{'app':<22} {'round':<34} {'p50':>6} {'p95':>6} {'max':>6}")
    for name, rounds in results.items():
        for title, times in rounds.items():
            print(f"{name:<22} {title:<34} {_p(times, 50):6.0f} {_p(times, 95):6.0f} {max(times):6.0f}")
    if len(results) == 2:
        now = results["now"]
        before = next(times for name, times in results.items() if name != "now")
        for title in now:
            print(f"now/before, {title}: p50 x{_p(now[title], 50) / _p(before[title], 50):.2f}, "
                  f"p95 x{_p(now[title], 95) / _p(before[title], 95):.2f}")
    return 0


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _p(times, q) -> float:
    return float(np.percentile(np.asarray(times), q))


def _export(revision: str, where: Path) -> Path:
    """The package folder as it was at ``revision`` (``git archive``; the working tree is not touched), the model
    weights linked beside it (the engine of that tree runs too)."""
    from simulated_reader import export_tree  # bench/, beside this script

    return export_tree(revision, where)


def _measure(folder: Path, args, box, k, source: Path | None) -> dict:
    """Both rounds on one app (``source``: its package folder; None: this tree's), each app on a fresh engine
    with an empty embedding cache, so that both rounds start alike."""
    from playwright.sync_api import sync_playwright

    from MedSAMSlicerLib.client import EngineClient, read_token_file

    folder.mkdir(parents=True, exist_ok=True)
    if source is None:
        engine, url, token = start_engine(folder, str(folder / "cache"))
    else:
        from simulated_reader import start_engine_from  # bench/, beside this script

        engine, url, token = start_engine_from(folder, source, str(folder / "cache"))
    app = None
    try:
        env = {"PYTHONPATH": str(source)} if source is not None else None
        app, page_url = start_app(folder, Path(args.image), url, token, env=env)
        with sync_playwright() as playwright:
            page = Page(playwright, page_url)
            page.ask("show_slice", "Red", [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, k])
            page.click("#btn-box")
            page.drag(page.view_point("Red", (box[0], box[1], k)), page.view_point("Red", (box[2], box[3], k)))
            page.wait_state(lambda s: len(s["boxes"]) == 1, "the box")
            started = time.monotonic()
            _segment(page)  # the first one encodes the slice
            encode_s = time.monotonic() - started
            client = EngineClient(url, read_token_file(token))
            load = os.getloadavg()[0]
            rounds = {"while the engine prefetches": _timed_runs(page, args.runs)}
            info = client.info()
            print(f"  load average {load:.1f} at the start; engine: {info.get('encoder_calls')} encoder calls, "
                  f"{info.get('model_calls_beside_prefetch', 'n/a')} decoder calls beside a prefetch call", flush=True)
            _wait_idle(client, quiet_s=min(max(2.0 * encode_s, 1.0), 60.0))
            rounds["engine idle (cached slice)"] = _timed_runs(page, args.runs)
            page.close()
    finally:
        if app is not None:
            stop(app)
        stop(engine)
    return rounds


def _timed_runs(page: Page, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        page.click("#btn-undo")
        page.wait_state(lambda s: sum(s["segments"].values()) == 0, "undo")
        page.page.wait_for_timeout(400)  # the red view redrawn without the mask
        times.append(_segment(page))
    return times


def _wait_idle(client, quiet_s: float = 1.0, timeout: float = 600.0) -> None:
    """Until the engine has no queued model call and its encoder count stood still for ``quiet_s`` (longer than one
    encoder call: a prefetch's encode in progress is not queued, and on a busy CPU one takes seconds)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        info = client.info()
        now = (info["encoder_calls"], info["queued_model_calls"], info["jobs_running"])
        if now != last or now[1] or now[2]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
    raise RuntimeError("the engine did not become idle")


# Frames of the red view kept as pixels while one click is timed.  The mask's frame is the first frame that looks
# more like the final view (mask shown) than like the view before the click, counting pixels that differ by more
# than PIXEL_STEP in a channel: this ignores most JPEG noise and the frame in which only the box's handles disappear,
# and does not depend on the colour the new segment gets.  (Counting saturated pixels, as this script did before
# 2026-12-06, took that handles-only frame for the mask in about half of the clicks.)
RECORDER_JS = r"""
(() => {
  const grab = (img) => {
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    return g.getImageData(0, 0, c.width, c.height).data;
  };
  const img = window.__img('Red');
  window.__rec = {on: false, frames: [], pre: null};
  img.addEventListener('load', () => {
    if (window.__rec.on) window.__rec.frames.push({t: performance.now(), data: grab(img)});
  });
  window.__recClick = (id) => {
    window.__rec = {on: true, frames: [], pre: grab(img)};
    const t = performance.now(); document.getElementById(id).click(); return t;
  };
  window.__recFirst = (clicked, step) => {
    const rec = window.__rec; rec.on = false;
    const differ = (a, b) => {
      if (a.length !== b.length) return Infinity;
      let n = 0;
      for (let i = 0; i < a.length; i += 4)
        if (Math.abs(a[i] - b[i]) > step || Math.abs(a[i+1] - b[i+1]) > step || Math.abs(a[i+2] - b[i+2]) > step) n++;
      return n;
    };
    if (!rec.frames.length) return {error: 'no frame after the click'};
    const final = rec.frames[rec.frames.length - 1].data, changed = differ(final, rec.pre);
    for (const f of rec.frames)
      if (differ(f.data, final) < differ(f.data, rec.pre)) return {ms: f.t - clicked, changed, frames: rec.frames.length};
    return {error: 'no frame like the final one', changed};
  };
  return true;
})()
"""
PIXEL_STEP = 25  # a channel difference: the mask's fill (any segment colour tried) exceeds it
SETTLE_MS = 1500  # after the click, no request to the app (it would load its event loop) until the view settled


def _segment(page: Page) -> float:
    """Click "Segment slice"; ms until the first red-view frame that shows the mask."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if not page.page.evaluate("() => !!window.__recFirst"):
        page.page.evaluate(RECORDER_JS)
    clicked = page.page.evaluate("() => window.__recClick('btn-slice')")
    page.page.wait_for_timeout(SETTLE_MS)
    page.wait_state(lambda s: not s["busy"], "segment slice")
    page.page.wait_for_timeout(300)  # a last frame after the answer, if it came late
    try:  # a loaded CPU renders late: wait for the red view's next frames (the first frame found is what counts)
        count = page.page.evaluate("() => window.__rec.frames.length")
        page.page.wait_for_function(f"() => window.__rec.frames.length > {count}", timeout=3000)
        page.page.wait_for_timeout(300)
    except PlaywrightTimeout:
        pass
    found = page.page.evaluate("([t, step]) => window.__recFirst(t, step)", [clicked, PIXEL_STEP])
    if "error" in found or found["changed"] < MORE_PIXELS:
        raise RuntimeError(f"the mask was not seen in the red view: {found}")
    return found["ms"]


if __name__ == "__main__":
    sys.exit(main())
