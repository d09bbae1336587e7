"""Seconds per corrective box on the shared lesions: the two correction rules side by side, and re-propagating the
whole range from all keys.

    .venv/bin/python bench/correction_speed.py [--cache-dir .cache/embeddings] [--repeat 3] [--cases 3]

For each case: the first box on the median labelled slice over the label's range (embeddings then cached), then a
tight ground-truth box on each labelled slice in turn as a correction (undone after timing, so every correction
starts from the same object).  Per case, the median seconds and mean decoder calls of a correction under the
``iou`` rule (before the interpolated-box check) and the ``iou-box`` rule (the default), of a whole-range
re-propagation with the same keys, and the seconds of a correction spent outside the decoder (the engine's own
overhead: the rest is the decoder call and its mask post-processing, counted by the segmenter).  A benchmark, not a
test: numbers depend on the machine and its load (goal: <= 0.1 s per correction on 2 cores for the shared lesions).
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import engine, open_case, real_cases
from MedSAMSlicerLib.engine import axes
from MedSAMSlicerLib.engine.boxes import box_from_mask
from MedSAMSlicerLib.engine.corrections import RULES, CorrectableObject
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", type=int, default=None, help="only the first N shared cases")
    args = parser.parse_args()
    segmenter, cache = engine(args.cache_dir)
    rules = sorted(RULES)  # "iou" (before) then "iou-box" (after)
    head = " ".join(f"{r + ' s':>10s} {'dec':>4s} {'outside':>7s}" for r in rules)
    print(f"{'case':32s} {head} {'whole s':>8s} {'dec':>4s}")
    seconds: dict[str, list[float]] = {r: [] for r in rules + ["whole"]}
    outside: dict[str, list[float]] = {r: [] for r in rules}
    for case in real_cases()[:args.cases]:
        session, target = open_case(case, segmenter, cache)
        present = [int(i) for i in labelled_slices(target.mask, session.np_axis)]
        options = PropagationOptions(slice_range=(present[0], present[-1]))
        middle = present[len(present) // 2]
        first = {middle: box_from_mask(axes.take_slice(target.mask, session.np_axis, middle))}
        objects = {r: CorrectableObject(session, options, r) for r in rules}
        for obj in objects.values():
            obj.start(first)
        row: dict[str, list[float]] = {r: [] for r in rules + ["whole"]}
        calls: dict[str, list[int]] = {r: [] for r in rules + ["whole"]}
        spare: dict[str, list[float]] = {r: [] for r in rules}
        for index in present:
            if index == middle:
                continue
            box = box_from_mask(axes.take_slice(target.mask, session.np_axis, index))
            for _ in range(args.repeat):
                for rule, obj in objects.items():  # interleaved, so that the machine's load hits both alike
                    decoder_s = segmenter.decoder.seconds
                    start = time.perf_counter()
                    change = obj.add_box(index, box)
                    took = time.perf_counter() - start
                    row[rule].append(took)
                    spare[rule].append(took - (segmenter.decoder.seconds - decoder_s))
                    calls[rule].append(change.decoder_calls)
                    obj.undo()
                count = segmenter.decoder.calls
                start = time.perf_counter()
                propagate(session, {**first, index: box}, options)
                row["whole"].append(time.perf_counter() - start)
                calls["whole"].append(segmenter.decoder.calls - count)
        for name in row:
            seconds[name] += row[name]
        for rule in rules:
            outside[rule] += spare[rule]
        cells = " ".join(f"{statistics.median(row[r]):10.3f} {statistics.mean(calls[r]):4.1f} "
                         f"{statistics.median(spare[r]):7.4f}" for r in rules)
        print(f"{case.name:32s} {cells} {statistics.median(row['whole']):8.3f} "
              f"{statistics.mean(calls['whole']):4.1f}", flush=True)
    cells = " ".join(f"{statistics.median(seconds[r]):10.3f} {'':4s} {statistics.median(outside[r]):7.4f}"
                     for r in rules)
    print(f"{'all (median s per correction)':32s} {cells} {statistics.median(seconds['whole']):8.3f}")
    print(f"decoder: {segmenter.decoder.calls} calls, {segmenter.decoder.seconds / max(1, segmenter.decoder.calls):.3f} "
          f"s per call (the runtime's infer plus the mask's upsampling), on {segmenter.describe_backend()}")


if __name__ == "__main__":
    main()
