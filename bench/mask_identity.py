"""Masks on the shared cases through the CLI and the Slicer logic, as sha256 digests, for a before/after check.

A change that must not change behaviour (issue 17 moved the shared value types and the RAS/LPS frame handling) is
checked by running this on the tree before and after and comparing the two outputs line by line.  Paths:

- ``cli``: ``medsam-slicer segment`` as a child process (one slice, and propagated), the label file read back:
  digest of the voxels and, separately, of the label's geometry (spacing, origin, direction as written);
- ``slicer``: the Slicer logic (``BoxSegmentationLogic``) on real slicer-core, talking to a real local engine service
  started the way Slicer starts it; the segment read back on the volume's grid.

Every case gets the tight label box (2 voxels of margin) on its largest axial slice.  Usage:

    .venv/bin/python bench/mask_identity.py [--paths cli,slicer] > record.txt
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = ["lung1", "lung2", "brain1", "brain2", "breast1"]


def digest(mask: np.ndarray) -> str:
    mask = np.asarray(mask) > 0
    return hashlib.sha256(repr(mask.shape).encode() + np.packbits(mask, axis=None).tobytes()).hexdigest()[:16]


def geometry_digest(image: sitk.Image) -> str:
    values = np.round(np.array([*image.GetSpacing(), *image.GetOrigin(), *image.GetDirection()]), 6)
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def case_box(name: str) -> tuple[Path, int, tuple[float, float, float, float]]:
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "pyradiomics" / f"{name}_label.nrrd"))) > 0
    index = int(np.argmax(label.sum(axis=(1, 2))))
    rows, cols = np.nonzero(label[index])
    shape = label[index].shape
    box = (float(max(cols.min() - 2, 0)), float(max(rows.min() - 2, 0)),
           float(min(cols.max() + 2, shape[1] - 1)), float(min(rows.max() + 2, shape[0] - 1)))
    return DATA / "pyradiomics" / f"{name}_image.nrrd", index, box


def run_cli(folder: Path, cache: Path) -> list[str]:
    lines = []
    for name in CASES:
        image, index, box = case_box(name)
        for mode in ("2d", "3d"):
            out = folder / f"{name}-{mode}.nrrd"
            command = [sys.executable, "-m", "MedSAMSlicerLib.cli", "segment", str(image), "--box",
                       ",".join(f"{v:g}" for v in box), "--slice", str(index), "--axis", "k", "--out", str(out),
                       "--device", "cpu", "--cache-dir", str(cache)] + (["--propagate"] if mode == "3d" else [])
            subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
            written = sitk.ReadImage(str(out))
            mask = sitk.GetArrayFromImage(written)
            lines.append(f"cli {name} {mode} voxels={int((mask > 0).sum())} mask={digest(mask)} "
                         f"geometry={geometry_digest(written)}")
    return lines


def run_slicer(cache: Path) -> list[str]:
    sys.path.insert(0, str(ROOT / "Testing" / "Python"))
    from slicer_fixtures import roi_in_ras, start_engine
    from slicer_harness import SlicerHarness

    from MedSAMSlicerLogic.box_segmentation import BoxSegmentationLogic
    from MedSAMSlicerLogic.segments import read_segment

    link = start_engine(cache)
    lines = []
    try:
        for name in CASES:
            image, index, box = case_box(name)
            for mode in ("2d", "3d"):
                harness = SlicerHarness()
                try:
                    logic = BoxSegmentationLogic(harness.scene, link.client)
                    volume = harness.load_volume(image)
                    from MedSAMSlicerLib.engine.boxes import Box

                    roi = roi_in_ras(harness.scene, volume, "k", index, index, Box(*box))
                    if mode == "2d":
                        operation, _ = logic.segment_slice(volume, roi)
                    else:
                        operation, _ = logic.propagate(volume, [roi])
                    node = harness.scene.GetNodeByID(operation.snapshot.segmentation_node_id)
                    mask = read_segment(node, operation.snapshot.segment_id, volume)
                    lines.append(f"slicer {name} {mode} voxels={int(mask.sum())} mask={digest(mask)}")
                    logic.reset()
                    logic.detach()
                finally:
                    harness.close()
    finally:
        link.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="cli,slicer")
    args = parser.parse_args()
    paths = args.paths.split(",")
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        lines = []
        if "cli" in paths:
            lines += run_cli(Path(folder), cache)
        if "slicer" in paths:
            lines += run_slicer(cache)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
