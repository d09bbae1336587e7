"""Undo never loses voxels, on real slicer-core (audit W1, R1, R2).

W1: the Segment Editor effect writes through Segment Editor (``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap``,
what ``qSlicerSegmentEditorAbstractEffect::modifySegmentByLabelmap`` delegates to in Slicer 5.10).  With the default
"overwrite all segments" that write erases the new voxels from *other* segments.  MedSAM's own undo (a snapshot of the
target segment) used to be the effect's Undo and left those voxels erased; effect writes now live in Segment Editor's
history only, whose Undo restores every segment.

R1: the effect writes into the segment it names (no toggling of the editor's selection), refuses a segmentation that
Segment Editor no longer edits, and reports a write Segment Editor skipped.

R2: the panel's MedSAM Undo refuses to throw away a manual edit made after the operation.

No engine: the engine's result is a given mask (an ``Outcome`` as the engine would return it).
"""

from __future__ import annotations

import numpy as np
import pytest

from MedSAMSlicerLib.protocol import Box, SliceResult
from slicer_fixtures import NO_SLICER, roi_in_ras

try:
    import slicer
except ImportError:
    pytest.skip(NO_SLICER, allow_module_level=True)

from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic, Outcome
from MedSAMSlicerLogic.editor_writes import NotWritten, SegmentEditorWriter
from MedSAMSlicerLogic.segments import add_segment, read_segment, write_segment
from MedSAMSlicerLogic.undo import EditedSince, NothingToUndo

SHAPE = (5, 20, 20)  # (k, j, i)
SLICE = 2


@pytest.fixture
def scene_with_two_segments(harness):
    """A volume, a segmentation with an empty segment A and a 10x10 segment B on slice 2, Segment Editor's logic
    on it (default overwrite mode), and an ROI on slice 2 as a drawn box would be."""
    scene = harness.scene
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    slicer.util.updateVolumeFromArray(volume, np.zeros(SHAPE, np.int16))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "s")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.CreateDefaultDisplayNodes()
    a, b = add_segment(segmentation, "A"), add_segment(segmentation, "B")
    mask_b = np.zeros(SHAPE, bool)
    mask_b[SLICE, 5:15, 5:15] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask_b.astype(np.uint8), segmentation, b, volume)

    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    assert editor_node.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments  # the default
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(segmentation)
    editor.SetSourceVolumeNode(volume)
    editor_node.SetSelectedSegmentID(a)
    roi = roi_in_ras(scene, volume, "k", SLICE, SLICE, Box(8, 8, 17, 17))
    logic = BoxSegmentationLogic(scene, engine=None)
    yield volume, segmentation, a, b, editor, editor_node, roi, logic
    logic.reset()
    logic.detach()


def effect_writer(editor, editor_node):
    """What the effect builds: ``scriptedEffect.modifySegmentByLabelmap(node, id, labelmap, ModificationModeSet)``."""
    return SegmentEditorWriter(
        lambda node, segment_id, labelmap: editor.ModifySegmentByLabelmap(
            node, segment_id, labelmap, slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet, True, False),
        editor_node.GetSegmentationNode)


def engine_result(logic, volume, roi) -> tuple:
    """The request a click builds, and the engine's answer: a 10x10 square on slice 2 overlapping B by 7x7."""
    request = logic.slice_request(volume, roi)
    square = np.zeros(SHAPE[1:], bool)
    square[8:18, 8:18] = True
    return request, Outcome(0.1, 1, slice_result=SliceResult(SLICE, square, 0.9, request.prompt.box))


def voxels(segmentation, segment_id, volume) -> int:
    return int(read_segment(segmentation, segment_id, volume).sum())


