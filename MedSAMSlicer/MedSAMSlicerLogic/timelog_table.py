"""The annotation-time log of one case (``MedSAMSlicerLib.timelog``), mirrored into a table node.

The JSON Lines file is the record; the table node ("MedSAMSlicer time log") shows the same events in Slicer's
Tables module and is saved with the scene.  The case id written to the log is a pseudonym of the volume name
(``timelog.case_pseudonym``), never the name itself, which Slicer takes from the DICOM patient name.
"""

from __future__ import annotations

import json
from pathlib import Path

import vtk

from MedSAMSlicerLib.study import timelog

TABLE_NAME = "MedSAMSlicer time log"
COLUMNS = ("seq", "wall", "kind", "details")
_HEADER_FIELDS = {"v", "seq", "session", "kind", "t", "wall", "case", "reader", "mode"}


def time_log_table(scene, name: str = TABLE_NAME):
    """The scene's time-log table node, created with its columns when missing."""
    table = scene.GetFirstNodeByName(name)
    if table is None or not table.IsA("vtkMRMLTableNode"):
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    if table.GetNumberOfColumns() != len(COLUMNS):
        table.RemoveAllColumns()
        for column in COLUMNS:
            array = vtk.vtkStringArray()
            array.SetName(column)
            table.AddColumn(array)
        table.SetUseColumnTitleAsColumnHeader(True)
    return table


class CaseTimeLog:
    """A :class:`timelog.SessionLog` for one case, each event also appended as a row of the table node."""

    def __init__(self, scene, folder: str | Path, source_name: str, reader: str = "anonymous",
                 mode: str = "assisted", case_id: str | None = None) -> None:
        self.folder = Path(folder)
        self.case_id = case_id or timelog.case_pseudonym(self.folder, source_name)
        self.session = timelog.SessionLog(self.folder, self.case_id, reader=reader, mode=mode)
        self.table = time_log_table(scene)
        self.table.SetAttribute("MedSAMSlicer.LogFile", str(self.session.path))

    @property
    def path(self) -> Path:
        return self.session.path

    def event(self, kind: str, **fields) -> dict:
        record = self.session.event(kind, **fields)
        details = {k: v for k, v in record.items() if k not in _HEADER_FIELDS}
        row = self.table.AddEmptyRow()
        for column, text in enumerate((str(record["seq"]), record["wall"], kind,
                                       json.dumps(details, default=str, separators=(",", ":")))):
            self.table.SetCellText(row, column, text)
        return record

    def active_seconds(self) -> float:
        return self.session.active_seconds()

    def close(self) -> None:
        if not self.session.closed:
            self.event("case_closed")
        self.session.close()
