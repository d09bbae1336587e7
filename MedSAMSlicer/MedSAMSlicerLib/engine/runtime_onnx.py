"""ONNX Runtime on the CPU for the exported encoder and box decoder.

Two settings matter on a small CPU: one intra-op thread per physical core, and no spinning.  ONNX Runtime's
worker threads spin after each call by default; the PyTorch or Python work that follows (the decoder, the mask
post-processing) then fights them for the cores (measured on 2 cores: the decoder after an encoder call took
162 ms instead of 49 ms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .decoder_half import DecoderHalf
from .device import physical_cores


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntime(DecoderHalf[Any]):
    """Encoder and decoder sessions; ``session.run`` is thread-safe, so no lock is needed."""

    name = "onnxruntime"
    precision = "exact"
    ahead_depth = 0  # no second stream to run ahead on: the encoder already uses every core

    def __init__(self, encoder: Path, decoder: Path | None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.version = ort.__version__
        self.threads = threads or physical_cores()
        self._encoder = _session(encoder, self.threads)
        self._decoder = _session(decoder, self.threads) if decoder is not None else None

    def verification_key(self, part: str = "encoder") -> str:
        return f"onnxruntime {self.version} f32"

    def describe(self) -> str:
        return f"ONNX Runtime {self.version}, fp32, {self.threads} threads"

    def encode(self, image: np.ndarray) -> np.ndarray:
        (embedding,) = self._encoder.run(None, {"image": np.ascontiguousarray(image, dtype=np.float32)})
        return embedding

    def decode(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        return self._decode_with(lambda session, features, boxes: session.run(
            None, {"image_embeddings": features, "boxes": boxes}), embedding, box)

