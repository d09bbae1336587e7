"""Study mode: case lists, per-case metrics from session logs, and the report (CSV, PNG plot, markdown summary).

A study is a case list (CSV: ``case,mode,image,reference``; one row per case and mode, so a case read both ways
appears twice), readers who each work through it in Slicer, and one session log per case, reader and mode
(:mod:`timelog`).  The report reads every ``*.jsonl`` log of a folder and gives, per log:

- active time, idle time removed and the number of idle gaps (see :func:`timelog.active_time`);
- slices touched (slices the reader drew a box on, segmented or edited), boxes drawn and moved, key boxes,
  model runs (single slices, propagations and their slices, model seconds, encoder calls), manual edits, edits
  after the first model result, undos;
- % saved on assisted rows: 1 - assisted / manual active time for the same case and reader;
- Dice of the accepted mask against the reference label (when the case list or ``--reference`` gives one), against
  the other readers' accepted masks of the same case and mode (mean), and, on assisted rows, against the same
  reader's manual mask.

Per reader, the saving is pooled as MedSAM reports it: 1 - (sum of assisted time) / (sum of manual time) over the
cases that reader accepted in both modes.  Logs without an ``accept`` event are listed as unfinished and kept out
of the savings.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import InputImageError, MedSAMError, OptionError
from ..evaluation.metrics import dice
from ..paths import regular_file
from .timelog import (DEFAULT_IDLE_THRESHOLD_S, MODES, LogFile, active_time, case_pseudonym, finite_number, load_log,
                      log_path, whole_number, write_atomically)

log = logging.getLogger(__name__)

CASE_LIST_COLUMNS = ("case", "mode", "image", "reference")
AI_KINDS = ("segment_slice", "propagate")


# ------------------------------------------------------------------------------------------------- case lists


@dataclass(frozen=True)
class StudyCase:
    case_id: str
    mode: str  # "manual" (baseline) or "assisted"
    image: str = ""  # where the scan is at this site; the case list stays at the site with the pseudonym key
    reference: str = ""  # optional reference label for the Dice column


def read_case_list(path: str | os.PathLike) -> list[StudyCase]:
    path = regular_file(path, "case list", OptionError, "give the case list (CSV) file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise InputImageError(f"cannot read the case list {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise OptionError(f"case list {path} is not a UTF-8 text (CSV) file") from None
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as error:
        raise OptionError(f"case list {path} is not a valid CSV file ({error})") from None
    if not rows or not {"case", "mode"} <= set(rows[0]):
        raise OptionError(f"case list {path} needs a header with at least the columns case,mode")
    cases = []
    for number, row in enumerate(rows, start=2):
        mode = (row.get("mode") or "").strip().lower()
        if mode not in MODES:
            raise OptionError(f"case list {path} line {number}: mode {row.get('mode')!r} must be manual or assisted")
        case_id = (row.get("case") or "").strip()
        try:
            log_path(".", case_id, "check", mode)
        except ValueError as error:
            raise OptionError(f"case list {path} line {number}: {error}") from None
        cases.append(StudyCase(case_id, mode, (row.get("image") or "").strip(), (row.get("reference") or "").strip()))
    return cases


def write_case_list(path: str | os.PathLike, cases: Sequence[StudyCase]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CASE_LIST_COLUMNS)
    for case in cases:
        writer.writerow([case.case_id, case.mode, case.image, case.reference])
    return write_atomically(path, buffer.getvalue().encode("utf-8"))


def plan_cases(images: Sequence[str], log_folder: str | os.PathLike, references: Sequence[str] = (),
               both_modes: bool = True, seed: int = 0) -> list[StudyCase]:
    """A case list for ``images``: pseudonymous case ids (:func:`timelog.case_pseudonym`) and, with
    ``both_modes``, every case once manual and once assisted, half of the cases (chosen at random with ``seed``)
    manual first, so that learning a case does not favour one mode; all first reads come before the second reads.
    Without ``both_modes``, each case once, half of them (the same random half) manual."""
    if references and len(references) != len(images):
        raise OptionError(f"{len(references)} references for {len(images)} images; give one per image or none")
    rng = random.Random(seed)
    manual_first = set(rng.sample(range(len(images)), len(images) // 2))
    cases = []
    for n, image in enumerate(images):
        case_id = case_pseudonym(log_folder, os.path.abspath(image))
        reference = references[n] if references else ""
        modes = ("manual", "assisted") if n in manual_first else ("assisted", "manual")
        for mode in modes if both_modes else modes[:1]:
            cases.append(StudyCase(case_id, mode, str(image), reference))
    if both_modes:  # first pass over all cases in one mode each, then the second: a wash-out between the two reads
        cases = cases[0::2] + cases[1::2]
    return cases


def next_case(cases: Sequence[StudyCase], log_folder: str | os.PathLike, reader: str) -> StudyCase | None:
    """The first case of the list that ``reader`` has not accepted yet in its mode (None when all are done)."""
    for case in cases:
        path = log_path(log_folder, case.case_id, reader, case.mode)
        if not path.exists() or not any(e.get("kind") == "accept" for e in load_log(path).events):
            return case
    return None


# ----------------------------------------------------------------------------------------------- per-log metrics


@dataclass
class CaseMetrics:
    case: str
    reader: str
    mode: str
    log: str  # file name
    accepted: bool
    active_s: float
    idle_s: float
    idle_gaps: int
    sessions: int
    started: str  # wall clock of the first event (UTC)
    slices_touched: int
    boxes_drawn: int
    box_moves: int
    key_boxes: int
    slice_segmentations: int
    propagations: int
    propagated_slices: int
    model_s: float
    encoder_calls: int
    manual_edits: int
    edits_after_ai: int
    slices_edited_after_ai: int
    undos: int
    damaged_lines: int
    saved_percent: float | None = None
    dice_reference: float | None = None
    dice_other_readers: float | None = None
    dice_own_manual: float | None = None
    mask: str = field(default="", repr=False)  # file name of the accepted mask, "" when none


def _int(value, default: int = 0) -> int:
    """A count or index from a log field; anything else (text, null, NaN, 1e400, a list) counts as ``default``."""
    return whole_number(value, default)


def _slices(event: dict) -> set[int]:
    found: set[int] = set()
    if "slice" in event:
        found.add(_int(event["slice"], -1))
    value = event.get("slices")
    if isinstance(value, list):
        found.update(_int(v, -1) for v in value)
    found.discard(-1)
    return found


def case_metrics(log_file: LogFile, idle_threshold_s: float = DEFAULT_IDLE_THRESHOLD_S) -> CaseMetrics:
    """The metrics of one log (saving and Dice columns are filled in by :func:`build_report`)."""
    events = sorted(log_file.events, key=lambda e: _int(e.get("seq")))
    if not events:
        raise InputImageError(f"{log_file.path.name} has no complete event")
    first = events[0]
    kinds = [e["kind"] for e in events]
    timing = active_time(events, idle_threshold_s)
    touched: set[int] = set()
    after_ai = False
    edits_after_ai, slices_after_ai = 0, set()
    for event in events:
        kind = event["kind"]
        if kind in ("box_drawn", "box_moved", "key_box_added", "segment_slice", "manual_edit"):
            touched |= _slices(event)
        if kind == "manual_edit" and after_ai:
            edits_after_ai += 1
            slices_after_ai |= _slices(event)
        if kind in AI_KINDS:
            after_ai = True
    accepts = [e for e in events if e["kind"] == "accept"]
    return CaseMetrics(
        case=str(first.get("case", "")), reader=str(first.get("reader", "")), mode=str(first.get("mode", "")),
        log=log_file.path.name, accepted=bool(accepts), active_s=round(timing.active_s, 3),
        idle_s=round(timing.idle_s, 3), idle_gaps=len(timing.idle_gaps), sessions=timing.sessions,
        started=str(first.get("wall", "")), slices_touched=len(touched), boxes_drawn=kinds.count("box_drawn"),
        box_moves=kinds.count("box_moved"), key_boxes=kinds.count("key_box_added"),
        slice_segmentations=kinds.count("segment_slice"), propagations=kinds.count("propagate"),
        propagated_slices=sum(_int(e.get("slices")) for e in events if e["kind"] == "propagate"),
        model_s=round(sum(max(0.0, finite_number(e.get("seconds")) or 0.0) for e in events if e["kind"] in AI_KINDS),
                      3),
        encoder_calls=sum(_int(e.get("encoder_calls")) for e in events if e["kind"] in AI_KINDS),
        manual_edits=kinds.count("manual_edit"), edits_after_ai=edits_after_ai,
        slices_edited_after_ai=len(slices_after_ai), undos=kinds.count("undo"),
        damaged_lines=len(log_file.damaged), mask=str(accepts[-1].get("mask") or "") if accepts else "")


# --------------------------------------------------------------------------------------------------- the report


@dataclass
class ReaderSummary:
    reader: str
    paired_cases: int  # cases accepted in both modes
    manual_s: float
    assisted_s: float
    saved_percent: float | None


@dataclass
class StudyReport:
    folder: str
    idle_threshold_s: float
    rows: list[CaseMetrics]
    readers: list[ReaderSummary]
    overall: ReaderSummary  # all readers pooled
    unfinished: list[str]  # logs without an accept event
    missing: list[str]  # case list rows nobody has a log for
    damaged: list[str]  # "file line N" of torn lines skipped
    skipped: list[str] = field(default_factory=list)  # files and masks that could not be used, and why

    def as_dict(self) -> dict:
        return asdict(self)


_MASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.npz$")  # what SessionLog.save_mask writes


def _load_mask(folder: Path, name: object, log_name: str, skipped: list[str]) -> np.ndarray | None:
    """The accepted mask a log names; only a plain file name in the log folder is opened (a log is data, and
    ``../../etc/passwd`` in it must not make us read outside the folder).  Problems go to ``skipped``."""
    if not name:
        return None
    if not isinstance(name, str) or not _MASK_NAME.match(name):
        log.warning("the accepted mask named in %s is not a mask file name in the log folder; ignored", log_name)
        skipped.append(f"accepted mask of {log_name} ({str(name)[:60]!r}): not a mask file name in the log folder")
        return None
    path = folder / name
    try:
        regular_file(path, "accepted mask", folder_hint="not a mask file")
        with np.load(path, allow_pickle=False) as data:
            mask = np.asarray(data["mask"])
        if mask.ndim != 3:
            raise ValueError(f"a {mask.ndim}D array, not a 3D mask")
        return mask.astype(bool)
    except MedSAMError as error:
        why = f"{error}; its Dice columns stay empty"
    except Exception as error:  # torn zip, no 'mask' array, pickled objects: numpy and zipfile raise many kinds
        detail = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
        why = f"accepted mask {name} cannot be read ({detail}); its Dice columns stay empty"
    log.warning("%s", why)
    skipped.append(why)
    return None


def _load_reference(path: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    if path not in cache:
        from ..volumeio.files import read_volume

        volume = read_volume(path)
        label = volume.embedded_label if volume.embedded_label is not None else volume.array
        cache[path] = np.asarray(label) > 0
    return cache[path]


def _saving(manual_s: float, assisted_s: float) -> float | None:
    return round(100.0 * (1.0 - assisted_s / manual_s), 2) if manual_s > 0 else None


def build_report(folder: str | os.PathLike, references: dict[str, str] | None = None,
                 cases: Sequence[StudyCase] = (), idle_threshold_s: float = DEFAULT_IDLE_THRESHOLD_S
                 ) -> StudyReport:
    """Metrics of every log in ``folder``; ``references`` maps case ids to reference label files (the case list's
    ``reference`` column is used too)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"log folder {folder} does not exist" if not os.path.lexists(folder) else
                              f"log folder {folder} is not a folder")
    if finite_number(idle_threshold_s) is None or idle_threshold_s <= 0:
        raise OptionError(f"idle threshold must be a positive number of seconds, got {idle_threshold_s}")
    references = {**{c.case_id: c.reference for c in cases if c.reference}, **(references or {})}
    rows, damaged, skipped = [], [], []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            log_file = load_log(path)
        except MedSAMError as error:  # a folder, FIFO or dangling link named *.jsonl: the rest still counts
            log.warning("%s; skipped", error)
            skipped.append(f"{path.name}: {error}")
            continue
        damaged += [f"{path.name} line {bad.line}" for bad in log_file.damaged]
        if not log_file.events:
            log.warning("%s has no complete event; skipped", path.name)
            skipped.append(f"{path.name}: no complete event")
            continue
        rows.append(case_metrics(log_file, idle_threshold_s))
    if not rows:
        raise InputImageError(f"no session logs (*.jsonl) with events in {folder}")

    by_key = {(r.case, r.reader, r.mode): r for r in rows}
    for row in rows:
        if row.mode == "assisted" and row.accepted:
            manual = by_key.get((row.case, row.reader, "manual"))
            if manual is not None and manual.accepted:
                row.saved_percent = _saving(manual.active_s, row.active_s)

    masks = {(r.case, r.reader, r.mode): _load_mask(folder, r.mask, r.log, skipped) for r in rows if r.accepted}
    reference_cache: dict[str, np.ndarray] = {}
    for row in rows:
        mask = masks.get((row.case, row.reader, row.mode))
        if mask is None:
            continue
        if row.case in references:
            try:
                reference = _load_reference(references[row.case], reference_cache)
            except MedSAMError as error:
                reference = None
                why = f"reference of {row.case}: {error}"
                if why not in skipped:
                    log.warning("%s", why)
                    skipped.append(why)
            if reference is not None and reference.shape != mask.shape:
                why = (f"reference {references[row.case]} has shape {reference.shape}, the mask of {row.log} "
                       f"{mask.shape}: give the label of the image that was read")
                log.warning("%s", why)
                skipped.append(why)
            elif reference is not None:
                row.dice_reference = round(dice(mask, reference), 4)
        others = [m for (case, reader, mode), m in masks.items()
                  if case == row.case and mode == row.mode and reader != row.reader and m is not None
                  and m.shape == mask.shape]
        if others:
            row.dice_other_readers = round(float(np.mean([dice(mask, other) for other in others])), 4)
        own_manual = masks.get((row.case, row.reader, "manual"))
        if row.mode == "assisted" and own_manual is not None and own_manual.shape == mask.shape:
            row.dice_own_manual = round(dice(mask, own_manual), 4)

    readers = []
    for reader in sorted({r.reader for r in rows}):
        paired = [r for r in rows if r.reader == reader and r.saved_percent is not None]
        manual_s = sum(by_key[(r.case, reader, "manual")].active_s for r in paired)
        assisted_s = sum(r.active_s for r in paired)
        readers.append(ReaderSummary(reader, len(paired), round(manual_s, 3), round(assisted_s, 3),
                                     _saving(manual_s, assisted_s)))
    manual_total = sum(r.manual_s for r in readers)
    assisted_total = sum(r.assisted_s for r in readers)
    overall = ReaderSummary("all", sum(r.paired_cases for r in readers), round(manual_total, 3),
                            round(assisted_total, 3), _saving(manual_total, assisted_total))
    logged = {(r.case, r.mode) for r in rows}
    missing = [f"{c.case_id} ({c.mode})" for c in cases if (c.case_id, c.mode) not in logged]
    unfinished = [r.log for r in rows if not r.accepted]
    return StudyReport(str(folder), idle_threshold_s, rows, readers, overall, unfinished, missing, damaged, skipped)


