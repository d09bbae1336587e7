"""A headless Slicer core for pytest: an MRML scene with the module logics MedSAMSlicer needs, no Qt.

The ``slicer-core`` wheel has MRML and the C++ module logics but no application: nothing creates the scene, no
``slicer.mrmlScene``, no ``slicer.modules``.  ``SlicerHarness`` builds what the Slicer application would have built at
start-up, so that ``slicer.util`` functions (which look up ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``)
and our MRML logic run unchanged.

Two facts learned the hard way:
- keep a Python reference to the ``vtkSlicerApplicationLogic``: if it is garbage collected, adding a Markups ROI
  crashes the process;
- the segmentations logic needs ``SetMRMLScene``, else creating segments silently does nothing.
"""

from __future__ import annotations

import types
from pathlib import Path

import slicer
from vtkmodules.vtkCommonCore import vtkCollection, vtkOutputWindow

# Module name (as in ``slicer.modules.<name>``) and the logic class Slicer registers under it.
_MODULE_LOGICS = {
    "volumes": "vtkSlicerVolumesLogic",
    "segmentations": "vtkSlicerSegmentationsModuleLogic",
    "markups": "vtkSlicerMarkupsLogic",
    "tables": "vtkSlicerTablesLogic",
    "subjecthierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}
# Name the application logic knows each logic by (``appLogic.GetModuleLogic(name)``), as Slicer's module names.
_APP_LOGIC_NAMES = {"volumes": "Volumes", "segmentations": "Segmentations", "markups": "Markups",
                    "tables": "Tables", "subjecthierarchy": "SubjectHierarchy"}


class _ModuleStub:
    """What ``slicer.modules.<name>`` offers that our code and ``slicer.util`` use: ``logic()``."""

    def __init__(self, logic) -> None:
        self._logic = logic

    def logic(self):
        return self._logic


class SlicerHarness:
    """Scene + application logic + module logics, installed as ``slicer.mrmlScene`` and ``slicer.modules``."""

    def __init__(self) -> None:
        output = vtkOutputWindow()
        output.SetDisplayModeToAlwaysStdErr()  # VTK warnings to stderr, where pytest shows them on failure
        vtkOutputWindow.SetInstance(output)

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()  # must stay referenced (see module docstring)
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().AddDefaultColorNodes()
        self.app_logic.SetSliceLogics(vtkCollection())
        self.app_logic.SetViewLogics(vtkCollection())
        # The volumes logic colours new volumes through the "Colors" logic; Slicer registers the app's own.
        self.app_logic.SetModuleLogic("Colors", self.app_logic.GetColorLogic())
        # Axial/Coronal/Sagittal presets live on the scene's default slice node (patient right on screen left).
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)

        self.logics = {}
        for name, class_name in _MODULE_LOGICS.items():
            logic = getattr(slicer, class_name)()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            self.app_logic.SetModuleLogic(_APP_LOGIC_NAMES[name], logic)
            self.logics[name] = logic
        self.slice_nodes = {name: self._add_slice_node(name, orientation)
                            for name, orientation in (("Red", "Axial"), ("Green", "Coronal"),
                                                      ("Yellow", "Sagittal"))}
        self._previous = (getattr(slicer, "mrmlScene", None), getattr(slicer, "modules", None))
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(**{name: _ModuleStub(logic) for name, logic in self.logics.items()})

    def _add_slice_node(self, name: str, orientation: str):
        """A slice node as the Red, Green and Yellow views own in Slicer (no view is rendered here)."""
        node = self.scene.CreateNodeByClass("vtkMRMLSliceNode")  # copies the default node, with the presets
        node.UnRegister(None)  # CreateNodeByClass hands over a reference Python already holds
        node.SetName(name)
        node.SetLayoutName(name)
        node.SetSingletonTag(name)
        self.scene.AddNode(node)
        node.SetOrientation(orientation)
        node.SetDimensions(512, 512, 1)
        node.SetFieldOfView(250.0, 250.0, 1.0)
        return node

    # -- data -----------------------------------------------------------------------------------------------------
    def load_volume(self, path: Path | str, name: str | None = None):
        """Load a scalar volume the way Slicer's Add Data does (volumes logic, ITK reader, LPS -> RAS)."""
        path = Path(path)
        node = self.logics["volumes"].AddArchetypeVolume(str(path), name or path.name.split(".")[0])
        if node is None:
            raise RuntimeError(f"the volumes logic could not read {path}")
        return node

    def load_segmentation(self, path: Path | str):
        node = self.logics["segmentations"].LoadSegmentationFromFile(str(path), False)
        if node is None:
            raise RuntimeError(f"the segmentations logic could not read {path}")
        return node

    def save_node(self, node, path: Path | str) -> None:
        """Write a node with its default storage node (``.seg.nrrd`` for segmentations, as File > Save does)."""
        storage = node.CreateDefaultStorageNode()
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise RuntimeError(f"could not write {node.GetName()} to {path}")

    def set_slice_offset(self, view: str, world_point) -> None:
        """Scroll the view so that its slice passes through ``world_point`` (as the slice slider does)."""
        node = self.slice_nodes[view]
        node.JumpSliceByOffsetting(*[float(v) for v in world_point])

    def close(self) -> None:
        self.scene.Clear(1)
        slicer.mrmlScene, slicer.modules = self._previous
