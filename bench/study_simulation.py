"""Simulated annotation-time study on every real case of ../shared/data, beside MedSAM's 82.37 % / 82.95 %.

    .venv/bin/python bench/study_simulation.py [--cache-dir DIR] [--measure] [--out Resources/study]

For each case, MedSAM's protocol (:mod:`MedSAMSlicerLib.study_simulation`) with key slices every 3, 5 and 10
labelled slices; each propagation is counted under per-slice Dice thresholds 0.8 and 0.9 and under the two
correction strategies ("best": edit or redraw, whichever is cheaper per slice; "redraw": always redraw).  The main
protocol is key slices every 5, threshold 0.9, best.

Action times are ActionTimes' documented defaults, so the tables are reproducible; ``--measure`` first times one
cold propagation (empty embedding cache) on the first case and uses its seconds per slice as model_slice_s
instead.  Writes simulation.md (tables), simulation.png (plot) and simulation.json (all counts) to
--out and prints the markdown.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from common import REPO, real_cases
from MedSAMSlicerLib.engine.backends import make_segmenter
from MedSAMSlicerLib.engine.cache import EmbeddingCache
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.study.simulation import (PAPER_SAVINGS_PERCENT, ActionTimes, Protocol, count_protocol,
                                              run_assisted, simulation_markdown, summarize)
from MedSAMSlicerLib.study.timelog import write_atomically
from MedSAMSlicerLib.volumeio.files import read_label, read_volume

KEY_EVERY = (3, 5, 10)
THRESHOLDS = (0.8, 0.9)
CORRECTIONS = ("best", "redraw")
MAIN = Protocol(key_every=5, dice_threshold=0.9, correction="best")


def open_case(case, segmenter, cache):
    volume = read_volume(case.image)
    reference = read_label(case.label, volume) > 0
    return VolumeSession(segmenter, volume, case.window, "axial", cache), reference


def measure_model_slice_seconds(case, segmenter) -> float:
    session, reference = open_case(case, segmenter, EmbeddingCache())  # memory only, empty: every slice encoded
    start = time.perf_counter()
    run = run_assisted(session, reference, MAIN)
    return (time.perf_counter() - start) / run.model_slices


def sensitivity_rows(results: dict) -> list[dict]:
    rows = []
    for protocol, per_case in results.items():
        pooled = summarize(per_case)
        rows.append({"key_every": protocol.key_every, "dice_threshold": protocol.dice_threshold,
                     "correction": protocol.correction, **pooled})
    return rows


def sensitivity_markdown(rows: list[dict]) -> str:
    lines = ["| key slice every | corrected below Dice | correction | corrected slices | manual (min) | "
             "assisted (min) | saved | saved, perfect model |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['key_every']} | {row['dice_threshold']:g} | {row['correction']} | "
                     f"{row['corrected_slices']} / {row['labelled_slices']} | {row['manual_s'] / 60:.1f} | "
                     f"{row['assisted_s'] / 60:.1f} | {row['saving_percent']:.1f} % | {row['ceiling_percent']:.1f} % |")
    lines.append(f"| MedSAM's study, 2 radiologists | | | | | | {PAPER_SAVINGS_PERCENT[0]} % / "
                 f"{PAPER_SAVINGS_PERCENT[1]} % | |")
    return "\n".join(lines) + "\n"


def plot_png(main_results, rows) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.6), layout="constrained")
    canvas = FigureCanvasAgg(figure)
    cases_axis, sensitivity_axis = figure.subplots(1, 2, width_ratios=(1.6, 1))
    names = [r.case.replace("CT_Lesion_", "L") for r in main_results]
    positions = np.arange(len(main_results))
    for offset, label, colour, values in (
            (-0.27, "manual", "#9e9e9e", [r.manual.total_s for r in main_results]),
            (0.0, "assisted (simulated)", "#1f77b4", [r.assisted.total_s for r in main_results]),
            (0.27, "assisted, perfect model", "#aec7e8", [r.perfect_model.total_s for r in main_results])):
        cases_axis.bar(positions + offset, values, width=0.27, label=label, color=colour)
    cases_axis.set_xticks(positions, names, rotation=35, ha="right", fontsize=8)
    cases_axis.set_ylabel("estimated seconds per case")
    pooled = summarize(main_results)
    cases_axis.set_title(f"key slice every {MAIN.key_every}, Dice < {MAIN.dice_threshold:g} corrected: "
                         f"{pooled['saving_percent']:.1f} % saved overall", fontsize=10)
    cases_axis.legend(fontsize=8)
    for threshold, correction, style in ((0.9, "best", "o-"), (0.8, "best", "s-"), (0.9, "redraw", "o--"),
                                         (0.8, "redraw", "s--")):
        chosen = [r for r in rows if r["dice_threshold"] == threshold and r["correction"] == correction]
        sensitivity_axis.plot([r["key_every"] for r in chosen], [r["saving_percent"] for r in chosen], style,
                              label=f"Dice < {threshold:g}, {correction}")
    ceiling = [r for r in rows if r["dice_threshold"] == 0.9 and r["correction"] == "best"]
    sensitivity_axis.plot([r["key_every"] for r in ceiling], [r["ceiling_percent"] for r in ceiling], "k:",
                          label="perfect model (ceiling)")
    for value in PAPER_SAVINGS_PERCENT:
        sensitivity_axis.axhline(value, color="#d62728", linewidth=1)
    sensitivity_axis.text(KEY_EVERY[0], PAPER_SAVINGS_PERCENT[0] - 7, "MedSAM's readers: 82.37 % / 82.95 %",
                          color="#d62728", fontsize=8)
    sensitivity_axis.set_ylim(min(-40.0, min(r["saving_percent"] for r in rows) - 5), 95)
    sensitivity_axis.axhline(0, color="black", linewidth=0.5)
    sensitivity_axis.set_xticks(KEY_EVERY)
    sensitivity_axis.set_xlabel("key slice every N labelled slices")
    sensitivity_axis.set_ylabel("time saved, all cases pooled (%)")
    sensitivity_axis.set_title("sensitivity", fontsize=10)
    sensitivity_axis.legend(fontsize=7, loc="lower left")
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-embeddings"),
                        help="embedding cache shared with the tests (default .cache/test-embeddings)")
    parser.add_argument("--measure", action="store_true",
                        help="measure the model's seconds per slice here and use it instead of the default")
    parser.add_argument("--out", default=str(REPO / "Resources" / "study"))
    args = parser.parse_args()
    segmenter = make_segmenter("litemedsam", device="cpu", backend="auto")
    cases = real_cases()
    times = ActionTimes()
    if args.measure:
        times = replace(times, model_slice_s=round(measure_model_slice_seconds(cases[0], segmenter), 2))
        print(f"model time measured here: {times.model_slice_s} s per slice", flush=True)
    cache = EmbeddingCache(disk_dir=args.cache_dir)
    results: dict[Protocol, list] = {}
    no_model_time = {threshold: [] for threshold in THRESHOLDS}  # the main spacing, model time not counted
    for case in cases:
        session, reference = open_case(case, segmenter, cache)
        for every in KEY_EVERY:
            run = run_assisted(session, reference, replace(MAIN, key_every=every))  # once per key spacing
            for threshold in THRESHOLDS:
                for correction in CORRECTIONS:
                    protocol = replace(MAIN, key_every=every, dice_threshold=threshold, correction=correction)
                    results.setdefault(protocol, []).append(count_protocol(
                        case.name, reference, run.mask, run.keys, session.np_axis, session.volume.spacing_zyx,
                        run.model_slices, protocol, times))
                    if every == MAIN.key_every and correction == MAIN.correction:
                        no_model_time[threshold].append(count_protocol(
                            case.name, reference, run.mask, run.keys, session.np_axis,
                            session.volume.spacing_zyx, run.model_slices, protocol,
                            replace(times, model_slice_s=0.0)))
        main_result = results[MAIN][-1]
        print(f"{case.name}: {len(main_result.labelled_slices)} slices, saved {100 * main_result.saving:.1f} %",
              flush=True)
    rows = sensitivity_rows(results)
    instant = [{"key_every": MAIN.key_every, "dice_threshold": threshold, "correction": f"{MAIN.correction}, model "
                "time 0", **summarize(per_case)} for threshold, per_case in no_model_time.items()]
    text = "\n".join([
        f"Per case, key slice every {MAIN.key_every}, slices with Dice < {MAIN.dice_threshold:g} corrected "
        f"({MAIN.correction}); action times: "
        + ", ".join(f"{k} {v:g}" for k, v in asdict(times).items()) + ".", "",
        simulation_markdown(results[MAIN]), "All cases pooled, by protocol (\"model time 0\": the reader never waits "
        "for the model, the most a faster device can give):", "", sensitivity_markdown(rows + instant)])
    out = Path(args.out)
    write_atomically(out / "simulation.md", text.encode("utf-8"))
    write_atomically(out / "simulation.png", plot_png(results[MAIN], rows))
    raw = {"times": asdict(times), "sensitivity": rows + instant,
           "results": [r.as_dict() for per_case in results.values() for r in per_case]}
    write_atomically(out / "simulation.json", json.dumps(raw, indent=1).encode("utf-8"))
    print(text)


if __name__ == "__main__":
    main()
