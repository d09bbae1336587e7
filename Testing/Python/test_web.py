"""The browser app end to end: Chromium (Playwright) on ``medsam-slicer web`` on an engine server, a real scan.

A person's workflow on the lung2 lesion (11 slices): drag a box on the red view around the lesion, segment the slice,
propagate, undo, propagate again, accept, save; the saved file is scored against the label and against the CLI's
figure for the same box on the same engine.  A second test cancels a long propagation: nothing may be written.
One engine and one app for the module (the model loads once, each slice is encoded once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_path
from web_driver import (CHROMIUM, CHROMIUM_ARGS, UNVERIFIED, Page, RawClient, missing_browser_parts,
                        self_signed_pair, start_app, start_engine, stop)

# The README and Extension Index pictures (Resources/Screenshots) are refreshed only on request, so that a test run
# never dirties the working tree: MEDSAM_SLICER_SCREENSHOTS=Resources/Screenshots pytest Testing/Python/test_web.py
SCREENSHOTS = Path(os.environ.get("MEDSAM_SLICER_SCREENSHOTS") or tempfile.mkdtemp(prefix="medsam-web-shots-"))
MARGIN = 3  # voxels around the lesion's extent on its key slice, as an annotator's box

pytestmark = pytest.mark.skipif(bool(missing_browser_parts()), reason=missing_browser_parts() or "ok")


@pytest.fixture(scope="module")
def case():
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    image = shared_path("pyradiomics", "lung2_image.nrrd")
    volume = read_volume(image)
    label = read_label(shared_path("pyradiomics", "lung2_label.nrrd"), volume) > 0
    return image, volume, label


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    process, url, token = start_engine(folder, os.environ.get("MEDSAM_SLICER_TEST_CACHE"))
    yield url, token
    stop(process)


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:  # one per module: a second one cannot start inside the first's loop
        yield driver


@pytest.fixture(scope="module")
def app(tmp_path_factory, case, engine, playwright):
    folder = tmp_path_factory.mktemp("web")
    process, url = start_app(folder, case[0], *engine)
    page = Page(playwright, url)
    yield page, folder
    page.close()
    stop(process)


def _key_box(label: np.ndarray) -> tuple[int, tuple[int, int, int, int]]:
    """The lesion's largest slice and its extent there (+ MARGIN), as (k, (i0, j0, i1, j1))."""
    k = int(np.argmax(label.sum(axis=(1, 2))))
    j, i = np.nonzero(label[k])
    return k, (int(i.min()) - MARGIN, int(j.min()) - MARGIN, int(i.max()) + MARGIN, int(j.max()) + MARGIN)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def _events(path: str) -> list[str]:
    return [json.loads(line)["kind"] for line in open(path, encoding="utf-8") if line.strip()]


def _cli_dice(case, engine, folder, k: int, box: list[int]) -> float:
    """The CLI's figure: ``medsam-slicer segment --propagate`` with the same box, window and engine."""
    from MedSAMSlicerLib.volumeio.files import read_label

    out = folder / "cli.nii.gz"
    env = dict(os.environ, PYTHONPATH=str(REPO / "MedSAMSlicer"))
    subprocess.run([sys.executable, "-m", "MedSAMSlicerLib.cli", "segment", str(case[0]), "--box",
                    ",".join(map(str, box)), "--slice", str(k), "--propagate", "--window", "lung", "--out", str(out),
                    "--server", engine[0], "--token-file", str(engine[1])], check=True, env=env,
                   capture_output=True, timeout=600)
    return _dice(read_label(out, case[1]) > 0, case[2])


def _run(page: Page, button: str) -> dict:
    """Click a button and wait until its action has finished (written, failed or cancelled)."""
    before = page.state()["actions"]
    page.click(button)
    return page.wait_state(lambda s: not s["busy"] and s["actions"] > before, f"the action of {button}")


