"""Building the networks and loading their checkpoints safely.

LiteMedSAM = our TinyViT encoder + segment-anything's prompt encoder and mask decoder, configured as in the
official ``CVPR24_LiteMedSAM_infer.py``.  MedSAM ViT-B and SAM ViT-B/L/H come from
``segment_anything.sam_model_registry`` built without a checkpoint; we load the weights ourselves with
``torch.load(weights_only=True)`` (the registry's own loader unpickles arbitrary objects).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, first_line
from .device import DeviceChoice, choose_device
from .tiny_vit import TinyViT
from .weights import ModelEntry, VerifiedCheckpoint, model_entry, resolve_checkpoint

log = logging.getLogger(__name__)


class LiteMedSAM(nn.Module):
    """Container with the attribute names of the official checkpoint (image_encoder / prompt_encoder / mask_decoder)."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder


def build_litemedsam() -> LiteMedSAM:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    return LiteMedSAM(
        image_encoder=TinyViT(img_size=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )


def build_network(architecture: str) -> nn.Module:
    if architecture == "litemedsam":
        return build_litemedsam()
    from segment_anything import sam_model_registry

    if architecture not in sam_model_registry:
        raise CheckpointError(f"unknown architecture {architecture!r} in model_weights/manifest.json")
    return sam_model_registry[architecture](checkpoint=None)


def _refusal(error: BaseException) -> str:
    """Why torch refused a file, without its advice to retry with ``weights_only=False`` (which would run code
    from the file: we never do that)."""
    text = str(error)
    if "Weights only load failed" in text or "weights_only" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        facts = [line for line in lines[1:] if "weights_only" not in line and "torch.load" not in line
                 and not line.startswith(("Check the documentation", "Please file an issue"))]
        what = facts[0] if facts else "it holds something other than tensors"
        return (f"it holds pickled Python objects, which MedSAMSlicer never loads because they can run code "
                f"({what[:160]}); use a checkpoint of plain tensors")
    return first_line(error)


def read_state_dict(path: os.PathLike) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle with code in it, not a torch file at all
        raise CheckpointError(f"cannot read checkpoint {path}: {_refusal(error)}") from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], path: os.PathLike, architecture: str) -> None:
    expected = set(net.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        example = sorted(missing or unexpected)[0]
        raise CheckpointError(
            f"{path} is not a {architecture} checkpoint ({len(missing)} weights missing, {len(unexpected)} "
            f"unexpected, e.g. {example!r})")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:  # same names, other shapes: another model size
        raise CheckpointError(f"{path} does not fit the {architecture} architecture: "
                              f"{str(error).splitlines()[1].strip()[:200]}") from error


@dataclass
class LoadedModel:
    name: str
    entry: ModelEntry
    net: Any  # an nn.Module of segment_anything (untyped): its image_encoder, prompt_encoder, mask_decoder by name
    checkpoint: VerifiedCheckpoint
    device_choice: DeviceChoice

    @property
    def device(self) -> torch.device:
        return self.device_choice.device

    @property
    def pipeline(self) -> str:
        return self.entry.pipeline

    def move_to_cpu(self, why: str) -> None:
        log.warning("falling back to the CPU: %s", why)
        self.net.to("cpu")
        self.device_choice = DeviceChoice(torch.device("cpu"), f"fell back to CPU after a GPU failure ({why})")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def describe(self) -> str:
        check = "sha256 verified" if self.checkpoint.verified else "UNVERIFIED checkpoint"
        return (f"{self.entry.title} from {self.checkpoint.path} ({self.checkpoint.source}, {check}) on "
                f"{self.device} ({self.device_choice.reason})")


_model_memo: dict[tuple, LoadedModel] = {}


def load_model(name: str = "litemedsam", checkpoint: os.PathLike | str | None = None, device: str = "auto",
               checkpoint_sha256: str | None = None) -> LoadedModel:
    """Load (once per process) a model ready for inference."""
    entry = model_entry(name)
    verified = resolve_checkpoint(name, checkpoint, checkpoint_sha256)
    choice = choose_device(device)
    key = (name, verified.sha256, verified.verified, str(choice.device))
    if key not in _model_memo:
        net = build_network(entry.architecture)
        load_weights(net, read_state_dict(verified.path), verified.path, entry.architecture)
        net.eval()
        try:
            net.to(choice.device)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            net.to("cpu")
            choice = DeviceChoice(torch.device("cpu"), f"could not move the model to the GPU: {error}")
        _model_memo[key] = LoadedModel(name, entry, net, verified, choice)
    return _model_memo[key]
