"""Checks a volume file must pass before its voxels are read: geometry, claimed size, header against file size.

- :func:`check_geometry`: spacing, origin and direction of the right length, finite, spacing > 0, direction
  orthonormal (the grid MedSAMSlicer writes back must be the one it read; NIfTI silently "coerces" a skewed
  direction, so a skewed grid would come back different).  The message names the field.
- :func:`check_claimed_size`: the size a header claims (say 100000^3 voxels) is stated, and refused when it is more
  than the memory available, before anything is allocated.
- :func:`check_nrrd_header`: ITK's NRRD reader replaces a NaN spacing by 1 without a word, so NRRD geometry fields
  are checked as written in the header.
- :func:`check_nifti_size`: a NIfTI file shorter than its header promises is truncated.  ITK reads such a file
  without complaint and fills the missing voxels with zeros, so the check is ours: the file size for ``.nii``, the
  decompressed size for ``.nii.gz`` (a truncated gzip stream is refused too).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputImageError

_AXES = "ijk"


def _format(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def check_geometry(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float],
                   path: str | os.PathLike) -> None:
    """Raise :class:`InputImageError` naming the field when the grid cannot be used."""
    for name, values, length in (("spacing", spacing, 3), ("origin", origin, 3), ("direction", direction, 9)):
        if len(values) != length:
            raise InputImageError(f"{path}: {name} has {len(values)} values; a 3D volume needs {length}")
        bad = [n for n, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise InputImageError(f"{path}: {name} {_format(values)} has a NaN or infinite value; fix the file's "
                                  f"header")
    bad = [n for n, v in enumerate(spacing) if v <= 0]
    if bad:
        raise InputImageError(f"{path}: spacing {_format(spacing)} must be positive, but along {_AXES[bad[0]]} it "
                              f"is {spacing[bad[0]]:g}; fix the file's header")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 entries: an infinite length, refused below
        lengths = np.linalg.norm(matrix, axis=0)
    why = None
    if np.any(lengths < 1e-6):
        why = "has a zero column (a singular matrix)"
    elif not np.allclose(lengths, 1.0, atol=1e-3):
        why = "has columns that are not unit vectors"
    else:
        gram = matrix.T @ matrix  # unit columns: no overflow
        if not np.allclose(gram, np.eye(3), atol=1e-3):
            cosine = float(np.clip(np.max(np.abs(gram - np.eye(3))), 0.0, 1.0))
            why = f"is not orthogonal (two axes {math.degrees(math.acos(cosine)):.1f} degrees apart, not 90)"
    if why is not None:
        raise InputImageError(f"{path}: direction {_format(direction)} {why}; MedSAMSlicer needs an orthogonal grid "
                              f"that it can write back unchanged: resample the image first")


def checked_array(array: np.ndarray, path: str) -> np.ndarray:
    """A 3D array of finite numbers, made read-only; else one line."""
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


def _human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} PiB"


def available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or the platform hides memory figures: assume a modest machine
        return 8 << 30


def check_claimed_size(size_ijk: Sequence[int], bytes_per_voxel: int, path: str | os.PathLike,
                       kind: str = "voxels") -> int:
    """The bytes the volume claims; refused when more than the memory available (before allocating)."""
    voxels = math.prod(int(v) for v in size_ijk)
    claimed = voxels * int(bytes_per_voxel)
    available = available_memory()
    if claimed > available:
        shape = " x ".join(str(int(v)) for v in size_ijk)
        raise InputImageError(f"{path} claims {shape} {kind} of {bytes_per_voxel} bytes ({_human_bytes(claimed)}), "
                              f"more than the {_human_bytes(available)} of memory available; is the header "
                              f"damaged, or is this the right file?")
    return claimed


# ----------------------------------------------------------------------------------------------------- NIfTI


def _nifti_header(head: bytes) -> tuple[int, int] | None:
    """(voxel data offset, voxel data bytes) from a NIfTI-1 or NIfTI-2 header, None when it is not one we parse."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7 or bitpix <= 0 or bitpix % 8 or not math.isfinite(offset) or offset < 0:
        return None  # let ITK say what is wrong with it
    counts = dims[1:rank + 1]
    if any(c < 1 for c in counts):
        return None
    return int(offset), math.prod(counts) * (bitpix // 8)


def _gzip_length(path: Path, enough: int) -> int:
    """Decompressed bytes of a gzip file, counted up to ``enough``; a torn or corrupt stream is refused."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < enough:
                chunk = stream.read(min(1 << 20, enough - total))
                if not chunk:
                    break
                total += len(chunk)
    except EOFError:
        raise InputImageError(f"{path} is truncated: its gzip stream ends before the {enough} bytes its header "
                              f"promises") from None
    except (OSError, zlib.error) as error:
        raise InputImageError(f"{path} is not a valid gzip file ({error})") from None
    return total


def check_nifti_size(path: Path) -> None:
    """Refuse a ``.nii``/``.nii.gz`` file that holds fewer voxel bytes than its header promises."""
    name = path.name.lower()
    compressed = name.endswith(".nii.gz")
    if not (compressed or name.endswith(".nii")):
        return
    try:
        if compressed:
            with gzip.open(path, "rb") as stream:
                head = stream.read(540)
        else:
            with open(path, "rb") as stream:
                head = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return  # not readable as such: ITK's reader says what is wrong
    parsed = _nifti_header(head)
    if parsed is None:
        return
    offset, data = parsed
    check_claimed_size((data,), 1, path, kind="bytes of voxel data")
    expected = offset + data
    actual = _gzip_length(path, expected) if compressed else path.stat().st_size
    if actual < expected:
        what = "decompresses to" if compressed else "has"
        raise InputImageError(f"{path} is truncated: its header promises {expected} bytes, the file {what} "
                              f"{actual} ({100 * actual / expected:.0f} %)")


# ------------------------------------------------------------------------------------------------------ NRRD


def check_nrrd_header(path: Path) -> None:
    """Refuse NaN, infinite, zero or negative spacings and NaN/infinite space directions or origin as the NRRD
    header writes them (ITK would read a NaN spacing as 1)."""
    if not path.name.lower().endswith((".nrrd", ".nhdr")):
        return
    try:
        import nrrd

        header = nrrd.read_header(str(path))
    except Exception:  # not a header pynrrd understands: ITK's reader says what is wrong
        return
    if int(header.get("dimension", 0) or 0) != 3:
        return
    spacings = header.get("spacings")
    if spacings is not None:
        values = np.asarray(spacings, dtype=float).ravel()
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise InputImageError(f"{path}: spacing (header 'spacings: {' '.join(f'{v:g}' for v in values)}') must "
                                  f"be finite and positive; fix the file's header")
    directions = header.get("space directions")
    if directions is not None:
        rows = np.asarray(directions, dtype=float)
        if rows.ndim != 2 or not np.all(np.isfinite(rows)):
            raise InputImageError(f"{path}: direction (header 'space directions') has a NaN or infinite value; "
                                  f"fix the file's header")
        zero = [n for n, row in enumerate(rows) if not np.any(row)]
        if zero:
            raise InputImageError(f"{path}: direction (header 'space directions') of axis {_AXES[zero[0]]} is a "
                                  f"zero vector, so its spacing would be 0; fix the file's header")
    origin = header.get("space origin")
    if origin is not None and not np.all(np.isfinite(np.asarray(origin, dtype=float))):
        raise InputImageError(f"{path}: origin (header 'space origin') has a NaN or infinite value; fix the file's "
                              f"header")