def test_box_segment_propagate_undo_accept_save(app, case, engine):
    page, folder = app
    image, volume, label = case
    k, (i0, j0, i1, j1) = _key_box(label)

    page.page.click("#window", force=True)  # window preset: lung (the display and the engine's window)
    page.page.get_by_role("option", name="lung", exact=True).click()
    page.click("#btn-log")
    page.wait_state(lambda s: bool(s["log_path"]), "time log started")
    page.ask("show_slice", "Red", [(i0 + i1) / 2, (j0 + j1) / 2, k])

    # Drag from one corner to the other on the red view (positions from the view's XY <-> RAS).
    page.click("#btn-box")
    page.drag(page.view_point("Red", (i0, j0, k)), page.view_point("Red", (i1, j1, k)))
    state = page.wait_state(lambda s: len(s["boxes"]) == 1, "the dragged box")
    drawn = state["boxes"][0]
    assert drawn["axis"] == "k" and drawn["index"] == k
    assert all(abs(a - b) <= 2 for a, b in zip(drawn["box"], (i0, j0, i1, j1))), (drawn, (i0, j0, i1, j1))
    page.page.wait_for_timeout(500)
    page.screenshot(SCREENSHOTS / "web-box.png", clip_tag="Red")

    state = _run(page, "#btn-slice")
    assert state["last_action"] == "Segment slice", state
    slice_only = state["digest"]
    assert sum(state["segments"].values()) > 0

    state = _run(page, "#btn-propagate")
    assert state["last_action"] == "Propagate 3D", state
    first_propagation = state["digest"]
    assert first_propagation != slice_only

    before = page.state()["actions"]
    page.page.keyboard.press("Control+Alt+U")  # the panel's Undo shortcut
    state = page.wait_state(lambda s: s["actions"] > before, "undo by Ctrl+Alt+U")
    assert state["last_action"] == "undo", state
    assert state["digest"] == slice_only  # exactly the state before the propagation

    state = _run(page, "#btn-propagate")
    assert state["digest"] == first_propagation  # same box, same engine: the same mask again
    assert state["surface_points"] > 0  # the 3D view shows the segment as a surface
    centre = [(i0 + i1) / 2, (j0 + j1) / 2, k]
    for view in ("Yellow", "Green"):  # as a person scrolls them to the lesion
        page.ask("show_slice", view, centre)
    page.page.wait_for_timeout(2500)  # let the 3D surface and the other views draw
    page.screenshot(SCREENSHOTS / "web-result.png")

    assert _run(page, "#btn-accept")["last_action"] == "accept"
    state = _run(page, "#btn-save")
    assert state["last_action"] == "saved", state

    from MedSAMSlicerLib.volumeio.files import read_label

    saved = read_label(folder / "lung2_image-medsam.seg.nrrd", volume) > 0
    web_dice = _dice(saved, label)
    cli_dice = _cli_dice(case, engine, folder, k, drawn["box"])
    print(f"web Dice {web_dice:.4f}, CLI Dice {cli_dice:.4f} (box {drawn['box']} on slice {k})")
    assert web_dice >= cli_dice - 0.01

    kinds = [kind for kind in _events(state["log_path"]) if kind not in ("box_moved", "manual_edit", "activity")]
    assert kinds == ["case_opened", "box_drawn", "segment_slice", "propagate", "undo", "propagate", "accept"], kinds


def test_cancel_long_propagation_writes_nothing(app, case):
    page, _ = app
    _, _, label = case
    k, (i0, j0, i1, j1) = _key_box(label)
    page.click("#btn-box")
    page.drag(page.view_point("Red", (i0, j0, k)), page.view_point("Red", (i1, j1, k)))
    page.wait_state(lambda s: len(s["boxes"]) == 1, "the box of the next object")
    before = page.state()
    page.page.click("#stop-rule")  # no stop rule: the whole volume (61 slices, most never encoded yet)
    page.click("#btn-propagate")
    page.page.wait_for_function("() => /Propagate 3D [1-9]/.test(document.getElementById('progress-text')"
                                ".textContent)")
    page.click("#btn-cancel")
    state = page.wait_state(lambda s: not s["busy"], "the cancelled propagation")
    assert state["last_action"] == "cancelled", state
    assert state["digest"] == before["digest"] and state["segments"] == before["segments"]
    page.page.click("#stop-rule")
    kinds = _events(state["log_path"])
    assert kinds.count("propagate") == 2, kinds  # the two of the first test; none from the cancelled one


