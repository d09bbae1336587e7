"""Prefetch ahead (issue 18, the simulated reader's wait), on a real engine server process and the real client.

The browser app asks the engine to encode the slices around the one the reader looks at, outwards in both directions
(``MedSAMSlicerWeb.app.outwards``), so a propagation from a box there finds them cached; and the engine's prefetch
waits while a job runs, so that it never slips an encoder call in between two calls of a propagation (or of a
correction, or a click).  Counts of encoder calls only, no timing asserted.  A small synthetic volume (a bright disc
through every slice): every slice is one encoder call, whatever the content.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

SLICES = 40


@pytest.fixture(scope="module")
def server(onnx_dir):
    from MedSAMSlicerLib.client import EngineClient

    client = EngineClient.start_local(args=("--device", "cpu", "--memory-mb", "1024"))
    client.wait_ready()
    yield client
    client.stop()


def cylinder(level: int) -> np.ndarray:
    """A disc of radius 20 through every slice of 96x96 (uint8, already windowed); ``level`` makes the content (and
    so the cache's key) differ between tests."""
    yy, xx = np.mgrid[:96, :96]
    plane = np.where((yy - 48) ** 2 + (xx - 48) ** 2 <= 20 ** 2, 200, level).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(plane[None], SLICES, axis=0))


BOX = (26.0, 26.0, 70.0, 70.0)


def encoder_calls(volume) -> int:
    return int(volume.info()["encoder_calls"])


def wait_calls(volume, at_least: int, timeout: float = 600.0) -> int:
    """Poll the session until its encoder calls reach ``at_least`` (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while (calls := encoder_calls(volume)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return calls


def test_prefetch_around_the_shown_slice_covers_the_propagation_from_it(server):
    pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e '.[web]')")
    from MedSAMSlicerWeb.app import outwards

    assert outwards(10, 3, SLICES) == [10, 11, 9, 12, 8, 13, 7]
    assert outwards(1, 3, 5) == [1, 2, 0, 3, 4]  # clipped at both ends
    volume = server.open_volume(cylinder(10), already_normalized=True)
    ahead = outwards(10, 3, SLICES)
    volume.prefetch(ahead)
    assert wait_calls(volume, len(ahead)) == len(ahead)
    result = volume.start_object({10: BOX}, {"slice_range": [7, 13], "stop": False}).result()
    assert sorted(result["changed"]) == list(range(7, 14))
    assert result["encoder_calls"] == 0  # every slice of the propagation was encoded ahead
    assert encoder_calls(volume) == len(ahead)
    volume.close()


def test_prefetch_waits_while_a_propagation_and_a_click_run(server):
    volume = server.open_volume(cylinder(20), already_normalized=True)
    far = list(range(SLICES - 1, SLICES - 9, -1))  # 8 slices the jobs below never touch
    volume.prefetch(far)
    wait_calls(volume, 1)  # the prefetch is under way
    before = encoder_calls(volume)
    result = volume.start_object({3: BOX}, {"slice_range": [0, 6], "stop": False}).result()
    assert result["encoder_calls"] == 7  # its own slices, all cold
    slipped = encoder_calls(volume) - before - result["encoder_calls"]
    # One prefetch call may be running when the job starts (an encoder call cannot be interrupted), one more may
    # finish between reading the count and the job's start; before the engine waited for jobs, a prefetch call went
    # in between every two calls of the propagation (about one per slice: 6 or 7 here).
    assert slipped <= 2, f"{slipped} prefetch encoder calls ran during the propagation"
    before = encoder_calls(volume)
    mask, _ = volume.segment_slice(15, BOX)  # a click on a cold slice while the prefetch still has slices left
    assert mask.any()
    slipped = encoder_calls(volume) - before - 1
    assert slipped <= 2, f"{slipped} prefetch encoder calls ran before the click's"
    total = result["encoder_calls"] + 1 + len(far)
    assert encoder_calls(volume) < total  # the click was answered before the prefetch ended
    assert wait_calls(volume, total) == total  # and the prefetch then went on to its end
    volume.close()


def test_a_decoder_call_of_a_job_runs_beside_a_prefetch_call_in_progress():
    """The model worker: a click's decoder call does not queue behind a prefetch encoder call that runs (it cannot be
    interrupted); an encoder call of a job still does, and a prefetch's decoder call never passes."""
    import threading

    from MedSAMSlicerLib.server.worker import INTERACTIVE, PREFETCH, ModelWorker, priority

    worker = ModelWorker()
    release, order = threading.Event(), []

    def encoder_call():  # stands for a prefetch's encoder call: runs until released
        release.wait(60)
        order.append("prefetch encoder")

    def prefetching():
        with priority(PREFETCH):
            worker.call(encoder_call)

    thread = threading.Thread(target=prefetching)
    thread.start()
    try:
        while worker.running != PREFETCH:
            time.sleep(0.01)
        with priority(INTERACTIVE):
            assert worker.call(lambda: order.append("click decoder") or 7, light=True) == 7
        assert order == ["click decoder"]  # answered while the encoder call still ran
        assert worker.beside_prefetch == 1
        queued = threading.Thread(target=lambda: worker.call(lambda: order.append("click encoder")))
        queued.start()  # an encoder call (not light) waits for the running call
        time.sleep(0.2)
        assert order == ["click decoder"]
    finally:
        release.set()
        thread.join(60)
    queued.join(60)
    assert order == ["click decoder", "prefetch encoder", "click encoder"]
    with priority(PREFETCH):  # idle worker, or a prefetch's own light call: queued as before
        assert worker.call(lambda: 3, light=True) == 3
    assert worker.beside_prefetch == 1
    worker.stop()


