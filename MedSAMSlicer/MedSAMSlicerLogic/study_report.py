"""The panel's "Export report" button: the study report (``MedSAMSlicerLib.study``) of the logs in the time-log
folder, written into that folder as ``study_report.csv``, ``.png`` and ``.md``, as ``medsam-slicer study report``
does."""

from __future__ import annotations

from pathlib import Path

from MedSAMSlicerLib.errors import MedSAMError


class ReportUnavailable(MedSAMError):
    """There is nothing to report on."""


def export_report(log_folder: str | Path) -> str:
    """Write the report; returns the path of its markdown summary."""
    from MedSAMSlicerLib.study import report as study

    if not log_folder or not Path(log_folder).is_dir():
        raise ReportUnavailable(f"no time-log folder at {log_folder!r}; choose the folder and start a time log first")
    report = study.build_report(Path(log_folder))
    files = study.write_report(report, Path(log_folder))
    return str(files["markdown"])
