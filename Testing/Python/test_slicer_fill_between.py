"""Fill between slices on slicer-core (``MedSAMSlicerLogic.fill_between`` through ``BoxSegmentationLogic``): a
segment drawn on two separated slices is interpolated over the slices between them by Slicer's own
vtkITKMorphologicalContourInterpolator; the write is one undo step and a manual edit in the time log."""

from __future__ import annotations

import numpy as np
import pytest

from MedSAMSlicerLib.study.timelog import read_log

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install slicer-core)")

SHAPE = (12, 40, 40)  # (k, j, i)


def _disc(radius: float, centre=(20, 20)) -> np.ndarray:
    j, i = np.mgrid[:SHAPE[1], :SHAPE[2]]
    return (j - centre[0]) ** 2 + (i - centre[1]) ** 2 <= radius ** 2


def test_fill_between_two_drawn_slices_is_one_undoable_manual_edit(tmp_path):
    import slicer

    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic
    from MedSAMSlicerLogic.fill_between import NothingToFill
    from MedSAMSlicerLogic.segments import add_segment, read_segment
    from slicer_harness import SlicerHarness

    harness = SlicerHarness()
    logic = BoxSegmentationLogic(harness.scene)
    try:
        volume = harness.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan")
        slicer.util.updateVolumeFromArray(volume, np.zeros(SHAPE, np.int16))
        segmentation = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.CreateDefaultDisplayNodes()
        segment = add_segment(segmentation, "drawn")
        other = add_segment(segmentation, "other")
        other_mask = np.zeros(SHAPE, np.uint8)
        other_mask[:, 0:3, 0:3] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(other_mask, segmentation, other, volume)

        drawn = np.zeros(SHAPE, np.uint8)
        drawn[2] = _disc(5)  # a small disc on slice 2, a larger one on slice 8: slices 3..7 are empty
        drawn[8] = _disc(9)
        slicer.util.updateSegmentBinaryLabelmapFromArray(drawn, segmentation, segment, volume)
        logic.open_case(volume, tmp_path, reader="r1", mode="manual")

        operation = logic.fill_between_slices(volume, segmentation, segment)
        filled = read_segment(segmentation, segment, volume)
        areas = filled.sum(axis=(1, 2))
        assert np.array_equal(filled[2], drawn[2] > 0) and np.array_equal(filled[8], drawn[8] > 0)  # kept as drawn
        assert all(areas[k] > 0 for k in range(3, 8))  # every slice between is filled
        assert areas[2] <= areas[4] <= areas[6] <= areas[8]  # growing from the small disc to the large one
        assert areas[:2].sum() == 0 and areas[9:].sum() == 0  # nothing beyond the drawn slices
        assert operation.details["slices"] == [3, 4, 5, 6, 7] and operation.details["tool"] == "fill_between_slices"
        assert int(read_segment(segmentation, other, volume).sum()) == int(other_mask.sum())  # others untouched

        events = read_log(logic.time_log.path)
        edit = [e for e in events if e["kind"] == "manual_edit"]
        assert len(edit) == 1 and edit[0]["tool"] == "fill_between_slices" and edit[0]["slices"] == [3, 4, 5, 6, 7]

        assert logic.undo().description.startswith("Fill between slices")
        assert np.array_equal(read_segment(segmentation, segment, volume), drawn > 0)
        assert logic.collect_manual_edits() is None  # the fill and its undo are not the reader's strokes

        single = np.zeros(SHAPE, np.uint8)
        single[4:6] = _disc(4)  # two adjacent slices: nothing between them
        slicer.util.updateSegmentBinaryLabelmapFromArray(single, segmentation, segment, volume)
        with pytest.raises(NothingToFill, match="at least two slices"):
            logic.fill_between_slices(volume, segmentation, segment)
    finally:
        logic.reset()
        logic.detach()
        harness.close()
