"""Seconds per corrective box on the shared lesions: the engine before and after its speed work, side by side, and
re-propagating the whole range from all keys.

    .venv/bin/python bench/correction_speed.py [--cache-dir .cache/embeddings] [--repeat 3] [--cases 3] [--no-whole]

For each case: the first box on the median labelled slice over the label's range (embeddings then cached), then a
tight ground-truth box on each labelled slice in turn as a correction (``iou-box`` rule, undone after timing, so
every correction starts from the same object).  Each correction runs twice, interleaved so that the machine's load
hits both alike: ``old`` = the official mask post-processing on the whole slice (``LitePipeline.shortcut = False``)
and one decoder call after the other; ``new`` = the engine's defaults (the exact shortcut of ``pipelines.lite_mask``
and, where the runtime offers it, the two directions' first decoder calls run at once: ``Segmenter.pair_decodes``).
The two must write the same masks; the script checks every correction and says so.  Per case: median seconds per
correction for each, their ratio, decoder calls per correction, seconds per decoder call (the runtime's infer plus
the mask post-processing, as the segmenter counts it), and a whole-range re-propagation with the same keys.  Prints
the CPU and the load average before and after: a benchmark, not a test (goal: <= 0.1 s per correction on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from common import engine, open_case, real_cases
from MedSAMSlicerLib.protocol import axes, box_from_mask
from MedSAMSlicerLib.engine.corrections import CorrectableObject
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices

MODES = ("old", "new")


def configure(segmenter, mode: str) -> None:
    """``old``: the official post-processing and one decoder call at a time; ``new``: the engine's defaults."""
    new = mode == "new"
    segmenter.pipeline.shortcut = new
    if hasattr(segmenter, "pair_decodes"):
        segmenter.pair_decodes = new


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", type=int, default=None, help="only the first N shared cases")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-range re-propagation column")
    args = parser.parse_args()
    segmenter, cache = engine(args.cache_dir)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {segmenter.describe_backend()}; "
          f"load average (1, 5, 15 min) at start: {load()}")
    print(f"{'case':32s} {'old s':>7s} {'new s':>7s} {'new/old':>7s} {'dec':>4s} {'old s/call':>10s} "
          f"{'new s/call':>10s} {'whole s':>8s} {'dec':>4s}")
    seconds: dict[str, list[float]] = {m: [] for m in MODES + ("whole",)}
    per_call: dict[str, list[float]] = {m: [0.0, 0.0] for m in MODES}  # seconds, calls
    all_calls: list[int] = []
    corrections = differing = 0
    for case in real_cases()[:args.cases]:
        session, target = open_case(case, segmenter, cache)
        present = [int(i) for i in labelled_slices(target.mask, session.np_axis)]
        options = PropagationOptions(slice_range=(present[0], present[-1]))
        middle = present[len(present) // 2]
        first = {middle: box_from_mask(axes.take_slice(target.mask, session.np_axis, middle))}
        objects = {}
        for mode in MODES:
            configure(segmenter, mode)
            objects[mode] = CorrectableObject(session, options)
            objects[mode].start(first)
        row: dict[str, list[float]] = {m: [] for m in MODES + ("whole",)}
        calls: dict[str, list[int]] = {m: [] for m in MODES + ("whole",)}
        case_per_call = {m: [0.0, 0.0] for m in MODES}
        for index in present:
            if index == middle:
                continue
            box = box_from_mask(axes.take_slice(target.mask, session.np_axis, index))
            for _ in range(args.repeat):
                written = {}
                for mode in MODES:  # interleaved, so that the machine's load hits both alike
                    configure(segmenter, mode)
                    obj = objects[mode]
                    decoder_s, decoder_n = segmenter.decoder.seconds, segmenter.decoder.calls
                    start = time.perf_counter()
                    change = obj.add_box(index, box)
                    row[mode].append(time.perf_counter() - start)
                    calls[mode].append(change.decoder_calls)
                    case_per_call[mode][0] += segmenter.decoder.seconds - decoder_s
                    case_per_call[mode][1] += segmenter.decoder.calls - decoder_n
                    written[mode] = (sorted(change.changed), [obj.masks[i].copy() for i in sorted(change.changed)])
                    obj.undo()
                corrections += 1
                (old_slices, old_masks), (new_slices, new_masks) = written["old"], written["new"]
                if old_slices != new_slices or not all(np.array_equal(a, b) for a, b in zip(old_masks, new_masks)):
                    differing += 1
                if not args.no_whole:
                    configure(segmenter, "new")
                    count = segmenter.decoder.calls
                    start = time.perf_counter()
                    propagate(session, {**first, index: box}, options)
                    row["whole"].append(time.perf_counter() - start)
                    calls["whole"].append(segmenter.decoder.calls - count)
        for name in row:
            seconds[name] += row[name]
        for mode in MODES:
            per_call[mode][0] += case_per_call[mode][0]
            per_call[mode][1] += case_per_call[mode][1]
        all_calls += calls["new"]
        old_s, new_s = statistics.median(row["old"]), statistics.median(row["new"])
        whole = (f"{statistics.median(row['whole']):8.3f} {statistics.mean(calls['whole']):4.1f}" if row["whole"]
                 else f"{'-':>8s} {'-':>4s}")
        print(f"{case.name:32s} {old_s:7.3f} {new_s:7.3f} {new_s / old_s:7.2f} {statistics.mean(calls['new']):4.1f} "
              f"{case_per_call['old'][0] / max(1, case_per_call['old'][1]):10.4f} "
              f"{case_per_call['new'][0] / max(1, case_per_call['new'][1]):10.4f} {whole}", flush=True)
    old_s, new_s = statistics.median(seconds["old"]), statistics.median(seconds["new"])
    whole = f"{statistics.median(seconds['whole']):8.3f}" if seconds["whole"] else f"{'-':>8s}"
    print(f"{'all (median s per correction)':32s} {old_s:7.3f} {new_s:7.3f} {new_s / old_s:7.2f} "
          f"{statistics.mean(all_calls):4.1f} {per_call['old'][0] / max(1, per_call['old'][1]):10.4f} "
          f"{per_call['new'][0] / max(1, per_call['new'][1]):10.4f} {whole}")
    print(f"new masks equal to old: {corrections - differing} of {corrections} corrections"
          + ("" if not differing else "  <-- NOT bit-identical"))
    print(f"load average (1, 5, 15 min) at end: {load()}")


if __name__ == "__main__":
    main()
