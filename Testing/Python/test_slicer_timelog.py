"""The annotation-time log from the MRML logic: events at the right points, mirrored in a table node, manual edits
seen with the slices they changed, and no volume name in the log.

Encoder work: lung1 axial slices 32..34 (shared with the other lung1 tests).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from MedSAMSlicerLib.study.timelog import read_log

from conftest import shared_path
from slicer_fixtures import label_array, roi_in_ras, tight_box


def test_events_table_and_manual_edits(harness, logic, tmp_path):
    import slicer

    from MedSAMSlicerLogic.geometry import ijk_to_world, ijk_to_world_points
    from MedSAMSlicerLogic.segments import read_segment
    from MedSAMSlicerLogic.timelog_table import TABLE_NAME

    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    label = label_array(shared_path("pyradiomics", "lung1_label.nrrd"))
    log = logic.open_case(volume, tmp_path, reader="r1", mode="assisted")
    assert log.case_id.startswith("case-") and "lung1" not in log.path.name

    harness.slice_nodes["Red"].JumpSliceByCentering(*ijk_to_world_points(ijk_to_world(volume), [217, 360, 33])[0])
    logic.draw_box(volume, harness.slice_nodes["Red"])  # box_drawn
    # The user drags the box onto the tumour: the panel reports the move.
    roi = roi_in_ras(harness.scene, volume, "k", 32, 34, tight_box(label[33], 3), name="moved")
    logic.remove_boxes()
    logic.current.box_ids.append(roi.GetID())
    logic.note_box_moved(roi, volume)  # box_moved
    operation, _ = logic.segment_slice(volume, roi, window="lung")  # segment_slice
    segmentation = harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
    segment_id = operation.snapshot.segment_id
    logic.propagate(volume, [roi], window="lung", range_mode="roi")  # propagate
    assert logic.collect_manual_edits() is None  # our own writes are not manual edits

    # A manual edit with another tool (as Segment Editor's paint would do): slices 30 and 31 gain voxels.
    propagated = read_segment(segmentation, segment_id, volume).astype(np.uint8)
    edited = propagated.copy()
    edited[30:32, 355:360, 210:215] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segmentation, segment_id, volume)
    edit = logic.collect_manual_edits()  # manual_edit
    assert edit is not None and edit.slices == [30, 31] and edit.voxels == 50
    assert logic.collect_manual_edits() is None  # reported once

    from MedSAMSlicerLogic.undo import EditedSince

    with pytest.raises(EditedSince):  # MedSAM's Undo would throw the paint away: refused, nothing logged (R2)
        logic.undo()
    slicer.util.updateSegmentBinaryLabelmapFromArray(propagated, segmentation, segment_id, volume)  # paint undone
    logic.undo()  # undo (the propagation)
    assert logic.collect_manual_edits() is None  # undo is not a manual edit
    logic.accept(volume)  # accept, with the mask saved beside the log
    logic.close_case()  # case_closed

    events = read_log(log.path)
    kinds = [e["kind"] for e in events]
    assert kinds == ["case_opened", "box_drawn", "box_moved", "segment_slice", "propagate", "manual_edit", "undo",
                     "accept", "case_closed"]
    propagate = events[kinds.index("propagate")]
    assert propagate["slices"] == 3 and propagate["range"] == "32:34" and propagate["encoder_calls"] >= 0
    assert events[kinds.index("manual_edit")]["slices"] == [30, 31]
    accept = events[kinds.index("accept")]
    assert (tmp_path / accept["mask"]).is_file() and accept["voxels"] > 0
    assert all("lung1" not in json.dumps(e) for e in events)  # the volume name never reaches the log

    table = harness.scene.GetFirstNodeByName(TABLE_NAME)
    assert table.GetNumberOfRows() == len(events)
    assert [table.GetCellText(r, 2) for r in range(table.GetNumberOfRows())] == kinds


def test_key_box_added_and_active_time(harness, logic, tmp_path):
    from MedSAMSlicerLogic.geometry import ijk_to_world, ijk_to_world_points

    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    log = logic.open_case(volume, tmp_path)
    to_world = ijk_to_world(volume)
    red = harness.slice_nodes["Red"]
    red.JumpSliceByCentering(*ijk_to_world_points(to_world, [217, 360, 33])[0])
    logic.draw_box(volume, red)
    red.JumpSliceByCentering(*ijk_to_world_points(to_world, [217, 360, 30])[0])
    _, prompt, _ = logic.draw_box(volume, red, new_object=False)
    assert prompt.index == 30 and len(logic.boxes()) == 2
    assert [e["kind"] for e in log.session.events] == ["case_opened", "box_drawn", "key_box_added"]
    assert log.active_seconds() >= 0.0


def test_export_report_writes_the_study_report(harness, logic, tmp_path, monkeypatch):
    from MedSAMSlicerLib.errors import MedSAMError
    from MedSAMSlicerLogic.study_report import export_report

    with pytest.raises(MedSAMError, match="no time-log folder"):
        export_report(tmp_path / "absent")
    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    label = label_array(shared_path("pyradiomics", "lung1_label.nrrd"))
    logic.open_case(volume, tmp_path, reader="r1")
    roi = roi_in_ras(harness.scene, volume, "k", 33, 33, tight_box(label[33], 3))
    logic.current.box_ids.append(roi.GetID())
    logic.segment_slice(volume, roi, window="lung")
    logic.accept(volume)
    logic.close_case()
    summary = export_report(tmp_path)
    assert summary.endswith("study_report.md")
    assert {p.name for p in tmp_path.glob("study_report.*")} == {"study_report.md", "study_report.csv",
                                                                 "study_report.png"}
    csv_text = (tmp_path / "study_report.csv").read_text()
    assert "r1" in csv_text and "assisted" in csv_text

    # Slicer's Python has no matplotlib (audit B1): CSV and summary complete, the summary says why there is no plot.
    import sys

    from MedSAMSlicerLogic.study_report import NO_PLOT_NOTE

    for path in tmp_path.glob("study_report.*"):
        path.unlink()
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ModuleNotFoundError, find_spec finds nothing
    summary = export_report(tmp_path)
    assert {p.name for p in tmp_path.glob("study_report.*")} == {"study_report.md", "study_report.csv"}
    assert (tmp_path / "study_report.csv").read_text() == csv_text
    assert NO_PLOT_NOTE in Path(summary).read_text() and "| r1 |" in Path(summary).read_text()
