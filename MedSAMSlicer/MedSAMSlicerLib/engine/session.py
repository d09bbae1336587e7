"""One volume prepared for segmentation: windowed once, sliced along one axis, embeddings fetched through a cache.

``VolumeSession`` is what the CLI, the evaluation code and the Slicer logic hold while a user works on a volume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import axes
from .boxes import Box, checked_box
from .cache import EmbeddingCache, volume_fingerprint
from ..errors import BoxError
from .intensity import Window, choose_window, normalize_volume
from .predictor import Segmenter, SliceEmbedding
from .volume import Volume

log = logging.getLogger(__name__)


@dataclass
class SliceResult:
    index: int
    mask: np.ndarray  # bool, slice shape
    score: float  # decoder's predicted IoU
    box: Box


class VolumeSession:
    def __init__(self, segmenter: Segmenter, volume: Volume, window: str | Window = "auto", axis: str = "axial",
                 cache: EmbeddingCache | None = None) -> None:
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
        return tuple(shape)  # type: ignore[return-value]

    def cache_key(self, index: int) -> tuple:
        # The precision tag keeps fast-mode (bf16) embeddings apart; exact ones are shared by every runtime.
        return (self.fingerprint, self.np_axis, index, self.segmenter.model.name,
                self.segmenter.model.checkpoint.sha256[:16], self.window.key,
                getattr(self.segmenter, "embedding_tag", "exact"))

    def check_index(self, index: int) -> int:
        if not 0 <= index < self.slice_count:
            raise BoxError(f"slice {index} is outside the volume: {axes.index_name(self.np_axis)} runs "
                           f"0..{self.slice_count - 1} along {self.axis_name}")
        return index

    def embedding(self, index: int) -> SliceEmbedding:
        self.check_index(index)
        return self.cache.get_or_compute(
            self.cache_key(index), lambda: self.segmenter.embed(axes.take_slice(self.image, self.np_axis, index)))

    def segment_slice(self, index: int, box: Box, allow_degenerate: bool = False) -> SliceResult:
        box = checked_box(box, self.slice_shape, allow_degenerate)
        mask, score = self.segmenter.predict(self.embedding(self.check_index(index)), box)
        return SliceResult(index, mask, score, box)

    def empty_mask(self) -> np.ndarray:
        return np.zeros(self.image.shape, dtype=bool)
