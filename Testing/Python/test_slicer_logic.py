"""The MRML logic on real slicer-core: real scans loaded by Slicer's volumes logic, boxes drawn in RAS, results
compared voxel for voxel with the engine run on the same grid.

Encoder work: lung1 slices k=32..34 (shared with test_propagation's lung1 runs), one coronal and one sagittal
lung1 slice, one slice of a permuted breast1; every test after the first reuses these through the session cache.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMSlicerLib.protocol import Box, axes
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.volumeio.files import read_volume

from conftest import shared_path
from slicer_fixtures import label_array, roi_in_ras, tight_box

LUNG_KEY = 33  # lung1's tumour is on axial slices 32..34, largest on 33


def engine_mask(segmenter, cache, path, window, axis, index, box) -> np.ndarray:
    """The engine's own result for the same slice and box, on the file's grid, as a (k, j, i) mask."""
    volume = read_volume(path)
    session = VolumeSession(segmenter, volume, window, axis, cache)
    result = session.segment_slice(index, box)
    mask = session.empty_mask()
    axes.put_slice(mask, session.np_axis, index, result.mask)
    return mask


def lung_box(axis: str, label: np.ndarray) -> tuple[int, Box]:
    """Slice index and label box on the tumour for each slice orientation of lung1."""
    np_axis = 2 - "ijk".index(axis)
    areas = label.sum(axis=tuple(a for a in range(3) if a != np_axis))
    index = int(np.argmax(areas))
    return index, tight_box(axes.take_slice(label, np_axis, index), margin=3)


@pytest.mark.parametrize("axis", ["k", "j", "i"], ids=["axial", "coronal", "sagittal"])
def test_box_on_each_orientation_writes_the_engine_mask(harness, logic, segmenter, cache, axis):
    image = shared_path("pyradiomics", "lung1_image.nrrd")
    label = label_array(shared_path("pyradiomics", "lung1_label.nrrd"))
    volume = harness.load_volume(image)
    index, box = lung_box(axis, label)
    roi = roi_in_ras(harness.scene, volume, axis, index, index, box)
    import slicer

    voxels_before = slicer.util.arrayFromVolume(volume).copy()
    display = volume.GetDisplayNode()
    window_before = (display.GetWindow(), display.GetLevel()) if display is not None else None

    request = logic.slice_request(volume, roi, "lung")
    assert (request.prompt.axis, request.prompt.index, request.prompt.box) == (axis, index, box)
    operation, outcome = logic.segment_slice(volume, roi, window="lung")

    segmentation = harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
    written = logic_segment(segmentation, operation.snapshot.segment_id, volume)
    expected = engine_mask(segmenter, cache, image, "lung", axis, index, box)
    assert expected.any(), "the engine segmented nothing in a box around the tumour"
    np.testing.assert_array_equal(written, expected)
    # Geometry, independently of the engine: every written voxel is on the box's slice, the mask is centred in the
    # box (a transposed or flipped write would not be) and it touches the tumour (coronal and sagittal slices of
    # 5 mm CT are only 3 rows tall there, so the model's overlap is small: not a quality check).
    assert_inside_box(written, 2 - "ijk".index(axis), index, box)
    assert np.logical_and(written, label).any()
    # The source volume and its display window are untouched (the model's window is applied to a copy).
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels_before)
    if window_before is not None:
        assert (display.GetWindow(), display.GetLevel()) == window_before


def assert_inside_box(mask: np.ndarray, np_axis: int, index: int, box: Box) -> None:
    assert not np.delete(mask, index, axis=np_axis).any(), "voxels written outside the box's slice"
    rows, cols = np.nonzero(axes.take_slice(mask, np_axis, index))
    # The model may overshoot the box by a few pixels (more on a 48-row sagittal slice), so check the centroid.
    assert box.x0 <= cols.mean() <= box.x1 and box.y0 <= rows.mean() <= box.y1, "mask not centred in the box"


def logic_segment(segmentation, segment_id, volume):
    from MedSAMSlicerLogic.segments import read_segment

    return read_segment(segmentation, segment_id, volume)


@pytest.mark.parametrize("view, axis", [("Red", "k"), ("Green", "j"), ("Yellow", "i")])
def test_draw_box_lands_flat_on_the_slice_the_view_shows(harness, logic, view, axis):
    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    from MedSAMSlicerLogic.geometry import ijk_to_world, ijk_to_world_points

    target = np.array([217.0, 360.0, 33.0])  # i, j, k: the tumour
    harness.slice_nodes[view].JumpSliceByCentering(*ijk_to_world_points(ijk_to_world(volume), target)[0])
    roi, prompt, note = logic.draw_box(volume, harness.slice_nodes[view])
    assert prompt.axis == axis and prompt.first == prompt.last == prompt.index
    assert prompt.index == int(target["ijk".index(axis)])
    assert "turned" not in note  # Slicer's default views are aligned with this volume
    x_axis, y_axis = [c for c in range(3) if c != "ijk".index(axis)]
    assert prompt.box.x0 <= target[x_axis] <= prompt.box.x1 and prompt.box.y0 <= target[y_axis] <= prompt.box.y1
    # A second box on the same slice is refused; the first stays.
    with pytest.raises(Exception, match="already on slice"):
        logic.draw_box(volume, harness.slice_nodes[view], new_object=False)
    assert [b.GetID() for b in logic.boxes()] == [roi.GetID()]


def test_non_identity_direction_volume(harness, logic, segmenter, cache, tmp_path):
    """breast1 with its index axes permuted and two flipped (same anatomy): the axial view is index axis i."""
    image = sitk.ReadImage(str(shared_path("pyradiomics", "breast1_image.nrrd")))
    label = sitk.ReadImage(str(shared_path("pyradiomics", "breast1_label.nrrd")))
    moved, moved_label = (sitk.Flip(sitk.PermuteAxes(x, [2, 0, 1]), [True, False, True]) for x in (image, label))
    path = tmp_path / "breast1_permuted.nrrd"
    sitk.WriteImage(moved, str(path))
    assert not np.allclose(moved.GetDirection(), np.eye(3).ravel())
    volume = harness.load_volume(path)

    # Drawing on the red (axial) view picks the index axis that is axial in this file: i.
    harness.slice_nodes["Red"].JumpSliceByCentering(*volume.GetOrigin())
    _, drawn, _ = logic.draw_box(volume, harness.slice_nodes["Red"])
    assert drawn.axis == "i"

    mask = sitk.GetArrayFromImage(moved_label) > 0
    index = int(np.argmax(mask.sum(axis=(0, 1))))  # numpy axis 2 = index axis i
    box = tight_box(mask[:, :, index])
    roi = roi_in_ras(harness.scene, volume, "i", index, index, box, tag_axis=False)  # axis found by thickness
    operation, _ = logic.segment_slice(volume, roi, window="mr")
    written = logic_segment(harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id),
                            operation.snapshot.segment_id, volume)
    expected = engine_mask(segmenter, cache, path, "mr", "i", index, box)
    assert expected.any()
    np.testing.assert_array_equal(written, expected)
    assert_inside_box(written, 2, index, box)
    assert np.logical_and(written, mask).any()


def test_segmentation_survives_seg_nrrd_save_and_reload(harness, logic, tmp_path):
    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    label = label_array(shared_path("pyradiomics", "lung1_label.nrrd"))
    roi = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, tight_box(label[LUNG_KEY], 3))
    operation, _ = logic.segment_slice(volume, roi, window="lung")
    segmentation = harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
    before = logic_segment(segmentation, operation.snapshot.segment_id, volume)
    name = segmentation.GetSegmentation().GetSegment(operation.snapshot.segment_id).GetName()

    path = tmp_path / "result.seg.nrrd"
    harness.save_node(segmentation, path)
    reloaded = harness.load_segmentation(path)
    segment_id = reloaded.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id
    after = logic_segment(reloaded, segment_id, volume)
    assert before.sum() > 0
    np.testing.assert_array_equal(after, before)


def test_voxel_count_on_stored_layers_equals_the_segment_on_the_grid(harness):
    """count_segment_voxels (the browser's status line) reads layers as stored: shared, separate and empty ones."""
    import slicer

    from MedSAMSlicerLogic.segments import count_segment_voxels, read_segment, write_segment

    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    shape = slicer.util.arrayFromVolume(volume).shape
    node = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "counts")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    masks = {}
    for name, window in (("a", (slice(31, 36), slice(340, 380), slice(200, 240))),
                         ("b", (slice(20, 30), slice(200, 260), slice(230, 300))),
                         ("c", (slice(5, 6), slice(0, 3), slice(0, 2)))):
        masks[name] = np.zeros(shape, dtype=np.uint8)
        masks[name][window] = 1
    ids = {name: node.GetSegmentation().AddEmptySegment("", name) for name in ("a", "b", "c", "empty")}
    for name in ("a", "b"):
        slicer.util.updateSegmentBinaryLabelmapFromArray(masks[name], node, ids[name], volume)
    node.GetSegmentation().CollapseBinaryLabelmaps(False)  # a and b share one layer, with two label values
    write_segment(node, ids["c"], masks["c"].astype(bool), volume)  # c on its own layer
    for name, sid in ids.items():
        assert count_segment_voxels(node, sid) == int(read_segment(node, sid, volume).sum()), name
    assert count_segment_voxels(node, ids["a"]) == int(masks["a"].sum()) > 0
    assert count_segment_voxels(node, "no such segment") == 0


