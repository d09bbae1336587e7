"""Seconds per corrective box on the shared lesions, beside re-propagating the whole range from all keys.

    .venv/bin/python bench/correction_speed.py [--cache-dir .cache/embeddings] [--repeat 3]

For each case: the first box on the median labelled slice over the label's range (embeddings then cached), then a
tight ground-truth box on each labelled slice in turn as a correction (undone after timing, so every correction
starts from the same object).  Prints per case the median seconds and decoder calls of a stretch correction and of
a whole-range re-propagation with the same keys, and their ratio.  A benchmark, not a test: numbers depend on the
machine and its load (goal: <= 0.1 s per correction on 2 cores for the shared lesions).
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import engine, open_case, real_cases
from MedSAMSlicerLib.protocol import axes, box_from_mask
from MedSAMSlicerLib.engine.corrections import CorrectableObject
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    segmenter, cache = engine(args.cache_dir)
    print(f"{'case':32s} {'stretch s':>9s} {'dec':>5s} {'whole s':>8s} {'dec':>5s} {'ratio':>6s}")
    all_stretch, all_whole = [], []
    for case in real_cases():
        session, target = open_case(case, segmenter, cache)
        present = [int(i) for i in labelled_slices(target.mask, session.np_axis)]
        options = PropagationOptions(slice_range=(present[0], present[-1]))
        obj = CorrectableObject(session, options)
        middle = present[len(present) // 2]
        first = {middle: box_from_mask(axes.take_slice(target.mask, session.np_axis, middle))}
        obj.start(first)
        stretch, whole, stretch_calls, whole_calls = [], [], [], []
        for index in present:
            if index == middle:
                continue
            box = box_from_mask(axes.take_slice(target.mask, session.np_axis, index))
            for _ in range(args.repeat):
                start = time.perf_counter()
                change = obj.add_box(index, box)
                stretch.append(time.perf_counter() - start)
                stretch_calls.append(change.decoder_calls)
                obj.undo()
                calls = segmenter.decoder.calls
                start = time.perf_counter()
                propagate(session, {**first, index: box}, options)
                whole.append(time.perf_counter() - start)
                whole_calls.append(segmenter.decoder.calls - calls)
        s, w = statistics.median(stretch), statistics.median(whole)
        all_stretch += stretch
        all_whole += whole
        print(f"{case.name:32s} {s:9.3f} {statistics.mean(stretch_calls):5.1f} {w:8.3f} "
              f"{statistics.mean(whole_calls):5.1f} {w / s:6.1f}", flush=True)
    print(f"{'all':32s} {statistics.median(all_stretch):9.3f} {'':5s} {statistics.median(all_whole):8.3f} {'':5s} "
          f"{statistics.median(all_whole) / statistics.median(all_stretch):6.1f}  (median seconds per correction)")


if __name__ == "__main__":
    main()
