"""Shared fixtures: the real LiteMedSAM model, one embedding cache per test session, the real scans.

The image encoder is the cost of this suite, so every test that embeds slices goes through the session-wide
``cache`` (memory + a disk folder) and the session-wide ``segmenter``: a slice is encoded once per run.
Set ``MEDSAM_SLICER_TEST_CACHE`` to a folder to keep embeddings between runs while developing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))  # the engine also imports without being pip-installed

# Tests that count encoder calls assume the sequential propagation walk; test_runtimes.py turns encode-ahead on.
os.environ.setdefault("MEDSAM_SLICER_ENCODE_AHEAD", "off")

# The Slicer tests' fixtures (harness, engine, logic): one plugin, no star imports in the test files.
pytest_plugins = ["slicer_fixtures"]

SHARED_DATA = REPO.parent / "shared" / "data"
NO_DATA = f"real scans not found at {SHARED_DATA} (a user's clone has none; CI has them)"


def shared_path(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(NO_DATA)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(NO_DATA)
    return SHARED_DATA


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    os.environ["MEDSAM_SLICER_ONNX_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def segmenter(onnx_dir):
    """LiteMedSAM on the fastest verified runtime here (OpenVINO on the CPU, exact precision)."""
    from MedSAMSlicerLib.engine.backends import make_segmenter

    return make_segmenter("litemedsam", device="cpu", backend="auto")


@pytest.fixture(scope="session")
def torch_segmenter():
    from MedSAMSlicerLib.engine.backends import make_segmenter

    return make_segmenter("litemedsam", device="cpu", backend="pytorch")


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    from MedSAMSlicerLib.engine.cache import EmbeddingCache

    folder = os.environ.get("MEDSAM_SLICER_TEST_CACHE") or tmp_path_factory.mktemp("embeddings")
    return EmbeddingCache(disk_dir=folder)


class RealCase:
    def __init__(self, name: str, image: Path, label: Path | None, window: str) -> None:
        self.name, self.image, self.label, self.window = name, image, label, window

    def __repr__(self) -> str:
        return self.name


def real_cases() -> list[RealCase]:
    """The labelled scans of ../shared/data with the window the reference runs used."""
    cases = []
    recist = SHARED_DATA / "medsam2_recist"
    for path in sorted(recist.glob("*.npz")) if recist.is_dir() else []:
        cases.append(RealCase(path.stem, path, None, "auto"))
    radiomics = SHARED_DATA / "pyradiomics"
    for name, window in [("lung1", "lung"), ("lung2", "lung"), ("brain1", "mr"), ("brain2", "mr"), ("breast1", "mr")]:
        if (radiomics / f"{name}_image.nrrd").exists():
            cases.append(RealCase(name, radiomics / f"{name}_image.nrrd", radiomics / f"{name}_label.nrrd", window))
    return cases


@pytest.fixture(scope="session")
def open_case(segmenter, cache):
    """open_case(case) -> (session, label array); volumes are read and windowed once per run."""
    from MedSAMSlicerLib.engine.session import VolumeSession
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    opened: dict[str, tuple] = {}

    def open_(case: RealCase, axis: str = "axial"):
        key = f"{case.name}:{axis}"
        if key not in opened:
            volume = read_volume(case.image)
            opened[key] = (VolumeSession(segmenter, volume, case.window, axis, cache), read_label(case.label, volume))
        return opened[key]

    return open_


def sphere(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2


@pytest.fixture
def cli_disk_cache(cache, monkeypatch):
    """CLI runs in this process use the session's embedding folder: no encoder time that other tests already paid."""
    monkeypatch.setenv("MEDSAM_SLICER_CACHE", str(cache.disk_dir))


def run_cli_json(capsys, *argv) -> dict:
    """``medsam-slicer ARGV --json`` in this process: it must exit 0 (else its error line fails the test)."""
    import json

    from MedSAMSlicerLib.cli.main import main

    code = main([str(a) for a in argv] + ["--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)
