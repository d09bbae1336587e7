"""The browser app on a real PACS, end to end: Orthanc (DICOMweb) holds the shared series; ``medsam-slicer web
--dicomweb`` lists it in Chromium, opens it, a box is dragged and propagated, Save stores a DICOM SEG; Orthanc then
holds a SEG (found by QIDO) whose mask is the app's, voxel for voxel (same digest)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import orthanc_server
from dicom_helpers import PATIENT_ID, PATIENT_NAME, load_series, save, shared_label
from web_driver import Page, Served, missing_browser_parts, served

orthanc = orthanc_server.orthanc  # the real Orthanc fixture, for this module's test

pytestmark = pytest.mark.skipif(bool(missing_browser_parts()), reason=missing_browser_parts() or "ok")


def start_pacs_app(running: Served, dicomweb, auth) -> str:
    # -v: the app's log is then as talkative as it gets, and the test checks it for patient identifiers
    return running.start_app("", extra=("--dicomweb", dicomweb), reader=None, cli_options=("-v",),
                             env={"MEDSAM_PACS_USER": auth[0], "MEDSAM_PACS_PASSWORD": auth[1]})


def _run(page: Page, button: str) -> dict:
    before = page.state()["actions"]
    page.click(button)
    return page.wait_state(lambda s: not s["busy"] and s["actions"] > before, f"the action of {button}")


def _choose(page: Page, select: str) -> None:
    page.page.click(select, force=True)
    page.page.locator(".v-overlay-container .v-list-item").first.click()


def test_web_app_opens_a_pacs_series_and_stores_the_seg(tmp_path, orthanc, cache):
    from playwright.sync_api import sync_playwright

    from MedSAMSlicerLib.pacs.dicomweb import Pacs
    from MedSAMSlicerLib.volumeio.dicomseg import read_seg_mask
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    series = load_series()
    folder = save(series, tmp_path / "series")
    orthanc.upload(folder)
    study = str(series[0].StudyInstanceUID)
    volume = read_volume(folder)
    rows, cols = np.nonzero(read_label(shared_label(), volume)[10] == 1)
    i0, j0, i1, j1, k = int(cols.min()) - 2, int(rows.min()) - 2, int(cols.max()) + 2, int(rows.max()) + 2, 10

    with served(tmp_path, str(cache.disk_dir)) as running:
        url = start_pacs_app(running, orthanc.dicomweb, orthanc.auth)
        with sync_playwright() as playwright:
            page = Page(playwright, url)
            try:
                _choose(page, "#pacs-study")
                page.page.wait_for_function("() => !document.querySelector('.v-overlay--active .v-list-item')")
                _choose(page, "#pacs-series")
                state = _run(page, "#btn-pacs-open")
                assert state["last_action"] == "pacs_opened" and state["shape"] == [20, 512, 512], state
                page.ask("show_slice", "Red", [(i0 + i1) / 2, (j0 + j1) / 2, k])
                page.click("#btn-box")
                page.drag(page.view_point("Red", (i0, j0, k)), page.view_point("Red", (i1, j1, k)))
                page.wait_state(lambda s: len(s["boxes"]) == 1, "the dragged box")
                state = _run(page, "#btn-propagate")
                assert state["last_action"] == "Propagate 3D", state
                state = _run(page, "#btn-save")
                assert state["last_action"] == "saved", state
            finally:
                page.close()
    (segment_id, voxels), = state["segments"].items()
    pacs = Pacs(orthanc.dicomweb, orthanc.auth)
    segs = pacs.segmentations(study)
    assert len(segs) == 1
    stored, = pacs.fetch(study, segs[0]["series"])
    mask = read_seg_mask(stored, volume) > 0
    digest = hashlib.sha256(segment_id.encode() + np.packbits(mask).tobytes()).hexdigest()
    assert mask.sum() == voxels > 1000 and digest == state["digest"]
    algorithm = stored.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "litemedsam"
    log = (tmp_path / "app.log").read_text()
    for identifier in (PATIENT_NAME, PATIENT_ID, orthanc.password):
        assert identifier not in log
    assert os.environ.get("MEDSAM_PACS_PASSWORD") is None  # the test's own environment was not changed
