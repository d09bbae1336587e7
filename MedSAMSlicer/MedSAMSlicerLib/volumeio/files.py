"""Reading volumes and labels, writing masks on the input's exact grid.

Arrays are in numpy order ``(k, j, i)`` as SimpleITK returns them; spacing, origin and direction are in ITK order
``(i, j, k)`` and LPS physical space, as in the file.  Supported: anything SimpleITK reads (NIfTI, NRRD, MHA/MHD,
GIPL, ...) and MedSAM's npz layout (``imgs``, ``gts``, ``spacing``, optional ``origin`` and ``direction``).

Reading refuses, with one line and before allocating the voxels: anything but a regular file (a FIFO would hang),
a header claiming more memory than there is, a truncated file, and a grid (spacing, origin, direction) that is not
finite, positive and orthogonal (:mod:`.checks`).  Writing goes through :func:`~MedSAMSlicerLib.atomic.atomic_path`
and reads the written file back before it replaces anything, so a full disk never leaves a torn label behind.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..engine.volume import Volume
from ..errors import InputImageError, MedSAMError, OutputError, first_line
from ..paths import check_output_file, regular_file
from .checks import check_claimed_size, check_geometry, check_nifti_size, check_nrrd_header
from .native import native_output

log = logging.getLogger(__name__)
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


def _npz_member_header(archive: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype an npz member claims, checked against the bytes it holds, before numpy allocates it."""
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        header = member.tell()
    if dtype.hasobject:
        raise InputImageError(f"{path}: '{key}' holds Python objects, which are never loaded (they could run code); "
                              f"save plain numeric arrays")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size - header:
        raise InputImageError(f"{path}: '{key}' claims {' x '.join(map(str, shape)) or 'a scalar'} values "
                              f"({claimed} bytes) but holds {max(info.file_size - header, 0)}: the file is damaged")
    return shape, dtype


def _npz_vector(data, key: str, length: int, default: tuple[float, ...], path: Path) -> tuple[float, ...]:
    if key not in data:
        return default
    value = np.asarray(data[key])
    if value.dtype.kind not in "iuf":
        raise InputImageError(f"{path}: {key} must be numbers, not {value.dtype}")
    if key == "direction" and value.shape == (3, 3):
        value = value.ravel()
    if value.ndim != 1 or value.size != length:
        raise InputImageError(f"{path}: {key} must hold {length} numbers (a vector), not an array of shape "
                              f"{value.shape}")
    return tuple(float(v) for v in value)


def _read_npz(path: Path) -> Volume:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
            if "imgs" not in members:
                raise InputImageError(f"{path} has no 'imgs' array (MedSAM npz layout: imgs, gts, spacing)")
            claims = {key: _npz_member_header(archive, key, path) for key in ("imgs", "gts") if key in members}
        check_claimed_size(claims["imgs"][0][::-1], claims["imgs"][1].itemsize, path)
        with np.load(path, allow_pickle=False) as data:
            images = np.asarray(data["imgs"])
            label = np.asarray(data["gts"]) if "gts" in data else None
            spacing = _npz_vector(data, "spacing", 3, (1.0, 1.0, 1.0), path)
            origin = _npz_vector(data, "origin", 3, (0.0, 0.0, 0.0), path)
            direction = _npz_vector(data, "direction", 9, tuple(np.eye(3).ravel()), path)
    except MedSAMError:
        raise
    except Exception as error:  # not a zip, torn member, bad header: numpy and zipfile raise many kinds
        raise InputImageError(f"cannot read {path}: {first_line(error)}") from None
    check_geometry(spacing, origin, direction, path)
    if images.ndim == 4 and images.shape[-1] == 3:
        raise InputImageError(f"{path} holds RGB slices; MedSAMSlicer segments single-channel 3D volumes")
    images = _checked_array(images, str(path))
    if label is not None and label.shape != images.shape:
        raise InputImageError(f"{path}: gts shape {label.shape} differs from imgs shape {images.shape}")
    return Volume(images, spacing, origin, direction, str(path), None,
                  already_normalized=images.dtype == np.uint8, embedded_label=label)


def _itk_error(path: Path, error: BaseException, native: list[str]) -> InputImageError:
    """One line from an ITK read error, with what the C++ code printed when that says more."""
    message = first_line(error, 240)
    if native:
        message += f" ({'; '.join(native)[:160]})"
    return InputImageError(f"cannot read {path}: {message}")


def _bytes_per_voxel(pixel: str, components: int) -> int:
    bits = re.search(r"(\d+)-bit", pixel)
    size = int(bits.group(1)) // 8 if bits else 8
    return size * (2 if "complex" in pixel else 1) * max(components, 1)


