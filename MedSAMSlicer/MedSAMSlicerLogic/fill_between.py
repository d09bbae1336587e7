"""Fill between slices without Qt: the segment drawn on a few slices, interpolated over the empty slices between them.

Segment Editor's own "Fill between slices" effect (``SegmentEditorFillBetweenSlicesEffect``, an auto-complete effect
with a preview that needs Qt) runs ``vtkITK.vtkITKMorphologicalContourInterpolator`` on the segments' merged
labelmap.  slicer-core ships that same class (``slicer.vtkITKMorphologicalContourInterpolator``: ITK's
morphological contour interpolation, Albu et al. 2008, Insight Journal 977), so this module runs it on one segment's
mask, the way the effect does, and the browser app and the Slicer panel get the readers' real tool in the manual
arm of a study, not an imitation.

Rules (the effect's): a slice is filled only when it lies between two drawn slices along the interpolation axis;
drawn slices keep exactly what the reader drew; a slice right next to a drawn one is not "between" anything.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from MedSAMSlicerLib.errors import MedSAMError


class NothingToFill(MedSAMError):
    """The segment has no empty slice between two drawn slices."""


def drawn_slices(mask: np.ndarray, np_axis: int) -> list[int]:
    """Indices of the slices along ``np_axis`` that hold any voxel of ``mask`` (k, j, i)."""
    other = tuple(a for a in range(3) if a != np_axis)
    return [int(i) for i in np.flatnonzero(np.asarray(mask, bool).any(axis=other))]


def gap_axis(mask: np.ndarray) -> Optional[int]:
    """The numpy axis along which the drawn slices have empty slices between them (k first: the reader usually
    draws axial slices), or None."""
    for np_axis in (0, 1, 2):
        if np.any(np.diff(drawn_slices(mask, np_axis)) > 1):
            return np_axis
    return None


def fill_between_slices(mask: np.ndarray, np_axis: Optional[int] = None) -> np.ndarray:
    """``mask`` (bool, k, j, i) with the empty slices between drawn slices filled by morphological contour
    interpolation along ``np_axis`` (default: :func:`gap_axis`).  Raises :class:`NothingToFill` when there is no gap."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"fill between slices needs a 3D mask, got shape {mask.shape}")
    np_axis = gap_axis(mask) if np_axis is None else int(np_axis)
    if np_axis is None or not np.any(np.diff(drawn_slices(mask, np_axis)) > 1):
        raise NothingToFill("draw the object on at least two slices with empty slices between them; nothing to fill")
    image = vtk.vtkImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])  # VTK: i fastest, as numpy's C order (k, j, i)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.astype(np.uint8).ravel(), deep=True,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    interpolator = slicer.vtkITKMorphologicalContourInterpolator()
    interpolator.SetInputData(image)
    interpolator.SetAxis(2 - np_axis)  # ITK's axes are (i, j, k)
    interpolator.SetLabel(1)
    interpolator.Update()
    output = numpy_support.vtk_to_numpy(interpolator.GetOutput().GetPointData().GetScalars())
    filled = output.reshape(mask.shape) > 0
    return filled | mask  # what the reader drew stays drawn


__all__ = ["NothingToFill", "drawn_slices", "fill_between_slices", "gap_axis"]
