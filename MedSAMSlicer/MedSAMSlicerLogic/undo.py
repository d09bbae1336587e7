"""Undo for whole operations: one "Segment slice" or one "Propagate 3D" is one step, however many slices it wrote.

Before an operation writes a segment, the segment is copied whole (voxels, name, colour, tags) with
``vtkSegment.DeepCopy``; Undo puts that copy back at the same position in the segment list, so the segment is
exactly what it was, on its own grid.  A segment the operation created is removed on Undo.  Only the operation's
own segment is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import slicer

from MedSAMSlicerLib.errors import MedSAMError


class NothingToUndo(MedSAMError):
    """Undo was asked for with no operation recorded."""


class EditedSince(MedSAMError):
    """The segment was changed after the operation: restoring the snapshot would discard that edit."""


@dataclass
class SegmentSnapshot:
    segmentation_node_id: str
    segment_id: str
    copy: object | None  # vtkSegment, or None when the operation created the segment
    position: int  # index in the segmentation's segment list

    @staticmethod
    def take(segmentation_node, segment_id: str, created: bool) -> "SegmentSnapshot":
        segmentation = segmentation_node.GetSegmentation()
        copy = None
        if not created:
            copy = slicer.vtkSegment()
            copy.DeepCopy(segmentation.GetSegment(segment_id))
        return SegmentSnapshot(segmentation_node.GetID(), segment_id, copy,
                               segmentation.GetSegmentIndex(segment_id))

    def restore(self, scene) -> None:
        node = scene.GetNodeByID(self.segmentation_node_id)
        if node is None:
            raise NothingToUndo("the segmentation of the last operation was deleted; nothing to undo")
        segmentation = node.GetSegmentation()
        if segmentation.GetSegment(self.segment_id) is not None:
            segmentation.RemoveSegment(self.segment_id)
        if self.copy is None:
            return
        restored = slicer.vtkSegment()
        restored.DeepCopy(self.copy)  # keep our copy intact, so the stack stays valid if this is redone later
        count = segmentation.GetNumberOfSegments()
        before = segmentation.GetNthSegmentID(self.position) if self.position < count else ""
        segmentation.AddSegment(restored, self.segment_id, before)


@dataclass
class Operation:
    description: str  # "Segment slice 12", "Propagate 3D (9 slices)"
    snapshot: SegmentSnapshot
    details: dict = field(default_factory=dict)
    # The segment as this operation left it (labelmap MTime, digest of the written mask): Undo refuses when the
    # segment changed since then, so it never throws away a paint or erase made after the operation (audit R2).
    written_mtime: int = 0
    written_digest: str = ""


class UndoStack:
    def __init__(self, depth: int = 20) -> None:
        self.depth = depth  # each step holds one segment's labelmap: tens of MB at most for a large CT
        self._operations: list[Operation] = []

    def push(self, operation: Operation) -> None:
        self._operations.append(operation)
        del self._operations[:-self.depth]

    def __len__(self) -> int:
        return len(self._operations)

    @property
    def last(self) -> Operation | None:
        return self._operations[-1] if self._operations else None

    def undo(self, scene, check=None) -> Operation:
        """Restore the last operation's snapshot; ``check(operation)`` may raise to refuse (the step stays)."""
        if not self._operations:
            raise NothingToUndo("nothing to undo")
        if check is not None:
            check(self._operations[-1])
        operation = self._operations.pop()
        operation.snapshot.restore(scene)
        return operation

    def clear(self) -> None:
        self._operations.clear()
