"""The networks as ONNX files, exported from the loaded PyTorch model once per checkpoint, checked on every load.

Two parts per model: the image encoder (``image`` (1, 3, S, S) -> ``embedding`` (1, 256, 64, 64)) and the prompt
encoder + mask decoder for one box (``image_embeddings``, ``boxes`` (1, 4) in model pixels -> ``low_res_logits``
(1, 1, 256, 256), ``iou`` (1, 1)), multimask off, as every pipeline here calls it.

Each file lives in the user cache folder (``~/.cache/medsam-slicer/onnx`` or ``$MEDSAM_SLICER_ONNX_DIR``) with a
JSON record beside it: the file's sha256, the checkpoint's sha256, and one entry per runtime and precision that has
been checked against PyTorch (``verified``: max |Δ| and relative L2 error on a fixed probe).  A file whose sha256
no longer matches is exported again; a runtime is used only once its entry is in the record, so the PyTorch network
is needed only the first time (which is what lets start-up skip loading it).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_bytes_atomically
from .weights import file_sha256

log = logging.getLogger(__name__)

EXPORT_DIR_ENV = "MEDSAM_SLICER_ONNX_DIR"
PARTS = ("encoder", "decoder")
OPSET = 17
PROBE_BOX = (30.0, 40.0, 150.0, 170.0)  # model pixels at 256; scaled for 1024 models


def export_dir() -> Path:
    value = os.environ.get(EXPORT_DIR_ENV)
    if value:
        return Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medsam-slicer" / "onnx"


def image_size(model) -> int:
    return 256 if model.pipeline == "lite" else 1024


class BoxDecoder(nn.Module):
    """Prompt encoder + mask decoder for one box; the no-mask embedding and the positional encoding fold in."""

    def __init__(self, net: Any) -> None:  # a segment_anything Sam (untyped): its parts are reached by name
        super().__init__()
        self.prompt_encoder: Any = net.prompt_encoder
        self.mask_decoder: Any = net.mask_decoder

    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        return self.mask_decoder(image_embeddings=image_embeddings, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)


def _export(model, part: str, target: Path) -> None:
    net = model.net
    net.to("cpu")
    try:
        if part == "encoder":
            module: nn.Module = net.image_encoder.eval()
            example: tuple = (torch.zeros(1, 3, image_size(model), image_size(model)),)
            names = (["image"], ["embedding"])
        else:
            module = BoxDecoder(net).eval()
            example = (torch.zeros(1, 256, 64, 64), torch.tensor([PROBE_BOX]))
            names = (["image_embeddings", "boxes"], ["low_res_logits", "iou"])
        with atomic_path(target, suffix=".onnx") as temp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(module, example, str(temp), input_names=names[0], output_names=names[1],
                              opset_version=OPSET, dynamo=False)
    finally:
        net.to(model.device)


@dataclass
class ExportedFile:
    """One exported part and its record."""

    path: Path
    record: dict

    @property
    def record_path(self) -> Path:
        return self.path.with_suffix(".json")

    def verification(self, key: str) -> dict | None:
        return self.record.get("verified", {}).get(key)

    def record_verification(self, key: str, drift: dict) -> None:
        """Add ``key``'s measured drift to the record (re-read first: another process may have added its own)."""
        current = _read_record(self.record_path) or self.record
        if current.get("sha256") != self.record.get("sha256"):
            current = self.record
        current.setdefault("verified", {})[key] = drift
        write_bytes_atomically(self.record_path, json.dumps(current, indent=1).encode())
        self.record = current


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def onnx_path(model, part: str) -> Path:
    return export_dir() / f"{model.name}-{model.checkpoint.sha256[:16]}-{part}.onnx"


def cached_export(model, part: str) -> ExportedFile | None:
    """The exported ``part`` if its file is there and matches its record's sha256; None otherwise."""
    target = onnx_path(model, part)
    record = _read_record(target.with_suffix(".json"))
    if not target.is_file() or record is None:
        return None
    try:
        ok = (record.get("sha256") == file_sha256(target)
              and record.get("checkpoint_sha256") == model.checkpoint.sha256)
    except OSError:
        ok = False
    if not ok:
        log.warning("exported %s %s failed its checksum; exporting it again", part, target)
        return None
    return ExportedFile(target, record)


def exported(model, part: str) -> ExportedFile:
    """The ONNX file of ``part``, exported now (from ``model.net``) when missing or failing its checksum."""
    found = cached_export(model, part)
    if found is not None:
        return found
    target = onnx_path(model, part)
    log.info("exporting the %s %s to ONNX (once): %s", model.name, part, target)
    _export(model, part, target)
    record = {"part": part, "model": model.name, "sha256": file_sha256(target),
              "checkpoint_sha256": model.checkpoint.sha256, "opset": OPSET, "torch": torch.__version__,
              "verified": {}}
    write_bytes_atomically(target.with_suffix(".json"), json.dumps(record, indent=1).encode())
    return ExportedFile(target, record)


# -- checking a runtime against PyTorch ---------------------------------------------------------------------------
_references: dict[tuple, dict[str, np.ndarray]] = {}


def probe_inputs(model) -> tuple[np.ndarray, np.ndarray]:
    """A fixed input image and box (model pixels), the same for every runtime."""
    size = image_size(model)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).numpy()
    box = np.array([PROBE_BOX], dtype=np.float32) * (size / 256)
    return image, box


def reference_outputs(model) -> dict[str, np.ndarray]:
    """PyTorch's embedding, logits and IoU on the probe (computed once per process and checkpoint)."""
    key = (model.name, model.checkpoint.sha256)
    if key not in _references:
        image, box = probe_inputs(model)
        net = model.net
        with torch.inference_mode():
            embedding = net.image_encoder(torch.from_numpy(image).to(model.device))
            logits, iou = BoxDecoder(net)(embedding, torch.from_numpy(box).to(model.device))
        _references[key] = {"embedding": embedding.cpu().numpy(), "logits": logits.cpu().numpy(),
                            "iou": iou.cpu().numpy()}
    return _references[key]


def drift(reference: np.ndarray, value: np.ndarray) -> dict:
    difference = np.asarray(value, dtype=np.float64) - reference
    return {"max_abs": float(np.abs(difference).max()),
            "rel_l2": float(np.linalg.norm(difference) / max(float(np.linalg.norm(reference)), 1e-12))}


def measure_encoder(model, encode: Callable[[np.ndarray], np.ndarray]) -> dict:
    image, _ = probe_inputs(model)
    return drift(reference_outputs(model)["embedding"], encode(image))


def measure_decoder(model, decode: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]) -> dict:
    """Drift of the logits, given PyTorch's own embedding (so the decoder is judged alone)."""
    _, box = probe_inputs(model)
    reference = reference_outputs(model)
    logits, _ = decode(reference["embedding"], box)
    result = drift(reference["logits"], logits)
    result["mask_pixels_changed"] = int(((logits > 0) != (reference["logits"] > 0)).sum())
    return result
