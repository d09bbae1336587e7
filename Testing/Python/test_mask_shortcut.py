"""LiteMedSAM's cheaper mask post-processing (pipelines.lite_mask) equals the official formula bit for bit:
``sigmoid(F.interpolate(logits[..., :h, :w], slice size, bilinear)) > 0.5``, on real decoder logits of shared slices
of three sizes and on hand-made logits chosen to break it (values at and around 0, denormals, NaN and infinity,
blobs at the edges, exact and non-exact scale ratios).  No timing here: bench/correction_speed.py measures it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedSAMSlicerLib.engine import pipelines
from MedSAMSlicerLib.engine.pipelines import SIGN_BAND, LitePipeline, SliceGeometry, lite_mask, lite_mask_official
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices
from MedSAMSlicerLib.protocol import Box, axes, box_from_mask

from conftest import real_cases

# (case, slice shape): 512² CT (scale 1/2), 256² MR (scale 1), 120 x 45 MR (256/120: no exact scale, whole slice)
CASES = {"lung2": (512, 512), "CT_Lesion_000015_01_01_081-093": (512, 512), "brain1": (256, 256),
         "breast1": (120, 45)}


def geometry_of(height: int, width: int) -> SliceGeometry:
    scale = 256 / max(height, width)
    return SliceGeometry((height, width), (int(height * scale + 0.5), int(width * scale + 0.5)))


def assert_official(logits: torch.Tensor, geometry: SliceGeometry) -> None:
    ours, official = lite_mask(logits, geometry), lite_mask_official(logits, geometry)
    assert ours.dtype == official.dtype == np.bool_ and ours.shape == official.shape
    assert np.array_equal(ours, official), f"{np.count_nonzero(ours != official)} pixels differ on {geometry}"


@pytest.fixture(scope="module")
def real_logits(open_case, segmenter):
    """Decoder logits of real slices: per case, 3 labelled slices x (tight box, box + 10 px, box shifted)."""
    if not segmenter.runtime or not segmenter.runtime.has_decoder:
        pytest.skip("no exported decoder on this machine's runtime")
    found = {c.name: c for c in real_cases()}
    missing = [name for name in CASES if name not in found]
    if missing:
        pytest.skip(f"shared cases {missing} not found in ../shared/data")
    out = []
    for name, shape in CASES.items():
        session, label = open_case(found[name])
        assert session.slice_shape == shape
        present = [int(i) for i in labelled_slices(label > 0, session.np_axis)]
        for index in (present[0], present[len(present) // 2], present[-1]):
            embedding = session.embedding(index)
            tight = box_from_mask(axes.take_slice(label > 0, session.np_axis, index))
            h, w = shape
            for box in (tight, Box(max(0, tight.x0 - 10), max(0, tight.y0 - 10), min(w - 1, tight.x1 + 10),
                                   min(h - 1, tight.y1 + 10)),
                        Box(min(w - 2, tight.x0 + 3), tight.y0, min(w - 1, tight.x1 + 3), tight.y1)):
                logits, _ = segmenter.runtime.decode(embedding.features.numpy(),
                                                     segmenter.pipeline.box_array(box, embedding.geometry)[None])
                out.append((name, torch.from_numpy(logits), embedding.geometry))
    return out


def test_real_decoder_logits_give_the_official_mask(real_logits):
    for name, logits, geometry in real_logits:
        assert_official(logits, geometry)
    # and through the pipeline's own entry point, both settings
    name, logits, geometry = real_logits[0]
    pipeline = LitePipeline()
    fast = pipeline.mask(logits, geometry)
    pipeline.shortcut = False
    assert np.array_equal(fast, pipeline.mask(logits, geometry))


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_a_crop_upsamples_like_the_whole_slice(real_logits, factor):
    """Fact 2 of pipelines.py at the float level: F.interpolate on a crop gives, on the rows and columns
    pipelines.crop_rows_kept keeps, the very floats the whole slice gets (power-of-two scales), for crops anywhere."""
    rng = np.random.default_rng(factor)
    for _, logits, geometry in real_logits[::4]:
        low = logits[..., :geometry.input_size[0], :geometry.input_size[1]]
        h, w = low.shape[-2:]
        whole = F.interpolate(low, size=(factor * h, factor * w), mode="bilinear", align_corners=False)[0, 0]
        for _ in range(6):
            ra, ca = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
            rb, cb = int(rng.integers(ra + 40, h + 1)), int(rng.integers(ca + 40, w + 1))
            if rng.random() < 0.3:  # reach the slice's edge too
                rb, ca = h, 0
            crop = F.interpolate(low[..., ra:rb, ca:cb], size=(factor * (rb - ra), factor * (cb - ca)),
                                 mode="bilinear", align_corners=False)[0, 0]
            rlo, rhi = pipelines.crop_rows_kept(ra, rb, h, factor)
            clo, chi = pipelines.crop_rows_kept(ca, cb, w, factor)
            ours = crop[rlo:rhi, clo:chi]
            theirs = whole[factor * ra + rlo:factor * ra + rhi, factor * ca + clo:factor * ca + chi]
            assert torch.equal(ours, theirs), (factor, ra, rb, ca, cb)


def test_sigmoid_above_half_only_for_positive_logits_and_always_beyond_the_band():
    """Fact 1 of pipelines.py, on torch's own sigmoid, vector path (long tensors) and scalar path (one value)."""
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    values = np.concatenate([
        np.array([0.0, -0.0, tiny, -tiny, 1e-45, 1e-40, -1e-40, 1e-38, 1e-8, -1e-8, 1e-7, -1e-7], np.float32),
        np.geomspace(1e-12, 1.0, 20000, dtype=np.float32), -np.geomspace(1e-12, 1.0, 20000, dtype=np.float32),
        np.linspace(0, 3e-7, 20001, dtype=np.float32),  # every pattern of the rounding near 6e-8, densely
        np.nextafter(np.float32(SIGN_BAND), np.float32(0)) + np.arange(-50, 50, dtype=np.float32) * 1e-11,
    ]).astype(np.float32)
    x = torch.from_numpy(values)
    for above in ((torch.sigmoid(x) > 0.5).numpy(),
                  np.array([bool(torch.sigmoid(x[i:i + 1])[0] > 0.5) for i in range(0, len(values), 97)])):
        sampled = values if len(above) == len(values) else values[::97]
        assert not above[sampled <= 0].any()
        assert above[sampled >= SIGN_BAND].all()
    # where sigmoid rounds to exactly 0.5 although x > 0: the band is what sends these slices the official way
    rounded = values[(values > 0) & ~(torch.sigmoid(x) > 0.5).numpy()]
    assert rounded.size and rounded.max() < SIGN_BAND


