"""One volume prepared for segmentation: windowed once, sliced along one axis, embeddings fetched through a cache.

``VolumeSession`` is what the CLI, the evaluation code and the Slicer logic hold while a user works on a volume.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ApiTypeError, BoxError, InputImageError
from ..protocol import Box, SliceRequest, SliceResult, Volume, axes, checked_box
from .cache import EmbeddingCache, volume_fingerprint
from .intensity import Window, choose_window, normalize_volume
from .predictor import Segmenter, SliceEmbedding

log = logging.getLogger(__name__)


def _type_name(value: object) -> str:
    return type(value).__name__


def check_index_type(index: object, where: str) -> int:
    """A slice index is a whole number (int or numpy integer, not bool or float)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise ApiTypeError(f"{where}: the slice index must be an int, got {_type_name(index)} {index!r}")
    return int(index)


def check_box_type(box: object, where: str) -> Box:
    if not isinstance(box, Box):
        raise ApiTypeError(f"{where}: the box must be a Box(x0, y0, x1, y1), got {_type_name(box)} {box!r}; use "
                           f"Box(*values) or boxes.parse_box('x0,y0,x1,y1')")
    return box


def _check_session_arguments(segmenter: object, volume: object, window: object, axis: object,
                             cache: object) -> None:
    """Say what was expected when the Python API is called with the wrong kinds of objects."""
    if not all(callable(getattr(segmenter, name, None)) for name in ("embed", "predict", "predict_model_box")):
        raise ApiTypeError(f"VolumeSession: segmenter must be a Segmenter (from engine.backends.make_segmenter), "
                           f"got {_type_name(segmenter)}")
    if not isinstance(volume, Volume):
        raise ApiTypeError(f"VolumeSession: volume must be a Volume (from volumeio.read_volume, or "
                           f"Volume(array, spacing, origin, direction)), got {_type_name(volume)}")
    array = volume.array
    if not isinstance(array, np.ndarray) or array.ndim != 3:
        raise ApiTypeError(f"VolumeSession: volume.array must be a 3D numpy array (k, j, i), got "
                           f"{_type_name(array)} of shape {getattr(array, 'shape', '?')}")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer)
                                       or np.issubdtype(array.dtype, np.floating)):
        raise InputImageError(f"{volume.path or 'the volume'} has {array.dtype} voxels; give the image (numbers), "
                              f"not a mask")
    if not isinstance(window, (str, Window)):
        raise ApiTypeError(f"VolumeSession: window must be a str ('auto', 'mr', 'none', a preset or 'L,W') or a "
                           f"Window, got {_type_name(window)} {window!r}")
    if not isinstance(axis, str):
        raise ApiTypeError(f"VolumeSession: axis must be a str (axial, coronal, sagittal, k, j or i), got "
                           f"{_type_name(axis)} {axis!r}")
    if cache is not None and not isinstance(cache, EmbeddingCache):
        raise ApiTypeError(f"VolumeSession: cache must be an EmbeddingCache or None, got {_type_name(cache)}")


class VolumeSession:
    def __init__(self, segmenter: Segmenter, volume: Volume, window: str | Window = "auto", axis: str = "axial",
                 cache: EmbeddingCache | None = None) -> None:
        _check_session_arguments(segmenter, volume, window, axis, cache)
        self.segmenter = segmenter
        self.volume = volume
        self.window, self.window_reason = choose_window(volume.array, window, volume.modality,
                                                        volume.already_normalized)
        self.image = normalize_volume(volume.array, self.window)  # uint8 (k, j, i); the source stays untouched
        self.np_axis = axes.numpy_axis(axis, volume.direction)
        self.axis_name = axis
        self.cache = cache if cache is not None else EmbeddingCache()
        self.fingerprint = volume_fingerprint(self.image)

    @property
    def slice_count(self) -> int:
        return self.image.shape[self.np_axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        shape = list(self.image.shape)
        del shape[self.np_axis]
        return tuple(shape)

    def cache_key(self, index: int) -> tuple:
        # The precision tag keeps fast-mode (bf16) embeddings apart; exact ones are shared by every runtime.
        return (self.fingerprint, self.np_axis, index, self.segmenter.model.name,
                self.segmenter.model.checkpoint.sha256[:16], self.window.key,
                getattr(self.segmenter, "embedding_tag", "exact"))

    def check_index(self, index: int) -> int:
        index = check_index_type(index, "slice index")
        if not 0 <= index < self.slice_count:
            raise BoxError(f"slice {index} is outside the volume: {axes.index_name(self.np_axis)} runs "
                           f"0..{self.slice_count - 1} along {self.axis_name}")
        return index

    def embedding(self, index: int) -> SliceEmbedding:
        self.check_index(index)
        return self.cache.get_or_compute(
            self.cache_key(index), lambda: self.segmenter.embed(axes.take_slice(self.image, self.np_axis, index)))

    def segment_slice(self, index: int, box: Box, allow_degenerate: bool = False) -> SliceResult:
        index = check_index_type(index, "segment_slice")
        box = checked_box(check_box_type(box, "segment_slice"), self.slice_shape, allow_degenerate)
        mask, score = self.segmenter.predict(self.embedding(self.check_index(index)), box)
        return SliceResult(index, mask, score, box)

    def segment(self, prompt: SliceRequest) -> SliceResult:
        """One slice's prompt as it crossed the wire (:class:`~MedSAMSlicerLib.protocol.SliceRequest`): the server
        hands it on whole, so a new prompt field reaches this method without touching the server or the client."""
        return self.segment_slice(prompt.index, prompt.box, prompt.allow_degenerate)

    def empty_mask(self) -> np.ndarray:
        return np.zeros(self.image.shape, dtype=bool)
