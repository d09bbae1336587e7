"""Bad input in the panel's logic: one clear message, nothing lost, the user's segments untouched.

Encoder work: lung1 axial slices 32..34 only (shared with test_slicer_logic and test_propagation).
"""

import numpy as np
import pytest
import vtk

from MedSAMSlicerLib.engine.boxes import Box
from MedSAMSlicerLib.errors import BoxError, InputImageError, MedSAMError

from conftest import shared_path
from slicer_fixtures import roi_in_ras, tight_box, user_segmentation

LUNG_KEY = 33


def assert_untouched(node, segment_id, mask, volume, segments=1):
    from MedSAMSlicerLogic.segments import read_segment

    assert node.GetSegmentation().GetNumberOfSegments() == segments
    np.testing.assert_array_equal(read_segment(node, segment_id, volume), mask)


def test_no_volume(logic):
    with pytest.raises(InputImageError, match="no volume selected"):
        logic.slice_request(None, None)


def test_2d_volume_is_refused(harness, logic):
    import slicer

    node = harness.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "radiograph")
    slicer.util.updateVolumeFromArray(node, np.zeros((1, 64, 64), dtype=np.int16))
    with pytest.raises(InputImageError, match="is a 2D image"):
        logic.slice_request(node, None)


def test_label_map_is_refused(harness, logic):
    node = harness.load_volume(shared_path("pyradiomics", "lung1_label.nrrd"))
    labelmap = harness.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    labelmap.SetAndObserveImageData(node.GetImageData())
    with pytest.raises(InputImageError, match="label map"):
        logic.grid(labelmap)


def test_box_missing_turned_or_outside(harness, logic, lung):
    volume, label = lung
    with pytest.raises(BoxError, match="no box"):
        logic.slice_request(volume, None)
    box = tight_box(label[LUNG_KEY], 3)
    turned = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, box)
    rotation = vtk.vtkTransform()
    rotation.RotateX(30)  # tilted out of the slice plane, as a hand-made ROI in an oblique view would be
    matrix = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(turned.GetObjectToNodeMatrix(), rotation.GetMatrix(), matrix)
    turned.SetAndObserveObjectToNodeMatrix(matrix)
    with pytest.raises(BoxError, match="not on a slice of lung1_image: it is turned 30 degrees"):
        logic.slice_request(volume, turned)
    beyond = roi_in_ras(harness.scene, volume, "k", 60, 60, box)  # lung1 has 48 slices
    with pytest.raises(BoxError, match="lies outside lung1_image: it is at slice 60 along k"):
        logic.slice_request(volume, beyond)
    aside = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, Box(600, 600, 650, 650))
    with pytest.raises(BoxError, match="outside the slice"):
        logic.slice_request(volume, aside)
    tiny = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, Box(200, 200, 200, 200))
    with pytest.raises(BoxError, match="empty"):
        logic.slice_request(volume, tiny)


def test_key_boxes_must_share_an_orientation_and_not_a_slice(harness, logic, lung):
    volume, label = lung
    box = tight_box(label[LUNG_KEY], 3)
    axial = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, box)
    coronal = roi_in_ras(harness.scene, volume, "j", 360, 360, Box(200, 30, 240, 36))
    with pytest.raises(BoxError, match="different axes"):
        logic.propagation_request(volume, [axial, coronal])
    twin = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, box, name="twin")
    with pytest.raises(BoxError, match="both on slice 33"):
        logic.propagation_request(volume, [axial, twin])


def test_segmentation_on_another_grid_is_refused_and_kept(harness, logic, lung):
    import slicer

    volume, label = lung
    other = harness.load_volume(shared_path("pyradiomics", "lung2_image.nrrd"))  # another CT, another grid
    node = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "on lung2")
    node.SetReferenceImageGeometryParameterFromVolumeNode(other)
    theirs = node.GetSegmentation().AddEmptySegment("", "lung2 lesion")
    mask = np.zeros(slicer.util.arrayFromVolume(other).shape, dtype=np.uint8)
    mask[10:14, 100:140, 100:140] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, theirs, other)
    roi = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, tight_box(label[LUNG_KEY], 3))
    with pytest.raises(InputImageError, match="is on another grid .* pick 'Create new segmentation'"):
        logic.segment_slice(volume, roi, segmentation_node=node, window="lung")
    assert_untouched(node, theirs, mask > 0, other)
    assert len(logic.undo_stack) == 0


def test_volume_changed_while_running_writes_nothing(harness, logic, lung):
    import slicer

    volume, label = lung
    node, mine, mask = user_segmentation(harness, volume, label.shape)
    roi = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, tight_box(label[LUNG_KEY], 3))
    logic.start_segment_slice(volume, roi, node, window="lung")
    voxels = slicer.util.arrayFromVolume(volume)
    voxels[0, 0, 0] += 1  # the user edits the volume meanwhile (e.g. another module)
    slicer.util.arrayFromVolumeModified(volume)
    progress = logic.wait()
    assert progress.state == "failed"
    assert "changed while segmenting; nothing was written" in progress.message
    assert_untouched(node, mine, mask, volume)
    assert not logic.busy and len(logic.undo_stack) == 0


def test_cancel_before_the_engine_started_the_job(harness, logic, lung):
    """Cancel between the click and the first poll: nothing reaches the engine, nothing is written."""
    volume, label = lung
    roi = roi_in_ras(harness.scene, volume, "k", 32, 34, tight_box(label[LUNG_KEY], 3))
    logic.start_propagation(volume, [roi], window="lung", range_mode="roi")
    logic.cancel()
    progress = logic.wait()
    assert progress.state == "cancelled" and "nothing was written" in progress.message
    assert harness.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert logic.poll().state == "idle"


def test_second_operation_while_one_runs_is_refused(harness, logic, lung):
    volume, label = lung
    roi = roi_in_ras(harness.scene, volume, "k", 32, 34, tight_box(label[LUNG_KEY], 3))
    logic.start_propagation(volume, [roi], window="lung", range_mode="roi")
    with pytest.raises(MedSAMError, match="still running"):
        logic.start_segment_slice(volume, roi, window="lung")
    logic.cancel()
    assert logic.wait().state == "cancelled"


def test_no_engine_is_one_message():
    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic
    from MedSAMSlicerLogic.messages import user_message
    from slicer_harness import SlicerHarness

    harness = SlicerHarness()
    try:
        volume = harness.load_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
        logic = BoxSegmentationLogic(harness.scene, None)
        roi = roi_in_ras(harness.scene, volume, "k", LUNG_KEY, LUNG_KEY, Box(200, 340, 240, 380))
        with pytest.raises(MedSAMError) as raised:
            logic.start_segment_slice(volume, roi)
        assert user_message(raised.value).startswith("no engine: choose 'Local' or enter a server URL")
    finally:
        harness.close()


def test_gpu_out_of_memory_text_is_one_message():
    """The engine's own out-of-memory error text (CUDA allocation failures) becomes the advice line."""
    from MedSAMSlicerLogic.messages import user_message

    text = user_message(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 4.00 GiB total)"))
    assert text.startswith("the GPU ran out of memory; nothing was written. Choose 'cpu'") and "\n" not in text


def test_unexpected_error_is_one_line_with_its_type():
    from MedSAMSlicerLogic.messages import user_message

    try:
        {}["missing"]
    except KeyError as error:
        text = user_message(error)
    assert text.startswith("unexpected error (KeyError: 'missing'); nothing was written") and "\n" not in text
