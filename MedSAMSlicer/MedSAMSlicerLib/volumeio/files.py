"""Reading volumes and labels, writing masks on the input's exact grid.

Arrays are in numpy order ``(k, j, i)`` as SimpleITK returns them; spacing, origin and direction are in ITK order
``(i, j, k)`` and LPS physical space, as in the file.  Supported: anything SimpleITK reads (NIfTI, NRRD, MHA/MHD,
GIPL, ...) and MedSAM's npz layout (``imgs``, ``gts``, ``spacing``, optional ``origin`` and ``direction``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..engine.volume import Volume
from ..errors import InputImageError, first_line

_MODALITY_KEYS = ("modality", "Modality", "0008|0060", "MRML_Modality")


def _checked_array(array: np.ndarray, path: str) -> np.ndarray:
    if array.ndim != 3:
        what = "2D image" if array.ndim == 2 else f"{array.ndim}D image"
        raise InputImageError(f"{path} is a {what}; MedSAMSlicer segments single-channel 3D volumes")
    if min(array.shape) < 1 or array.size == 0:
        raise InputImageError(f"{path} has no voxels")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputImageError(f"{path} has {bad} NaN or infinite voxels; fix or mask them before segmenting")
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise InputImageError(f"{path} has voxel type {array.dtype}, not a number")
    array.setflags(write=False)
    return array


def _read_npz(path: Path) -> Volume:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "imgs" not in data:
                raise InputImageError(f"{path} has no 'imgs' array (MedSAM npz layout: imgs, gts, spacing)")
            images = np.asarray(data["imgs"])
            label = np.asarray(data["gts"]) if "gts" in data else None
            spacing = tuple(float(v) for v in data["spacing"]) if "spacing" in data else (1.0, 1.0, 1.0)
            origin = tuple(float(v) for v in data["origin"]) if "origin" in data else (0.0, 0.0, 0.0)
            direction = tuple(float(v) for v in data["direction"]) if "direction" in data else tuple(
                np.eye(3).ravel())
    except InputImageError:
        raise
    except Exception as error:
        raise InputImageError(f"cannot read {path}: {first_line(error)}") from error
    if images.ndim == 4 and images.shape[-1] == 3:
        raise InputImageError(f"{path} holds RGB slices; MedSAMSlicer segments single-channel 3D volumes")
    images = _checked_array(images, str(path))
    if label is not None and label.shape != images.shape:
        raise InputImageError(f"{path}: gts shape {label.shape} differs from imgs shape {images.shape}")
    return Volume(images, spacing, origin, direction, str(path), None,
                  already_normalized=images.dtype == np.uint8, embedded_label=label)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D single-channel image; every problem is an :class:`InputImageError` with one line."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"image not found: {path}")
    if path.is_dir():
        raise InputImageError(f"{path} is a folder; give an image file (NIfTI, NRRD, MHA, GIPL or npz)")
    if path.suffix == ".npz":
        return _read_npz(path)
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dimension, components = reader.GetDimension(), reader.GetNumberOfComponents()
        if dimension != 3:
            raise InputImageError(f"{path} is a {dimension}D image; MedSAMSlicer segments single-channel 3D volumes")
        if components != 1:
            raise InputImageError(f"{path} has {components} components per voxel; give a single-channel volume")
        image = reader.Execute()
    except InputImageError:
        raise
    except RuntimeError as error:
        raise InputImageError(f"cannot read {path}: {first_line(error)}") from error
    modality = next((image.GetMetaData(k) for k in _MODALITY_KEYS if image.HasMetaDataKey(k)), None)
    array = _checked_array(sitk.GetArrayFromImage(image), str(path))
    return Volume(array, tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()),
                  str(path), modality.strip() if modality else None)


def read_label(path: str | os.PathLike | None, reference: Volume) -> np.ndarray:
    """A label volume on the reference's grid, as an integer array (k, j, i)."""
    if path is None or (str(path) == reference.path and reference.embedded_label is not None):
        if reference.embedded_label is None:
            raise InputImageError(f"no label given and {reference.path} has none embedded")
        return reference.embedded_label
    label = read_volume(path)
    if label.embedded_label is not None:
        label = label.with_array(label.embedded_label)
    if not reference.same_grid(label):
        raise InputImageError(
            f"label {path} is not on the image grid (image {reference.array.shape[::-1]} at spacing "
            f"{np.round(reference.spacing, 4).tolist()}, label {label.array.shape[::-1]} at "
            f"{np.round(label.spacing, 4).tolist()}); resample it first")
    if not np.issubdtype(label.array.dtype, np.integer):
        rounded = np.rint(label.array)
        if not np.array_equal(rounded, label.array):
            raise InputImageError(f"label {path} has non-integer values; give a label map")
        return rounded.astype(np.int32)
    return label.array


WRITABLE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".npz")


def _extension(path: Path) -> str:
    """The compound extension; writers pick the format from it, so temporary files keep it."""
    for ext in WRITABLE_EXTENSIONS:
        if path.name.endswith(ext):
            return ext
    raise InputImageError(f"cannot write {path}: use .nii.gz, .nii, .nrrd, .seg.nrrd, .mha or .npz")


def write_label(path: str | os.PathLike, mask: np.ndarray, reference: Volume, segment_name: str = "MedSAM") -> Path:
    """Write a label (0 background, 1.. foreground) on the reference grid; the file appears whole or not at all."""
    path = Path(path)
    ext = _extension(path)
    if mask.shape != reference.array.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume {reference.array.shape}")
    labels = np.asarray(mask).astype(np.uint8)
    with atomic_path(path, suffix=ext) as temp:
        if ext == ".npz":
            np.savez_compressed(temp, segs=labels, spacing=np.asarray(reference.spacing))
        elif ext == ".seg.nrrd":
            _write_seg_nrrd(temp, labels, reference, segment_name)
        else:
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(labels)
            image.SetSpacing(reference.spacing)
            image.SetOrigin(reference.origin)
            image.SetDirection(reference.direction)
            sitk.WriteImage(image, str(temp), useCompression=True)
    return path


def _write_seg_nrrd(path: Path, labels: np.ndarray, reference: Volume, segment_name: str) -> None:
    import slicerio

    segmentation = slicerio.create_segmentation(labels.shape[::-1], reference.ijk_to_lps())
    for value in [int(v) for v in np.unique(labels) if v != 0]:
        name = segment_name if value == 1 else f"{segment_name}_{value}"
        slicerio.add_segment(segmentation, np.transpose(labels == value), {"id": name, "name": name})
    slicerio.write_segmentation(str(path), segmentation)
