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

from .geometry import array_to_matrix, describe_grid, ijk_to_world, matrix_to_array, node_to_world, same_lattice
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
    dimensions = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    return node_to_world(segmentation_node) @ matrix_to_array(matrix), dimensions


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
    """The segment as a bool (k, j, i) array on the volume's grid (a copy).

    Read straight from the segment's labelmap and resampled (nearest neighbour) onto the volume's grid, in world
    coordinates (both nodes' parent transforms applied).  ``slicer.util.arrayFromSegmentBinaryLabelmap`` would add a
    temporary labelmap node and a colour node to the scene and remove them again: every node combobox, Subject
    Hierarchy and the Data module see those events, every 1.5 s while the time log watches edits (audit R11)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputImageError(f"segment {segment_id} is not in {segmentation_node.GetName()}")
    dimensions = volume_node.GetImageData().GetDimensions()
    shape = tuple(dimensions[::-1])
    labelmap = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap, True):
        raise InputImageError(f"segment {segment_id} of {segmentation_node.GetName()} has no labelmap to read")
    extent = labelmap.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return np.zeros(shape, dtype=bool)  # an empty segment
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, dimensions[0] - 1, 0, dimensions[1] - 1, 0, dimensions[2] - 1)
    reference.SetImageToWorldMatrix(array_to_matrix(ijk_to_world(volume_node)))
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, False):
        raise InputImageError(f"segment {segment_id} could not be read on the grid of {volume_node.GetName()}")
    scalars = resampled.GetPointData().GetScalars() if resampled.GetPointData() is not None else None
    out_extent = resampled.GetExtent()
    if scalars is None or out_extent[1] < out_extent[0]:
        return np.zeros(shape, dtype=bool)
    values = vtk.util.numpy_support.vtk_to_numpy(scalars).reshape(
        out_extent[5] - out_extent[4] + 1, out_extent[3] - out_extent[2] + 1, out_extent[1] - out_extent[0] + 1)
    mask = np.zeros(shape, dtype=bool)
    region = tuple(slice(max(low, 0), min(high, size - 1) + 1)
                   for low, high, size in zip(out_extent[4::-2], out_extent[5::-2], shape))
    inner = tuple(slice(r.start - low, r.stop - low) for r, low in zip(region, out_extent[4::-2]))
    mask[region] = values[inner] == segment.GetLabelValue()  # a shared layer holds other segments' labels too
    return mask


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
    # Straight into the segment (no temporary labelmap node in the scene, unlike
    # slicer.util.updateSegmentBinaryLabelmapFromArray: audit R11).
    labelmap = mask_to_labelmap(np.asarray(mask, dtype=bool), volume_node, segmentation_node)
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
        raise InputImageError(f"writing segment {segment_id} of {segmentation_node.GetName()} failed")


def write_segment_slice(segmentation_node, segment_id: str, np_axis: int, index: int, plane: np.ndarray,
                        volume_node) -> None:
    """Replace one slice of the segment (``index`` along the (k, j, i) axis ``np_axis``) with ``plane``; every
    other voxel keeps its value, other segments are not touched.  Only the slice is copied: a whole-volume write
    (:func:`write_segment`) of a 512x512x61 CT cost ~75 ms of the browser app's click-to-mask (issue 21).

    Two merges restricted to the slice's extent, because Slicer's "replace" mode replaces the whole segment with
    the modifier: the minimum clears the slice's voxels outside ``plane``, the maximum sets those inside it."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is None:
        raise InputImageError(f"segment {segment_id} no longer exists in {segmentation_node.GetName()}")
    dimensions = volume_node.GetImageData().GetDimensions()
    expected = tuple(n for axis, n in enumerate(dimensions[::-1]) if axis != np_axis)
    if tuple(plane.shape) != expected or not 0 <= index < dimensions[2 - np_axis]:
        raise ValueError(f"slice {index} of shape {plane.shape} does not fit the volume {dimensions[::-1]}")
    segmentation.SeparateSegmentLabelmap(segment_id)  # own layer: writing cannot touch a neighbour's voxels
    extent = [0, dimensions[0] - 1, 0, dimensions[1] - 1, 0, dimensions[2] - 1]
    extent[2 * (2 - np_axis)] = extent[2 * (2 - np_axis) + 1] = int(index)
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(*extent)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    scalars[:] = np.ascontiguousarray(np.expand_dims(plane, np_axis), dtype=np.uint8).ravel()
    matrix = np.linalg.inv(node_to_world(segmentation_node)) @ ijk_to_world(volume_node)  # as mask_to_labelmap
    labelmap.SetImageToWorldMatrix(array_to_matrix(matrix))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for mode in (logic.MODE_MERGE_MIN, logic.MODE_MERGE_MAX):
        if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, mode, extent):
            raise InputImageError(f"writing slice {index} of segment {segment_id} failed")


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
    matrix = ijk_to_world(volume_node)
    if segmentation_node is not None:
        matrix = np.linalg.inv(node_to_world(segmentation_node)) @ matrix
    labelmap.SetImageToWorldMatrix(array_to_matrix(matrix))
    return labelmap