def blob_logits(fill: float, rows: slice, cols: slice, value) -> torch.Tensor:
    logits = torch.full((1, 1, 256, 256), fill, dtype=torch.float32)
    logits[0, 0, rows, cols] = value
    return logits


ADVERSARIAL_VALUES = [0.0, -0.0, 1e-8, -1e-8, 1e-7, -1e-7, 6e-8, 5.9e-8, 1e-45, -1e-45, 1e-40, 1e-5, 9.99e-5,
                      1e-4, 1.0001e-4, 3.0, float("inf"), float("-inf"), float("nan")]
# exact power-of-two scales (512², 1024², 256², non-square 400 x 512 -> 200 x 256) and others (whole-slice path)
SHAPES = [(512, 512), (1024, 1024), (256, 256), (400, 512), (512, 200), (120, 45), (300, 300), (100, 60), (64, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_hand_made_logits_give_the_official_mask(shape):
    geometry = geometry_of(*shape)
    h, w = geometry.input_size
    rng = np.random.default_rng(sum(shape))
    cases = [torch.full((1, 1, 256, 256), -3.0), torch.full((1, 1, 256, 256), 0.0),
             torch.full((1, 1, 256, 256), 1e-7)]
    for value in ADVERSARIAL_VALUES:  # one pixel, a small blob, both at the corners and edges of the unpadded area
        for r, c in ((0, 0), (h - 1, w - 1), (h // 2, 0), (h // 3, w // 3)):
            cases.append(blob_logits(-2.0, slice(r, r + 1), slice(c, c + 1), value))
            cases.append(blob_logits(-1e-7, slice(max(0, r - 2), r + 3), slice(max(0, c - 2), c + 3), value))
    for _ in range(20):  # smooth random fields that cross 0 (as decoder logits do), some scaled into the band
        field = torch.from_numpy(rng.standard_normal((1, 1, 32, 32)).astype(np.float32))
        field = F.interpolate(field, size=(256, 256), mode="bilinear", align_corners=False)
        field = field - float(rng.uniform(0.5, 2.5))
        cases.append(field * float(rng.choice([1.0, 10.0, 1e-6, 1e-9])))
    noisy = torch.from_numpy(rng.standard_normal((1, 1, 256, 256)).astype(np.float32))
    cases.append(noisy)
    cases.append(noisy * 1e-30)  # denormal-sized logits everywhere
    for logits in cases:
        assert_official(logits, geometry)


def test_the_crop_is_widened_past_atens_small_output_kernel(monkeypatch):
    """A one-pixel lesion on a 512² slice: the crop is widened so that ATen runs the same (generic) bilinear kernel
    as on the whole slice, never its channels-last kernel for outputs of H + W <= 128."""
    geometry = geometry_of(512, 512)
    sizes = []
    real = F.interpolate

    def spy(tensor, size=None, **kwargs):
        sizes.append(size)
        return real(tensor, size=size, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    for r, c in ((0, 0), (128, 128), (255, 255), (0, 255)):
        logits = blob_logits(-4.0, slice(r, r + 1), slice(c, c + 1), 20.0)
        sizes.clear()
        ours = lite_mask(logits, geometry)
        assert len(sizes) == 1 and 128 < sum(sizes[0]) < 1024  # one crop, not the whole slice
        assert np.array_equal(ours, lite_mask_official(logits, geometry)) and ours.any()