def test_clicks_on_cached_slices_do_not_wait_for_the_prefetch(server):
    """On the engine process: clicks on a cached slice while a long prefetch runs are decoded beside its encoder
    calls (the engine counts them), and the prefetch still goes to its end."""
    volume = server.open_volume(cylinder(30), already_normalized=True)
    volume.prefetch([0])
    wait_calls(volume, 1)
    beside = int(server.info()["model_calls_beside_prefetch"])
    far = list(range(SLICES - 1, 4, -1))
    volume.prefetch(far)
    wait_calls(volume, 2)  # the prefetch is under way
    masks = []
    for _ in range(3):
        masks.append(volume.segment_slice(0, BOX)[0])
        time.sleep(0.3)  # the next click lands in a later encoder call
    assert int(server.info()["model_calls_beside_prefetch"]) > beside
    assert wait_calls(volume, 1 + len(far)) == 1 + len(far)  # the clicks cost no encoder call
    alone, _ = volume.segment_slice(0, BOX)  # the engine idle: the decoder alone
    assert alone.any() and all(np.array_equal(mask, alone) for mask in masks)
    volume.close()


# -- the browser app: which engine session it prefetches on, and when it stops ----------------------------------------
def _write_scan(path) -> tuple[int, int, int]:
    """A small scan whose three axes differ in length (so the engine's session of each axis is told apart): a bright
    ball in a dim ramp.  Returns its shape (k, j, i)."""
    import nrrd

    shape = (24, 56, 72)
    kk, jj, ii = np.mgrid[:shape[0], :shape[1], :shape[2]]
    ball = (kk - 12) ** 2 * 4 + (jj - 28) ** 2 + (ii - 36) ** 2 <= 14 ** 2
    data = np.where(ball, 300, ii * 3 + jj * 2).astype(np.int16)  # a ramp: the auto window finds contrast
    nrrd.write(str(path), data, {"space": "left-posterior-superior", "space directions": np.diag([1.0, 1.0, 2.0]),
                                 "space origin": np.zeros(3), "kinds": ["domain"] * 3}, index_order="C")
    return shape


def _wait(what: str, predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return found


def test_the_app_prefetches_along_the_readers_view_and_stops_after_accept(tmp_path):
    pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e '.[web]')")
    from web_driver import Page, missing_browser_parts, served

    why = missing_browser_parts()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    from MedSAMSlicerLib.client import EngineClient, read_token_file

    shape = _write_scan(tmp_path / "scan.nrrd")
    with served(tmp_path) as running, sync_playwright() as playwright:
        url = running.start_app(tmp_path / "scan.nrrd")
        engine = EngineClient(running.url, read_token_file(running.token))

        def asked() -> list:
            return engine.info()["prefetches"]

        page = Page(playwright, url)
        try:
            # case open: around the red view's slice, across k (the whole of its 24 slices: 16 on each side)
            _wait("a prefetch across k", lambda: any(p == {"axis": "k", "slices": shape[0]} for p in asked()))
            # the reader scrolls the yellow (sagittal) view: the prefetch moves to the i axis, k's is stopped
            page.ask("show_slice", "Yellow", [30, 28, 12])
            last = _wait("a prefetch across i", lambda: (a := asked()) and a[-1]["axis"] == "i" and a)
            assert last[-1]["slices"] == 33 and {"axis": "k", "slices": 0} in last
            # a box drawn in the green (coronal) view: its axis (j) from now on, i's stopped
            page.ask("show_slice", "Green", [36, 28, 12])
            page.click("#btn-box")
            page.drag(page.view_point("Green", (20, 28, 4)), page.view_point("Green", (52, 28, 20)))
            page.wait_state(lambda s: len(s["boxes"]) == 1, "the box")
            assert page.state()["boxes"][0]["axis"] == "j"
            last = _wait("a prefetch across j", lambda: (a := asked()) and a[-1]["axis"] == "j" and a)
            assert last[-1]["slices"] == 33 and {"axis": "i", "slices": 0} in last
            page.click("#btn-slice")
            page.wait_state(lambda s: not s["busy"] and sum(s["segments"].values()) > 0, "segment slice")
            page.click("#btn-accept")
            page.wait_state(lambda s: s["last_action"] == "accept", "accept")
            # accepted: the running prefetch is stopped, and scrolling asks for nothing more
            _wait("the stop", lambda: asked()[-1] == {"axis": "j", "slices": 0})
            before, calls = len(asked()), int(engine.info()["encoder_calls"])
            page.ask("show_slice", "Red", [36, 28, 5])
            page.ask("show_slice", "Green", [36, 40, 5])
            time.sleep(2.0)  # 20 idle polls of the app
            assert len(asked()) == before
            assert int(engine.info()["encoder_calls"]) <= calls + 1  # at most the call that was running
            # a new object on the case: the prefetch follows the reader's view again
            page.click("#btn-box")
            _wait("the prefetch resumed", lambda: len(asked()) > before and asked()[-1]["slices"] > 0)
        finally:
            page.close()
