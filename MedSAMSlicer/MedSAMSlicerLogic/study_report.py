"""The panel's "Export report" button: the study report (``MedSAMSlicerLib.study``) of the logs in the time-log
folder, written into that folder as ``study_report.csv``, ``.md`` and, where matplotlib can be imported,
``study_report.png``, as ``medsam-slicer study report`` does.

Slicer does not ship matplotlib (its bundled packages come from ``SuperBuild/External_python-*.cmake``: numpy,
scipy, pillow, requests...), and the engine's private packages are never on Slicer's path, so in Slicer the plot is
left out and the summary says so; the CSV and the summary are complete without it (audit B1).  Before, the plot
was drawn first and its ``ModuleNotFoundError`` left a CSV without a summary and a message that could not help.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from MedSAMSlicerLib.errors import MedSAMError

NO_PLOT_NOTE = ("No plot (study_report.png): matplotlib is not part of Slicer's Python. The table above has every "
                "figure; `medsam-slicer study report` on a computer with the engine's packages draws the plot.")


class ReportUnavailable(MedSAMError):
    """There is nothing to report on."""


def can_plot() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def export_report(log_folder: str | Path, cases: Sequence = ()) -> str:
    """Write the report; returns the path of its markdown summary.  ``cases``: a study plan's rows (its reference
    labels, and the rows nobody has a log for)."""
    from MedSAMSlicerLib.study import report as study

    if not log_folder or not Path(log_folder).is_dir():
        raise ReportUnavailable(f"no time-log folder at {log_folder!r}; choose the folder and start a time log first")
    folder = Path(log_folder)
    report = study.build_report(folder, cases=cases)
    if can_plot():
        return str(study.write_report(report, folder)["markdown"])
    study.write_atomically(folder / "study_report.csv", study.report_csv(report).encode("utf-8"))
    markdown = study.report_markdown(report) + "\n" + NO_PLOT_NOTE + "\n"
    return str(study.write_atomically(folder / "study_report.md", markdown.encode("utf-8")))
