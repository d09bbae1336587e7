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

    shortcut = True  # False: every mask through the official formula (the bench's reference path)

    def mask(self, logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
        if self.shortcut:
            return lite_mask(logits, geometry)
        return lite_mask_official(logits, geometry)

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


# --- LiteMedSAM's mask, bit for bit the official one, at a fraction of its cost -----------------------------------
#
# The official post-processing (CVPR24_LiteMedSAM_infer.py) upsamples the cropped 256-scale logits bilinearly to the
# whole slice, takes the sigmoid and keeps > 0.5: on a 512² slice that is three full-resolution passes per decoder
# call, for a lesion that covers a few hundred pixels.  :func:`lite_mask` returns the same bits with two facts:
#
# 1. Sign.  For float32 x <= 0, sigmoid(x) = 1 / (1 + exp(-x)) <= 0.5: exp(-x) >= 1 up to the 1-ulp error of the
#    exp that torch uses (glibc's expf on the scalar path, SLEEF's u10 on the vector path), and 1 + exp(-x) only
#    rounds below 2 when exp(-x) <= 1 - 2**-23, 2 ulps off.  For x > 0 it is > 0.5, except where 1 + exp(-x)
#    rounds to 2, i.e. x below ~6e-8, where the official test says False although x > 0.  So `x > 0` decides every
#    pixel except 0 < x < SIGN_BAND; a slice with any upsampled value in that band goes through the official
#    formula whole (SIGN_BAND = 1e-4 is ~400 ulps of 0.5 away from the rounding, so no exp's error reaches it).
# 2. Support.  A bilinear value is w00*x00 + w01*x01 + w10*x10 + w11*x11 with weights >= 0; where all four source
#    logits are <= 0 every product and every rounded sum is <= 0, so the pixel is False.  Only the box around the
#    positive logits (one source pixel more on each side) needs upsampling.  F.interpolate on a crop computes each
#    pixel with the same source pixels and the same weights as on the whole image when the scale is a power of two
#    (1/1, 1/2, 1/4: 512² and 256² slices; the source coordinate (i + 0.5) * s - 0.5 is then exact in float), apart
#    from the crop's outermost output rows and columns, which clamp at the crop's edge and are not used.  Other
#    scales (non-square slices whose longest side is not 256 * 2**k, e.g. breast1) upsample the whole slice as the
#    official code does and use fact 1 only.  Crops are kept above ATen's 128-pixel (H + W) threshold, under which
#    it switches to another kernel.  Logits with NaN or infinity take the official path.
#
# test_mask_shortcut.py checks both against the official formula on real decoder logits and on hand-made ones.

SIGN_BAND = 1e-4
_GENERIC_KERNEL_MIN = 129  # ATen's upsample_bilinear2d uses its channels-last kernel when out H + W <= 128


def lite_mask_official(logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
    """CVPR24_LiteMedSAM_infer.py's post-processing, transcribed: crop, bilinear to the slice, sigmoid > 0.5."""
    new_h, new_w = geometry.input_size
    logits = F.interpolate(logits[..., :new_h, :new_w], size=geometry.original_size, mode="bilinear",
                           align_corners=False)
    return (torch.sigmoid(logits) > 0.5).squeeze().cpu().numpy()


def _power_of_two_factor(small: int, large: int) -> int | None:
    """``large / small`` when it is 1, 2, 4, ... (a scale exact in float), else None."""
    if small <= 0 or large % small:
        return None
    factor = large // small
    return factor if factor & (factor - 1) == 0 and factor <= 64 else None


def _span(flags: np.ndarray) -> tuple[int, int]:
    where = np.flatnonzero(flags)
    return int(where[0]), int(where[-1])


def _crop(first: int, last: int, size: int) -> tuple[int, int]:
    """Source rows [a, b) around the positive source rows first..last: every output row whose two source rows can
    hold a positive logit has its source coordinate in (first - 1, last + 1), inside [a, b - 1]."""
    return max(0, first - 1), min(size, last + 2)


def crop_rows_kept(a: int, b: int, size: int, factor: int) -> tuple[int, int]:
    """The crop's output rows [lo, hi) that equal the whole image's: those whose source coordinate lies in
    [a, b - 1] (the others clamp at the crop's edge), or up to the crop's end where it is the image's edge."""
    lo = factor // 2 if a > 0 else 0  # ceil((factor - 1) / 2): the first output whose source coordinate is >= a
    hi = factor * (b - a - 1) + (factor - 1) // 2 + 1 if b < size else factor * (b - a)
    return lo, hi


def _widen(a: int, b: int, size: int, more: int) -> tuple[int, int]:
    """[a, b) widened by up to ``more`` source rows within [0, size), below first."""
    down = min(a, more)
    return a - down, min(size, b + more - down)


def lite_mask(logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
    """The official LiteMedSAM mask (:func:`lite_mask_official`), bit for bit, computed where it can be non-zero."""
    new_h, new_w = geometry.input_size
    height, width = geometry.original_size
    if logits.dtype != torch.float32 or logits.dim() != 4 or logits.shape[:2] != (1, 1) or min(height, width) < 2:
        return lite_mask_official(logits, geometry)
    low = logits[..., :new_h, :new_w]
    fy, fx = _power_of_two_factor(new_h, height), _power_of_two_factor(new_w, width)
    if fy is None or fx is None or height + width < _GENERIC_KERNEL_MIN:
        up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        positive = up > 0
        if bool((positive & (up < SIGN_BAND)).any()):
            return lite_mask_official(logits, geometry)
        return positive.numpy()
    source = low[0, 0].numpy()
    if not np.isfinite(source).all():
        return lite_mask_official(logits, geometry)
    positive_source = source > 0
    rows, cols = np.asarray(positive_source.any(axis=1)), np.asarray(positive_source.any(axis=0))
    out = np.zeros((height, width), dtype=bool)
    if not rows.any():
        return out  # every source logit <= 0: every pixel is False (fact 2)
    (r0, r1), (c0, c1) = _span(rows), _span(cols)
    (ra, rb), (ca, cb) = _crop(r0, r1, new_h), _crop(c0, c1, new_w)
    while (short := _GENERIC_KERNEL_MIN - fy * (rb - ra) - fx * (cb - ca)) > 0:
        # Too small a crop for ATen's generic kernel: widen it (the whole slice is large enough, checked above).
        before = (ra, rb, ca, cb)
        ra, rb = _widen(ra, rb, new_h, -(-short // (2 * fy)))
        short = _GENERIC_KERNEL_MIN - fy * (rb - ra) - fx * (cb - ca)
        if short > 0:
            ca, cb = _widen(ca, cb, new_w, -(-short // fx))
        if (ra, rb, ca, cb) == before:
            return lite_mask_official(logits, geometry)
    (rlo, rhi), (clo, chi) = crop_rows_kept(ra, rb, new_h, fy), crop_rows_kept(ca, cb, new_w, fx)
    up = F.interpolate(low[..., ra:rb, ca:cb], size=(fy * (rb - ra), fx * (cb - ca)), mode="bilinear",
                       align_corners=False)[0, 0, rlo:rhi, clo:chi]
    positive = up > 0
    if bool((positive & (up < SIGN_BAND)).any()):
        return lite_mask_official(logits, geometry)
    out[fy * ra + rlo:fy * ra + rhi, fx * ca + clo:fx * ca + chi] = positive.numpy()
    return out
