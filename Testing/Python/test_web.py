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
from web_driver import Page, missing_browser_parts, start_app, start_engine, stop

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
def app(tmp_path_factory, case, engine):
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("web")
    process, url = start_app(folder, case[0], *engine)
    with sync_playwright() as playwright:
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
