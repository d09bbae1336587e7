"""Precision and encode-ahead: fast (bf16) embeddings never share cache entries with exact ones; encoding ahead of
the decoder changes nothing in the result."""

import logging

import numpy as np
import pytest

from MedSAMSlicerLib.engine import runtime_openvino
from MedSAMSlicerLib.engine.backends import make_segmenter
from MedSAMSlicerLib.engine.cache import EmbeddingCache
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate, upcoming
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.evaluation.evaluate import official_key
from MedSAMSlicerLib.volumeio.files import read_volume

from conftest import shared_path


@pytest.fixture(scope="module")
def recist():
    return read_volume(shared_path("medsam2_recist", "CT_Lesion_000002_03_01_035-047.npz"))


def test_fast_precision_keeps_its_own_cache_entries(segmenter, recist):
    if not runtime_openvino.bf16_available():
        pytest.skip("this CPU reports no bf16 to OpenVINO: --precision fast runs exact here")
    fast = make_segmenter("litemedsam", device="cpu", precision="fast")
    assert fast.backend_name == "openvino" and fast.precision == "fast" and fast.embedding_tag != "exact"
    cache = EmbeddingCache()
    exact_session = VolumeSession(segmenter, recist, "auto", "axial", cache)
    fast_session = VolumeSession(fast, recist, "auto", "axial", cache)
    assert exact_session.cache_key(6) != fast_session.cache_key(6)
    exact, quick = exact_session.embedding(6), fast_session.embedding(6)
    assert len(cache) == 2  # two entries: the fast one did not reuse the exact one, nor the other way round
    drift = (exact.features - quick.features).abs().max().item()
    assert 1e-3 < drift < 0.5  # bf16 really differs (so sharing entries would be wrong), yet stays close


def test_fast_precision_without_bf16_says_so_and_runs_exact(monkeypatch, caplog):
    monkeypatch.setattr(runtime_openvino, "bf16_available", lambda: False)  # a CPU without bf16
    with caplog.at_level(logging.WARNING):
        segmenter = make_segmenter("litemedsam", device="cpu", precision="fast")
    assert segmenter.backend_name == "openvino" and segmenter.precision == "exact"
    assert segmenter.embedding_tag == "exact" and "no bf16" in caplog.text


def test_upcoming_skips_directions_that_stopped():
    order = [(5, 5, 0), (6, 5, 1), (7, 5, 1), (4, 5, -1), (3, 5, -1)]
    assert upcoming(order, 0, set(), 3) == [5, 6, 7]
    assert upcoming(order, 2, {(5, 1)}, 2) == [4, 3]


def test_encode_ahead_gives_the_sequential_masks_and_encoder_calls(segmenter, recist, monkeypatch):
    target = recist.embedded_label > 0
    key, box = official_key(target, 0)
    options = PropagationOptions(rule="official", slice_range=(key - 2, key + 2))
    ahead_calls = []
    real = segmenter.runtime.encode_ahead

    def counted(image):  # the real throughput request, counted
        ahead_calls.append(1)
        return real(image)

    monkeypatch.setattr(segmenter.runtime, "encode_ahead", counted)
    results = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("MEDSAM_SLICER_ENCODE_AHEAD", mode)
        session = VolumeSession(segmenter, recist, "auto", "axial", EmbeddingCache())  # cold: every slice encoded
        before = segmenter.encoder.calls
        result = propagate(session, {key: box}, options)
        results[mode] = (result, segmenter.encoder.calls - before)
    assert segmenter.ahead_depth >= 1 and len(ahead_calls) >= 4  # the walk really was fed ahead
    (sequential, sequential_calls), (ahead, ahead_calls_total) = results["off"], results["on"]
    assert sequential_calls == ahead_calls_total == 5
    assert np.array_equal(sequential.mask, ahead.mask) and sequential.mask.any()
    assert sequential.scores == pytest.approx(ahead.scores, abs=1e-6)
