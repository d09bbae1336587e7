"""The two steps of box-prompted segmentation: ``embed`` a slice once, ``predict`` any number of boxes on it.

The image encoder is the whole cost (0.15-0.3 s per 256² slice on a 2-core CPU in OpenVINO, more in PyTorch); the
prompt encoder and mask decoder take tens of milliseconds.  Keeping the two apart is what lets the 3D code cache
embeddings and encode slices ahead of the decoder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeVar

import numpy as np
import torch

from ..errors import first_line
from ..protocol import Box
from .device import is_gpu_failure, physical_cores
from .models import LoadedModel
from .pipelines import SliceGeometry, pipeline_for

log = logging.getLogger(__name__)
T = TypeVar("T")
AHEAD_ENV = "MEDSAM_SLICER_ENCODE_AHEAD"
AHEAD_MIN_CORES = 4


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


class Runtime(Protocol):
    """An exported-network runtime (OpenVINO, ONNX Runtime): numpy in, numpy out, thread-safe."""

    name: str  # "openvino", "onnxruntime"
    precision: str  # "exact" or "fast"

    def encode(self, image: np.ndarray) -> np.ndarray: ...  # (1, 3, S, S) float32 -> (1, 256, 64, 64)

    def decode(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]: ...  # logits, IoU

    @property
    def has_decoder(self) -> bool: ...

    def drop_decoder(self) -> None: ...  # after its decoder failed the check: PyTorch decodes (backends._checked)

    def describe(self) -> str: ...

    def verification_key(self, part: str = "encoder") -> str: ...  # runtime, version and precision of ``part``


_ahead = threading.local()  # set in encode-ahead worker threads (see :func:`encoding_ahead`)


def encoding_ahead() -> None:
    """Mark the calling thread as an encode-ahead worker: its :meth:`Segmenter.embed` calls use the runtime's
    throughput requests, which run beside each other, instead of the one low-latency request."""
    _ahead.active = True


class Segmenter:
    """Runs one loaded model through PyTorch or an exported-network runtime.

    Thread-safe.  With a runtime, each of its requests has its own lock, so an encode-ahead thread and the
    foreground decoder run at the same time; the PyTorch path is serialised by one lock.
    """

    def __init__(self, model: LoadedModel, runtime: Runtime | None = None, reason: str = "") -> None:
        self.model = model
        self.pipeline = pipeline_for(model.pipeline)
        self.runtime = runtime
        self.backend_name = runtime.name if runtime is not None else "pytorch"
        self.precision = runtime.precision if runtime is not None else "exact"
        self.backend_reason = reason  # why this runtime was chosen, shown with --json and in the server's info
        self.encoder = EncoderCounters()
        self.decoder = EncoderCounters()  # decoder calls: what a corrective box costs (counted, not assumed)
        # Two independent decoder calls at once where the runtime offers it (OpenVINO's verified two-stream copy);
        # the bench turns it off to measure the engine without it.  Same masks and scores either way.
        self.pair_decodes = True
        self._lock = threading.RLock()

    @property
    def image_size(self) -> int:
        return self.pipeline.image_size

    @property
    def embedding_tag(self) -> str:
        """Part of every cache key: embeddings of the fast (bf16) encoder differ from exact ones by up to 0.08."""
        return "exact" if self.precision == "exact" else f"fast-{getattr(self.runtime, 'encoder_hint', 'bf16')}"

    @property
    def ahead_depth(self) -> int:
        """Slices to encode ahead of a propagation's decoder; 0 runs the propagation sequentially.

        ``$MEDSAM_SLICER_ENCODE_AHEAD``: ``on``, ``off`` or ``auto`` (default: on with 4 or more physical cores).
        On 2 cores OpenVINO's throughput streams encode no faster than one latency request (246 ms per slice
        either way, measured) and the decoder then competes with the encoder for the same cores, so ahead gains
        nothing there; with more cores the streams add throughput.
        """
        if self.runtime is None or not hasattr(self.runtime, "encode_ahead"):
            return 0
        setting = os.environ.get(AHEAD_ENV, "auto").strip().lower()
        if setting in ("off", "0", "no") or (setting not in ("on", "1", "yes") and physical_cores() < AHEAD_MIN_CORES):
            return 0
        try:
            return int(getattr(self.runtime, "ahead_depth"))  # optional, outside the Runtime protocol
        except Exception as error:  # the throughput copy failed to compile: run sequentially
            log.warning("encode-ahead unavailable: %s", first_line(error))
            return 0

    def describe_backend(self) -> str:
        return self.runtime.describe() if self.runtime is not None else f"PyTorch {torch.__version__}"

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
        if slice_u8.ndim != 2:
            raise ValueError(f"embed expects one 2D slice, got shape {slice_u8.shape}")
        tensor, geometry = self.pipeline.image_tensor(slice_u8)
        start = time.perf_counter()
        if self.runtime is not None:
            if getattr(_ahead, "active", False) and hasattr(self.runtime, "encode_ahead"):
                features = torch.from_numpy(self.runtime.encode_ahead(tensor.numpy()))
            else:
                features = torch.from_numpy(self.runtime.encode(tensor.numpy()))
        else:
            encoder = self.model.net.image_encoder
            with self._lock:
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
        start = time.perf_counter()
        try:
            return self._decode(embedding, box_array)
        finally:
            self.decoder.add(time.perf_counter() - start)

    @torch.inference_mode()
    def predict_model_box_pair(self, first: tuple[SliceEmbedding, np.ndarray],
                               second: tuple[SliceEmbedding, np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """:meth:`predict_model_box` for two ``(embedding, model box)`` prompts: the same two results, decoded at
        once where the runtime can (two decoder calls either way, each counted with half the time they took)."""
        pair = getattr(self.runtime, "decode_pair", None)
        if self.pair_decodes and pair is not None and self.runtime is not None and self.runtime.has_decoder:
            start = time.perf_counter()
            decoded = pair(*[(e.features.to(dtype=torch.float32).numpy(), np.asarray(b, dtype=np.float32)[None])
                             for e, b in (first, second)])
            if decoded is not None:
                results = [(np.asarray(self.pipeline.mask(torch.from_numpy(logits), e.geometry), dtype=bool), score)
                           for (logits, score), (e, _) in zip(decoded, (first, second))]
                half = (time.perf_counter() - start) / 2
                self.decoder.add(half)
                self.decoder.add(half)
                return results
        return [self.predict_model_box(*first), self.predict_model_box(*second)]

    def _decode(self, embedding: SliceEmbedding, box_array: np.ndarray) -> tuple[np.ndarray, float]:
        if self.runtime is not None and self.runtime.has_decoder:
            features = embedding.features.to(dtype=torch.float32).numpy()
            logits_array, score = self.runtime.decode(features, np.asarray(box_array, dtype=np.float32)[None])
            mask = self.pipeline.mask(torch.from_numpy(logits_array), embedding.geometry)
            return np.asarray(mask, dtype=bool), score
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
