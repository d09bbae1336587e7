"""Reading a DICOM image series (a folder of slices, or one multi-frame file) into a :class:`Volume`.

pydicom reads the tags (every file's header only, so choosing a series among thousands of files is cheap); the
slices are sorted by their position along the slice normal, never by file name or instance number; the geometry is
checked before any voxel is read, and every problem is one line (:class:`InputImageError`):

- several series in the folder and no ``--series UID`` (the line lists them: UID, description, modality, slices);
- a non-image object given as the image (SR, SEG, RTSTRUCT, presentation states...);
- mixed orientations or sizes, duplicated slice positions, missing slices (a gap of about twice the usual spacing),
  uneven spacing beyond 1 % (and 0.01 mm), gantry tilt (positions that do not step along the slice normal);
- a compressed transfer syntax that neither GDCM (inside SimpleITK) nor an installed pydicom decoder can decode.

The voxels of a single-frame series are read by SimpleITK/GDCM (well kept; applies the rescale slope/intercept),
given the file list in our sorted order; its geometry must agree with ours.  Multi-frame files (enhanced CT/MR,
legacy-converted enhanced) are read by pydicom with the per-frame positions.  The result is a
:class:`DicomVolume`: a :class:`Volume` that also knows its source (UIDs, the datasets without pixel data, the
frame order) so that a DICOM SEG can reference it; the modality tag feeds the window choice (``auto``).
Patient tags are kept only inside the source datasets: nothing here logs them.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..protocol import Volume
from ..errors import InputImageError, first_line
from .checks import check_claimed_size, check_geometry, checked_array
from .native import call_collecting

log = logging.getLogger(__name__)

# Modalities and storage classes that are not images: refusing them by name beats a confusing geometry error.
_NOT_IMAGE_MODALITIES = {"SR": "a structured report (SR)", "SEG": "a segmentation (SEG)",
                         "RTSTRUCT": "an RT structure set (RTSTRUCT)", "RTPLAN": "an RT plan", "RTDOSE": "an RT dose",
                         "PR": "a presentation state (PR)", "KO": "a key object selection (KO)",
                         "REG": "a registration (REG)", "DOC": "an encapsulated document"}
_SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
_RTSTRUCT_SOP = "1.2.840.10008.5.1.4.1.1.481.3"
# Transfer syntaxes GDCM (in SimpleITK) decodes: uncompressed, deflated, JPEG baseline/extended/lossless,
# JPEG-LS, JPEG 2000, RLE.  Anything else (HTJ2K, JPEG XL, video...) needs a pydicom decoder plug-in.
_GDCM_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                  "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                  "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                  "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"}
SPACING_TOLERANCE = 0.01  # relative: 1 % of the slice spacing (and at least 0.01 mm) before slices count as uneven
_ORIENTATION_TOLERANCE = 1e-4


@dataclass
class DicomSource:
    """What a DICOM SEG must reference: the datasets (no pixel data) in the volume's slice order."""
    study_uid: str
    series_uid: str
    modality: str
    datasets: list = field(repr=False)  # pydicom Datasets, one per file, sorted like the volume's k axis
    frame_order: list[int] | None = None  # multi-frame: frame number (0-based) of each k, else None
    files: list[str] = field(default_factory=list, repr=False)
    description: str = ""


