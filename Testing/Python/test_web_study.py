"""Study mode in the browser, end to end: ``medsam-slicer study plan`` on two real CT crops (one case per arm),
``medsam-slicer web --study PLAN`` driven by Chromium, ``medsam-slicer study report`` on the logs it wrote.

The manual case: MedSAM's controls are hidden and a MedSAM shortcut sent to the server anyway is refused; one paint
stroke, then "Finish case".  The assisted case: a box on the tumour, "Segment slice", "Finish case".  The report
lists both arms, each accepted.  Small crops of lung1 (12 and 8 slices): one slice is encoded in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, shared_path
from web_driver import Page, missing_browser_parts, start_app, start_engine, stop

pytestmark = pytest.mark.skipif(bool(missing_browser_parts()), reason=missing_browser_parts() or "ok")


def _cli(*argv) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "MedSAMSlicer"))
    done = subprocess.run([sys.executable, "-m", "MedSAMSlicerLib.cli", *map(str, argv), "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two crops around lung1's tumour, their labels, and a one-arm-per-case plan (one manual, one assisted)."""
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("study")
    image = sitk.ReadImage(str(shared_path("pyradiomics", "lung1_image.nrrd")))
    label = sitk.ReadImage(str(shared_path("pyradiomics", "lung1_label.nrrd")))
    images, labels = [], []
    for name, k0, k1 in (("first", 28, 40), ("second", 30, 38)):
        for source, kind, found in ((image, "image", images), (label, "label", labels)):
            path = folder / f"{name}_{kind}.nrrd"
            sitk.WriteImage(source[150:350, 250:450, k0:k1], str(path))
            found.append(path)
    plan = _cli("study", "plan", *images, "--logs", folder / "logs", "--out", folder / "plan.csv", "--one-mode")
    assert sorted(row["mode"] for row in plan["cases"]) == ["assisted", "manual"], plan
    return folder, plan["cases"], labels


def _tumour_box(label_path) -> tuple[int, tuple[int, int, int, int]]:
    import SimpleITK as sitk

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) > 0  # (k, j, i)
    k = int(np.argmax(label.sum(axis=(1, 2))))
    j, i = np.nonzero(label[k])
    return k, (int(i.min()) - 3, int(j.min()) - 3, int(i.max()) + 3, int(j.max()) + 3)


def _act(page: Page, selector: str) -> dict:
    before = page.state()["actions"]
    page.click(selector)
    return page.wait_state(lambda s: not s["busy"] and s["actions"] > before, f"the action of {selector}")


def test_two_case_plan_end_to_end_and_report_lists_both_arms(study, tmp_path):
    from playwright.sync_api import sync_playwright

    folder, cases, labels = study
    engine, url, token = start_engine(tmp_path)
    app = None
    try:
        app, page_url = start_app(tmp_path, "", url, token, reader="r01",
                                  extra=("--study", folder / "plan.csv", "--log-folder", folder / "logs",
                                         "--out-folder", tmp_path))
        with sync_playwright() as driver:
            page = Page(driver, page_url)
            for number, case in enumerate(cases):
                label = labels[[str(c) for c in (folder / "first_image.nrrd", folder / "second_image.nrrd")]
                               .index(case["image"])]
                k, (i0, j0, i1, j1) = _tumour_box(label)
                page.page.wait_for_function(f"() => document.getElementById('arm').textContent"
                                            f".includes('{case['mode']} arm')")
                page.ask("show_slice", "Red", [(i0 + i1) / 2, (j0 + j1) / 2, k])
                if case["mode"] == "manual":
                    assert not page.page.is_visible("#btn-box") and not page.page.is_visible("#btn-propagate")
                    before = page.state()["actions"]
                    page.ask("on_key", True, True, False, "KeyS")  # Segment slice's shortcut, sent to the server
                    state = page.wait_state(lambda s: s["actions"] > before, "the refused shortcut")
                    assert "manual arm" in state["error"], state
                    page.click("#tool-paint")
                    page.wait_state(lambda s: s["status"].startswith("paint"), "paint on")
                    page.drag(page.view_point("Red", (i0, j0, k)), page.view_point("Red", (i1, j1, k)))
                    state = page.wait_state(lambda s: sum(s["segments"].values()) > 0, "the paint stroke")
                else:
                    assert page.page.is_visible("#btn-box")
                    page.click("#btn-box")
                    page.drag(page.view_point("Red", (i0, j0, k)), page.view_point("Red", (i1, j1, k)))
                    page.wait_state(lambda s: len(s["boxes"]) == 1, "the dragged box")
                    state = _act(page, "#btn-slice")
                    assert state["last_action"] == "Segment slice" and sum(state["segments"].values()) > 0, state
                log = state["log_path"]
                state = _act(page, "#btn-finish-case")
                assert state["last_action"] == ("study_done" if number == len(cases) - 1 else "case_opened"), state
                kinds = [json.loads(line)["kind"] for line in open(log, encoding="utf-8")]
                assert kinds[0] == "case_opened" and kinds[-2:] == ["accept", "case_closed"], kinds
                if case["mode"] == "manual":
                    assert "manual_edit" in kinds and not {"box_drawn", "segment_slice"} & set(kinds), kinds
            page.close()
    finally:
        if app is not None:
            stop(app)
        stop(engine)
    report = _cli("study", "report", folder / "logs", "--cases", folder / "plan.csv", "--out", tmp_path / "report")
    rows = {row["mode"]: row for row in report["rows"]}
    assert set(rows) == {"manual", "assisted"}, report["rows"]
    assert all(row["accepted"] and row["reader"] == "r01" for row in rows.values()), rows
    assert rows["manual"]["propagations"] == rows["manual"]["slice_segmentations"] == 0
    assert rows["assisted"]["slice_segmentations"] == 1 and rows["manual"]["manual_edits"] >= 1
    assert {row["case"] for row in rows.values()} == {case["case_id"] for case in cases}
