"""Writing a mask into one segment of a segmentation node, and nothing else.

Rules that keep the user's work safe:
- the target segment is new unless the user picked one; other segments are never written;
- before writing, the target segment is moved to its own labelmap layer, so a shared layer (where Slicer keeps
  non-overlapping segments together) cannot make our write erase a neighbour's voxels;
- the segmentation must be on the volume's voxel lattice: writing onto another grid would resample the result
  (and, on undo, the user's segment), so that is refused with a message instead.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
import vtk.util.numpy_support

from MedSAMSlicerLib.errors import InputImageError

from .geometry import describe_grid, matrix_to_array, node_to_world, same_lattice
from .volume_nodes import VolumeOnGrid

DEFAULT_SEGMENT_NAME = "MedSAM"


def reference_geometry_matrix(segmentation_node) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """IJK-to-world matrix and dimensions of the segmentation's reference grid, or None when it has none yet."""
    segmentation = segmentation_node.GetSegmentation()
    text = segmentation.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not text:
        return None
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image, False):
        return None
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    extent = image.GetExtent()
    dimensions = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3))
    return node_to_world(segmentation_node) @ matrix_to_array(matrix), dimensions  # type: ignore[return-value]


def check_segmentation_grid(segmentation_node, grid: VolumeOnGrid) -> None:
    """Refuse a segmentation whose voxels do not sit on the volume's voxels."""
    reference = reference_geometry_matrix(segmentation_node)
    has_segments = segmentation_node.GetSegmentation().GetNumberOfSegments() > 0
    if reference is None or not has_segments:
        return  # an empty segmentation takes the volume's grid when we write
    matrix, dimensions = reference
    if not same_lattice(matrix, grid.ijk_to_world):
        raise InputImageError(
            f"segmentation {segmentation_node.GetName()} is on another grid ({describe_grid(dimensions, matrix)}) "
            f"than {grid.name} ({describe_grid(grid.shape_kji[::-1], grid.ijk_to_world)}); pick 'Create new "
            "segmentation' so that nothing is resampled")


def prepare_segmentation(segmentation_node, volume_node, grid: VolumeOnGrid) -> None:
    """Check the grid, and give an empty segmentation the volume as reference geometry (as Segment Editor does)."""
    check_segmentation_grid(segmentation_node, grid)
    if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()


def add_segment(segmentation_node, name: str = DEFAULT_SEGMENT_NAME) -> str:
    """A new empty segment with a unique name; returns its ID."""
    segmentation = segmentation_node.GetSegmentation()
    existing = {segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())}
    unique, number = name, 1
    while unique in existing:
        number += 1
        unique = f"{name} {number}"
    return segmentation.AddEmptySegment("", unique)


def segment_exists(segmentation_node, segment_id: str) -> bool:
    return bool(segment_id) and segmentation_node.GetSegmentation().GetSegment(segment_id) is not None


def read_segment(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment as a bool (k, j, i) array on the volume's grid (a copy)."""
    array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    return np.asarray(array) > 0


def count_segment_voxels(segmentation_node, segment_id: str) -> int:
    """How many voxels the segment holds, counted on its own labelmap layer as stored (no copy onto the volume's
    grid, unlike :func:`read_segment`: a status line can afford this after every result).  Layers that several
    segments share are counted by the segment's label value."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return 0
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if labelmap is None or labelmap.GetPointData() is None or labelmap.GetPointData().GetScalars() is None:
        return 0
    extent = labelmap.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return 0
    scalars = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    return int(np.count_nonzero(scalars == segment.GetLabelValue()))


def write_segment(segmentation_node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    """Replace the segment's voxels with ``mask`` ((k, j, i) on the volume's grid); other segments keep theirs."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is None:
        raise InputImageError(f"segment {segment_id} no longer exists in {segmentation_node.GetName()}")
    expected = volume_node.GetImageData().GetDimensions()[::-1]
    if tuple(mask.shape) != tuple(expected):
        raise ValueError(f"mask shape {mask.shape} differs from the volume {expected}")
    segmentation.SeparateSegmentLabelmap(segment_id)  # own layer: writing cannot touch a neighbour's voxels
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.asarray(mask, dtype=np.uint8), segmentation_node,
                                                     segment_id, volume_node)


def mask_to_labelmap(mask: np.ndarray, volume_node, segmentation_node=None):
    """A (k, j, i) mask on the volume's grid as a ``vtkOrientedImageData`` in the segmentation node's coordinates
    (world without the segmentation's parent transform), the form Segment Editor's
    ``modifySelectedSegmentByLabelmap`` takes."""
    dimensions = volume_node.GetImageData().GetDimensions()
    if tuple(mask.shape) != tuple(dimensions[::-1]):
        raise ValueError(f"mask shape {mask.shape} differs from the volume {dimensions[::-1]}")
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(*dimensions)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    scalars[:] = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    labelmap.GetPointData().GetScalars().Modified()
    matrix = node_to_world(volume_node) @ _ijk_to_ras(volume_node)
    if segmentation_node is not None:
        matrix = np.linalg.inv(node_to_world(segmentation_node)) @ matrix
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(matrix[r, c]))
    labelmap.SetImageToWorldMatrix(vtk_matrix)
    return labelmap


def _ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)