@dataclass
class DicomVolume(Volume):
    source: DicomSource | None = field(default=None, repr=False)


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """A folder, a ``.dcm`` file, or a file with the DICOM preamble ("DICM" at byte 128)."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as stream:
            stream.seek(128)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not DICOM (a README, a DICOMDIR's neighbour): skipped when scanning a folder
        return None


def _text(ds, keyword: str, default: str = "") -> str:
    value = getattr(ds, keyword, None)
    return default if value is None else str(value).strip()


def _refuse_non_image(ds, shown) -> None:
    modality = _text(ds, "Modality").upper()
    sop = _text(ds, "SOPClassUID")
    what = _NOT_IMAGE_MODALITIES.get(modality)
    if what is None and sop == _SEG_SOP:
        what = "a segmentation (SEG)"
    if what is None and sop == _RTSTRUCT_SOP:
        what = "an RT structure set (RTSTRUCT)"
    if what is None and "PixelData" not in ds and "FloatPixelData" not in ds and getattr(ds, "Rows", None) is None:
        what = f"a DICOM object without pixel data (modality {modality or 'unknown'})"
    if what is not None:
        raise InputImageError(f"{shown} is {what}, not an image series; give the image series it refers to")


def _scan_folder(folder: Path) -> dict[str, list[tuple[Path, object]]]:
    series: dict[str, list[tuple[Path, object]]] = {}
    names = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")
    for path in names:
        ds = _header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    return series


def describe_series(datasets: list) -> str:
    """One entry of the series list: UID, description, modality, slice count (no patient tags)."""
    first = datasets[0]
    frames = sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in datasets)
    return (f"{first.SeriesInstanceUID} ({_text(first, 'SeriesDescription') or 'no description'}, "
            f"{_text(first, 'Modality') or '?'}, {frames} slice{'s' if frames != 1 else ''})")


def _check_syntax(ds, shown) -> bool:
    """True when GDCM decodes the transfer syntax; False when only pydicom can; refused when neither can."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2.1")
    if syntax in _GDCM_SYNTAXES:
        return True
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(syntax)
        if decoder.is_available:
            return False
    except Exception:  # no decoder class for this syntax at all
        pass
    from pydicom.uid import UID

    raise InputImageError(f"{shown} uses the compressed transfer syntax {UID(syntax).name} ({syntax}), which no "
                          f"installed decoder reads; install a pydicom decoder plug-in for it (e.g. pylibjpeg) or "
                          f"have the PACS send it uncompressed")


def _orientation(ds, shown) -> np.ndarray:
    value = getattr(ds, "ImageOrientationPatient", None)
    if value is None or len(value) != 6:
        raise InputImageError(f"{shown} has no Image Orientation (Patient); cannot place its slices in space")
    return np.asarray([float(v) for v in value])


def _position(ds, shown) -> np.ndarray:
    value = getattr(ds, "ImagePositionPatient", None)
    if value is None or len(value) != 3:
        raise InputImageError(f"{shown} has no Image Position (Patient); cannot place its slices in space")
    return np.asarray([float(v) for v in value])


def _stack_geometry(positions: np.ndarray, orientation: np.ndarray, pixel_spacing, shown,
                    tilt: float = 0.0) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """Sort slices along the normal and check them; returns (order, spacing, origin, direction)."""
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if not (np.isclose(np.linalg.norm(row), 1, atol=1e-3) and np.isclose(np.linalg.norm(col), 1, atol=1e-3)
            and abs(float(row @ col)) < 1e-3):
        raise InputImageError(f"{shown}: Image Orientation (Patient) {orientation.tolist()} is not two orthogonal "
                              f"unit vectors")
    if pixel_spacing is None or len(pixel_spacing) != 2:
        raise InputImageError(f"{shown} has no Pixel Spacing; cannot tell the voxel size")
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    if len(along) < 2:
        raise InputImageError(f"{shown} holds one slice; MedSAMSlicer segments 3D volumes (give the whole series)")
    gaps = np.diff(along)
    spacing_k = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE * abs(spacing_k), 0.01)
    same = np.flatnonzero(gaps < tolerance)
    if same.size:
        raise InputImageError(f"{shown}: duplicated slices ({same.size} share the position of another, e.g. "
                              f"{along[same[0]]:.2f} mm along the slice normal), or two acquisitions mixed; give "
                              f"one series")
    # Gantry tilt: judged by the positions (they step sideways), as Slicer's DICOM reader does; the tag alone is
    # not enough (scanners that reconstruct onto an upright grid still record the gantry's angle)
    steps = np.diff(positions, axis=0)
    sideways = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if np.any(sideways > max(0.01 * spacing_k, 0.01)):
        angle = math.degrees(math.atan2(float(sideways.max()), spacing_k))
        tag = f", Gantry/Detector Tilt {tilt:g}" if tilt else ""
        raise InputImageError(f"{shown}: slice positions step sideways ({sideways.max():.2f} mm per slice: a gantry "
                              f"tilt of about {angle:.1f} degrees{tag}); its slices are sheared, not a grid "
                              f"MedSAMSlicer can write back: resample it first")
    uneven = np.flatnonzero(np.abs(gaps - spacing_k) > tolerance)
    if uneven.size:
        n = int(uneven[0])
        missing = round(gaps[n] / spacing_k) - 1
        if missing >= 1 and abs(gaps[n] - (missing + 1) * spacing_k) <= tolerance:
            raise InputImageError(f"{shown}: {missing} slice{'s' if missing > 1 else ''} missing between positions "
                                  f"{along[n]:.2f} and {along[n + 1]:.2f} mm (slices every {spacing_k:.3g} mm); "
                                  f"give the whole series")
        raise InputImageError(f"{shown}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, more than "
                              f"{100 * SPACING_TOLERANCE:g} % apart); MedSAMSlicer needs a regular grid: resample it "
                              f"first")
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), spacing_k)
    direction = tuple(float(v) for v in np.column_stack([row, col, normal]).ravel())
    origin = tuple(float(v) for v in positions[0])
    check_geometry(spacing, origin, direction, shown)
    return order, spacing, origin, direction


