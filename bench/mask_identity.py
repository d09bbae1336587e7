"""Masks on the shared cases through the CLI and the Slicer logic, as sha256 digests, for a before/after check.

A change that must not change behaviour (issue 17 moved the shared value types and the RAS/LPS frame handling) is
checked by running this on the tree before and after and comparing the two outputs line by line.  Paths:

- ``cli``: ``medsam-slicer segment`` as a child process (one slice, and propagated), the label file read back:
  digest of the voxels and, separately, of the label's geometry (spacing, origin, direction as written);
- ``slicer``: the Slicer logic (``BoxSegmentationLogic``) on real slicer-core, talking to a real local engine service
  started the way Slicer starts it; the segment read back on the volume's grid;
- ``web``: the browser app's own object (``MedSAMSlicerWeb.app.WebApp``: trame-slicer's scene and reader, the app's
  box drop, buttons, poll tick and Save) headless in a child process, on a real local engine service.  The box goes
  in as a drag does, as two world corners, computed from the file's own geometry (LPS, turned to RAS), so the web
  rows use the CLI's box on the CLI's slice whatever order Slicer stores the slices in; Save writes the label on
  the file's grid (the app's RAS -> LPS step), which is read back like the CLI's.  Its rows must equal the CLI's.

Every case gets the tight label box (2 voxels of margin) on its largest axial slice.  Usage:

    .venv/bin/python bench/mask_identity.py [--paths cli,slicer,web] > record.txt
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
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
                    from MedSAMSlicerLib.protocol import Box

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


class WebAppDriver:
    """The few moves of a person in the browser app, on ``WebApp``'s present API (the one place to change when the
    app's API moves): open a file, drop a dragged box, press a button and wait for it, press Save."""

    def __init__(self, client, folder: Path) -> None:
        from MedSAMSlicerWeb.app import WebApp

        self.app = WebApp(client, [], out_folder=str(folder))
        self.folder = folder

    def open(self, image: Path) -> None:
        self.app.load(str(image))

    def axial_slice_node(self):
        """The axial view's slice node.  Headless, trame-slicer builds no view (a page's layout does), so the node
        is made as Slicer's Red view owns it (the app reads only its plane, name and field of view)."""
        scene = self.app.slicer_app.scene
        node = scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLSliceNode")
            node.UnRegister(None)  # CreateNodeByClass hands over a reference Python already holds
            for setter in (node.SetName, node.SetLayoutName, node.SetSingletonTag):
                setter("Red")
            scene.AddNode(node)
            node.SetOrientation("Axial")
            node.SetDimensions(512, 512, 1)
            node.SetFieldOfView(250.0, 250.0, 1.0)
        return node

    def drag_box(self, corner0: np.ndarray, corner1: np.ndarray) -> None:
        node = self.axial_slice_node()
        node.JumpSliceByOffsetting(*((corner0 + corner1) / 2.0))  # scroll the view to the box's slice
        self.app._new_object = True  # what draw_box arms (its mouse hook needs a page)
        self.app._on_box(node, corner0, corner1)
        self._check()

    def press(self, button: str) -> None:
        getattr(self.app, button)()  # segment_slice or propagate: starts the engine job
        self._check()
        driver = getattr(self.app, "_driver", None)  # the operation's driver, a task for the page's event loop
        if driver is not None:
            asyncio.get_event_loop().run_until_complete(driver)
        while self.app.panel.data.busy:  # the page's poll loop, ticked by hand
            self.app._tick()
            time.sleep(0.05)
        self._check()

    def save(self, name: str) -> Path:
        self.app.controls.data.save_name = name
        return Path(self.app.save())

    def _check(self) -> None:
        if self.app.panel.data.error:
            raise RuntimeError(f"web app: {self.app.panel.data.error}")


def world_corners(image: Path, index: int, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The box's outer voxel corners on slice ``index`` in world RAS, from the file's own (LPS) geometry."""
    reference = sitk.ReadImage(str(image))
    corners = []
    for x, y in ((box[0] - 0.5, box[1] - 0.5), (box[2] + 0.5, box[3] + 0.5)):
        lps = reference.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(index)))
        corners.append(np.array([-lps[0], -lps[1], lps[2]]))
    return corners[0], corners[1]


def run_web(folder: Path, cache: Path) -> list[str]:
    sys.path.insert(0, str(ROOT / "Testing" / "Python"))
    from slicer_fixtures import start_engine

    link = start_engine(cache)
    lines = []
    try:
        driver = WebAppDriver(link.client, folder)
        for name in CASES:
            image, index, box = case_box(name)
            for mode, button in (("2d", "segment_slice"), ("3d", "propagate")):
                driver.open(image)
                driver.drag_box(*world_corners(image, index, box))
                driver.press(button)
                written = sitk.ReadImage(str(driver.save(f"{name}-{mode}.nii.gz")))
                # The app writes on the grid Slicer holds, which for brain1/brain2 stores k the other way round
                # from the file: the same voxel centres in another order.  Onto the file's grid (nearest
                # neighbour, no transform: exact where the centres coincide), then digested like the CLI's.
                reference = sitk.ReadImage(str(image))
                on_file = sitk.Resample(written, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                        written.GetPixelID())
                mask = sitk.GetArrayFromImage(on_file)
                kept = int((mask > 0).sum()) == int((sitk.GetArrayFromImage(written) > 0).sum())
                lines.append(f"web {name} {mode} voxels={int((mask > 0).sum())} mask={digest(mask)} "
                             f"written-geometry={geometry_digest(written)} all-voxels-on-file-grid={kept}")
    finally:
        link.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="cli,slicer,web")
    parser.add_argument("--cache", help=argparse.SUPPRESS)  # the web path's child: the parent's embedding folder
    args = parser.parse_args()
    paths = args.paths.split(",")
    if paths == ["web-child"]:  # one trame server per process: the web app runs apart from the Slicer harness
        with tempfile.TemporaryDirectory() as folder:
            print("\n".join(run_web(Path(folder), Path(args.cache))))
        return
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        lines = []
        if "cli" in paths:
            lines += run_cli(Path(folder), cache)
        if "slicer" in paths:
            lines += run_slicer(cache)
        if "web" in paths:
            child = subprocess.run([sys.executable, __file__, "--paths", "web-child", "--cache", str(cache)],
                                   check=True, capture_output=True, text=True, cwd=ROOT)
            lines += [line for line in child.stdout.splitlines() if line.startswith("web ")]
    print("\n".join(line for line in lines if line))


if __name__ == "__main__":
    main()