def test_effect_write_is_undone_by_segment_editor_with_other_segments_intact(scene_with_two_segments):
    volume, segmentation, a, b, editor, editor_node, roi, logic = scene_with_two_segments
    assert (voxels(segmentation, a, volume), voxels(segmentation, b, volume)) == (0, 100)
    request, outcome = engine_result(logic, volume, roi)

    editor.SaveStateForUndo()  # the effect's scriptedEffect.saveStateForUndo() at the click
    editor_node.SetSelectedSegmentID(b)  # the user selects another segment while the engine works
    logic.apply_slice(volume, request, outcome, segmentation, a, writer=effect_writer(editor, editor_node))
    assert (voxels(segmentation, a, volume), voxels(segmentation, b, volume)) == (100, 51)  # B overwritten
    assert editor_node.GetSelectedSegmentID() == b  # the write named its segment; the selection was not touched

    # MedSAM's own Undo holds nothing for an effect write: it could restore A only (B would stay at 51).
    assert len(logic.undo_stack) == 0
    with pytest.raises(NothingToUndo):
        logic.undo()
    assert voxels(segmentation, b, volume) == 51

    assert editor.CanUndo()
    editor.Undo()  # what the effect's Undo (Ctrl+Alt+U) and Segment Editor's Ctrl+Z call
    assert (voxels(segmentation, a, volume), voxels(segmentation, b, volume)) == (0, 100)  # B intact again


def test_effect_refuses_a_segmentation_segment_editor_no_longer_edits(scene_with_two_segments, harness):
    volume, segmentation, a, b, editor, editor_node, roi, logic = scene_with_two_segments
    request, outcome = engine_result(logic, volume, roi)
    other = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    editor_node.SetAndObserveSegmentationNode(other)
    with pytest.raises(NotWritten, match="another segmentation"):
        logic.apply_slice(volume, request, outcome, segmentation, a, writer=effect_writer(editor, editor_node))
    assert (voxels(segmentation, a, volume), voxels(segmentation, b, volume)) == (0, 100)


def test_a_write_segment_editor_skipped_is_reported_not_done(scene_with_two_segments):
    volume, segmentation, a, b, editor, editor_node, roi, logic = scene_with_two_segments
    request, outcome = engine_result(logic, volume, roi)
    skipped = SegmentEditorWriter(lambda node, segment_id, labelmap: None, editor_node.GetSegmentationNode)
    with pytest.raises(NotWritten, match="did not write"):
        logic.apply_slice(volume, request, outcome, segmentation, a, writer=skipped)
    assert len(logic.undo_stack) == 0 and voxels(segmentation, b, volume) == 100


def test_panel_undo_refuses_to_discard_a_later_manual_edit(scene_with_two_segments):
    volume, segmentation, a, b, editor, editor_node, roi, logic = scene_with_two_segments
    request, outcome = engine_result(logic, volume, roi)
    operation = logic.apply_slice(volume, request, outcome, segmentation, a)  # the panel's own writer
    assert len(logic.undo_stack) == 1 and voxels(segmentation, a, volume) == 100

    painted = read_segment(segmentation, a, volume)
    painted[SLICE, 0:3, 0:3] = True  # the user paints 9 more voxels into A after the operation
    write_segment(segmentation, a, painted, volume)
    with pytest.raises(EditedSince, match="edited after"):
        logic.undo()
    assert voxels(segmentation, a, volume) == 109 and len(logic.undo_stack) == 1  # the paint kept, step kept

    write_segment(segmentation, a, _square(), volume)  # the user erases the paint again: A is as the operation left it
    assert voxels(segmentation, a, volume) == 100
    assert logic.undo() is operation  # same voxels as written (MTime moved): Undo is safe and goes ahead
    assert voxels(segmentation, a, volume) == 0 and voxels(segmentation, b, volume) == 100


def _square() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[SLICE, 8:18, 8:18] = True
    return mask


def test_reading_and_writing_a_segment_adds_no_node_to_the_scene(scene_with_two_segments, harness):
    """R11: the time log's edit watcher reads the segment every 1.5 s; slicer.util's array helpers add and remove a
    temporary labelmap node (and a colour node) each time, which every node combobox and the Data module see."""
    volume, segmentation, a, b, editor, editor_node, roi, logic = scene_with_two_segments
    added = []
    tag = harness.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, lambda caller, event: added.append(event))
    try:
        mask = read_segment(segmentation, b, volume)
        mask[SLICE + 1, 0:4, 0:4] = True
        write_segment(segmentation, b, mask, volume)
        assert voxels(segmentation, b, volume) == 116
    finally:
        harness.scene.RemoveObserver(tag)
    assert added == []
