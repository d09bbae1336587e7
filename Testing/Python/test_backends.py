"""Runtimes: OpenVINO is the CPU default and agrees with PyTorch; fallbacks say why; exported files are checked."""

import hashlib
import json
import sys

import numpy as np
import pytest
import torch

from MedSAMSlicerLib.engine.backends import DeferredModel, make_segmenter
from MedSAMSlicerLib.protocol import Box
from MedSAMSlicerLib.engine.device import choose_device, is_gpu_failure
from MedSAMSlicerLib.engine.export import cached_export, exported
from MedSAMSlicerLib.errors import OptionError
from MedSAMSlicerLib.engine.intensity import normalize_volume, parse_window
from MedSAMSlicerLib.volumeio.files import read_volume

from conftest import shared_path

BOXES = (Box(300, 260, 380, 330), Box(280, 240, 400, 350))


@pytest.fixture(scope="module")
def lung_slice():
    volume = read_volume(shared_path("pyradiomics", "lung2_image.nrrd"))
    return normalize_volume(volume.array, parse_window("lung"))[20]


@pytest.fixture(scope="module")
def torch_embedding(torch_segmenter, lung_slice):
    return torch_segmenter.embed(lung_slice)


def assert_matches_pytorch(segmenter, torch_segmenter, lung_slice, torch_embedding):
    ours = segmenter.embed(lung_slice)
    assert (ours.features - torch_embedding.features).abs().max().item() <= 1e-4
    for box in BOXES:
        mask, score = segmenter.predict(ours, box)
        reference, reference_score = torch_segmenter.predict(torch_embedding, box)
        assert mask.any() and np.array_equal(mask, reference) and abs(score - reference_score) < 1e-3


def test_openvino_is_the_cpu_default_and_matches_pytorch(segmenter, torch_segmenter, lung_slice, torch_embedding):
    assert segmenter.backend_name == "openvino" and segmenter.precision == "exact"
    assert segmenter.runtime.has_decoder  # prompt encoder + mask decoder run in OpenVINO too
    assert_matches_pytorch(segmenter, torch_segmenter, lung_slice, torch_embedding)


def test_exports_are_recorded_verified_and_reused(segmenter, onnx_dir):
    model = segmenter.model
    for part in ("encoder", "decoder"):
        (onnx,) = onnx_dir.glob(f"{model.name}-*-{part}.onnx")
        record = json.loads(onnx.with_suffix(".json").read_text())
        assert record["checkpoint_sha256"] == model.checkpoint.sha256
        check = record["verified"][segmenter.runtime.verification_key(part)]
        assert check["ok"] and check["max_abs"] <= 1e-3
    blobs = sorted(onnx_dir.glob("*.ovblob"))
    mtimes = {path: path.stat().st_mtime_ns for path in [*onnx_dir.glob("*.onnx"), *blobs]}
    again = make_segmenter("litemedsam", device="cpu")
    assert {path: path.stat().st_mtime_ns for path in mtimes} == mtimes  # nothing exported or compiled again
    # verified exports: start-up does not read the PyTorch network at all
    assert isinstance(again.model, DeferredModel) and not again.model.loaded and again.backend_name == "openvino"


def test_tampered_exports_are_exported_again(segmenter, onnx_dir):
    model = segmenter.model
    onnx = exported(model, "encoder").path
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"tampered!!")
    assert cached_export(model, "encoder") is None
    (blob,) = onnx_dir.glob("*-decoder.latency-f32.ovblob")
    blob.write_bytes(blob.read_bytes()[:-10] + b"tampered!!")
    fresh = make_segmenter("litemedsam", device="cpu")  # re-exports the encoder, recompiles the decoder
    assert cached_export(model, "encoder") is not None and fresh.backend_name == "openvino"
    record = json.loads(blob.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
    probe = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        reference = model.net.image_encoder(probe).numpy()
    assert np.abs(fresh.runtime.encode(probe.numpy()) - reference).max() <= 1e-4


def test_without_openvino_auto_uses_onnx_runtime_and_says_why(monkeypatch, torch_segmenter, lung_slice,
                                                               torch_embedding):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails, as when it is not installed
    with pytest.raises(OptionError, match="OpenVINO unavailable"):
        make_segmenter("litemedsam", device="cpu", backend="openvino")
    fallback = make_segmenter("litemedsam", device="cpu", backend="auto")
    assert fallback.backend_name == "onnxruntime" and "OpenVINO unavailable" in fallback.backend_reason
    assert_matches_pytorch(fallback, torch_segmenter, lung_slice, torch_embedding)


def test_without_any_runtime_auto_uses_pytorch(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    fallback = make_segmenter("litemedsam", device="cpu", backend="auto")
    assert fallback.backend_name == "pytorch" and fallback.runtime is None
    assert "OpenVINO unavailable" in fallback.backend_reason and "ONNX Runtime unavailable" in fallback.backend_reason


def test_bad_backend_or_precision_is_refused():
    with pytest.raises(OptionError, match="--backend"):
        make_segmenter("litemedsam", device="cpu", backend="tensorrt")
    with pytest.raises(OptionError, match="--precision"):
        make_segmenter("litemedsam", device="cpu", precision="int8")


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


def test_cpu_runtimes_refuse_a_gpu_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: the refusal only applies on a GPU")
    for backend in ("onnx", "openvino"):
        with pytest.raises(OptionError):
            make_segmenter("litemedsam", device="cuda", backend=backend)


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
