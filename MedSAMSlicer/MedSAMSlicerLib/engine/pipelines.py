"""The official per-slice pre- and post-processing of each model family.

Input to every pipeline is one 2D uint8 slice (already windowed, see :mod:`intensity`).  Each pipeline turns it
into the encoder's input tensor, maps a box from slice pixels to model pixels, and maps the decoder's low-resolution
logits back to a boolean mask on the slice grid.  Each pipeline owns every mapping between slice and model
coordinates (as segment-anything's ``ResizeLongestSide`` does), including the box a propagation derives from the
previous slice's mask (:meth:`Pipeline.box_from_previous_mask`), so no caller redoes a resize.

- ``lite`` (LiteMedSAM, ``CVPR24_LiteMedSAM_infer.py``): resize the longest side to 256 with OpenCV's area
  interpolation, min-max to [0, 1], zero-pad bottom/right to 256x256; box * 256/max(H, W) truncated to integers;
  logits cropped to the unpadded area, bilinear to H x W, sigmoid > 0.5.
- ``medsam`` (MedSAM ViT-B, ``MedSAM_Inference.py``): bicubic resize to 1024x1024 with scikit-image
  (anti-aliasing, cast to uint8), min-max to [0, 1]; box / [W, H, W, H] * 1024; sigmoid of the 256x256 logits,
  bilinear to H x W, > 0.5.
- ``sam`` (Segment Anything, ``SamPredictor``): longest side to 1024 with PIL, (x - mean) / std, zero-pad;
  box scaled per axis; logits upsampled to 1024, cropped, bilinear to H x W, > 0.

The grey slice is repeated to 3 channels as the official code does; the single-channel resize is identical per
channel, so we resize once and repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..protocol import Box, box_from_mask


@dataclass(frozen=True)
class SliceGeometry:
    original_size: tuple[int, int]  # (H, W) of the slice
    input_size: tuple[int, int]  # (h, w) after resizing, before padding


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class Pipeline(Protocol):
    """One model family's pre- and post-processing: the only place that maps between slice and model pixels."""

    name: str  # "lite", "medsam", "sam": the manifest's ``pipeline``
    image_size: int  # the encoder's square input side, in model pixels

    def image_tensor(self, slice_u8: np.ndarray) -> tuple[torch.Tensor, SliceGeometry]:
        """The encoder's (1, 3, S, S) input from one windowed uint8 slice, and the geometry to map back with."""
        ...

    def box_array(self, box: Box, geometry: SliceGeometry) -> np.ndarray:
        """A box in slice pixels as the decoder's float32 [x0, y0, x1, y1] in model pixels."""
        ...

    def box_from_previous_mask(self, previous: np.ndarray, geometry: SliceGeometry,
                               margin: int) -> np.ndarray | None:
        """The next slice's model box from the previous slice's mask, ``margin`` model pixels around it and
        clipped to the model's square (None when the mask is empty: the caller falls back to the key box)."""
        ...

    def mask(self, logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
        """The decoder's low-resolution logits as a boolean mask on the slice grid."""
        ...

    def model_scale(self, geometry: SliceGeometry) -> tuple[float, float]:
        """Model pixels per slice pixel along (x, y)."""
        ...


def _min_max01(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float64)
    return (image - image.min()) / np.clip(image.max() - image.min(), a_min=1e-8, a_max=None)


def _to_tensor3(image2d: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image2d, dtype=np.float32))
    return tensor[None, None].expand(1, 3, *image2d.shape).contiguous()


def _box_around_mask(pipeline: Pipeline, previous: np.ndarray, geometry: SliceGeometry,
                     margin: int) -> np.ndarray | None:
    """The previous mask's bounding box mapped like any box (MedSAM and SAM map masks without a resize)."""
    box = box_from_mask(previous)
    if box is None:
        return None
    model_box = pipeline.box_array(box, geometry)
    return np.clip(model_box + np.array([-margin, -margin, margin, margin]), 0, pipeline.image_size).astype(np.float32)


