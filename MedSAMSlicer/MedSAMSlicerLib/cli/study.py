"""``medsam-slicer study``: plan an annotation-time study, report it from the session logs, or simulate it.

    medsam-slicer study plan IMAGE [IMAGE ...] --logs LOGDIR --out cases.csv
    medsam-slicer study report LOGDIR [--cases cases.csv] [--reference CASE=LABEL] [--out DIR]
    medsam-slicer study simulate IMAGE [LABEL] [--every 3,5,10] [--dice-threshold 0.9] [--time NAME=SECONDS]

:mod:`.main` hooks this in with :func:`add_parser` (building the parser) and :func:`run_study` (running it);
:func:`study_text` is the human-readable form of the returned summary.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path

from ..errors import OptionError
from ..paths import check_output_file, check_output_folder
from .options import add_model_options, finite_float, make_session, nonnegative_float, positive_float


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be whole numbers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more whole numbers of 1 or more")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``study`` with its sub-commands ``plan``, ``report`` and ``simulate`` to the CLI's sub-parsers."""
    from ..study.protocol import CORRECTIONS, ActionTimes  # not .simulation: building the parser loads no torch
    from ..study.timelog import DEFAULT_IDLE_THRESHOLD_S

    study = subparsers.add_parser("study", help="annotation-time study: plan, report from session logs, simulate")
    commands = study.add_subparsers(dest="study_command", required=True)

    plan = commands.add_parser("plan", help="write a case list with pseudonymous case ids and a mode per case")
    plan.add_argument("images", nargs="+", help="the scans to read")
    plan.add_argument("--logs", required=True, help="the study's log folder (holds the pseudonym key)")
    plan.add_argument("--out", required=True, help="case list to write (CSV)")
    plan.add_argument("--reference", action="append", default=[], help="reference label per image, in order")
    plan.add_argument("--one-mode", action="store_true",
                      help="each case in one mode (alternating) instead of both (counterbalanced)")
    plan.add_argument("--seed", type=int, default=0, help="which half of the cases is read manual first")
    plan.add_argument("--json", action="store_true")

    report = commands.add_parser("report", help="per-case active time, %% saved, edits, Dice: CSV + PNG + markdown")
    report.add_argument("logdir", help="folder of session logs (*.jsonl) and accepted masks")
    report.add_argument("--cases", help="the case list (CSV); adds reference labels and lists cases not read")
    report.add_argument("--reference", action="append", default=[], metavar="CASE=LABEL",
                        help="reference label for a case id (repeatable)")
    report.add_argument("--idle-threshold", type=positive_float, default=DEFAULT_IDLE_THRESHOLD_S,
                        help=f"seconds without a logged action that count as a break (default "
                             f"{DEFAULT_IDLE_THRESHOLD_S:g})")
    report.add_argument("--out", help="folder for study_report.csv/.png/.md (default: LOGDIR)")
    report.add_argument("--json", action="store_true")

    simulate = commands.add_parser("simulate", help="estimate the time MedSAM's protocol saves on a labelled scan")
    simulate.add_argument("image", help="3D image: NIfTI, NRRD, MHA, GIPL or MedSAM npz")
    simulate.add_argument("label", nargs="?", help="label on the image grid (omit for npz with 'gts')")
    simulate.add_argument("--label-value", type=int, help="the structure to annotate (default: all > 0)")
    simulate.add_argument("--every", type=_csv_ints, default=[5], metavar="N[,N...]",
                          help="a key slice (two axes -> box) every N labelled slices; several values "
                               "compare them (default 5; MedSAM's readers used 3-10)")
    simulate.add_argument("--dice-threshold", type=finite_float, default=0.9,
                          help="slices whose Dice with the label is below this are corrected (default 0.9)")
    simulate.add_argument("--tolerance-mm", type=positive_float, default=1.0,
                          help="drawn polygons stay this close to the boundary; closer model boundaries need "
                               "no edit (default 1)")
    simulate.add_argument("--correction", default="best", choices=CORRECTIONS,
                          help="how a slice is corrected: edit the wrong stretches, redraw it, or the cheaper "
                               "(default best)")
    simulate.add_argument("--range-mode", default="label", choices=("label", "stop"),
                          help="propagate over the label's extent (default) or the whole volume with the stop rule")
    simulate.add_argument("--time", action="append", default=[], metavar="NAME=SECONDS",
                          help=f"override a per-action time ({', '.join(asdict(ActionTimes()))})")
    simulate.add_argument("--out", help="also write simulation.md and simulation.png to this folder")
    simulate.add_argument("--json", action="store_true")
    add_model_options(simulate)
    return study


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise OptionError(f"{what} {item!r} must be NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def _run_plan(args: argparse.Namespace) -> dict:
    from ..study.report import plan_cases, write_case_list

    missing = [image for image in args.images if not Path(image).exists()]
    if missing:
        raise OptionError(f"image {missing[0]} does not exist")
    logs = Path(args.logs)
    if os.path.lexists(logs) and not logs.is_dir():
        raise OptionError(f"--logs {logs} is a file; give the study's log folder")
    key = logs / ".pseudonym-key"
    if not os.path.lexists(key):
        check_output_folder(logs, [], what="--logs")
    check_output_file(args.out, [*args.images, *args.reference, key])  # before the key is created
    cases = plan_cases(args.images, args.logs, args.reference, both_modes=not args.one_mode, seed=args.seed)
    out = write_case_list(args.out, cases)
    return {"study_command": "plan", "case_list": str(out), "rows": len(cases),
            "cases": [asdict(case) for case in cases]}


def _run_report(args: argparse.Namespace) -> dict:
    from ..study.report import build_report, read_case_list, rows_as_dicts, write_report

    references = _pairs(args.reference, "--reference")
    check_output_folder(args.out or args.logdir, ["study_report.csv", "study_report.png", "study_report.md",
                                                  "simulated_reader.md"],
                        [args.cases, *references.values()], what="--out" if args.out else "the report (in LOGDIR)")
    cases = read_case_list(args.cases) if args.cases else []
    report = build_report(args.logdir, references, cases, args.idle_threshold)
    files = write_report(report, args.out or args.logdir)
    summary = report.as_dict()
    summary["rows"] = rows_as_dicts(report.rows)
    from ..study.reader_report import REPORT_NAME, read_record, reader_markdown, reader_report
    from ..study.timelog import write_atomically

    record = read_record(args.logdir)  # bench/simulated_reader.py's run: both arms priced with cited constants
    if record is not None:
        summary["simulated_reader"] = reader_report(record)
        files["simulated_reader"] = write_atomically(Path(args.out or args.logdir) / REPORT_NAME,
                                                     reader_markdown(summary["simulated_reader"]).encode("utf-8"))
    return {"study_command": "report", **summary, "files": {k: str(v) for k, v in files.items()}}


def _run_simulate(args: argparse.Namespace) -> dict:
    from ..evaluation.evaluate import targets_from_label
    from ..study.simulation import ActionTimes, Protocol, simulate_case, simulation_markdown, simulation_plot_png
    from ..study.timelog import write_atomically
    from ..volumeio.files import read_label

    try:
        overrides = {name: nonnegative_float(value) for name, value in _pairs(args.time, "--time").items()}
    except argparse.ArgumentTypeError as error:
        raise OptionError(f"--time values must be seconds (0 or more), e.g. --time review_slice_s=5: {error}") from None
    times = ActionTimes().with_overrides(overrides)
    protocols = [Protocol(key_every=n, dice_threshold=args.dice_threshold, contour_tolerance_mm=args.tolerance_mm,
                          correction=args.correction, range_mode=args.range_mode).check() for n in args.every]
    if args.out:
        check_output_folder(args.out, ["simulation.md", "simulation.png"], [args.image, args.label])
    session = make_session(args, args.image)
    label = read_label(args.label, session.volume)
    (target,) = targets_from_label(label, Path(args.image).name, args.label_value)
    results = [simulate_case(session, target.mask, target.name, protocol, times) for protocol in protocols]
    # The time model with sources: box corrections by the interactive protocol, KLM constants, measured system time.
    from ..study.time_model import case_actions, time_report

    actions, interactive = case_actions(session, target.mask, target.name, args.range_mode)
    model = time_report([actions])
    summary = {"study_command": "simulate", "image": args.image, "label": args.label or "(embedded)",
               "axis": session.axis_name, "window": session.window.describe(),
               "saved_fraction": model["saved_fraction"], "saved_range": model["saved_range"],
               "sources": model["sources"], "time_model": model, "interactive": interactive,
               "results": [r.as_dict() for r in results], "paper_saving_percent": [82.37, 82.95]}
    if args.out:
        out = Path(args.out)
        summary["files"] = {
            "markdown": str(write_atomically(out / "simulation.md", simulation_markdown(results).encode("utf-8"))),
            "png": str(write_atomically(out / "simulation.png", simulation_plot_png(results)))}
    return summary


def run_study(args: argparse.Namespace) -> dict:
    """Run ``study plan|report|simulate``; user errors raise :class:`MedSAMError` subclasses."""
    if args.study_command == "plan":
        return _run_plan(args)
    if args.study_command == "report":
        return _run_report(args)
    return _run_simulate(args)


def study_text(summary: dict) -> str:
    """The human-readable form of :func:`run_study`'s summary."""
    command = summary["study_command"]
    if command == "plan":
        return f"wrote {summary['rows']} rows to {summary['case_list']}"
    if command == "report":
        lines = [f"idle threshold {summary['idle_threshold_s']:g} s; {len(summary['rows'])} case logs"]
        for reader in [*summary["readers"], summary["overall"]]:
            saved = "n/a" if reader["saved_percent"] is None else f"{reader['saved_percent']:.1f} %"
            cases = f"{reader['paired_cases']} case{'' if reader['paired_cases'] == 1 else 's'}"
            lines.append(f"reader {reader['reader']}: {cases} in both modes, manual "
                         f"{reader['manual_s'] / 60:.1f} min, assisted {reader['assisted_s'] / 60:.1f} min, "
                         f"saved {saved}")
        for key in ("unfinished", "missing", "damaged"):
            if summary[key]:
                lines.append(f"{key}: {', '.join(summary[key])}")
        reader = summary.get("simulated_reader")
        if reader is not None:
            lines.append(f"simulated reader on {reader['case']}: manual arm {reader['manual_s']:.0f} s (priced), "
                         f"assisted arm {reader['assisted_s']:.0f} s (measured in the page + priced actions): "
                         f"{100 * reader['saved_fraction']:.1f} % saved (sensitivity range "
                         f"{100 * reader['saved_range'][0]:.1f} to {100 * reader['saved_range'][1]:.1f} %)")
        lines.append("MedSAM's study: 82.37 % and 82.95 % saved.  Files: " + ", ".join(summary["files"].values()))
        return "\n".join(lines)
    model = summary["time_model"]
    lines = [f"time model (KLM constants, box corrections, measured system time): "
             f"{100 * summary['saved_fraction']:.1f} % saved (sensitivity range "
             f"{100 * summary['saved_range'][0]:.1f} to {100 * summary['saved_range'][1]:.1f} %); manual "
             f"{model['manual_s']:.0f} s, assisted {model['assisted_s']:.0f} s; sources in --json",
             "older count model (per-action assumptions, corrections as manual edits):"]
    for result in summary["results"]:
        manual, assisted, protocol = result["manual"], result["assisted"], result["protocol"]
        lines += [
            f"{result['case']}: {result['labelled_slices']} labelled slices; key slices every "
            f"{protocol['key_every']}: {result['key_slices']}",
            f"  manual:   {manual['strokes']} strokes, {manual['points']} clicks on {manual['slices_visited']} "
            f"slices -> {manual['total_s']:.0f} s",
            f"  assisted: {assisted['strokes']} strokes, {assisted['points']} clicks; "
            f"{len(result['corrected_slices'])} slices corrected {result['corrected_slices']}, "
            f"{len(result['erased_slices'])} erased; {assisted['reviewed_slices']} reviewed; model on "
            f"{assisted['model_slices']} slices -> {assisted['total_s']:.0f} s",
            f"  estimated time saved: {result['saving_percent']:.1f} % (with a model needing no correction: "
            f"{result['ceiling_percent']:.1f} %); Dice before correction {result['ai_dice']:.3f}"]
    times = summary["results"][0]["times"]
    protocol = summary["results"][0]["protocol"]
    lines += ["MedSAM's study (real radiologists, 10 cases): 82.37 % and 82.95 % saved.",
              f"assumptions: slices with Dice < {protocol['dice_threshold']:g} are corrected "
              f"({protocol['correction']}); polygons within {protocol['contour_tolerance_mm']:g} mm; "
              + ", ".join(f"{k} {v:g}" for k, v in times.items())
              + " (see study_simulation.ActionTimes for sources)"]
    return "\n".join(lines)