def _tilt(ds) -> float:
    try:
        return float(getattr(ds, "GantryDetectorTilt", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def _read_series(files: list[tuple[Path, object]], shown: str) -> DicomVolume:
    datasets = [ds for _, ds in files]
    first = datasets[0]
    for ds in datasets:
        _refuse_non_image(ds, shown)
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        if len(datasets) == 1:
            return _read_multiframe(files[0][0], first, shown)
        raise InputImageError(f"{shown} mixes {len(datasets)} multi-frame files in one series; give one file")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise InputImageError(f"{shown}: slices of different sizes ({', '.join(f'{r}x{c}' for r, c in sorted(sizes))})"
                              f" in one series; give one series")
    orientations = np.array([_orientation(ds, shown) for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOLERANCE * 100:
        raise InputImageError(f"{shown}: slices with different orientations (Image Orientation (Patient) differs) "
                              f"in one series, e.g. a localizer mixed in; give a series of parallel slices")
    positions = np.array([_position(ds, shown) for ds in datasets])
    order, spacing, origin, direction = _stack_geometry(positions, orientations[0],
                                                        getattr(first, "PixelSpacing", None), shown,
                                                        max((_tilt(ds) for ds in datasets), key=abs))
    gdcm = all([_check_syntax(ds, shown) for ds in datasets])
    rows, columns = sizes.pop()
    check_claimed_size((columns, rows, len(datasets)), 4, shown)
    paths = [str(files[n][0]) for n in order]
    if gdcm:
        array = _read_with_sitk(paths, spacing, origin, direction, shown)
    else:
        array = np.stack([_pydicom_pixels(path, shown) for path in paths])
    sorted_datasets = [datasets[n] for n in order]
    source = DicomSource(_text(first, "StudyInstanceUID"), _text(first, "SeriesInstanceUID"),
                         _text(first, "Modality"), sorted_datasets, None, paths, _text(first, "SeriesDescription"))
    return _volume(array, spacing, origin, direction, shown, source)


def _volume(array, spacing, origin, direction, shown, source) -> DicomVolume:
    array = checked_array(np.ascontiguousarray(array), shown)
    return DicomVolume(array, spacing, origin, direction, shown, source.modality or None, source=source)


def _read_with_sitk(paths: list[str], spacing, origin, direction, shown) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(paths)
    image, failure, native = call_collecting(reader.Execute)
    if failure is not None:
        raise InputImageError(f"cannot read the pixels of {shown}: {first_line(failure)}"
                              + (f" ({'; '.join(native)[:160]})" if native else ""))
    # GDCM computed the geometry itself: it must be ours (a disagreement would mean a slice order bug)
    if not (np.allclose(image.GetSpacing(), spacing, atol=1e-3) and np.allclose(image.GetOrigin(), origin, atol=1e-3)
            and np.allclose(image.GetDirection(), direction, atol=1e-4)):
        raise InputImageError(f"{shown}: GDCM and the DICOM tags disagree on the geometry (spacing "
                              f"{np.round(image.GetSpacing(), 4).tolist()} vs {np.round(spacing, 4).tolist()}); "
                              f"the series is inconsistent")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{shown} holds colour pixels; MedSAMSlicer segments single-channel volumes")
    return sitk.GetArrayFromImage(image)


def _pydicom_pixels(path, shown, frames: bool = False) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_rescale

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
        if frames and "PerFrameFunctionalGroupsSequence" in ds:
            slopes = []
            for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
                transform = getattr(item, "PixelValueTransformationSequence", None) or getattr(
                    ds.SharedFunctionalGroupsSequence[0], "PixelValueTransformationSequence", None)
                if transform:
                    slope = float(transform[0].RescaleSlope)
                    intercept = float(transform[0].RescaleIntercept)
                else:
                    slope, intercept = 1.0, 0.0
                slopes.append((slope, intercept))
            if any(s != (1.0, 0.0) for s in slopes):
                values = pixels.astype(np.float32)
                for n, (slope, intercept) in enumerate(slopes):
                    values[n] = values[n] * slope + intercept
                if all(float(s).is_integer() and float(i).is_integer() for s, i in slopes):
                    values = values.astype(np.int32 if values.min() < -32768 or values.max() > 32767 else np.int16)
                return values
            return pixels
        return apply_rescale(pixels, ds) if "RescaleSlope" in ds else pixels
    except InputImageError:
        raise
    except Exception as error:
        raise InputImageError(f"cannot read the pixels of {shown}: {first_line(error)}") from None


def _read_multiframe(path: Path, ds, shown: str) -> DicomVolume:
    """An enhanced (or legacy-converted enhanced) multi-frame image: per-frame positions, shared orientation."""
    _refuse_non_image(ds, shown)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
    if per_frame is None:
        raise InputImageError(f"{shown} is a multi-frame file without per-frame positions (not an enhanced "
                              f"CT/MR/PET image); cannot place its frames in space")

    def group(item, name):
        value = getattr(item, name, None) if item is not None else None
        if not value and shared is not None:
            value = getattr(shared, name, None)
        if not value:
            raise InputImageError(f"{shown}: frames lack {name}; cannot place them in space")
        return value[0]

    orientations = np.array([_orientation(group(f, "PlaneOrientationSequence"), shown) for f in per_frame])
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOLERANCE * 100:
        raise InputImageError(f"{shown}: frames with different orientations in one file; give parallel slices")
    positions = np.array([_position(group(f, "PlanePositionSequence"), shown) for f in per_frame])
    measures = group(per_frame[0], "PixelMeasuresSequence")
    order, spacing, origin, direction = _stack_geometry(positions, orientations[0],
                                                        getattr(measures, "PixelSpacing", None), shown, _tilt(ds))
    _check_syntax(ds, shown)
    check_claimed_size((int(ds.Columns), int(ds.Rows), len(per_frame)), 4, shown)
    frames = _pydicom_pixels(path, shown, frames=True)
    if frames.ndim != 3:
        raise InputImageError(f"{shown} holds colour or single frames (pixel array {frames.shape}); give a "
                              f"single-channel multi-frame image")
    array = frames[order]
    source = DicomSource(_text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID"), _text(ds, "Modality"),
                         [ds], [int(n) for n in order], [str(path)], _text(ds, "SeriesDescription"))
    return _volume(array, spacing, origin, direction, shown, source)


def read_dicom(path: str | os.PathLike, series_uid: str | None = None) -> DicomVolume:
    """A folder holding a DICOM series (``series_uid`` picks one of several) or one (multi-frame) DICOM file."""
    path = Path(path)
    shown = str(path)
    if path.is_dir():
        series = _scan_folder(path)
        if not series:
            raise InputImageError(f"{shown} is a folder without DICOM files; give a DICOM series folder or an image "
                                  f"file (NIfTI, NRRD, MHA, GIPL or npz)")
        if series_uid is not None:
            if series_uid not in series:
                raise InputImageError(f"{shown} has no series {series_uid}; it holds: "
                                      + "; ".join(describe_series([d for _, d in f]) for f in series.values()))
            files = series[series_uid]
        elif len(series) > 1:
            raise InputImageError(f"{shown} holds {len(series)} series; pick one with --series UID: "
                                  + "; ".join(describe_series([d for _, d in f]) for f in series.values()))
        else:
            files = next(iter(series.values()))
        return _read_series(files, shown)
    ds = _header(path)
    if ds is None:
        raise InputImageError(f"cannot read {shown} as DICOM")
    _refuse_non_image(ds, shown)
    if series_uid is not None and _text(ds, "SeriesInstanceUID") != series_uid:
        raise InputImageError(f"{shown} belongs to series {_text(ds, 'SeriesInstanceUID')}, not {series_uid}")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        return _read_multiframe(path, ds, shown)
    raise InputImageError(f"{shown} is one slice of a DICOM series; give the folder that holds the whole series")


def read_datasets(datasets: list, shown: str, series_uid: str | None = None) -> DicomVolume:
    """The same checks and result from datasets in memory (fetched from a PACS): written to a private temporary
    folder first, so GDCM reads them exactly as it reads files."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medsam-dicom-") as folder:
        for n, ds in enumerate(datasets):
            ds.save_as(os.path.join(folder, f"{n:06d}.dcm"), enforce_file_format=True)
        volume = read_dicom(folder, series_uid)
    volume.path = shown
    volume.source.files = []
    return volume
