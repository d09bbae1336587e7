"""The wire format: moved to :mod:`MedSAMSlicerLib.protocol.wire` (issue 17); this module keeps the old name working."""

from ..errors import ERROR_CLASSES
from ..protocol.wire import (
                             FINGERPRINT_CHARS,
                             compress_volume,
                             content_fingerprint,
                             decompress_volume,
                             error_body,
                             error_from_body,
                             load_npy,
                             npy_bytes,
                             pack_mask,
                             unpack_mask,
)

__all__ = ["ERROR_CLASSES", "FINGERPRINT_CHARS", "compress_volume", "content_fingerprint", "decompress_volume",
           "error_body", "error_from_body", "load_npy", "npy_bytes", "pack_mask", "unpack_mask"]
