"""What the two exported-network runtimes (ONNX Runtime, OpenVINO) share: a box decoder of their own, or none.

A runtime's decoder is dropped when it fails its check against PyTorch (:func:`.backends._checked`); the segmenter
then decodes with PyTorch on the runtime's embeddings.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

import numpy as np

D = TypeVar("D")


class DecoderHalf(Generic[D]):
    _decoder: D | None

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None

    def drop_decoder(self) -> None:
        self._decoder = None

    def _decode_with(self, run: Callable[[D, np.ndarray, np.ndarray], Any], embedding: np.ndarray,
                     box: np.ndarray) -> tuple[np.ndarray, float]:
        """``run(decoder, embedding, box)`` on contiguous float32 inputs (the box as (1, 4)): (logits, IoU)."""
        if self._decoder is None:
            raise RuntimeError("this runtime has no decoder")
        logits, iou = run(self._decoder, np.ascontiguousarray(embedding, dtype=np.float32),
                          np.ascontiguousarray(box, dtype=np.float32).reshape(1, 4))
        return logits, float(iou.reshape(-1)[0])
