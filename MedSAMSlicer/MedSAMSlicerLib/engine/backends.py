"""Image-encoder runtimes: PyTorch, or ONNX Runtime on the CPU (about twice as fast there).

The ONNX file is exported by this project from the loaded PyTorch encoder, once per checkpoint, into the user
cache folder (``~/.cache/medsam-slicer/onnx`` or ``$MEDSAM_SLICER_ONNX_DIR``) and reused after checking the sha256
recorded beside it.  Before use, every freshly exported file is checked against PyTorch on a fixed input; a file
whose output drifts more than 1e-3 is discarded and PyTorch is used instead.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, write_bytes_atomically
from ..errors import OptionError
from .models import LoadedModel, load_model
from .predictor import Segmenter
from .weights import file_sha256

log = logging.getLogger(__name__)

ONNX_DIR_ENV = "MEDSAM_SLICER_ONNX_DIR"
MAX_EXPORT_DRIFT = 1e-3


def onnx_dir() -> Path:
    value = os.environ.get(ONNX_DIR_ENV)
    if value:
        return Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medsam-slicer" / "onnx"


def _export(model: LoadedModel, target: Path) -> None:
    encoder = model.net.image_encoder.to("cpu").eval()
    size = 256 if model.pipeline == "lite" else 1024
    example = torch.zeros(1, 3, size, size)
    try:
        with atomic_path(target, suffix=".onnx") as temp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(encoder, (example,), str(temp), input_names=["image"], output_names=["embedding"],
                              opset_version=17, dynamo=False)
    finally:
        model.net.to(model.device)


class OnnxEncoder:
    """Callable (1, 3, S, S) float32 tensor -> (1, 256, 64, 64) tensor, through an ONNX Runtime session."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        (output,) = self.session.run(None, {"image": image.numpy().astype(np.float32, copy=False)})
        return torch.from_numpy(output)


def onnx_encoder(model: LoadedModel) -> OnnxEncoder:
    """The ONNX encoder of ``model``, exported and verified on first use."""
    target = onnx_dir() / f"{model.name}-{model.checkpoint.sha256[:16]}-encoder.onnx"
    record = target.with_suffix(".json")
    if target.is_file() and record.is_file():
        try:
            if json.loads(record.read_text())["sha256"] == file_sha256(target):
                return OnnxEncoder(target)
        except (OSError, ValueError, KeyError):
            pass
        log.warning("cached ONNX encoder %s failed its checksum; exporting it again", target)
    log.info("exporting the %s image encoder to ONNX (once): %s", model.name, target)
    _export(model, target)
    encoder = OnnxEncoder(target)
    drift = _drift(model, encoder)
    if drift > MAX_EXPORT_DRIFT:
        target.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export differs from PyTorch by {drift:.2e}")
    write_bytes_atomically(record, json.dumps({"sha256": file_sha256(target), "max_abs_drift": drift,
                                               "checkpoint_sha256": model.checkpoint.sha256}).encode())
    return encoder


def _drift(model: LoadedModel, encoder: OnnxEncoder) -> float:
    size = 256 if model.pipeline == "lite" else 1024
    probe = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model.net.image_encoder(probe.to(model.device)).cpu()
    return float((encoder(probe) - reference).abs().max())


def make_segmenter(model_name: str = "litemedsam", checkpoint: str | None = None, device: str = "auto",
                   backend: str = "auto", checkpoint_sha256: str | None = None) -> Segmenter:
    """A :class:`Segmenter` with the fastest encoder runtime available, saying which it chose."""
    if backend not in ("auto", "pytorch", "onnx"):
        raise OptionError(f"--backend must be auto, pytorch or onnx, got {backend!r}")
    model = load_model(model_name, checkpoint, device, checkpoint_sha256)
    on_cpu = model.device.type == "cpu"
    if backend == "pytorch" or (backend == "auto" and not on_cpu):
        return Segmenter(model)
    if backend == "onnx" and not on_cpu:
        raise OptionError("--backend onnx runs on the CPU; use --device cpu with it, or --backend pytorch")
    try:
        encoder = onnx_encoder(model)
    except Exception as error:  # onnxruntime missing, export unsupported, disk read-only, drift too large
        if backend == "onnx":
            raise OptionError(f"the ONNX Runtime encoder is unavailable: {error}") from error
        log.warning("ONNX Runtime encoder unavailable (%s); using PyTorch", error)
        return Segmenter(model)
    return Segmenter(model, encoder, backend_name="onnxruntime")