def test_undo_restores_exactly_and_never_touches_other_segments(harness, logic):
    import slicer

    from MedSAMSlicerLogic.segments import read_segment
    from MedSAMSlicerLogic.undo import NothingToUndo

    volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    label = label_array(shared_path("pyradiomics", "lung1_label.nrrd"))
    # The user's segmentation: "Tumour draft" overlaps the box, "Heart" shares its labelmap layer elsewhere.
    user = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user")
    user.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    draft = np.zeros(label.shape, dtype=np.uint8)
    draft[31:36, 340:380, 200:240] = 1
    heart = np.zeros(label.shape, dtype=np.uint8)
    heart[20:30, 200:260, 230:300] = 1
    draft_id = user.GetSegmentation().AddEmptySegment("", "Tumour draft", [0.2, 0.6, 0.9])
    heart_id = user.GetSegmentation().AddEmptySegment("", "Heart")
    slicer.util.updateSegmentBinaryLabelmapFromArray(draft, user, draft_id, volume)
    slicer.util.updateSegmentBinaryLabelmapFromArray(heart, user, heart_id, volume)
    user.GetSegmentation().CollapseBinaryLabelmaps(False)  # as Segment Editor leaves them: one shared layer
    assert user.GetSegmentation().GetNumberOfLayers() == 1

    roi = roi_in_ras(harness.scene, volume, "k", 32, 34, tight_box(label[LUNG_KEY], 3))
    # 1) a new segment in the user's segmentation
    slice_op, _ = logic.segment_slice(volume, roi, segmentation_node=user, window="lung")
    new_id = slice_op.snapshot.segment_id
    assert new_id not in (draft_id, heart_id) and read_segment(user, new_id, volume).sum() > 0
    np.testing.assert_array_equal(read_segment(user, draft_id, volume), draft > 0)
    np.testing.assert_array_equal(read_segment(user, heart_id, volume), heart > 0)
    # 2) propagate into the user's own segment, picked explicitly
    propagation, outcome = logic.propagate(volume, [roi], segmentation_node=user, segment_id=draft_id,
                                           window="lung", range_mode="roi")
    assert outcome.propagation.segmented_slices == 3
    replaced = read_segment(user, draft_id, volume)
    assert not np.array_equal(replaced, draft > 0)
    np.testing.assert_array_equal(read_segment(user, heart_id, volume), heart > 0)

    undone = logic.undo()
    assert undone is propagation
    np.testing.assert_array_equal(read_segment(user, draft_id, volume), draft > 0)
    segment = user.GetSegmentation().GetSegment(draft_id)
    assert segment.GetName() == "Tumour draft" and np.allclose(segment.GetColor(), [0.2, 0.6, 0.9])
    assert list(user.GetSegmentation().GetSegmentIDs())[:2] == [draft_id, heart_id]  # order kept
    np.testing.assert_array_equal(read_segment(user, heart_id, volume), heart > 0)

    logic.undo()  # the slice operation created its segment: Undo removes it
    assert user.GetSegmentation().GetSegment(new_id) is None
    assert list(user.GetSegmentation().GetSegmentIDs()) == [draft_id, heart_id]
    with pytest.raises(NothingToUndo):
        logic.undo()


def test_self_test_dice_floor_and_undo_on_lung_ct(harness, logic, shared_data):
    """The body of the module's Slicer self-test (MedSAMSlicerTest), on the project's lung CT."""
    from MedSAMSlicerLogic.selftest import run_self_test

    report = run_self_test(logic, harness.logics["volumes"], shared_data)
    assert report.source.startswith("lung1")
    assert report.dice >= 0.80, report  # reference run: 0.897 (test_propagation's "ours over the label range")
    assert report.segmented_slices == 3 and report.undo_removed_segment


def test_self_test_dice_floor_and_undo_on_phantom(harness, logic):
    """The self-test as it runs inside Slicer without the project's scans: a CT phantom it makes itself."""
    from MedSAMSlicerLogic.selftest import run_self_test

    report = run_self_test(logic, harness.logics["volumes"], None)
    assert report.source.startswith("CT phantom")
    assert report.dice >= 0.85, report  # reference run: about 0.97
    assert report.undo_removed_segment
