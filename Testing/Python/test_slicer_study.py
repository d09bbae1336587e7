"""Study mode on slicer-core (``MedSAMSlicerLogic.study_mode``), the logic the Slicer panel and the browser app share:
a two-case plan (one manual, one assisted) end to end, the arms' rules, the plan's case ids in the time logs, and the
study report built from those logs.

No engine: the assisted case's MedSAM result is a given mask written through the logic's own path (``apply_slice``),
as the engine would return it; the engine's side is tested in test_slicer_engine.py.  Two small synthetic scans.
"""

from __future__ import annotations

import numpy as np
import pytest

from MedSAMSlicerLib.protocol import Box, SliceResult
from MedSAMSlicerLib.study.arms import ArmRefused
from MedSAMSlicerLib.study.report import build_report, plan_cases, write_case_list
from MedSAMSlicerLib.study.timelog import read_log
from slicer_fixtures import roi_in_ras

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install slicer-core)")

SHAPE = (6, 32, 32)  # (k, j, i)
SLICE = 3


def _scans(folder) -> list[str]:
    import SimpleITK as sitk

    paths = []
    for n in range(2):
        voxels = np.full(SHAPE, -800, np.int16)
        voxels[1:5, 8 + n:20, 10:22] = 40  # a block of soft tissue in air
        image = sitk.GetImageFromArray(voxels)
        image.SetSpacing((0.8, 0.8, 2.5))
        path = folder / f"scan{n}.nrrd"
        sitk.WriteImage(image, str(path))
        paths.append(str(path))
    return paths


def test_two_case_plan_end_to_end(tmp_path):
    import slicer

    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic, Outcome
    from MedSAMSlicerLogic.segments import read_segment
    from MedSAMSlicerLogic.study_mode import StudyOrder, StudySession
    from slicer_harness import SlicerHarness

    logs = tmp_path / "logs"
    cases = plan_cases(_scans(tmp_path), logs, both_modes=False)  # one case per arm
    assert sorted(c.mode for c in cases) == ["assisted", "manual"]
    write_case_list(tmp_path / "plan.csv", cases)

    harness = SlicerHarness()
    logic = BoxSegmentationLogic(harness.scene)  # no engine: the assisted result is given below
    try:
        session = StudySession.load(logic, tmp_path / "plan.csv", logs, "r1")
        assert [r.status for r in session.rows()] == ["not started", "not started"]
        assert session.arm == "" and session.model_allowed
        with pytest.raises(StudyOrder, match="case 1 comes next"):
            session.open(1, harness.load_volume(session.image(1)))
        with pytest.raises(StudyOrder, match="no study case is open"):
            session.finish(None)

        index = session.next_index()
        while index is not None:
            volume = harness.load_volume(session.image(index))
            case = session.open(index, volume)
            assert case.case_id == cases[index].case_id and session.arm == case.mode
            assert session.rows()[index].status == "in progress"
            log_file = logic.time_log.path
            assert log_file.name == f"{case.case_id}.r1.{case.mode}.jsonl"
            if case.mode == "manual":
                assert not session.model_allowed and "draw" in session.manual_tools
                for action in ("draw_box", "segment_slice", "propagate"):
                    with pytest.raises(ArmRefused, match="manual arm"):
                        session.check(action)
                # The reader paints the block on slice 3 with Segment Editor (a write MedSAM did not make).
                segmentation = harness.scene.GetNodeByID(logic.current.segmentation_id)
                painted = np.zeros(SHAPE, np.uint8)
                painted[SLICE, 9:20, 10:22] = 1
                slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentation, logic.current.segment_id,
                                                                 volume)
            else:
                assert session.model_allowed
                session.check("segment_slice")
                roi = roi_in_ras(harness.scene, volume, "k", SLICE, SLICE, Box(9, 8, 22, 20))
                logic.current.box_ids.append(roi.GetID())
                request = logic.slice_request(volume, roi)
                mask = np.zeros(SHAPE[1:], bool)
                mask[8:20, 10:22] = True
                logic.apply_slice(volume, request, Outcome(0.2, 1, slice_result=SliceResult(SLICE, mask, 0.9,
                                                                                          request.prompt.box)))
                segmentation = harness.scene.GetNodeByID(logic.current.segmentation_id)
            segment_id = logic.current.segment_id
            assert int(read_segment(segmentation, segment_id, volume).sum()) > 0
            following = session.finish(volume)
            assert logic.time_log is None and session.arm == ""
            events = read_log(log_file)
            assert {e["case"] for e in events} == {case.case_id}  # the plan's id, never the file name
            assert {e["mode"] for e in events} == {case.mode}
            kinds = [e["kind"] for e in events]
            assert kinds[0] == "case_opened" and kinds[-2:] == ["accept", "case_closed"]
            assert ("manual_edit" in kinds) == (case.mode == "manual")
            assert ("segment_slice" in kinds) == (case.mode == "assisted")
            assert session.rows()[index].status == "done"
            assert following != index
            index = following

        assert session.next_index() is None
        with pytest.raises(StudyOrder, match="the study is done"):
            session.open(0, volume)
        markdown = session.report()
        assert markdown.endswith("study_report.md")
        report = build_report(logs, cases=session.cases)
        assert sorted((r.case, r.mode, r.accepted) for r in report.rows) == sorted(
            (c.case_id, c.mode, True) for c in cases)
        assert report.unfinished == [] and report.missing == []
        text = (logs / "study_report.md").read_text()
        assert "manual" in text and "assisted" in text
        assert "scan0" not in text and "scan1" not in text  # pseudonyms only
    finally:
        logic.reset()
        logic.detach()
        harness.close()