def test_fill_between_slices(app, case):
    """The reader's "Fill between slices" (Segment Editor's tool, MedSAMSlicerLogic.fill_between): the object
    segmented on two slices three apart (the box left by the test above, then a key box), the button fills the two
    slices between them; one Undo takes the fill back."""
    page, _ = app
    _, _, label = case
    k, _ = _key_box(label)
    other = next(s for s in (k + 3, k - 3) if label[s].any())
    state = _run(page, "#btn-slice")  # the box of the next object, on slice k
    assert state["last_action"] == "Segment slice", state
    j, i = np.nonzero(label[other])
    i0, j0, i1, j1 = int(i.min()) - MARGIN, int(j.min()) - MARGIN, int(i.max()) + MARGIN, int(j.max()) + MARGIN
    page.ask("show_slice", "Red", [(i0 + i1) / 2, (j0 + j1) / 2, other])
    page.click("#btn-key-box")
    page.drag(page.view_point("Red", (i0, j0, other)), page.view_point("Red", (i1, j1, other)))
    page.wait_state(lambda s: len(s["boxes"]) == 2, "the key box")
    state = _run(page, "#btn-slice")  # the key box's slice, into the same object's segment
    two_slices = state["segments"][state["current_segment"]]
    state = _run(page, "#btn-fill-between")
    assert state["last_action"] == "fill_between", state
    assert state["segments"][state["current_segment"]] > two_slices  # the slices between them are filled
    state = _run(page, "#btn-undo")
    assert state["last_action"] == "undo" and state["segments"][state["current_segment"]] == two_slices, state


# -- security of the page: login off loopback, websocket gate, saves, hostile state --------------------------------
TOKENS = {"r01": "r01-token-" + "k" * 24, "r02": "r02-token-" + "q" * 24}


@pytest.fixture(scope="module")
def secure_app(tmp_path_factory, case, engine, playwright):
    """The app as a ward runs it: on every address (--host 0.0.0.0), with the readers' token file."""
    folder = tmp_path_factory.mktemp("web-secure")
    tokens = folder / "readers.txt"
    tokens.write_text("# reader token\n" + "".join(f"{r} {t}\n" for r, t in TOKENS.items()))
    tokens.chmod(0o600)
    out = folder / "out"
    out.mkdir()
    worklist = folder / "cases.txt"  # the second case of the worklist (the first is the image given)
    worklist.write_text(f"# cases\n{shared_path('pyradiomics', 'breast1_image.nrrd')}\n")
    cert, key = self_signed_pair(folder)  # https and wss, as a ward should serve it
    process, url = start_app(folder, case[0], *engine, reader=None, scheme="https",
                             extra=("--host", "0.0.0.0", "--reader-tokens", str(tokens), "--out-folder", str(out),
                                    "--cases", str(worklist), "--certfile", str(cert), "--keyfile", str(key)))
    yield playwright, url, out
    stop(process)


@pytest.fixture(scope="module")
def reader_page(secure_app):
    playwright, url, out = secure_app
    page = Page.__new__(Page)  # log in by hand: the test looks at the login page first
    page.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    page.page = page.browser.new_page(viewport={"width": 1400, "height": 900}, ignore_https_errors=True)
    page.page.set_default_timeout(60_000)
    yield page, url, out
    page.close()


def _logged_in(page: Page, url: str) -> None:
    """The page shows the app as reader r01: logs in when it does not yet (a test run alone with ``-k``), so a test
    does not lean on the login test having run before it."""
    if page.page.locator("#view-Red").count():
        return
    page.page.goto(url)
    page.page.fill("#token", TOKENS["r01"])
    page.page.click("#login")
    page.page.wait_for_function("() => !!document.getElementById('view-Red')")


