"""Hostile calls of the Python API and damaged cache files (issue 8).

- ``VolumeSession``, ``segment_slice`` and ``propagate`` check the types of their arguments and say what they
  expected (an ``ApiTypeError``: both a ``TypeError`` and a ``MedSAMError``), before any encoder call.
- The embedding cache's checksum covers every array of a cache file and the key: a tampered file is recomputed,
  never used; temporary files left by a killed writer are removed, one being written is not.
- A box that is empty once clipped to a 1x1 slice is refused.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from MedSAMSlicerLib.atomic import atomic_path
from MedSAMSlicerLib.engine.cache import EMBEDDING_SHAPE, EmbeddingCache
from MedSAMSlicerLib.engine.pipelines import SliceGeometry
from MedSAMSlicerLib.engine.predictor import SliceEmbedding
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.errors import ApiTypeError, BoxError, InputImageError, MedSAMError
from MedSAMSlicerLib.protocol import Box, Volume, checked_box


@pytest.fixture(scope="module")
def api(torch_segmenter):
    array = np.zeros((4, 32, 32), np.uint8)
    array[:, 8:20, 8:20] = 200
    array.setflags(write=False)
    volume = Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), "mem", None, True)
    session = VolumeSession(torch_segmenter, volume, "none", "axial")
    return torch_segmenter, volume, session


CALLS = {
    "VolumeSession(segmenter, ndarray)": lambda s, v, x: VolumeSession(s, v.array, "none"),
    "VolumeSession('not a segmenter', volume)": lambda s, v, x: VolumeSession("nope", v, "none"),
    "VolumeSession(window=3)": lambda s, v, x: VolumeSession(s, v, 3),
    "VolumeSession(axis=2)": lambda s, v, x: VolumeSession(s, v, "none", 2),
    "VolumeSession(cache={})": lambda s, v, x: VolumeSession(s, v, "none", "axial", {}),
    "segment_slice('1', box)": lambda s, v, x: x.segment_slice("1", Box(5, 5, 20, 20)),
    "segment_slice(1.5, box)": lambda s, v, x: x.segment_slice(1.5, Box(5, 5, 20, 20)),
    "segment_slice(True, box)": lambda s, v, x: x.segment_slice(True, Box(5, 5, 20, 20)),
    "segment_slice(1, tuple)": lambda s, v, x: x.segment_slice(1, (5, 5, 20, 20)),
    "segment_slice(1, str)": lambda s, v, x: x.segment_slice(1, "5,5,20,20"),
    "propagate(session, list)": lambda s, v, x: propagate(x, [(1, Box(5, 5, 20, 20))]),
    "propagate(session, {1: str})": lambda s, v, x: propagate(x, {1: "5,5,20,20"}),
    "propagate(session, {'1': box})": lambda s, v, x: propagate(x, {"1": Box(5, 5, 20, 20)}),
    "propagate(options='ours')": lambda s, v, x: propagate(x, {1: Box(5, 5, 20, 20)}, "ours"),
    "propagate(progress=1)": lambda s, v, x: propagate(x, {1: Box(5, 5, 20, 20)}, PropagationOptions(), 1),
    "propagate(volume, ...)": lambda s, v, x: propagate(v, {1: Box(5, 5, 20, 20)}),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_wrong_argument_types_say_what_was_expected(api, call):
    segmenter, volume, session = api
    calls_before = segmenter.encoder.calls
    with pytest.raises(ApiTypeError) as raised:
        CALLS[call](segmenter, volume, session)
    message = str(raised.value)
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, MedSAMError)
    assert "must be" in message and "got" in message and "\n" not in message, message
    assert segmenter.encoder.calls == calls_before  # refused before any model work


def test_boolean_volume_is_refused(api):
    segmenter, volume, _ = api
    with pytest.raises(InputImageError, match="not a mask"):
        VolumeSession(segmenter, volume.with_array(volume.array > 0), "none")


def test_box_empty_after_clipping_is_refused():
    with pytest.raises(BoxError, match="empty once clipped"):
        checked_box(Box(0, 0, 1, 1), (1, 1))
    with pytest.raises(BoxError, match="empty once clipped"):
        checked_box(Box(-5, 3, 0, 9), (16, 16))
    assert checked_box(Box(0, 0, 1, 1), (1, 1), allow_degenerate=True) == Box(0, 0, 0, 0)
    assert checked_box(Box(-5, -5, 40, 40), (16, 16)) == Box(0, 0, 15, 15)


# ----------------------------------------------------------------------------------------------------- cache

KEY = ("f" * 64, 0, 3, "litemedsam", "abcdef0123456789", "none", "exact")


def _embedding(seed: int = 0) -> SliceEmbedding:
    features = torch.from_numpy(np.random.default_rng(seed).standard_normal(EMBEDDING_SHAPE).astype(np.float32))
    return SliceEmbedding(features, SliceGeometry((32, 32), (256, 256)))


def _cache_file(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path)
    cache.get_or_compute(KEY, _embedding)
    (path,) = list(tmp_path.rglob("*.npz"))
    return path


def _rewrite(path, **changes):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def _flip_features(path):
    with np.load(path) as data:
        features = data["features"].copy()
    features.flat[0] += 1.0
    _rewrite(path, features=features)


@pytest.mark.parametrize("tamper", [
    _flip_features,
    lambda p: _rewrite(p, geometry=np.array([16, 16, 1024, 1024], np.int64)),
    lambda p: _rewrite(p, geometry=np.array([32, 32])),
    lambda p: _rewrite(p, geometry=np.array([-32, -32, 256, 256])),
    lambda p: _rewrite(p, sha256=None),
    lambda p: _rewrite(p, features=np.zeros((1, 256, 64, 64), np.float64)),
    lambda p: p.write_bytes(p.read_bytes()[:1000]),
    lambda p: (p.unlink(), p.mkdir()),
], ids=["features", "geometry sizes", "geometry length 2", "geometry negative", "no sha256", "features float64",
        "truncated", "folder"])
def test_tampered_cache_file_is_recomputed(tmp_path, tamper):
    path = _cache_file(tmp_path)
    tamper(path)
    cache = EmbeddingCache(disk_dir=tmp_path)
    computed = []
    embedding = cache.get_or_compute(KEY, lambda: computed.append(1) or _embedding())
    assert computed == [1] and cache.stats.disk_rejected == 1
    assert embedding.geometry == SliceGeometry((32, 32), (256, 256))
    assert torch.equal(embedding.features, _embedding().features)


def test_cache_file_under_another_key_is_not_used(tmp_path):
    """The checksum covers the key: a file copied to another slice's name is recomputed."""
    path = _cache_file(tmp_path)
    other = KEY[:2] + (4,) + KEY[3:]
    path.with_name(path.name.replace("-3-", "-4-")).write_bytes(path.read_bytes())
    cache = EmbeddingCache(disk_dir=tmp_path)
    computed = []
    cache.get_or_compute(other, lambda: computed.append(1) or _embedding(1))
    assert computed == [1] and cache.stats.disk_rejected == 1


def test_orphan_temporary_files_are_removed_but_not_a_write_in_progress(tmp_path):
    path = _cache_file(tmp_path)
    orphans = [path.parent / f".{path.name}.orphan{n}.npz" for n in range(3)]
    for orphan in orphans:
        orphan.write_bytes(b"half written")
    with atomic_path(path.parent / "other.npz", suffix=".npz") as in_progress:  # a live writer holds its lock
        in_progress.write_bytes(b"being written")
        cache = EmbeddingCache(disk_dir=tmp_path)
        computed = []
        cache.get_or_compute(KEY, lambda: computed.append(1) or _embedding())
        assert computed == [] and cache.stats.disk_hits == 1  # the real entry is used
        assert not any(o.exists() for o in orphans)
        assert in_progress.exists()
    assert hashlib.sha256((path.parent / "other.npz").read_bytes()).hexdigest() == \
        hashlib.sha256(b"being written").hexdigest()
