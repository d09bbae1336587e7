"""Make ``slicer.util`` work on a trame-slicer application's scene.

trame-slicer's ``SlicerApp`` builds its own scene and module logics but, unlike the Slicer application, installs
neither ``slicer.mrmlScene`` nor ``slicer.modules``; the shared logic (``MedSAMSlicerLogic.segments``) reads and writes
segments through ``slicer.util`` functions that look both up.  One app per process, so installing them is safe.
"""

from __future__ import annotations

import types

import slicer


class _ModuleStub:
    def __init__(self, logic) -> None:
        self._logic = logic

    def logic(self):
        return self._logic


def install_slicer_globals(slicer_app) -> None:
    slicer.mrmlScene = slicer_app.scene
    slicer.modules = types.SimpleNamespace(
        segmentations=_ModuleStub(slicer_app.segmentations_logic),
        volumes=_ModuleStub(slicer_app.volumes_logic),
        subjecthierarchy=_ModuleStub(slicer_app.subject_hierarchy_logic),
        # the vtkSlicerMarkupsLogic itself (trame-slicer's MarkupsLogic wraps it and registers it with the app logic)
        markups=_ModuleStub(slicer_app.app_logic.GetModuleLogic("Markups")),
    )