def _controls(name: str) -> str:
    """A value the page may set, by its name in trame's state (``TypedState``'s: class name, field)."""
    from MedSAMSlicerWeb.state import ControlsState

    return f"{ControlsState.__name__}__{name}"


def _panel(name: str) -> str:
    """A value only the server sets."""
    from MedSAMSlicerWeb.state import PanelState

    return f"{PanelState.__name__}__{name}"


def _cookie(page: Page) -> str:
    from MedSAMSlicerWeb.security import COOKIE

    cookie = next(c for c in page.page.context.cookies() if c["name"] == COOKIE)
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    return f"{COOKIE}={cookie['value']}"


def _post_login(url: str, token: str) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    from MedSAMSlicerWeb.security import LOGIN_PATH

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url.rstrip("/") + LOGIN_PATH, urllib.parse.urlencode({"token": token}).encode())
    try:
        opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=UNVERIFIED))
        return opener.open(request, timeout=30).status
    except urllib.error.HTTPError as error:
        return error.code


def test_network_app_refuses_to_start_without_login(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "MedSAMSlicer"))
    base = [sys.executable, "-m", "MedSAMSlicerLib.cli", "web", "--server", "http://127.0.0.1:9", "--port", "9"]
    for extra, words in ((["--host", "0.0.0.0"], "--reader-tokens"),
                         (["--certfile", str(tmp_path / "c.pem")], "--keyfile")):
        done = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_login_required_and_wrong_token_refused(reader_page):
    page, url, _ = reader_page
    assert url.startswith("https://")  # TLS from --certfile/--keyfile
    page.page.goto(url)
    assert page.page.locator("#token").count() == 1  # the login page, not the app
    assert page.page.locator("#view-Red").count() == 0
    page.page.fill("#token", TOKENS["r01"][:-1] + "x")
    page.page.click("#login")
    assert "Wrong token" in page.page.locator("#login-error").text_content()
    assert not page.page.context.cookies()
    page.page.fill("#token", TOKENS["r01"])
    page.page.click("#login")
    page.page.wait_for_function("() => !!document.getElementById('view-Red')")
    assert page.page.locator("#reader").text_content().strip().endswith("r01")  # the login names the reader
    assert _post_login(url, TOKENS["r02"]) == 409  # one scene per process: r02 never gets r01's case


def test_raw_websocket_needs_a_session(reader_page):
    page, url, _ = reader_page
    import aiohttp

    for cookie in (None, "medsam_web_session=forged"):
        client = RawClient(url, cookie)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            client.connect()
        assert refused.value.status == 401
        client.close()
    client = RawClient(url, _cookie(page))  # the same client with the reader's session can
    client.connect()
    assert "result" in client.hello()
    state = client.call("trame.state.get")["result"]["state"]
    assert state[_panel("reader")] == "r01"
    client.close()


