"""Per-slice pre/post-processing equals the official code of each model family, on real non-square slices."""

import hashlib
import logging

import cv2
import numpy as np
import pytest
import torch
from skimage import transform

from MedSAMSlicerLib.protocol import Box
from MedSAMSlicerLib.engine.intensity import Window, normalize_volume
from MedSAMSlicerLib.engine.models import build_network
from MedSAMSlicerLib.engine.pipelines import LitePipeline, MedSAMPipeline, SamPipeline, SliceGeometry
from MedSAMSlicerLib.volumeio.files import read_volume

from conftest import shared_path


@pytest.fixture(scope="module")
def breast_slice():
    """A real 120 x 45 MR slice: non-square, so every resize and box scaling shows."""
    volume = read_volume(shared_path("pyradiomics", "breast1_image.nrrd"))
    return normalize_volume(volume.array, Window("mr"))[9]


def official_lite_input(img_2d):
    """CVPR24_LiteMedSAM_infer.py: resize_longest_side + min-max + pad_image, transcribed."""
    img_3c = np.repeat(img_2d[:, :, None], 3, axis=-1)
    oldh, oldw = img_3c.shape[:2]
    scale = 256 * 1.0 / max(oldh, oldw)
    newh, neww = int(oldh * scale + 0.5), int(oldw * scale + 0.5)
    img_256 = cv2.resize(img_3c, (neww, newh), interpolation=cv2.INTER_AREA)
    img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
    img_256 = np.pad(img_256, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    return torch.tensor(img_256).float().permute(2, 0, 1).unsqueeze(0), (newh, neww)


def test_lite_input_equals_official(breast_slice):
    ours, geometry = LitePipeline().image_tensor(breast_slice)
    official, new_size = official_lite_input(breast_slice)
    assert geometry == SliceGeometry((120, 45), new_size) == SliceGeometry((120, 45), (256, 96))
    assert torch.equal(ours, official)


def test_lite_box_and_mask_mapping():
    pipeline, geometry = LitePipeline(), SliceGeometry((120, 45), (256, 96))
    # resize_box_to_256: int(coordinate * 256 / max(H, W)), truncated
    np.testing.assert_array_equal(pipeline.box_array(Box(10, 20, 30, 99), geometry), [21, 42, 64, 211])
    logits = torch.full((1, 1, 256, 256), -10.0)
    logits[..., 0:128, 0:48] = 10.0  # the top-left quarter of the unpadded area
    mask = pipeline.mask(logits, geometry)
    assert mask.shape == (120, 45)
    assert mask[:59, :22].all() and not mask[61:].any() and not mask[:, 23:].any()


def test_medsam_input_and_box_equal_official(breast_slice):
    ours, geometry = MedSAMPipeline().image_tensor(breast_slice)
    img_3c = np.repeat(breast_slice[:, :, None], 3, axis=-1)
    img_1024 = transform.resize(img_3c, (1024, 1024), order=3, preserve_range=True,
                                anti_aliasing=True).astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
    official = torch.tensor(img_1024).float().permute(2, 0, 1).unsqueeze(0)
    assert torch.equal(ours, official)
    box = Box(10, 20, 30, 99)
    expected = np.array([10, 20, 30, 99]) / np.array([45, 120, 45, 120]) * 1024
    np.testing.assert_allclose(MedSAMPipeline().box_array(box, geometry), expected, rtol=1e-6)


def test_sam_input_and_box_equal_segment_anything(breast_slice):
    from segment_anything.utils.transforms import ResizeLongestSide

    ours, geometry = SamPipeline().image_tensor(breast_slice)
    resize = ResizeLongestSide(1024)
    rgb = np.repeat(breast_slice[:, :, None], 3, axis=-1)
    resized = torch.as_tensor(resize.apply_image(rgb)).permute(2, 0, 1)[None].float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    expected = (resized - mean) / std
    h, w = expected.shape[-2:]
    expected = torch.nn.functional.pad(expected, (0, 1024 - w, 0, 1024 - h))
    assert torch.allclose(ours, expected, atol=1e-5)
    box = Box(10, 20, 30, 99)
    np.testing.assert_allclose(SamPipeline().box_array(box, geometry),
                               resize.apply_boxes(np.array([[10, 20, 30, 99]]), (120, 45))[0], rtol=1e-6)


def official_lite_next_box(previous, margin=3):
    """CVPR24_LiteMedSAM_infer.py: the previous mask resized like the image, its box at the 256 scale +- 3."""
    height, width = previous.shape
    scale = 256 / max(height, width)
    small = cv2.resize(previous.astype(np.uint8), (int(width * scale + 0.5), int(height * scale + 0.5)),
                       interpolation=cv2.INTER_AREA)
    ys, xs = np.where(small > 0)
    return np.array([max(0, xs.min() - margin), max(0, ys.min() - margin), min(256, xs.max() + margin),
                     min(256, ys.max() + margin)])


def test_each_pipeline_maps_the_previous_mask_to_the_next_model_box():
    previous = np.zeros((120, 45), dtype=bool)
    previous[30:80, 5:44] = True
    geometry = SliceGeometry((120, 45), (256, 96))
    np.testing.assert_array_equal(LitePipeline().box_from_previous_mask(previous, geometry, 3),
                                  official_lite_next_box(previous))
    for pipeline, model_geometry in ((MedSAMPipeline(), SliceGeometry((120, 45), (1024, 1024))),
                                     (SamPipeline(), SliceGeometry((120, 45), (1024, 384)))):
        expected = pipeline.box_array(Box(5, 30, 43, 79), model_geometry) + np.array([-3, -3, 3, 3])
        got = pipeline.box_from_previous_mask(previous, model_geometry, 3)
        np.testing.assert_allclose(got, np.clip(expected, 0, 1024), rtol=1e-6)
        assert got.dtype == np.float32
    for pipeline in (LitePipeline(), MedSAMPipeline(), SamPipeline()):
        assert pipeline.box_from_previous_mask(np.zeros((120, 45), dtype=bool), geometry, 3) is None


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """A randomly initialised ViT-B SAM saved like a user's medsam_vit_b.pth (no real weights exist here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vitb") / "medsam_vit_b.pth"
    torch.save(build_network("vit_b").state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("model_name", ["medsam", "sam_vit_b"])
def test_vit_b_models_run_from_a_user_path(model_name, vit_b_checkpoint, breast_slice, caplog):
    from MedSAMSlicerLib.engine.backends import make_segmenter

    path, digest = vit_b_checkpoint
    segmenter = make_segmenter(model_name, path, "cpu", "pytorch", checkpoint_sha256=digest)
    assert segmenter.model.checkpoint.verified and segmenter.image_size == 1024
    embedding = segmenter.embed(breast_slice)
    assert tuple(embedding.features.shape) == (1, 256, 64, 64)
    mask, score = segmenter.predict(embedding, Box(5, 30, 35, 90))
    assert mask.shape == breast_slice.shape and mask.dtype == bool and np.isfinite(score)
    with caplog.at_level(logging.WARNING):
        unpinned = make_segmenter(model_name, path, "cpu", "pytorch")
    assert not unpinned.model.checkpoint.verified and digest in caplog.text
