"""A Slicer volume node as the engine's :class:`Volume`: a private copy of the voxels with its geometry.

The engine never writes to ``Volume.array``, but the copy also protects the user's volume from anything that could
happen while a worker thread holds the array (the user may edit or close the volume in the meantime).

Geometry: Slicer's world is RAS (after any linear parent transform); the volume is built in that frame, labelled
``frame="RAS"``, and converted once, exactly, to LPS (:meth:`Volume.in_frame`), the frame of files and of the engine's
wire.  So ``VolumeOnGrid.volume`` is LPS like every other Volume, and a label written on it lands where the file's
label would (``VolumeOnGrid.ijk_to_world`` keeps the RAS matrix for the views).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vtk.util.numpy_support

from MedSAMSlicerLib.errors import InputImageError
from MedSAMSlicerLib.protocol import Volume, check_voxels, volume_from_matrix

from .geometry import ijk_to_world

_SCALAR_CLASSES = ("vtkMRMLScalarVolumeNode",)  # labelmaps, vectors and tensors are not images to segment


@dataclass
class VolumeOnGrid:
    """The engine's volume plus the matrix that maps its (i, j, k) indices to world RAS."""

    volume: Volume
    ijk_to_world: np.ndarray  # 4x4
    node_id: str
    name: str

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        k, j, i = self.volume.array.shape
        return (k, j, i)


def check_volume_node(volume_node) -> None:
    """Raise :class:`InputImageError` with one line when the node cannot be segmented."""
    if volume_node is None:
        raise InputImageError("no volume selected: load a CT or MR volume and pick it under 'Volume'")
    if volume_node.GetClassName() not in _SCALAR_CLASSES:
        what = "a label map" if volume_node.IsA("vtkMRMLLabelMapVolumeNode") else volume_node.GetClassName()
        raise InputImageError(f"{volume_node.GetName()} is {what}; pick a scalar (grey-value) CT or MR volume")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputImageError(f"{volume_node.GetName()} has no voxels loaded")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputImageError(f"{volume_node.GetName()} has {image.GetNumberOfScalarComponents()} components per "
                              "voxel; pick a single-channel volume")
    dimensions = image.GetDimensions()
    flat = [name for name, size in zip("ijk", dimensions) if size < 2]
    if flat:
        raise InputImageError(f"{volume_node.GetName()} is a 2D image ({'x'.join(map(str, dimensions))} voxels); "
                              "MedSAMSlicer segments 3D volumes")


def dicom_modality(volume_node) -> str | None:
    """The modality Slicer's DICOM module recorded for the node's series: a subject hierarchy attribute of the
    node's item ("DICOM.Modality"), not a node attribute; None for volumes not loaded from DICOM."""
    try:
        import slicer

        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
        item = hierarchy.GetItemByDataNode(volume_node) if hierarchy is not None else 0
        while item:  # the series item, or (for derived volumes) an ancestor that holds it
            value = hierarchy.GetItemAttribute(item, "DICOM.Modality")
            if value:
                return value.strip() or None
            item = hierarchy.GetItemParent(item)
    except (ImportError, AttributeError):  # a scene without subject hierarchy: no modality, auto reads intensities
        return None
    return None


def volume_from_node(volume_node) -> VolumeOnGrid:
    """Copy the node's voxels and geometry; the node is not modified."""
    check_volume_node(volume_node)
    image = volume_node.GetImageData()
    dimensions = image.GetDimensions()
    scalars = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array = np.array(scalars, copy=True).reshape(tuple(reversed(dimensions)))  # (k, j, i), our own memory
    check_voxels(array, volume_node.GetName())
    array.setflags(write=False)
    matrix = ijk_to_world(volume_node)
    modality = volume_node.GetAttribute("DICOM.Modality") or dicom_modality(volume_node)
    volume = volume_from_matrix(array, matrix, "RAS", path=volume_node.GetName(), modality=modality)
    return VolumeOnGrid(volume.in_frame("LPS"), matrix, volume_node.GetID(), volume_node.GetName())


def grid_key(volume_node) -> tuple:
    """Changes whenever the voxels or the geometry of the node change (for caching prepared volumes)."""
    image = volume_node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    return (volume_node.GetID(), image.GetMTime() if image is not None else 0,
            scalars.GetMTime() if scalars is not None else 0,
            tuple(np.round(ijk_to_world(volume_node).ravel(), 6)))


def show_window(volume_node, window: str) -> None:
    """Show ``volume_node`` with the display W/L of the engine window ``window`` (``choices.display_window_level``),
    so the reader sees what the model sees; automatic W/L where the window is a rule (auto, mr, none)."""
    from .choices import display_window_level

    display = volume_node.GetDisplayNode() if volume_node is not None else None
    if display is None:
        return
    preset = display_window_level(window)
    if preset is None:
        display.AutoWindowLevelOn()
    else:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*preset)
