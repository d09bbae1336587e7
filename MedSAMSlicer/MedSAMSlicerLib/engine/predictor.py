"""The two steps of box-prompted segmentation: ``embed`` a slice once, ``predict`` any number of boxes on it.

The image encoder is the whole cost (about 2 s per slice for LiteMedSAM on a laptop CPU); the prompt encoder and
mask decoder take tens of milliseconds.  Keeping the two apart is what lets the 3D code cache embeddings.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch

from .boxes import Box
from .device import is_gpu_failure
from ..errors import first_line
from .models import LoadedModel
from .pipelines import SliceGeometry, pipeline_for

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class SliceEmbedding:
    """Encoder output for one slice, kept on the CPU (float32 or float16) with what is needed to map boxes back."""

    features: torch.Tensor  # (1, 256, 64, 64)
    geometry: SliceGeometry

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


@dataclass
class EncoderCounters:
    calls: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, seconds: float) -> None:
        with self.lock:
            self.calls += 1
            self.seconds += seconds


# An encoder backend maps the (1, 3, S, S) float32 input to the (1, 256, 64, 64) embedding.
EncoderBackend = Callable[[torch.Tensor], torch.Tensor]


class Segmenter:
    """Runs one loaded model.  Thread-safe: one lock serialises use of the network."""

    def __init__(self, model: LoadedModel, encoder_backend: EncoderBackend | None = None,
                 backend_name: str = "pytorch") -> None:
        self.model = model
        self.pipeline = pipeline_for(model.pipeline)
        self._external_encoder = encoder_backend
        self.backend_name = backend_name if encoder_backend is not None else "pytorch"
        self.encoder = EncoderCounters()
        self._lock = threading.RLock()

    @property
    def image_size(self) -> int:
        return self.pipeline.image_size

    def _run_on_device(self, work: Callable[[torch.device], T]) -> T:
        """Run ``work`` on the model's device; after a CUDA OOM or driver error, move to the CPU and retry once."""
        try:
            return work(self.model.device)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if self.model.device.type == "cpu" or not is_gpu_failure(error):
                raise
            self.model.move_to_cpu(first_line(error, 120))
            return work(self.model.device)

    @torch.inference_mode()
    def embed(self, slice_u8: np.ndarray) -> SliceEmbedding:
        import time

        if slice_u8.ndim != 2:
            raise ValueError(f"embed expects one 2D slice, got shape {slice_u8.shape}")
        tensor, geometry = self.pipeline.image_tensor(slice_u8)
        start = time.perf_counter()
        with self._lock:
            if self._external_encoder is not None:
                features = self._external_encoder(tensor)
            else:
                encoder = self.model.net.image_encoder
                features = self._run_on_device(lambda device: encoder(tensor.to(device)).cpu())
        self.encoder.add(time.perf_counter() - start)
        return SliceEmbedding(features.float().contiguous(), geometry)

    @torch.inference_mode()
    def predict(self, embedding: SliceEmbedding, box: Box) -> tuple[np.ndarray, float]:
        """Mask (bool, slice shape) and the decoder's predicted IoU for one box on an embedded slice."""
        return self.predict_model_box(embedding, self.pipeline.box_array(box, embedding.geometry))

    @torch.inference_mode()
    def predict_model_box(self, embedding: SliceEmbedding, box_array: np.ndarray) -> tuple[np.ndarray, float]:
        """Like :meth:`predict`, with the box already in the model's input coordinates."""
        net = self.model.net

        def decode(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            boxes = torch.as_tensor(box_array[None, None, :], dtype=torch.float32, device=device)
            sparse, dense = net.prompt_encoder(points=None, boxes=boxes, masks=None)
            return net.mask_decoder(
                image_embeddings=embedding.features.to(device=device, dtype=torch.float32),
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )

        with self._lock:
            logits, iou = self._run_on_device(decode)
        mask = self.pipeline.mask(logits.float().cpu(), embedding.geometry)
        return np.asarray(mask, dtype=bool), float(iou.reshape(-1)[0])