def test_hostile_state_values_are_refused(reader_page):
    page, url, _ = reader_page
    _logged_in(page, url)
    client = RawClient(url, _cookie(page))
    client.connect()
    client.hello()
    before = client.call("trame.state.get")["result"]["state"]
    hostile = {
        _controls("window"): ["../etc", 5, None, ["lung"], {"a": 1}, "lung "],
        _controls("range_mode"): ["everything", 0, None], _controls("tool"): ["eraseall", 3, None, ["paint"]],
        _controls("stop_rule"): ["yes", 1, None, []], _controls("largest_component"): [0, "true"],
        _controls("fill_holes"): [{"x": 1}], _controls("save_overwrite"): [1, "on"],
        _controls("save_name"): [5, None, "x" * 1000, {"$ne": 1}, ["a.nii.gz"]],
        _controls("pacs_study"): ["1.2.x", 5, "1" * 100], _panel("out_folder"): ["/"], _panel("log_folder"): ["/tmp"],
        _panel("reader"): ["mallory"], _panel("busy"): [True], _panel("error"): ["<b>x</b>"], _panel("voxels"): [-1],
    }
    assert all(key in before for key in hostile), sorted(set(hostile) - set(before))  # the page's real names
    hostile["evil_new_key"] = [1]
    for key, values in hostile.items():
        for value in values:
            reply = client.call("trame.state.update", [{"key": key, "value": value}])
            assert "error" not in reply, reply
    after = client.call("trame.state.get")["result"]["state"]
    for key in hostile:
        assert after.get(key) == before.get(key), (key, after.get(key))
    assert "evil_new_key" not in after
    for name, args in (("show_slice", ["../x", [0, 0, 0]]), ("show_slice", ["Red", ["a", 1, 2]]),
                       ("ijk_to_view", ["Red", [1e308, 0, 0]]), ("on_key", [1, 2, 3, {"code": 1}])):
        client.call("trame.trigger", name, args, {})  # refused inside; the server must go on
    client.call("trame.state.update", [{"key": _controls("window"), "value": "lung"}])  # a good value goes through
    assert client.call("trame.state.get")["result"]["state"][_controls("window")] == "lung"
    assert client.call("trame.trigger", "app_state", [], {})["result"]["busy"] is False
    client.close()


def test_save_only_a_file_name_in_the_output_folder(reader_page):
    page, url, out = reader_page
    _logged_in(page, url)
    outside = out.parent / "outside"
    outside.mkdir()
    victim = outside / "victim.nii.gz"
    victim.write_bytes(b"another patient")
    existing = out / "existing.nii.gz"
    existing.write_bytes(b"an earlier save")
    cwd_before = sorted(os.listdir(Path.cwd()))

    def save(name: str, overwrite: bool = False) -> dict:
        page.page.fill("#save-name", name)  # Vuetify puts the id on the <input>
        if overwrite:
            page.page.click("#save-overwrite")
        page.wait_state(lambda s: s["controls"]["save_name"] == name and s["controls"]["save_overwrite"] == overwrite,
                        "the file name and the overwrite box on the server")  # before the click, not a guessed wait
        return _run(page, "#btn-save")

    for name in (str(victim), "../outside/victim.nii.gz", "..", "sub/x.nii.gz", "x.txt", "existing.nii.gz",
                 ".hidden.nii.gz"):
        state = save(name)
        assert state["error"] and state["last_action"] != "saved", (name, state)
    assert victim.read_bytes() == b"another patient" and existing.read_bytes() == b"an earlier save"
    assert sorted(p.name for p in out.iterdir()) == ["existing.nii.gz"]
    assert sorted(os.listdir(Path.cwd())) == cwd_before

    state = save("r01-case.nii.gz")  # nothing segmented: a warning, nothing written
    assert state["last_action"] == "save_empty_warned", state
    assert not (out / "r01-case.nii.gz").exists()
    page.screenshot(SCREENSHOTS / "web-empty-warning.png")
    state = _run(page, "#btn-save")  # the second press saves the empty mask
    assert state["last_action"] == "saved" and (out / "r01-case.nii.gz").stat().st_size > 0
    state = save("existing.nii.gz", overwrite=True)  # explicit confirmation: replaced
    assert state["last_action"] in ("saved", "save_empty_warned"), state
    if state["last_action"] == "save_empty_warned":
        state = _run(page, "#btn-save")
    assert existing.read_bytes() != b"an earlier save"


def test_worklist_next_case(reader_page):
    page, url, _ = reader_page
    _logged_in(page, url)
    rows = page.page.locator("#worklist .case-row")
    assert rows.count() == 2
    assert "(done)" in rows.nth(0).text_content()  # saved by the test above
    assert "(not started)" in rows.nth(1).text_content()
    state = _run(page, "#btn-next-case")
    assert state["last_action"] == "case_opened", state
    page.page.wait_for_function("() => document.getElementById('volume-name').textContent.includes('breast1')")
    assert "(in progress)" in rows.nth(1).text_content()
    assert page.page.locator("#save-name").input_value() == "breast1_image-medsam.seg.nrrd"


