"""The one choices table (``MedSAMSlicerLogic.choices``): the engine's windows, with their display W/L, and no
front end keeping its own copy of the windows, range modes or views."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REPO

from MedSAMSlicerLib.engine.intensity import CT_WINDOWS, parse_window
from MedSAMSlicerLib.errors import BoxError
from MedSAMSlicerLogic import choices
from MedSAMSlicerLogic.roi_prompts import propagation_range

FRONT_ENDS = ("MedSAMSlicer/MedSAMSlicer.py", "MedSAMSlicer/MedSAMSlicerEffect/SegmentEditorEffect.py")


def test_windows_are_the_engines_with_their_display_window_level():
    assert choices.WINDOW_NAMES[0] == choices.DEFAULT_WINDOW == "auto"
    for name in choices.WINDOW_NAMES:
        parse_window(name)  # every name offered is one the engine understands
    assert {w.name for w in choices.WINDOWS if w.display is not None} == set(CT_WINDOWS)
    for name, (level, width) in CT_WINDOWS.items():
        assert choices.display_window_level(name) == (width, level)  # Slicer's W/L order
    assert choices.display_window_level("mr") is None and choices.display_window_level("auto") is None


def test_range_modes_are_the_ones_the_logic_takes():
    assert choices.RANGE_MODE_NAMES == ("auto", "roi", "stop") and choices.DEFAULT_RANGE_MODE == "auto"
    assert propagation_range([], "stop") is None  # the whole volume, with the stop rule
    with pytest.raises(BoxError, match="auto, roi, stop"):
        propagation_range([], "everything")
    assert choices.VIEWS[0] == choices.DEFAULT_VIEW == "Red"


def test_front_ends_keep_no_copy_of_the_tables():
    for path in FRONT_ENDS:
        text = (REPO / path).read_text()
        assert "MedSAMSlicerLogic.choices import" in text, path
        assert not re.search(r"^(VIEWS|WINDOWS|RANGE_MODES)\s*=", text, re.M), f"{path} defines its own table"
        assert '"soft_tissue"' not in text and '"mediastinum"' not in text, path


def test_typed_level_width_is_shown_as_the_engine_reads_it():
    assert choices.display_window_level("40,400") == (400.0, 40.0)
    assert choices.display_window_level("-600, 1500") == (1500.0, -600.0)
    assert choices.display_window_level("40,0") is None and choices.display_window_level("wide") is None


def test_show_window_sets_the_volumes_display_on_slicer_core():
    pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install slicer-core)")
    import slicer

    from MedSAMSlicerLogic.volume_nodes import show_window
    from slicer_harness import SlicerHarness

    harness = SlicerHarness()
    try:
        volume = harness.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
        slicer.util.updateVolumeFromArray(volume, np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8))
        volume.CreateDefaultDisplayNodes()
        display = volume.GetDisplayNode()
        show_window(volume, "lung")
        assert not display.GetAutoWindowLevel()
        assert (display.GetWindow(), display.GetLevel()) == (1500.0, -160.0)
        show_window(volume, "mr")
        assert display.GetAutoWindowLevel()
        show_window(None, "lung")  # no volume picked yet: nothing to show, no error
    finally:
        harness.close()
