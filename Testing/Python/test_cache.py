"""Embedding cache: budget, LRU, fp16, disk persistence, corruption, unwritable folders, threads."""

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from MedSAMSlicerLib.engine.cache import EmbeddingCache, embedding_bytes, volume_fingerprint
from MedSAMSlicerLib.errors import CacheError
from MedSAMSlicerLib.engine.pipelines import SliceGeometry
from MedSAMSlicerLib.engine.predictor import SliceEmbedding
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.volumeio.files import read_volume

from conftest import shared_path

ONE = embedding_bytes(torch.float32)


def fake_embedding(seed: int) -> SliceEmbedding:
    generator = torch.Generator().manual_seed(seed)
    return SliceEmbedding(torch.randn(1, 256, 64, 64, generator=generator), SliceGeometry((512, 512), (256, 256)))


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def make(self, seed: int):
        def compute() -> SliceEmbedding:
            self.calls += 1
            return fake_embedding(seed)

        return compute


def test_budget_smaller_than_one_embedding_is_refused():
    with pytest.raises(CacheError, match="smaller than one embedding"):
        EmbeddingCache(memory_budget=ONE - 1)
    EmbeddingCache(memory_budget=ONE // 2, store_fp16=True)  # one fp16 embedding fits


def test_lru_eviction_keeps_the_budget():
    cache, counter = EmbeddingCache(memory_budget=3 * ONE), Counter()
    for seed in range(3):
        cache.get_or_compute(("v", 0, seed), counter.make(seed))
    cache.get_or_compute(("v", 0, 0), counter.make(0))  # touch 0: now 1 is the least recently used
    cache.get_or_compute(("v", 0, 3), counter.make(3))
    assert ("v", 0, 1) not in cache and ("v", 0, 0) in cache and len(cache) == 3
    assert cache.stats.bytes <= 3 * ONE and cache.stats.evictions == 1
    assert counter.calls == 4 and cache.stats.hits == 1 and cache.stats.misses == 4


def test_fp16_halves_memory_and_keeps_values():
    cache = EmbeddingCache(store_fp16=True)
    stored = cache.get_or_compute(("v", 0, 0), lambda: fake_embedding(0))
    assert stored.features.dtype == torch.float16 and stored.nbytes == ONE // 2
    assert torch.allclose(stored.features.float(), fake_embedding(0).features, atol=2e-3, rtol=1e-3)


def test_disk_cache_survives_a_restart(tmp_path):
    first, counter = EmbeddingCache(disk_dir=tmp_path), Counter()
    original = first.get_or_compute(("fingerprint", 0, 5, "m"), counter.make(5))
    second = EmbeddingCache(disk_dir=tmp_path)  # a new process would start like this
    again = second.get_or_compute(("fingerprint", 0, 5, "m"), counter.make(5))
    assert counter.calls == 1 and second.stats.disk_hits == 1
    assert torch.equal(again.features, original.features) and again.geometry == original.geometry
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_disk_file_is_detected_and_recomputed(tmp_path, damage, caplog):
    EmbeddingCache(disk_dir=tmp_path).get_or_compute(("f", 0, 1), lambda: fake_embedding(1))
    (path,) = tmp_path.rglob("*.npz")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01  # inside the features array: only the checksum can tell
    else:
        data = bytearray(b"not an npz at all")
    path.write_bytes(bytes(data))
    cache, counter = EmbeddingCache(disk_dir=tmp_path), Counter()
    with caplog.at_level(logging.WARNING):
        result = cache.get_or_compute(("f", 0, 1), counter.make(1))
    assert counter.calls == 1 and cache.stats.disk_rejected == 1
    assert torch.equal(result.features, fake_embedding(1).features)
    assert "unusable" in caplog.text
    assert EmbeddingCache(disk_dir=tmp_path).get_or_compute(("f", 0, 1), counter.make(1)) is not None
    assert counter.calls == 1  # the rewritten file is good again


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_disk_cache_degrades_to_memory(tmp_path, caplog):
    tmp_path.chmod(0o500)
    try:
        cache = EmbeddingCache(disk_dir=tmp_path / "sub")
        with caplog.at_level(logging.WARNING):
            cache.get_or_compute(("f", 0, 0), lambda: fake_embedding(0))
        assert ("f", 0, 0) in cache and "memory only" in caplog.text
    finally:
        tmp_path.chmod(0o700)


def test_disk_cache_in_a_file_path_degrades_to_memory(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = EmbeddingCache(disk_dir=blocker)
    with caplog.at_level(logging.WARNING):
        cache.get_or_compute(("f", 0, 0), lambda: fake_embedding(0))
        cache.get_or_compute(("f", 0, 1), lambda: fake_embedding(1))
    assert len(cache) == 2 and caplog.text.count("memory only") == 1


def test_concurrent_requests_compute_once():
    cache, started, release = EmbeddingCache(), threading.Event(), threading.Event()
    calls = []

    def slow() -> SliceEmbedding:
        calls.append(1)
        started.set()
        release.wait(5)
        return fake_embedding(0)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute(("k",), slow)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait(5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1 and len(results) == 4 and all(r is results[0] for r in results)


def test_fingerprint_changes_with_content_and_window():
    volume = read_volume(shared_path("pyradiomics", "breast1_image.nrrd"))
    image = volume.array.astype(np.uint8)
    edited = image.copy()
    edited[3, 4, 5] ^= 1
    assert volume_fingerprint(image) != volume_fingerprint(edited)
    assert volume_fingerprint(image) == volume_fingerprint(image.copy())


def test_session_keys_separate_windows_and_axes(segmenter):
    volume = read_volume(shared_path("pyradiomics", "lung1_image.nrrd"))
    cache = EmbeddingCache()
    lung = VolumeSession(segmenter, volume, "lung", "axial", cache)
    soft = VolumeSession(segmenter, volume, "soft_tissue", "axial", cache)
    coronal = VolumeSession(segmenter, volume, "lung", "coronal", cache)
    keys = {lung.cache_key(10), soft.cache_key(10), coronal.cache_key(10)}
    assert len(keys) == 3
    assert lung.cache_key(10) == VolumeSession(segmenter, volume, "-160,1500", "axial", cache).cache_key(10)
