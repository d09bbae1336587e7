"""Seconds per corrective box on the shared lesions: the engine before and after its speed work, side by side, and
re-propagating the whole range from all keys.

    .venv/bin/python bench/correction_speed.py [--cache-dir .cache/embeddings] [--repeat 3] [--cases 3] [--no-whole]

For each case: the first box on the median labelled slice over the label's range (embeddings then cached), then a
tight ground-truth box on each labelled slice in turn as a correction (the default rule, undone after timing, so
every correction starts from the same object).  Each correction runs three times, interleaved so that the
machine's load hits all alike: ``old`` = the official mask post-processing on the whole slice
(``LitePipeline.shortcut = False``) and one decoder call after the other (the engine before its speed work);
``mask`` = the exact post-processing shortcut of ``pipelines.lite_mask`` alone; ``new`` = the engine's defaults
(the shortcut and, where the runtime offers it, the two walks' first decoder calls run at once:
``Segmenter.pair_decodes``).  All three must write the same masks with the same decoder calls; the script checks
every correction and says so.  Per case: median seconds per correction for each, new/old, decoder calls per
correction, seconds per decoder call (the runtime's infer plus the mask post-processing, as the segmenter counts
it), and a whole-range re-propagation with the same keys.  Prints the CPU and the load average before and after: a
benchmark, not a test (goal: <= 0.1 s per correction on 2 cores for the shared lesions).
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
from MedSAMSlicerLib.engine import pipelines
from MedSAMSlicerLib.engine.corrections import CorrectableObject
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices

# old: the official post-processing on the whole slice, one decoder call at a time (the engine before);
# mask: the exact post-processing shortcut only; new: the engine's defaults (shortcut + the two first decodes at once)
MODES = ("old", "mask", "new")
FALLBACKS = [0]  # masks of the new path that took the official formula whole (a logit in (0, SIGN_BAND), NaN, ...)


def _count_fallbacks() -> None:
    official = pipelines.lite_mask_official

    def counted(logits, geometry):
        FALLBACKS[0] += 1
        return official(logits, geometry)

    pipelines.lite_mask_official = counted  # lite_mask looks it up at each call; the old path calls it directly


def configure(segmenter, mode: str) -> None:
    segmenter.pipeline.shortcut = mode != "old"
    if hasattr(segmenter, "pair_decodes"):
        segmenter.pair_decodes = mode == "new"


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
    _count_fallbacks()
    pair = getattr(segmenter.runtime, "decode_pair", None)
    if pair is not None and segmenter.runtime.has_decoder:  # compile and check the two-stream copy before timing
        start = time.perf_counter()
        probe = (np.zeros((1, 256, 64, 64), np.float32), np.array([[10, 10, 100, 100]], np.float32))
        ready = pair(probe, probe) is not None
        print(f"two-stream decoder: {'ready' if ready else 'not used'} ({segmenter.runtime.pair_state}), "
              f"{time.perf_counter() - start:.2f} s on first use (once per process, not timed below)")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {segmenter.describe_backend()}; "
          f"load average (1, 5, 15 min) at start: {load()}")
    print(f"{'case':32s} {'old s':>7s} {'mask s':>7s} {'new s':>7s} {'new/old':>7s} {'dec':>4s} "
          f"{'old s/call':>10s} {'mask s/call':>11s} {'new s/call':>10s} {'whole s':>8s} {'dec':>4s}")
    seconds: dict[str, list[float]] = {m: [] for m in MODES + ("whole",)}
    per_call: dict[str, list[float]] = {m: [0.0, 0.0] for m in MODES}  # seconds, calls
    all_calls: list[int] = []
    corrections = differing = new_fallbacks = 0
    ratios: dict[str, list[float]] = {"mask": [], "new": []}  # per correction, against the old run just before

    def cells(times: dict[str, list[float]], call_counts: list[int], spent: dict[str, list[float]]) -> str:
        old, mask, new = (statistics.median(times[m]) for m in MODES)
        per = [spent[m][0] / max(1, spent[m][1]) for m in MODES]
        return (f"{old:7.3f} {mask:7.3f} {new:7.3f} {new / old:7.2f} {statistics.mean(call_counts):4.1f} "
                f"{per[0]:10.4f} {per[1]:11.4f} {per[2]:10.4f}")

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
                for mode in MODES:  # interleaved, so that the machine's load hits all alike
                    configure(segmenter, mode)
                    obj = objects[mode]
                    decoder_s, decoder_n = segmenter.decoder.seconds, segmenter.decoder.calls
                    fallbacks = FALLBACKS[0]
                    start = time.perf_counter()
                    change = obj.add_box(index, box)
                    row[mode].append(time.perf_counter() - start)
                    if mode == "new":
                        new_fallbacks += FALLBACKS[0] - fallbacks
                    calls[mode].append(change.decoder_calls)
                    case_per_call[mode][0] += segmenter.decoder.seconds - decoder_s
                    case_per_call[mode][1] += segmenter.decoder.calls - decoder_n
                    written[mode] = (sorted(change.changed), [obj.masks[i].copy() for i in sorted(change.changed)],
                                     change.decoder_calls)
                    obj.undo()
                corrections += 1
                ratios["mask"].append(row["mask"][-1] / row["old"][-1])
                ratios["new"].append(row["new"][-1] / row["old"][-1])
                reference = written["old"]
                for mode in MODES[1:]:
                    slices, masks, count = written[mode]
                    if (slices != reference[0] or count != reference[2]
                            or not all(np.array_equal(a, b) for a, b in zip(masks, reference[1]))):
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
        whole = (f"{statistics.median(row['whole']):8.3f} {statistics.mean(calls['whole']):4.1f}" if row["whole"]
                 else f"{'-':>8s} {'-':>4s}")
        print(f"{case.name:32s} {cells(row, calls['new'], case_per_call)} {whole}", flush=True)
    whole = f"{statistics.median(seconds['whole']):8.3f}" if seconds["whole"] else f"{'-':>8s}"
    print(f"{'all (median s per correction)':32s} {cells(seconds, all_calls, per_call)} {whole}")
    print(f"median of the per-correction ratios (each run against the old run just before it, so load drift "
          f"cancels): mask/old {statistics.median(ratios['mask']):.2f}, new/old {statistics.median(ratios['new']):.2f}")
    print(f"masks, changed slices and decoder calls equal to old's: {corrections * 2 - differing} of "
          f"{corrections * 2} (mask and new, {corrections} corrections each)"
          + ("" if not differing else "  <-- NOT identical"))
    print(f"new path masks that took the official formula whole (a logit within {pipelines.SIGN_BAND:g} above 0): "
          f"{new_fallbacks} of {int(per_call['new'][1])}")
    print("s/call: the decoder's seconds per call as the segmenter counts them (the runtime's infer plus the mask "
          "post-processing; two decodes run at once count half their time each)")
    print(f"load average (1, 5, 15 min) at end: {load()}")


if __name__ == "__main__":
    main()