class LitePipeline:
    name = "lite"
    image_size = 256

    def image_tensor(self, slice_u8: np.ndarray) -> tuple[torch.Tensor, SliceGeometry]:
        import cv2

        height, width = slice_u8.shape
        new_h, new_w = longest_side_shape(height, width, self.image_size)
        resized = cv2.resize(np.ascontiguousarray(slice_u8), (new_w, new_h), interpolation=cv2.INTER_AREA)
        padded = np.zeros((self.image_size, self.image_size), dtype=np.float64)
        padded[:new_h, :new_w] = _min_max01(resized)
        return _to_tensor3(padded), SliceGeometry((height, width), (new_h, new_w))

    def box_array(self, box: Box, geometry: SliceGeometry) -> np.ndarray:
        ratio = self.image_size / max(geometry.original_size)
        return np.array([int(v * ratio) for v in box.as_array()], dtype=np.float32)

    def box_from_previous_mask(self, previous: np.ndarray, geometry: SliceGeometry,
                               margin: int) -> np.ndarray | None:
        # Official (CVPR24_LiteMedSAM_infer.py): resize the mask like the image (area interpolation), pad to 256,
        # box at the 256 scale +- margin.
        import cv2

        height, width = previous.shape
        new_h, new_w = longest_side_shape(height, width, self.image_size)
        small = cv2.resize(previous.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_AREA)
        rows, cols = np.nonzero(small)
        if rows.size == 0:
            return None
        size = self.image_size
        return np.array([max(0, cols.min() - margin), max(0, rows.min() - margin),
                         min(size, cols.max() + margin), min(size, rows.max() + margin)], dtype=np.float32)

    def mask(self, logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
        new_h, new_w = geometry.input_size
        logits = F.interpolate(logits[..., :new_h, :new_w], size=geometry.original_size, mode="bilinear",
                               align_corners=False)
        return (torch.sigmoid(logits) > 0.5).squeeze().cpu().numpy()

    def model_scale(self, geometry: SliceGeometry) -> tuple[float, float]:
        """Model pixels per slice pixel along (x, y)."""
        ratio = self.image_size / max(geometry.original_size)
        return ratio, ratio


class MedSAMPipeline:
    name = "medsam"
    image_size = 1024

    def image_tensor(self, slice_u8: np.ndarray) -> tuple[torch.Tensor, SliceGeometry]:
        from skimage import transform

        size = self.image_size
        resized = transform.resize(slice_u8, (size, size), order=3, preserve_range=True,
                                   anti_aliasing=True).astype(np.uint8)
        return _to_tensor3(_min_max01(resized)), SliceGeometry(slice_u8.shape, (size, size))

    def box_array(self, box: Box, geometry: SliceGeometry) -> np.ndarray:
        height, width = geometry.original_size
        return (box.as_array() / np.array([width, height, width, height]) * self.image_size).astype(np.float32)

    def box_from_previous_mask(self, previous: np.ndarray, geometry: SliceGeometry,
                               margin: int) -> np.ndarray | None:
        return _box_around_mask(self, previous, geometry, margin)

    def mask(self, logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
        probs = F.interpolate(torch.sigmoid(logits), size=geometry.original_size, mode="bilinear",
                              align_corners=False)
        return (probs > 0.5).squeeze().cpu().numpy()

    def model_scale(self, geometry: SliceGeometry) -> tuple[float, float]:
        height, width = geometry.original_size
        return self.image_size / width, self.image_size / height


class SamPipeline:
    name = "sam"
    image_size = 1024
    pixel_mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    pixel_std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)

    def image_tensor(self, slice_u8: np.ndarray) -> tuple[torch.Tensor, SliceGeometry]:
        from PIL import Image

        height, width = slice_u8.shape
        new_h, new_w = longest_side_shape(height, width, self.image_size)
        # torchvision's resize of a PIL image, as SamPredictor does, is PIL's bilinear resize.
        rgb = np.repeat(np.ascontiguousarray(slice_u8)[:, :, None], 3, axis=2)
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
        tensor = torch.from_numpy(resized).permute(2, 0, 1)[None]
        tensor = (tensor - self.pixel_mean) / self.pixel_std
        tensor = F.pad(tensor, (0, self.image_size - new_w, 0, self.image_size - new_h))
        return tensor.contiguous(), SliceGeometry((height, width), (new_h, new_w))

    def box_array(self, box: Box, geometry: SliceGeometry) -> np.ndarray:
        sx, sy = self.model_scale(geometry)
        return (box.as_array() * np.array([sx, sy, sx, sy])).astype(np.float32)

    def box_from_previous_mask(self, previous: np.ndarray, geometry: SliceGeometry,
                               margin: int) -> np.ndarray | None:
        return _box_around_mask(self, previous, geometry, margin)

    def mask(self, logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
        new_h, new_w = geometry.input_size
        up = F.interpolate(logits, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        up = F.interpolate(up[..., :new_h, :new_w], geometry.original_size, mode="bilinear", align_corners=False)
        return (up > 0.0).squeeze().cpu().numpy()

    def model_scale(self, geometry: SliceGeometry) -> tuple[float, float]:
        (height, width), (new_h, new_w) = geometry.original_size, geometry.input_size
        return new_w / width, new_h / height


PIPELINES: dict[str, type[Pipeline]] = {"lite": LitePipeline, "medsam": MedSAMPipeline, "sam": SamPipeline}


def pipeline_for(name: str) -> Pipeline:
    return PIPELINES[name]()
