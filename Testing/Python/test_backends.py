"""Encoder runtimes: ONNX Runtime agrees with PyTorch; the exported file is cached and checked."""

import json

import numpy as np
import pytest
import torch

from MedSAMSlicerLib.engine.backends import make_segmenter, onnx_encoder
from MedSAMSlicerLib.engine.boxes import Box
from MedSAMSlicerLib.engine.device import choose_device, is_gpu_failure
from MedSAMSlicerLib.errors import OptionError
from MedSAMSlicerLib.engine.intensity import normalize_volume, parse_window
from MedSAMSlicerLib.volumeio.files import read_volume

from conftest import shared_path


@pytest.fixture(scope="module")
def lung_slice():
    volume = read_volume(shared_path("pyradiomics", "lung2_image.nrrd"))
    return normalize_volume(volume.array, parse_window("lung"))[20]


def test_onnx_matches_pytorch_on_a_real_slice(segmenter, torch_segmenter, lung_slice):
    assert segmenter.backend_name == "onnxruntime"  # the default on a CPU
    ours, reference = segmenter.embed(lung_slice), torch_segmenter.embed(lung_slice)
    assert (ours.features - reference.features).abs().max().item() <= 1e-4
    box = Box(300, 260, 380, 330)
    mask_onnx, score_onnx = segmenter.predict(ours, box)
    mask_torch, score_torch = torch_segmenter.predict(reference, box)
    assert np.count_nonzero(mask_onnx != mask_torch) <= 2 and abs(score_onnx - score_torch) < 1e-3


def test_export_is_cached_and_verified(segmenter, onnx_dir):
    model = segmenter.model
    (exported,) = onnx_dir.glob(f"{model.name}-*-encoder.onnx")
    record = json.loads(exported.with_suffix(".json").read_text())
    assert record["checkpoint_sha256"] == model.checkpoint.sha256 and record["max_abs_drift"] <= 1e-3
    mtime = exported.stat().st_mtime_ns
    onnx_encoder(model)  # second use: no new export
    assert exported.stat().st_mtime_ns == mtime


def test_tampered_onnx_file_is_exported_again(segmenter, onnx_dir):
    model = segmenter.model
    (exported,) = onnx_dir.glob(f"{model.name}-*-encoder.onnx")
    exported.write_bytes(exported.read_bytes()[:-10] + b"tampered!!")
    encoder = onnx_encoder(model)
    probe = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        reference = model.net.image_encoder(probe)
    assert (encoder(probe) - reference).abs().max().item() <= 1e-4


def test_device_choice_says_why():
    choice = choose_device("auto")
    assert choice.reason
    if not torch.cuda.is_available():
        assert choice.device.type == "cpu" and "no CUDA" in choice.reason
        assert choose_device("cuda").device.type == "cpu"  # asked for a GPU that is not there: CPU, with a warning
    with pytest.raises(OptionError):
        choose_device("tpu")


def test_gpu_failures_are_recognised():
    assert is_gpu_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_gpu_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_gpu_failure(RuntimeError("shape mismatch"))


def test_onnx_backend_refuses_a_gpu_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: the refusal only applies on a GPU")
    with pytest.raises(OptionError):
        make_segmenter("litemedsam", device="cuda", backend="onnx")


def test_gpu_out_of_memory_falls_back_to_cpu(torch_segmenter, caplog):
    import copy
    import logging

    from MedSAMSlicerLib.engine.device import DeviceChoice
    from MedSAMSlicerLib.engine.predictor import Segmenter

    model = copy.copy(torch_segmenter.model)
    model.device_choice = DeviceChoice(torch.device("cuda"), "pretend GPU")
    segmenter = Segmenter(model)
    tried = []

    def work(device):
        tried.append(device.type)
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return "done on cpu"

    with caplog.at_level(logging.WARNING):
        assert segmenter._run_on_device(work) == "done on cpu"
    assert tried == ["cuda", "cpu"] and model.device.type == "cpu"
    assert "falling back to the CPU" in caplog.text and "fell back" in model.device_choice.reason
    with pytest.raises(RuntimeError, match="shape"):
        segmenter._run_on_device(lambda device: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
