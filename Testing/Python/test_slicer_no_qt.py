"""MedSAMSlicerLib and MedSAMSlicerLogic never import Qt: they must run in the CLI, under pytest and on Slicer's
worker threads.  Checked in a fresh interpreter, importing every module of both packages."""

import subprocess
import sys
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[2] / "MedSAMSlicer"

CHECK = """
import importlib, pkgutil, sys
sys.path.insert(0, {path!r})
for package in ("MedSAMSlicerLib", "MedSAMSlicerLogic"):
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__):
        importlib.import_module(f"{{package}}.{{info.name}}")
QT = ("qt", "PythonQt", "ctk", "PyQt5", "PyQt6", "PySide2", "PySide6")
qt = sorted(m for m in sys.modules if m.split(".")[0] in QT or m == "slicer.ScriptedLoadableModule")
print("imported", len(sys.modules), "modules; qt-like:", qt)
sys.exit(1 if qt else 0)
"""


def test_engine_and_mrml_logic_import_no_qt():
    pytest.importorskip("slicer", reason="the slicer-core wheel is not installed")
    result = subprocess.run([sys.executable, "-c", CHECK.format(path=str(MODULE))], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "qt-like: []" in result.stdout