def _draw_key_box(page: Page, label: np.ndarray) -> None:
    k, (i0, j0, i1, j1) = _key_box(label)
    page.ask("show_slice", "Red", [(i0 + i1) / 2, (j0 + j1) / 2, k])
    page.click("#btn-box")
    page.drag(page.view_point("Red", (i0, j0, k)), page.view_point("Red", (i1, j1, k)))
    page.wait_state(lambda s: len(s["boxes"]) == 1, "the dragged box")


def test_two_readers_two_cases_at_once(secure_app, reader_page, engine, case, tmp_path_factory):
    """A ward: one app process per reader (one Slicer scene each), one engine.  r01 works on breast1 in the app of
    the tests above while r02 works on lung2 in a second app; each sees only their own case, and neither can sign in
    to the other's app."""
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    playwright, url_a, out_a = secure_app
    page_a, _, _ = reader_page
    folder = tmp_path_factory.mktemp("web-r02")
    cert, key = self_signed_pair(folder)
    process, url_b = start_app(folder, case[0], *engine, reader=None, scheme="https",
                               extra=("--host", "0.0.0.0", "--reader-tokens", str(out_a.parent / "readers.txt"),
                                      "--certfile", str(cert), "--keyfile", str(key)))
    try:
        page_b = Page(playwright, url_b, token=TOKENS["r02"])
        assert _post_login(url_b, TOKENS["r01"]) == 409 and _post_login(url_a, TOKENS["r02"]) == 409
        breast = read_volume(shared_path("pyradiomics", "breast1_image.nrrd"))
        breast_label = read_label(shared_path("pyradiomics", "breast1_label.nrrd"), breast) > 0
        page_a.watch_views()
        page_a.page.click("#window", force=True)  # an MR case: the MR window (the tests above left "lung")
        page_a.page.get_by_role("option", name="mr", exact=True).click()
        page_a.wait_state(lambda s: s["controls"]["window"] == "mr", "the MR window on r01's server")
        _draw_key_box(page_a, breast_label)
        _draw_key_box(page_b, case[2])
        before = (page_a.state()["actions"], page_b.state()["actions"])
        page_a.click("#btn-slice")  # both at once, on the one engine
        page_b.click("#btn-slice")
        state_a = page_a.wait_state(lambda s: not s["busy"] and s["actions"] > before[0], "r01's slice")
        state_b = page_b.wait_state(lambda s: not s["busy"] and s["actions"] > before[1], "r02's slice")
        assert state_a["last_action"] == state_b["last_action"] == "Segment slice", (state_a["error"],
                                                                                     state_b["error"])
        assert state_a["shape"] == list(breast.array.shape) and state_b["shape"] == list(case[1].array.shape)
        assert len(state_a["segments"]) == len(state_b["segments"]) == 1  # each only their own object
        assert all(v > 0 for v in [*state_a["segments"].values(), *state_b["segments"].values()])
        assert page_b.page.locator("#reader").text_content().strip().endswith("r02")
        page_b.close()
    finally:
        stop(process)


def test_expired_session_is_closed_and_failed_logins_are_limited(secure_app, reader_page):
    page, url, _ = reader_page
    client = RawClient(url, _cookie(page))
    client.connect()
    client.hello()
    page.page.goto(url.rstrip("/") + "/medsam-logout")
    assert page.page.locator("#token").count() == 1
    deadline = 30
    reply = {}
    while deadline > 0 and "closed" not in reply and "error" not in reply:  # the gate closes it within seconds
        page.page.wait_for_timeout(1000)
        deadline -= 1
        reply = client.call("trame.state.get")
    assert "closed" in reply or "error" in reply, reply
    client.close()
    for _ in range(5):
        assert _post_login(url, "wrong-token-" + "z" * 20) == 401
    assert _post_login(url, TOKENS["r01"]) == 429  # limited: even the right token waits now
