"""The simulated reader's report: its real run in the user interface, priced by the time model's cited constants.

``bench/simulated_reader.py`` drives the real browser app through a case (box, propagate, review every slice,
corrective boxes, accept, end the object, the slices left for the manual tools) and writes, beside the app's time
log, ``simulated_reader.json``: every action it took with the slice, the system seconds it measured in the page
(from the action until the app was idle again) and the contour geometry of each labelled slice.  This module turns
that record into the study's two arms:

- **assisted** (measured on the real product): each action's human time from the Keystroke-Level Model constants of
  :mod:`.time_model` (a box = M + 2 P + 2 B; a review = K + M; a key press = K; a decided click = M + P + BB; a slice
  left for the manual tools = ``edit_ratio`` x drawing it), plus the system seconds the page actually took;
- **manual** (priced with the same constants on the same slices): drawing every labelled slice's contour
  (:func:`.time_model.draw_slice_s`, from the stored segment count and length).

The saving is stated with each constant's source and a sensitivity table (each constant at half and double, the
editing ratio also at Dreizin's 1/8.7), as ``study simulate`` does.  The reader's acceptance threshold decided its
actions during the run, so it cannot be varied afterwards: the report states the one used.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputImageError
from .time_model import CONSTANT_SOURCES, SOURCES, Constants

RECORD_NAME = "simulated_reader.json"
REPORT_NAME = "simulated_reader.md"
# What each recorded action costs the reader (Constants -> seconds); "manual_edit" is priced per slice below.
HUMAN_TIME = {
    "box": lambda c: c.box_s(),  # the first box
    "corrective_box": lambda c: c.box_s(),  # a box on the slice under review
    "propagate": lambda c: c.key_s,  # shortcut
    "review": lambda c: c.review_s(),  # go to the next slice (K) and judge it (M)
    "accept": lambda c: c.key_s,
    "wrong": lambda c: c.key_s,
    "next_doubtful": lambda c: c.key_s,
    "cut": lambda c: c.click_s(),  # decided, as time_model prices a range cut
    "undo": lambda c: c.click_s(),
}
# Constants the record can be repriced with (the others decided the run or price the model's own time).
REPRICED = ("point_s", "button_s", "mental_s", "key_s", "segment_s", "cm_s", "edit_ratio", "screen_cm_per_mm")


def draw_s(geometry: dict, c: Constants) -> float:
    """:func:`.time_model.draw_slice_s` from a slice's stored contour geometry (segments, length in mm)."""
    return (c.key_s + c.mental_s + c.point_s + 2 * c.button_s + c.segment_s * int(geometry["segments"])
            + c.cm_s * float(geometry["length_mm"]) * c.screen_cm_per_mm)


def price(record: dict, c: Constants) -> dict:
    """Both arms of one recorded run in seconds, with the assisted arm's parts."""
    geometry = {int(k): v for k, v in record["contours"].items()}
    human = system = edit = 0.0
    counts: dict[str, int] = {}
    for action in record["actions"]:
        kind = action["action"]
        counts[kind] = counts.get(kind, 0) + 1
        system += float(action.get("system_s", 0.0))
        if kind == "manual_edit":
            index = int(action["slice"])
            edit += c.edit_ratio * draw_s(geometry[index], c) if index in geometry else c.click_s()
        elif kind in HUMAN_TIME:
            human += HUMAN_TIME[kind](c)
    manual = sum(draw_s(g, c) for g in geometry.values())
    assisted = human + system + edit
    return {"manual_s": manual, "assisted_s": assisted, "saved_fraction": 1.0 - assisted / manual if manual else 0.0,
            "assisted_parts_s": {"human": human, "system_measured": system, "manual_tools": edit},
            "actions": counts, "labelled_slices": len(geometry)}


def sensitivity(record: dict, c: Constants) -> list[dict]:
    rows = []
    for name in REPRICED:
        value = getattr(c, name)
        row: dict[str, Any] = {"constant": name, "value": value, "source": CONSTANT_SOURCES[name],
                               "low": value / 2, "high": value * 2}
        row["saved_low"] = price(record, replace(c, **{name: value / 2}))["saved_fraction"]
        row["saved_high"] = price(record, replace(c, **{name: value * 2}))["saved_fraction"]
        rows.append(row)
    dreizin = price(record, replace(c, edit_ratio=1 / 8.7))["saved_fraction"]
    rows.append({"constant": "edit_ratio (Dreizin)", "value": 1 / 8.7, "source": "dreizin", "low": 1 / 8.7,
                 "high": 1 / 8.7, "saved_low": dreizin, "saved_high": dreizin})
    return rows


def reader_report(record: dict, c: Constants = Constants()) -> dict:
    priced = price(record, c)
    table = sensitivity(record, c)
    values = [priced["saved_fraction"]] + [r[k] for r in table for k in ("saved_low", "saved_high")]
    return {"case": record.get("case", ""), "arms": {"manual": priced["manual_s"], "assisted": priced["assisted_s"]},
            **priced, "saved_range": [min(values), max(values)], "sensitivity": table,
            "accept_dice": record.get("accept_dice"), "wait_scale": record.get("wait_scale"),
            "constants": {k: getattr(c, k) for k in REPRICED}, "constant_sources": CONSTANT_SOURCES,
            "sources": SOURCES, "cpu": record.get("cpu", ""), "final_dice": record.get("final_dice")}


def reader_markdown(report: dict) -> str:
    parts = report["assisted_parts_s"]
    lines = [f"# Simulated reader in the real browser app: {report['case']}", "",
             f"Acceptance threshold (per-slice Dice, Menze 2015): {report['accept_dice']}; think times waited at "
             f"x{report['wait_scale']} of the model's; CPU: {report['cpu'] or 'not recorded'}.", "",
             "| arm | how | seconds |", "|---|---|---:|",
             f"| manual | every labelled slice drawn ({report['labelled_slices']} slices), KLM constants | "
             f"{report['manual_s']:.1f} |",
             f"| assisted | the run's actions at KLM constants ({parts['human']:.1f} s) + system time measured in "
             f"the page ({parts['system_measured']:.1f} s) + slices left for the manual tools "
             f"({parts['manual_tools']:.1f} s) | {report['assisted_s']:.1f} |", "",
             f"**{100 * report['saved_fraction']:.1f} % of the manual time saved** (range over the sensitivity "
             f"table {100 * report['saved_range'][0]:.1f} to {100 * report['saved_range'][1]:.1f} %); final 3D "
             f"Dice {report['final_dice']}.", "",
             "Actions: " + ", ".join(f"{k} {v}" for k, v in sorted(report["actions"].items())), "",
             "| constant | value | source | half | saved | double | saved |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in report["sensitivity"]:
        lines.append(f"| {r['constant']} | {r['value']:.3g} | {r['source']} | {r['low']:.3g} | "
                     f"{100 * r['saved_low']:.1f} % | {r['high']:.3g} | {100 * r['saved_high']:.1f} % |")
    lines += ["", "Sources:"] + [f"- {k}: {v}" for k, v in report["sources"].items()]
    return "\n".join(lines) + "\n"


def read_record(folder: str | os.PathLike) -> dict | None:
    """The simulated reader's record in a log folder, or None when there is none."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("actions"), list) or not isinstance(record.get("contours"), dict):
            raise ValueError("no actions or contours")
        return dict(record)
    except (OSError, ValueError) as error:
        raise InputImageError(f"{path.name} is not a simulated reader's record ({error})") from None


__all__ = ["RECORD_NAME", "REPORT_NAME", "price", "read_record", "reader_markdown", "reader_report"]
