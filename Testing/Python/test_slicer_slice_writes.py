"""Slice writes (issue 21, the browser app's click-to-mask), on real slicer-core: with
``BoxSegmentationLogic.slice_writes`` a "Segment slice" result is written into its one slice of the segment, and the
undo check's digest is taken afterwards (``settle``).  The segment must be voxel for voxel what the whole-segment
write gives, on each slice orientation of brain2 (whose direction matrix flips an axis); Undo restores each step,
and still refuses to discard an edit made before the digest was taken.  No engine: the results are given."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from slicer_fixtures import roi_in_ras


def _results(shape, np_axis: int) -> list[tuple[int, np.ndarray]]:
    """Three results: slice a, slice a+1, slice a again (it replaces the first), each a random blob-free plane."""
    rng = np.random.default_rng(11 + np_axis)
    plane_shape = tuple(n for axis, n in enumerate(shape) if axis != np_axis)
    middle = shape[np_axis] // 2
    return [(index, rng.random(plane_shape) > 0.6) for index in (middle, middle + 1, middle)]


def _apply(logic, volume, axis: str, index: int, plane: np.ndarray):
    from MedSAMSlicerLib.protocol import Box, SliceResult
    from MedSAMSlicerLogic.engine_jobs import Outcome

    box = Box(2.0, 2.0, float(plane.shape[1] - 3), float(plane.shape[0] - 3))
    roi = roi_in_ras(logic.scene, volume, axis, index, index, box)
    request = logic.slice_request(volume, roi, "auto")
    assert request.prompt.index == index
    outcome = Outcome(0.1, 0, slice_result=SliceResult(index, plane, 0.9, request.prompt.box))
    operation = logic.apply_slice(volume, request, outcome)
    logic.scene.RemoveNode(roi)
    return operation


@pytest.mark.parametrize("axis", ["k", "j", "i"], ids=["axial", "coronal", "sagittal"])
def test_slice_writes_give_the_whole_write_and_undo(harness, axis):
    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic
    from MedSAMSlicerLogic.segments import read_segment

    volume = harness.load_volume(shared_path("pyradiomics", "brain2_image.nrrd"))
    shape = volume.GetImageData().GetDimensions()[::-1]
    np_axis = 2 - "ijk".index(axis)
    results = _results(shape, np_axis)
    finals, steps = {}, []
    for slice_writes in (False, True):
        logic = BoxSegmentationLogic(harness.scene, None)
        logic.slice_writes = slice_writes
        masks = []
        for index, plane in results:
            operation = _apply(logic, volume, axis, index, plane)
            node = harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
            masks.append(read_segment(node, operation.snapshot.segment_id, volume))
            logic.settle()
        finals[slice_writes] = masks[-1]
        steps.append(masks)
        if slice_writes:  # Undo walks back through each step, exactly
            for expected in reversed(masks[:-1]):
                logic.undo()
                assert np.array_equal(read_segment(node, operation.snapshot.segment_id, volume), expected)
        logic.detach()
    assert all(np.array_equal(a, b) for a, b in zip(*steps))  # every step, voxel for voxel
    expected = np.zeros(shape, dtype=bool)
    for index, plane in results:
        selector = [slice(None)] * 3
        selector[np_axis] = index
        expected[tuple(selector)] = plane
    assert np.array_equal(finals[True], expected)


def test_an_edit_before_the_digest_makes_undo_refuse(harness):
    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic
    from MedSAMSlicerLogic.segments import read_segment, write_segment
    from MedSAMSlicerLogic.undo import EditedSince

    volume = harness.load_volume(shared_path("pyradiomics", "brain2_image.nrrd"))
    shape = volume.GetImageData().GetDimensions()[::-1]
    logic = BoxSegmentationLogic(harness.scene, None)
    logic.slice_writes = True
    (index, plane), *_ = _results(shape, 0)
    operation = _apply(logic, volume, "k", index, plane)
    node = harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
    edited = read_segment(node, operation.snapshot.segment_id, volume)
    edited[index + 2, 5:9, 5:9] = True  # a paint stroke elsewhere, before the app settled
    write_segment(node, operation.snapshot.segment_id, edited, volume)
    with pytest.raises(EditedSince):
        logic.undo()
    logic.detach()
    assert np.array_equal(read_segment(node, operation.snapshot.segment_id, volume), edited)  # nothing discarded