def _read_sitk(path: Path):
    """Read with SimpleITK after the checks; returns the image (or raises :class:`InputImageError`)."""
    import SimpleITK as sitk

    check_nifti_size(path)
    check_nrrd_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    failure = None
    with native_output() as native:
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            failure = error
    if failure is not None:
        raise _itk_error(path, failure, native)
    dimension, components = reader.GetDimension(), reader.GetNumberOfComponents()
    if dimension != 3:
        raise InputImageError(f"{path} is a {dimension}D image; MedSAMSlicer segments single-channel 3D volumes")
    if components != 1:
        raise InputImageError(f"{path} has {components} components per voxel; give a single-channel volume")
    check_geometry(tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()), path)
    check_claimed_size(reader.GetSize(), _bytes_per_voxel(sitk.GetPixelIDValueAsString(reader.GetPixelID()), 1),
                       path)
    with native_output() as native:
        try:
            image = reader.Execute()
        except RuntimeError as error:
            failure = error
    if failure is not None:
        raise _itk_error(path, failure, native)
    for line in native:  # read fine, said something anyway (kept for -v; may include other threads' lines)
        log.info("%s: %s", path.name, line)
    return image


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D single-channel image; every problem is an :class:`InputImageError` with one line."""
    path = regular_file(path, "image", folder_hint="give an image file (NIfTI, NRRD, MHA, GIPL or npz)")
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    import SimpleITK as sitk

    image = _read_sitk(path)
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


def check_label_output(path: str | os.PathLike, inputs=()) -> Path:
    """Refuse, before any model work, a label output with an unknown extension or that would overwrite an input
    or cannot be written (see :func:`MedSAMSlicerLib.paths.check_output_file`)."""
    _extension(Path(path))
    return check_output_file(path, inputs)


def _verify_label(temp: Path, ext: str, labels: np.ndarray, shown: Path, native: list[str]) -> None:
    """Read the written file back: all of it must be there, with the voxels written."""
    try:
        if ext == ".npz":
            with np.load(temp, allow_pickle=False) as data:
                same = np.array_equal(data["segs"], labels)
        else:
            import SimpleITK as sitk

            image = _read_sitk(temp)
            if ext == ".seg.nrrd":
                same = tuple(image.GetSize())[:3] == labels.shape[::-1]
            else:
                same = np.array_equal(sitk.GetArrayViewFromImage(image), labels)
    except Exception as error:
        why = first_line(error)
        why = why.replace(str(temp), "it")
        same, detail = False, why
    else:
        detail = "its voxels differ from those written"
    if not same:
        note = f"; {'; '.join(native)[:160]}" if native else ""
        raise OutputError(f"cannot write {shown}: the written file does not read back whole ({detail}{note}); is "
                          f"the disk full?")


def write_label(path: str | os.PathLike, mask: np.ndarray, reference: Volume, segment_name: str = "MedSAM") -> Path:
    """Write a label (0 background, 1.. foreground) on the reference grid; the file appears whole or not at all,
    is read back before it replaces anything, and is never the reference's own file."""
    path = Path(path)
    ext = _extension(path)
    reference = reference.in_frame("LPS")  # files are LPS; a volume from Slicer's world may say RAS
    if mask.shape != reference.array.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume {reference.array.shape}")
    labels = np.asarray(mask).astype(np.uint8)
    check_output_file(path, [reference.path] if reference.path else [])
    native: list[str] = []
    with atomic_path(path, suffix=ext, verify=lambda temp: _verify_label(temp, ext, labels, path, native)) as temp:
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
            failure = None
            with native_output() as printed:
                try:
                    sitk.WriteImage(image, str(temp), useCompression=True)
                except RuntimeError as error:
                    failure = error
            native.extend(printed)
            if failure is not None:
                raise OutputError(f"cannot write {path}: {first_line(failure)}")
    for line in native:  # written and read back whole: what the C++ writer printed is only worth a -v line
        log.info("%s: %s", path.name, line)
    return path


def _write_seg_nrrd(path: Path, labels: np.ndarray, reference: Volume, segment_name: str) -> None:
    import slicerio

    segmentation = slicerio.create_segmentation(labels.shape[::-1], reference.ijk_to_lps())
    for value in [int(v) for v in np.unique(labels) if v != 0]:
        name = segment_name if value == 1 else f"{segment_name}_{value}"
        slicerio.add_segment(segmentation, np.transpose(labels == value), {"id": name, "name": name})
    slicerio.write_segmentation(str(path), segmentation)
