"""Choosing the runtime that runs the networks: OpenVINO, ONNX Runtime or PyTorch, and the precision.

``--backend auto`` on the CPU tries OpenVINO, then ONNX Runtime, then PyTorch, and says why it passed over each;
on a GPU it is PyTorch.  A runtime is used only after its outputs were checked against PyTorch on a fixed probe
(:mod:`.export`): exact mode within 1e-3 (measured 6e-6), fast mode (OpenVINO bf16 encoder) within a relative L2
error of 10 % (a sanity bound; fast mode's real cost is the per-case DSC table of the README).  The result is
recorded beside the exported file, so the check runs once per file, runtime version and precision.
``--precision fast`` needs OpenVINO on a CPU with bf16; elsewhere it says so and runs exact.

Start-up: when the exported files are verified and the checkpoint's sha256 matched its record, the PyTorch network
is not read at all (:class:`DeferredModel` reads it on first use), which saves about a second.
"""

from __future__ import annotations

import logging

from ..errors import OptionError, first_line
from .device import DeviceChoice, choose_device
from .export import cached_export, exported, measure_decoder, measure_encoder
from .models import LoadedModel, ModelEntry, load_model
from .predictor import Runtime, Segmenter
from .weights import VerifiedCheckpoint, model_entry, resolve_checkpoint

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openvino", "onnx", "pytorch")
PRECISIONS = ("exact", "fast")
MAX_EXACT_DRIFT = 1e-3  # max |Δ| of the embedding and of the logits, against PyTorch
MAX_FAST_REL_L2 = 0.1  # relative L2 error of the bf16 embedding on the random probe (measured 0.042)


class DeferredModel(LoadedModel):
    """A :class:`LoadedModel` whose network is read from its (already verified) checkpoint on first use."""

    def __init__(self, name: str, entry: ModelEntry, checkpoint: VerifiedCheckpoint, device_choice: DeviceChoice,
                 checkpoint_arg: str | None, checkpoint_sha256: str | None, device_arg: str) -> None:
        self.name, self.entry, self.checkpoint, self.device_choice = name, entry, checkpoint, device_choice
        self._args = (name, checkpoint_arg, device_arg, checkpoint_sha256)
        self._net = None

    @property
    def net(self):
        if self._net is None:
            loaded = load_model(*self._args)
            self._net, self.device_choice = loaded.net, loaded.device_choice
        return self._net

    @net.setter
    def net(self, value) -> None:
        self._net = value

    @property
    def loaded(self) -> bool:
        return self._net is not None


def _verify(model, part: str, file, key: str, measure, limit) -> None:
    """Check a runtime's ``part`` against PyTorch once; raise when it drifts too far."""
    found = file.verification(key)
    if found is None:
        found = measure()
        problem = limit(found)
        found["ok"] = problem is None
        file.record_verification(key, found)
        log.info("%s %s checked against PyTorch: %s", key, part, found)
    if not found.get("ok"):
        raise RuntimeError(f"{key} {part} differs from PyTorch ({limit(found) or found})")


def _exact_limit(drift: dict) -> str | None:
    return None if drift["max_abs"] <= MAX_EXACT_DRIFT else f"max |Δ| {drift['max_abs']:.2e} > {MAX_EXACT_DRIFT}"


def _fast_limit(drift: dict) -> str | None:
    return None if drift["rel_l2"] <= MAX_FAST_REL_L2 else f"relative L2 {drift['rel_l2']:.3f} > {MAX_FAST_REL_L2}"


def _exports(model) -> tuple:
    return exported(model, "encoder"), exported(model, "decoder")


def _checked(model, runtime, encoder_file, decoder_file) -> Runtime:
    """``runtime`` once its encoder and decoder passed the check (a decoder that fails is dropped: PyTorch's)."""
    key = runtime.verification_key("encoder")
    limit = _fast_limit if runtime.precision == "fast" else _exact_limit
    _verify(model, "encoder", encoder_file, key, lambda: measure_encoder(model, runtime.encode), limit)
    if runtime.has_decoder:
        key = runtime.verification_key("decoder")
        try:
            _verify(model, "decoder", decoder_file, key, lambda: measure_decoder(model, runtime.decode), _exact_limit)
        except RuntimeError as error:
            log.warning("%s; the PyTorch decoder is used", error)
            runtime.drop_decoder()
    return runtime


def openvino_runtime(model, precision: str) -> Runtime:
    from .runtime_openvino import OpenVinoRuntime, bf16_available

    if precision == "fast" and not bf16_available():
        log.warning("--precision fast: this CPU reports no bf16 support to OpenVINO; running exact (fp32)")
        precision = "exact"
    encoder_file, decoder_file = _exports(model)
    return _checked(model, OpenVinoRuntime(encoder_file, decoder_file, precision), encoder_file, decoder_file)


def onnx_runtime(model) -> Runtime:
    from .runtime_onnx import OnnxRuntime

    encoder_file, decoder_file = _exports(model)
    return _checked(model, OnnxRuntime(encoder_file.path, decoder_file.path), encoder_file, decoder_file)


def _model(name: str, checkpoint: str | None, device: str, checkpoint_sha256: str | None) -> LoadedModel:
    """The model, its network deferred when both exported files are there and verified for this checkpoint."""
    choice = choose_device(device)
    if choice.device.type == "cpu":
        verified = resolve_checkpoint(name, checkpoint, checkpoint_sha256)
        deferred = DeferredModel(name, model_entry(name), verified, choice, checkpoint, checkpoint_sha256, device)
        if verified.verified and all(cached_export(deferred, part) for part in ("encoder", "decoder")):
            return deferred
    return load_model(name, checkpoint, device, checkpoint_sha256)


def make_segmenter(model_name: str = "litemedsam", checkpoint: str | None = None, device: str = "auto",
                   backend: str = "auto", checkpoint_sha256: str | None = None,
                   precision: str = "exact") -> Segmenter:
    """A :class:`Segmenter` on the fastest verified runtime available, saying which it chose and why."""
    if backend not in BACKENDS:
        raise OptionError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise OptionError(f"--precision must be exact or fast, got {precision!r}")
    model = _model(model_name, checkpoint, device, checkpoint_sha256)
    on_cpu = model.device.type == "cpu"
    if backend in ("openvino", "onnx") and not on_cpu:
        raise OptionError(f"--backend {backend} runs on the CPU; use --device cpu with it, or --backend pytorch")
    if backend == "pytorch" or not on_cpu:
        reason = "requested" if backend == "pytorch" else f"on the GPU ({model.device})"
        if precision == "fast":
            log.warning("--precision fast needs OpenVINO on the CPU; running exact")
        return Segmenter(model, None, reason)
    passed_over = []
    candidates = ["openvino", "onnx"] if backend == "auto" else [backend]
    for candidate in candidates:
        try:
            if candidate == "openvino":
                runtime = openvino_runtime(model, precision)
            else:
                if precision == "fast":
                    log.warning("--precision fast needs OpenVINO; ONNX Runtime runs exact")
                runtime = onnx_runtime(model)
        except Exception as error:  # not installed, export unsupported, disk read-only, drift too large
            why = f"{'OpenVINO' if candidate == 'openvino' else 'ONNX Runtime'} unavailable: {first_line(error, 160)}"
            if backend != "auto":
                raise OptionError(f"--backend {backend}: {why}") from error
            log.warning("%s; trying the next runtime", why)
            passed_over.append(why)
            continue
        reason = "requested" if backend != "auto" else "; ".join(passed_over + ["fastest verified runtime here"])
        return Segmenter(model, runtime, reason)
    return Segmenter(model, None, "; ".join(passed_over))
