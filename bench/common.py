"""Shared set-up for the bench scripts: the real labelled cases of ../shared/data."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))
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
