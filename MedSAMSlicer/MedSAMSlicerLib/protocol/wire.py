"""What travels between the engine server and its clients: volume bytes, content fingerprints, masks, errors.

Client and server both import this module (it needs numpy and the standard library only), so the two ends can
never disagree on a format.  The typed values that cross (session spec, settings, results) are in
:mod:`.messages`; they use these encodings.

- Volumes go up once as a zlib-compressed ``.npy`` (no pickle), named by :func:`content_fingerprint`.
- Masks come back as the bounding box of their true voxels plus those voxels' bits packed 8 per byte (base64):
  a 512x512 slice with a 40x30 lesion is ~200 bytes instead of 256 KiB.
- Errors are ``{"error": {"code": ..., "message": one line}}``; ``code`` names an :mod:`errors` class.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ERROR_CLASSES, MedSAMError, ServiceError, first_line

FINGERPRINT_CHARS = 64  # hex sha256


def content_fingerprint(array: NDArray[Any]) -> str:
    """sha256 of shape, dtype and voxels of the raw (unwindowed) array: the name of an uploaded volume."""
    digest = hashlib.sha256()
    digest.update(repr((tuple(int(n) for n in array.shape), np.dtype(array.dtype).str)).encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def npy_bytes(array: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def compress_volume(array: NDArray[Any], level: int = 1) -> bytes:
    """Level 1: CT compresses ~2-3x at ~150 MB/s; higher levels buy little on noisy voxels."""
    return zlib.compress(npy_bytes(array), level)


def decompress_volume(data: bytes, max_bytes: int) -> NDArray[Any]:
    """Inverse of :func:`compress_volume`; refuses to inflate past ``max_bytes`` (a zip bomb stops there)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, max_bytes + 1)
    except zlib.error as error:
        raise ServiceError(f"the volume upload is not zlib-compressed .npy data ({first_line(error)})") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise ServiceError(f"the uncompressed volume exceeds {max_bytes >> 20} MiB", "too_large", 413)
    return load_npy(raw)


def load_npy(raw: bytes | io.IOBase) -> NDArray[Any]:
    stream = io.BytesIO(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    try:
        array: NDArray[Any] = np.load(stream, allow_pickle=False)
        return array
    # Not npy or an object dtype (needs pickle): ValueError; empty: EOFError; a zip header (np.load reads .npz):
    # BadZipFile; a read that fails: OSError.
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise ServiceError(f"the volume is not a readable .npy array ({first_line(error)})") from None


def pack_mask(mask: NDArray[Any]) -> dict[str, Any]:
    """{"shape", "lo", "hi", "bits"}: the true voxels' bounding box [lo, hi) and its voxels packed as bits."""
    mask = np.asarray(mask, dtype=bool)
    present = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
               for axis in range(mask.ndim)]
    if present[0].size == 0:
        return {"shape": list(mask.shape), "lo": None, "hi": None, "bits": ""}
    lo = [int(p[0]) for p in present]
    hi = [int(p[-1]) + 1 for p in present]
    crop = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return {"shape": list(mask.shape), "lo": lo, "hi": hi,
            "bits": base64.b64encode(np.packbits(crop, axis=None).tobytes()).decode("ascii")}


def unpack_mask(packed: dict[str, Any]) -> NDArray[np.bool_]:
    shape = tuple(int(n) for n in packed["shape"])
    mask = np.zeros(shape, dtype=bool)
    if packed.get("lo") is None:
        return mask
    lo, hi = packed["lo"], packed["hi"]
    crop_shape = tuple(int(b) - int(a) for a, b in zip(lo, hi))
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    crop = np.unpackbits(bits, count=int(np.prod(crop_shape))).astype(bool).reshape(crop_shape)
    mask[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = crop
    return mask


def error_body(error: BaseException, code: str | None = None) -> dict[str, dict[str, str]]:
    message = first_line(error, 300) if not isinstance(error, MedSAMError) else " ".join(str(error).split())[:300]
    return {"error": {"code": code or getattr(error, "code", "internal"), "message": message}}


def error_from_body(status: int, body: object, fallback: str) -> MedSAMError:
    """The exception a client raises for an error response: the same errors.py class the server raised."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "code" in error and "message" in error:
        code, message = str(error["code"]), str(error["message"])
    else:
        code, message = "internal", fallback
    message = message.splitlines()[0] if message else fallback
    cls = ERROR_CLASSES.get(code)
    if cls is not None:
        return cls(message)
    return ServiceError(message, code, status)
