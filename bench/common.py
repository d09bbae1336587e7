"""Shared set-up for the bench scripts: the real labelled cases of ../shared/data."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This checkout's engine, and the test helpers that drive real processes and pages (web_driver), for `import common`
# followed by imports from either.
sys.path[:0] = [str(REPO / "MedSAMSlicer"), str(REPO / "Testing" / "Python")]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path | None  # None: npz with embedded 'gts'
    window: str


def real_cases() -> list[Case]:
    if not SHARED_DATA.is_dir():
        sys.exit(f"real scans not found at {SHARED_DATA}; the bench scripts need ../shared/data")
    cases = [Case(p.stem, p, None, "auto") for p in sorted((SHARED_DATA / "medsam2_recist").glob("*.npz"))]
    radiomics = SHARED_DATA / "pyradiomics"
    for name, window in [("lung1", "lung"), ("lung2", "lung"), ("brain1", "mr"), ("brain2", "mr"), ("breast1", "mr")]:
        cases.append(Case(name, radiomics / f"{name}_image.nrrd", radiomics / f"{name}_label.nrrd", window))
    return cases


def engine(cache_dir: str | None = None):
    """LiteMedSAM with the default encoder runtime and an embedding cache (on disk when ``cache_dir`` is given)."""
    from MedSAMSlicerLib.engine.backends import make_segmenter
    from MedSAMSlicerLib.engine.cache import EmbeddingCache

    return make_segmenter("litemedsam", device="cpu", backend="auto"), EmbeddingCache(disk_dir=cache_dir)


def open_case(case: Case, segmenter, cache, axis: str = "axial"):
    """(session, target mask) of a case: the volume windowed as the reference runs did, its whole label."""
    from MedSAMSlicerLib.evaluation.evaluate import targets_from_label
    from MedSAMSlicerLib.engine.session import VolumeSession
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    volume = read_volume(case.image)
    (target,) = targets_from_label(read_label(case.label, volume), case.name)
    return VolumeSession(segmenter, volume, case.window, axis, cache), target
