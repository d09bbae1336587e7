"""OpenVINO on the CPU for the exported encoder and box decoder: the fastest runtime measured on x86 CPUs here.

- Exact mode compiles with ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's CPU default is bf16 on CPUs that have it,
  which is why the hint is always given).  Fast mode compiles the *encoder* in bf16 where the CPU reports BF16 in
  ``OPTIMIZATION_CAPABILITIES``; the decoder stays fp32 (it is cheap, and the masks come from its logits).
- Interactive calls use a ``LATENCY``-compiled model (one request spread over every core).  Encode-ahead uses a
  second, ``THROUGHPUT``-compiled copy, compiled on first use: several requests, each on its own stream of cores,
  run at once from the engine's encode-ahead threads.  On this CPU both give bit-identical fp32 outputs.
- Compiled models are exported to a blob beside the ONNX file (``<onnx>.<hint>-<precision>.ovblob``) with a record
  of its sha256, the OpenVINO version, the ONNX file's sha256 and the compile settings; a blob whose record does not
  match is compiled again.  Importing a blob takes ~0.1 s where compiling takes ~0.3 s.
- Requests are not thread-safe: each has a lock (or a pool, for the throughput copy).  Inputs are shared with the
  request (``share_inputs=True``); outputs are copied (``share_outputs`` off), since requests reuse their buffers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import queue
import threading

import numpy as np

from ..atomic import write_bytes_atomically
from .decoder_half import DecoderHalf
from .export import ExportedFile

log = logging.getLogger(__name__)

ENCODER_HINTS = {"exact": "f32", "fast": "bf16"}
_core = None
_core_lock = threading.Lock()


def core():
    """One ``openvino.Core`` per process (it owns the CPU plugin's thread pools)."""
    global _core
    import openvino as ov

    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def bf16_available() -> bool:
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _compile(source: ExportedFile, performance: str, precision_hint: str):
    """A compiled model of ``source``, imported from its verified blob when there is one, else compiled and saved."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": performance}
    blob = source.path.with_name(f"{source.path.stem}.{performance.lower()}-{precision_hint}.ovblob")
    record_path = blob.with_suffix(".json")
    expected = {"openvino": ov.__version__, "onnx_sha256": source.record["sha256"], "config": config,
                "cpu": core().get_property("CPU", "FULL_DEVICE_NAME")}
    try:
        record = json.loads(record_path.read_text())
        data = blob.read_bytes()
        if all(record.get(k) == v for k, v in expected.items()) and record.get("sha256") == \
                hashlib.sha256(data).hexdigest():
            return core().import_model(io.BytesIO(data), "CPU", config)
        log.warning("compiled OpenVINO model %s does not match its record; compiling it again", blob)
    except FileNotFoundError:
        pass
    except Exception as error:  # unreadable record, truncated blob, a blob another OpenVINO build rejects
        log.warning("cannot use the compiled OpenVINO model %s (%s); compiling it again", blob, error)
    compiled = core().compile_model(str(source.path), "CPU", config)
    try:
        stream = compiled.export_model()  # BytesIO in current releases, bytes in older ones
        data = stream.getvalue() if hasattr(stream, "getvalue") else bytes(stream)
        write_bytes_atomically(blob, data)
        record = {**expected, "sha256": hashlib.sha256(data).hexdigest()}
        write_bytes_atomically(record_path, json.dumps(record, indent=1).encode())
    except OSError as error:  # a read-only cache folder costs compile time only
        log.warning("cannot keep the compiled OpenVINO model in %s (%s)", blob.parent, error)
    return compiled


class _Request:
    """One infer request and the lock that keeps two threads off it."""

    def __init__(self, compiled) -> None:
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        feed = {i: np.ascontiguousarray(x, dtype=np.float32) for i, x in enumerate(inputs)}
        with self.lock:
            result = self.request.infer(feed, share_inputs=True)
            return [result[output] for output in self.request.model_outputs]


class OpenVinoRuntime(DecoderHalf[_Request]):
    name = "openvino"

    def __init__(self, encoder: ExportedFile, decoder: ExportedFile | None, precision: str = "exact") -> None:
        import openvino as ov

        if precision not in ENCODER_HINTS:
            raise ValueError(f"precision must be exact or fast, got {precision!r}")
        self.version = ov.__version__
        self.precision = precision
        self.encoder_hint = ENCODER_HINTS[precision]
        self._encoder_file = encoder
        self._encoder = _Request(_compile(encoder, "LATENCY", self.encoder_hint))
        self._decoder = _Request(_compile(decoder, "LATENCY", "f32")) if decoder is not None else None
        self._ahead_pool: queue.Queue | None = None
        self._ahead_lock = threading.Lock()

    def verification_key(self, part: str = "encoder") -> str:
        return f"openvino {self.version} {self.encoder_hint if part == 'encoder' else 'f32'}"

    def describe(self) -> str:
        encoder = "bf16 encoder, fp32 decoder" if self.precision == "fast" else "fp32"
        return f"OpenVINO {self.version.split('-')[0]}, {encoder}"

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self._encoder(image)[0]

    def decode(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        return self._decode_with(lambda request, features, boxes: request(features, boxes), embedding, box)

    # -- encode-ahead -------------------------------------------------------------------------------------------
    def _pool(self) -> queue.Queue:
        with self._ahead_lock:
            if self._ahead_pool is None:
                compiled = _compile(self._encoder_file, "THROUGHPUT", self.encoder_hint)
                count = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
                pool: queue.Queue = queue.Queue()
                for _ in range(count):
                    pool.put(_Request(compiled))
                self._ahead_pool, self._ahead_count = pool, count
            return self._ahead_pool

    @property
    def ahead_depth(self) -> int:
        """How many slices encode-ahead keeps in flight: the throughput copy's optimal number of requests."""
        self._pool()
        return self._ahead_count

    def encode_ahead(self, image: np.ndarray) -> np.ndarray:
        """Encode on a free request of the throughput copy (blocks the calling thread, not the others)."""
        pool = self._pool()
        request = pool.get()
        try:
            return request(image)[0]
        finally:
            pool.put(request)