# ----------------------------------------------------------------------------------------------------- outputs


CSV_COLUMNS = tuple(f.name for f in fields(CaseMetrics) if f.name != "mask")


def report_csv(report: StudyReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        values = asdict(row)
        writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60.0:.1f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def _dice(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def report_markdown(report: StudyReport) -> str:
    lines = ["# Annotation-time study report", "",
             f"Logs: `{report.folder}`; {len(report.rows)} case logs; idle threshold {report.idle_threshold_s:g} s "
             f"(gaps longer than that without any logged action are not counted as annotation time).", "",
             "| reader | cases in both modes | manual (min) | assisted (min) | time saved |",
             "|---|---:|---:|---:|---:|"]
    for summary in [*report.readers, report.overall]:
        lines.append(f"| {summary.reader} | {summary.paired_cases} | {_minutes(summary.manual_s)} | "
                     f"{_minutes(summary.assisted_s)} | {_percent(summary.saved_percent)} |")
    lines += ["", "MedSAM's study (Ma et al., Nat. Commun. 2024): 82.37 % and 82.95 % saved by two radiologists.", "",
              "| case | reader | mode | active (min) | idle (min) | slices touched | boxes | edits after AI | "
              "saved | Dice ref. | Dice readers | Dice own manual |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(report.rows, key=lambda r: (r.case, r.reader, r.mode)):
        lines.append(f"| {row.case} | {row.reader} | {row.mode}{'' if row.accepted else ' (unfinished)'} | "
                     f"{_minutes(row.active_s)} | {_minutes(row.idle_s)} | {row.slices_touched} | "
                     f"{row.boxes_drawn} | {row.edits_after_ai} | {_percent(row.saved_percent)} | "
                     f"{_dice(row.dice_reference)} | {_dice(row.dice_other_readers)} | {_dice(row.dice_own_manual)} |")
    if report.unfinished:
        lines += ["", f"Unfinished (no accept; not in the savings): {', '.join(report.unfinished)}."]
    if report.missing:
        lines += ["", f"In the case list but never opened: {', '.join(report.missing)}."]
    if report.damaged:
        lines += ["", f"Incomplete or unusable lines skipped: {', '.join(report.damaged)}."]
    if report.skipped:
        lines += ["", "Skipped: " + "; ".join(report.skipped) + "."]
    return "\n".join(lines) + "\n"


def report_plot_png(report: StudyReport) -> bytes:
    """Active minutes per case, manual beside assisted, one panel per reader."""
    # The object-oriented API with the Agg canvas: no pyplot, so Slicer's own matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    readers = sorted({r.reader for r in report.rows})
    figure = Figure(figsize=(max(6.0, 1.0 + 0.9 * len({r.case for r in report.rows})), 3.2 * len(readers)),
                    layout="constrained")
    canvas = FigureCanvasAgg(figure)
    summaries = {s.reader: s for s in report.readers}
    for n, reader in enumerate(readers):
        axis = figure.add_subplot(len(readers), 1, n + 1)
        rows = [r for r in report.rows if r.reader == reader]
        case_ids = sorted({r.case for r in rows})
        positions = np.arange(len(case_ids))
        for offset, mode, colour in ((-0.2, "manual", "#9e9e9e"), (0.2, "assisted", "#1f77b4")):
            found = {r.case: r for r in rows if r.mode == mode}
            bars = axis.bar(positions + offset, [found[c].active_s / 60.0 if c in found else 0.0 for c in case_ids],
                            width=0.4, label=mode, color=colour)
            for bar, case_id in zip(bars, case_ids):
                if case_id in found and not found[case_id].accepted:
                    bar.set_hatch("//")  # unfinished: not accepted, not in the saving
                    bar.set_alpha(0.5)
        axis.set_xticks(positions, case_ids, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel("active minutes")
        axis.set_title(f"reader {reader}: active time saved {_percent(summaries[reader].saved_percent)}\n"
                       f"MedSAM's readers: 82.37 % / 82.95 %", fontsize=10)
        axis.legend(fontsize=8, title="hatched: unfinished", title_fontsize=7)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def write_report(report: StudyReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``study_report.csv``, ``study_report.png`` and ``study_report.md`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    return {"csv": write_atomically(out_dir / "study_report.csv", report_csv(report).encode("utf-8")),
            "png": write_atomically(out_dir / "study_report.png", report_plot_png(report)),
            "markdown": write_atomically(out_dir / "study_report.md", report_markdown(report).encode("utf-8"))}


def rows_as_dicts(rows: Iterable[CaseMetrics]) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k != "mask"} for r in rows]
