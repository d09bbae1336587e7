"""Noticing manual edits (Segment Editor paint, erase, scissors...) of the segment MedSAMSlicer works on.

The segmentation's ``SegmentModified`` event fires on every brush stroke, so the watcher only marks itself dirty
then; :meth:`ManualEditWatcher.collect` (called by the panel's timer, or by a test) compares the segment with the
state it last knew and returns which slices changed.  Our own writes are made inside :meth:`suspended`, and the
watcher's baseline is set to their result, so they are never reported as manual edits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import slicer

from MedSAMSlicerLib.study.timelog import changed_slices

from .segments import read_segment


@dataclass(frozen=True)
class ManualEdit:
    slices: list[int]
    voxels: int  # voxels that changed (added or removed)


class ManualEditWatcher:
    def __init__(self, segmentation_node, segment_id: str, volume_node, np_axis: int) -> None:
        self.segmentation_node, self.segment_id = segmentation_node, segment_id
        self.volume_node, self.np_axis = volume_node, np_axis
        self.baseline = self._read()
        self._dirty = False
        self._suspended = 0
        self._observer = segmentation_node.GetSegmentation().AddObserver(slicer.vtkSegmentation.SegmentModified,
                                                                        self._on_modified)

    def _read(self) -> np.ndarray | None:
        if self.segmentation_node.GetSegmentation().GetSegment(self.segment_id) is None:
            return None
        return read_segment(self.segmentation_node, self.segment_id, self.volume_node)

    def _on_modified(self, caller, event) -> None:
        if not self._suspended:
            self._dirty = True

    @contextmanager
    def suspended(self):
        """Our own write: not a manual edit; the baseline becomes the written result."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1
            self.baseline = self._read()

    def rebase(self) -> None:
        """The segment as it is now is the baseline (an undo or a write that is not the reader's own edit)."""
        self.baseline = self._read()

    def collect(self) -> ManualEdit | None:
        """What changed since the last known state, or None if nothing did."""
        if not self._dirty:
            return None
        self._dirty = False
        current = self._read()
        if current is None or self.baseline is None:
            self.baseline = current
            return None
        slices = changed_slices(self.baseline, current, self.np_axis)
        voxels = int(np.count_nonzero(self.baseline != current))
        self.baseline = current
        return ManualEdit(slices, voxels) if slices else None

    def stop(self) -> None:
        if self._observer is not None:
            self.segmentation_node.GetSegmentation().RemoveObserver(self._observer)
            self._observer = None
