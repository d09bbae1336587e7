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
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..protocol import Volume
from ..errors import InputImageError, MedSAMError, OutputError, first_line
from ..paths import check_output_file, regular_file
from .checks import checked_array as _checked_array
from .checks import check_claimed_size, check_geometry, check_nifti_size, check_nrrd_header
from .native import call_collecting, native_output

log = logging.getLogger(__name__)
_MODALITY_KEYS = ("modality", "Modality", "0008|0060", "MRML_Modality")


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
    _, failure, native = call_collecting(reader.ReadImageInformation)
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
    image, failure, native = call_collecting(reader.Execute)
    if failure is not None:
        raise _itk_error(path, failure, native)
    for line in native:  # read fine, said something anyway (kept for -v; may include other threads' lines)
        log.info("%s: %s", path.name, line)
    return image


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a 3D single-channel image, a DICOM series folder or a multi-frame DICOM file (``series_uid`` picks a
    series in a folder of several, see :mod:`.dicom`); every problem is an :class:`InputImageError` with one
    line."""
    if os.path.isdir(path):
        from .dicom import read_dicom

        return read_dicom(path, series_uid)
    path = regular_file(path, "image", folder_hint="give an image file (NIfTI, NRRD, MHA, GIPL or npz)")
    from .dicom import looks_like_dicom

    if looks_like_dicom(path):
        from .dicom import read_dicom

        return read_dicom(path, series_uid)
    if series_uid is not None:
        raise InputImageError(f"--series is for DICOM input; {path} is not DICOM")
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
        reoriented = reorient_to(label, reference)
        if reoriented is not None:
            label = reoriented
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


def reorient_to(volume: Volume, reference: Volume) -> Volume | None:
    """``volume``'s voxels on ``reference``'s grid when both grids hold the same physical voxel centres, only with
    axes permuted or flipped (a label stored with a flipped y axis, a series read in the other slice order); the
    voxels are moved by physical position, exactly (no interpolation).  None when the grids differ otherwise."""
    if volume.array.ndim != 3:
        return None
    # index of the reference maps to the volume's index through an integer permutation/flip matrix
    reference_to_volume = np.linalg.inv(volume.ijk_to_lps()) @ reference.ijk_to_lps()
    rotation, offset = reference_to_volume[:3, :3], reference_to_volume[:3, 3]
    rounded = np.rint(rotation)
    if not np.allclose(rotation, rounded, atol=1e-3) or not np.allclose(offset, np.rint(offset), atol=1e-2):
        return None
    if not (np.abs(rounded).sum(axis=0) == 1).all() or not (np.abs(rounded).sum(axis=1) == 1).all():
        return None
    array = volume.array  # (k, j, i): numpy axis 2 - c is index axis c
    source_axes = [int(np.flatnonzero(rounded[:, c])[0]) for c in range(3)]  # reference axis c -> volume axis
    array = np.transpose(array, [2 - source_axes[2 - a] for a in range(3)])
    shape_ijk = array.shape[::-1]
    if shape_ijk != reference.array.shape[::-1]:
        return None
    for c in range(3):
        sign = rounded[source_axes[c], c]
        start = int(np.rint(offset[source_axes[c]]))
        expected = 0 if sign > 0 else volume.array.shape[2 - source_axes[c]] - 1
        if start != expected:
            return None
        if sign < 0:
            array = np.flip(array, axis=2 - c)
    return reference.with_array(np.ascontiguousarray(array))


def file_grid(path: str | os.PathLike) -> Volume | None:
    """The grid of an image file, from its header only (no voxels read): a volume whose array is a zero-byte
    broadcast of the file's shape.  None for what has no single-file header (npz, DICOM, folders) or cannot be
    read."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() == ".npz":
        return None
    from .dicom import looks_like_dicom

    if looks_like_dicom(path):
        return None
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    _, failure, _ = call_collecting(reader.ReadImageInformation)
    if failure is not None or reader.GetDimension() != 3:
        return None
    shape = tuple(int(n) for n in reader.GetSize())[::-1]
    return Volume(np.broadcast_to(np.zeros((), np.uint8), shape), tuple(reader.GetSpacing()),
                  tuple(reader.GetOrigin()), tuple(reader.GetDirection()), str(path))


def on_file_grid(mask: np.ndarray, reference: Volume, image_path: str | os.PathLike) -> tuple[np.ndarray, Volume]:
    """``mask`` (on ``reference``'s grid) moved onto the grid of the image file it was drawn on, when the two grids
    hold the same voxel centres with axes flipped or permuted (3D Slicer loads some files with an axis the other
    way round): a saved label then has the image's own header, which tools that compare headers expect.  Unchanged
    when the file has no header to match or the grids differ otherwise.  The returned reference carries the image's
    path, so the writers refuse to write over it."""
    grid = file_grid(image_path)
    if grid is None:
        return mask, reference
    if grid.same_grid(reference):
        return mask, replace(reference, path=grid.path)
    moved = reorient_to(reference.with_array(mask), grid)
    if moved is None:
        return mask, reference
    return moved.array, moved


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


def write_label(path: str | os.PathLike, mask: np.ndarray, reference: Volume, segment_name: str = "MedSAM",
                provenance=None) -> Path:
    """Write a label (0 background, 1.. foreground) on the reference grid; the file appears whole or not at all,
    is read back before it replaces anything, and is never the reference's own file.  ``provenance``
    (:class:`.provenance.Provenance`): in the segment tags of a ``.seg.nrrd``, else in a JSON sidecar beside the
    label (written after it)."""
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
            _write_seg_nrrd(temp, labels, reference, segment_name, provenance)
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
    if provenance is not None and ext != ".seg.nrrd":
        from .provenance import write_sidecar

        write_sidecar(path, provenance)
    return path


def _write_seg_nrrd(path: Path, labels: np.ndarray, reference: Volume, segment_name: str, provenance=None) -> None:
    import slicerio

    segmentation = slicerio.create_segmentation(labels.shape[::-1], reference.ijk_to_lps())
    for value in [int(v) for v in np.unique(labels) if v != 0]:
        name = segment_name if value == 1 else f"{segment_name}_{value}"
        properties = {"id": name, "name": name}
        if provenance is not None:  # Slicer keeps segment tags it does not know and lists them
            properties["tags"] = provenance.segment_tags()
        slicerio.add_segment(segmentation, np.transpose(labels == value), properties)
    slicerio.write_segmentation(str(path), segmentation)
