"""OpenVINO on the CPU for the exported encoder and box decoder: the fastest runtime measured on x86 CPUs here.

- Exact mode compiles with ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's CPU default is bf16 on CPUs that have it,
  which is why the hint is always given).  Fast mode compiles the *encoder* in bf16 where the CPU reports BF16 in
  ``OPTIMIZATION_CAPABILITIES``; the decoder stays fp32 (it is cheap, and the masks come from its logits).
- Interactive calls use a ``LATENCY``-compiled model (one request spread over every core).  Encode-ahead uses a
  second, ``THROUGHPUT``-compiled copy, compiled on first use: several requests, each on its own stream of cores,
  run at once from the engine's encode-ahead threads.  On this CPU both give bit-identical fp32 outputs.
- A corrective box's two first walk decodes use a two-stream ``THROUGHPUT`` copy of the decoder (:meth:`decode_pair`),
  compiled on first use and used only once its outputs equal the ``LATENCY`` request's bit for bit on a probe.
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


def _compile(source: ExportedFile, performance: str, precision_hint: str, streams: int | None = None):
    """A compiled model of ``source``, imported from its verified blob when there is one, else compiled and saved."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": performance}
    if streams is not None:
        config["NUM_STREAMS"] = str(streams)
    blob = source.path.with_name(f"{source.path.stem}.{performance.lower()}{streams or ''}-{precision_hint}.ovblob")
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

    def start(self, *inputs: np.ndarray) -> None:
        """Start an asynchronous infer (the caller holds the lock until :meth:`finish`)."""
        self.request.start_async({i: np.ascontiguousarray(x, dtype=np.float32) for i, x in enumerate(inputs)},
                                 share_inputs=True)

    def finish(self) -> list[np.ndarray]:
        self.request.wait()
        return [self.request.get_tensor(output).data.copy() for output in self.request.model_outputs]


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
        self._decoder_file = decoder
        self._ahead_pool: queue.Queue | None = None
        self._ahead_lock = threading.Lock()
        self._pair: tuple[_Request, _Request] | None = None
        self.pair_state = "untried"  # "untried", "ready" or why the pair is not used
        self._pair_lock = threading.Lock()

    def verification_key(self, part: str = "encoder") -> str:
        return f"openvino {self.version} {self.encoder_hint if part == 'encoder' else 'f32'}"

    def describe(self) -> str:
        encoder = "bf16 encoder, fp32 decoder" if self.precision == "fast" else "fp32"
        return f"OpenVINO {self.version.split('-')[0]}, {encoder}"

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self._encoder(image)[0]

    def decode(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        return self._decode_with(lambda request, features, boxes: request(features, boxes), embedding, box)

    # -- two decoder calls at once ------------------------------------------------------------------------------
    # A corrective box walks out from its slice in both directions; the first slice of each walk is prompted from
    # the same key mask, so corrections.py asks for those two decodes together.  One LATENCY request spreads one
    # decode over every core, and a 40 ms decoder does not scale perfectly over them; a two-stream copy of the
    # decoder runs the two decodes side by side, each on its own half of the cores.  Its outputs are compared with
    # the LATENCY request's, bit for bit, on a probe before it is first used (the same fp32 kernels, split over
    # fewer threads, give the same bits on the CPUs measured here); where they differ, the pair is never used.
    def _pair_requests(self) -> tuple[_Request, _Request] | None:
        with self._pair_lock:
            if self.pair_state == "untried" and self._decoder_file is not None:
                self.pair_state = "failed"
                try:
                    compiled = _compile(self._decoder_file, "THROUGHPUT", "f32", streams=2)
                    pair = (_Request(compiled), _Request(compiled))
                    if self._pair_matches(pair):
                        self._pair, self.pair_state = pair, "ready"
                    else:
                        self.pair_state = "its outputs differ from the latency request's"
                except Exception as error:  # a CPU plugin without streams: decode one after the other
                    self.pair_state = f"unavailable: {error}"
                if self._pair is None:
                    log.info("two-stream decoder not used (%s); decoding one box at a time", self.pair_state)
            return self._pair

    def _pair_matches(self, pair: tuple[_Request, _Request]) -> bool:
        rng = np.random.default_rng(18)
        embeddings = [rng.standard_normal((1, 256, 64, 64)).astype(np.float32) * 0.5 for _ in range(2)]
        boxes = [np.array([[30, 40, 150, 170]], np.float32), np.array([[90, 60, 140, 120]], np.float32)]
        if self._decoder is None:
            return False
        alone = [self._decoder(e, b) for e, b in zip(embeddings, boxes)]
        together = self._run_pair(pair, list(zip(embeddings, boxes)))
        return all(np.array_equal(x, y) for a, b in zip(alone, together) for x, y in zip(a, b))

    @staticmethod
    def _run_pair(pair: tuple[_Request, _Request], inputs: list[tuple[np.ndarray, np.ndarray]]) -> list[list]:
        with pair[0].lock, pair[1].lock:
            for request, (embedding, box) in zip(pair, inputs):
                request.start(embedding, box)
            return [request.finish() for request in pair]

    def decode_pair(self, first: tuple[np.ndarray, np.ndarray],
                    second: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, float]] | None:
        """Two ``(embedding, box)`` decodes at once, as :meth:`decode` would give them one after the other; None
        when this runtime cannot (no decoder, no verified two-stream copy): the caller then decodes them in turn."""
        if self._decoder is None:
            return None
        pair = self._pair_requests()
        if pair is None:
            return None
        inputs = [(np.ascontiguousarray(e, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32).reshape(1, 4))
                  for e, b in (first, second)]
        return [(logits, float(iou.reshape(-1)[0])) for logits, iou in self._run_pair(pair, inputs)]

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
