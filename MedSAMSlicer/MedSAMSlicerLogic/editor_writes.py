"""Writes that go through Segment Editor (the MedSAM effect), and the check that a write really happened.

Why a writer of its own (audit W1, R1): Segment Editor's ``modifySegmentByLabelmap`` honours the editable area, the
intensity mask and the overwrite mode.  With the default "overwrite all segments", writing segment A also *erases*
A's new voxels from every other segment.  A MedSAM undo step (a snapshot of the target segment only) cannot bring
those back, so effect writes are recorded in Segment Editor's own history (the effect calls ``saveStateForUndo``
before the work) and never on MedSAM's stack: :attr:`SegmentEditorWriter.records_history` tells
``BoxSegmentationLogic`` so.  Undo in the effect is Segment Editor's Undo, which restores every segment.

The writer names the target segmentation and segment explicitly (no toggling of the editor's selected segment),
refuses to write when Segment Editor now edits another segmentation, and reports a write that Segment Editor
skipped without a word (``ModifySegmentByLabelmap`` returns nothing; it returns early, for example, when the
intensity mask's geometry differs) instead of saying "done".

No Qt here: the effect passes ``scriptedEffect.modifySegmentByLabelmap``; the tests pass the C++
``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` of slicer-core, the same code Slicer 5.10's effect calls.
"""

from __future__ import annotations

from typing import Callable

import slicer

from MedSAMSlicerLib.errors import MedSAMError

from .segments import mask_to_labelmap


class NotWritten(MedSAMError):
    """Segment Editor did not write the result (the segment is as it was)."""


def labelmap_mtime(segmentation_node, segment_id: str) -> int:
    """Modification time of the segment's binary labelmap (0 when there is none): any write bumps it."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return 0
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    return 0 if labelmap is None else int(labelmap.GetMTime())


class SegmentEditorWriter:
    """A ``Writer`` for :class:`BoxSegmentationLogic` that writes through Segment Editor.

    ``modify(segmentation_node, segment_id, labelmap)``: Segment Editor's write in "set" mode;
    ``editor_segmentation()``: the segmentation Segment Editor edits now.
    """

    records_history = True  # Segment Editor's history holds the undo step (it restores every segment)

    def __init__(self, modify: Callable, editor_segmentation: Callable) -> None:
        self.modify = modify
        self.editor_segmentation = editor_segmentation

    def __call__(self, target, mask, volume_node) -> None:
        if self.editor_segmentation() is not target.segmentation_node:
            raise NotWritten(f"Segment Editor now edits another segmentation than {target.segmentation_node.GetName()}"
                             "; nothing was written")
        if target.segmentation_node.GetSegmentation().GetSegment(target.segment_id) is None:
            raise NotWritten(f"segment {target.segment_id} was deleted meanwhile; nothing was written")
        labelmap = mask_to_labelmap(mask, volume_node, target.segmentation_node)
        before = labelmap_mtime(target.segmentation_node, target.segment_id)
        self.modify(target.segmentation_node, target.segment_id, labelmap)
        if labelmap_mtime(target.segmentation_node, target.segment_id) == before:
            raise NotWritten("Segment Editor did not write the result (check its Masking settings: editable area, "
                             "intensity range, and a source volume on the same grid); nothing was written")
