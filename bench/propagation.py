"""Official CVPR24 propagation as written vs ours, on every real case, in one process.

    .venv/bin/python bench/propagation.py [--passes 3] [--cases 4]

Official as written: PyTorch encoder, no state between runs, so every propagation encodes every slice again.
Ours: ONNX Runtime encoder and the embedding cache (memory only, empty at the start of each case).
For each case a user session is simulated: a first propagation from the key box, then ``passes - 1`` re-prompts
(the key box loosened by 2 voxels, then by 1) that propagate again, as a radiologist adjusting a box does.  Both
rules get the label's slice range.  Printed per case and in total: wall time, encoder calls, peak RSS, DSC of the
first and the last pass, and the ratio official / ours for the first pass alone and for the whole session.
"""

from __future__ import annotations

import argparse
import time

from common import real_cases
from MedSAMSlicerLib.engine.backends import make_segmenter
from MedSAMSlicerLib.protocol import Box
from MedSAMSlicerLib.engine.cache import EmbeddingCache
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices, official_key, targets_from_label
from MedSAMSlicerLib.engine.memory import PeakMemory
from MedSAMSlicerLib.evaluation.metrics import dice
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.volumeio.files import read_label, read_volume


def adjusted(box: Box, step: int) -> Box:
    """The user's re-prompt number ``step``: the box loosened by 2 voxels, then by 1, then 2, ..."""
    grow = 2 if step % 2 else 1
    return Box(box.x0 - grow, box.y0 - grow, box.x1 + grow, box.y1 + grow)


def run_session(segmenter, volume, window, target, passes, rule, shared_cache: bool):
    key, box = official_key(target, 0)
    present = labelled_slices(target, 0)
    options = PropagationOptions(rule=rule, slice_range=(int(present[0]), int(present[-1])))
    cache = EmbeddingCache()
    calls_before = segmenter.encoder.calls
    times, dscs = [], []
    with PeakMemory() as memory:
        for step in range(passes):
            if not shared_cache:
                cache = EmbeddingCache()  # the official script keeps nothing between runs
            session = VolumeSession(segmenter, volume, window, "axial", cache)
            start = time.perf_counter()
            result = propagate(session, {key: box if step == 0 else adjusted(box, step)}, options)
            times.append(time.perf_counter() - start)
            dscs.append(dice(result.mask, target))
    return {"first": times[0], "total": sum(times), "calls": segmenter.encoder.calls - calls_before,
            "peak_mb": memory.peak_mb, "dsc_first": dscs[0], "dsc_last": dscs[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="propagations per simulated user session")
    parser.add_argument("--cases", type=int, default=0, help="only the first N cases (0: all)")
    args = parser.parse_args()
    official_segmenter = make_segmenter("litemedsam", device="cpu", backend="pytorch")
    our_segmenter = make_segmenter("litemedsam", device="cpu", backend="auto")
    print(f"official: PyTorch encoder, no cache; ours: {our_segmenter.backend_name} encoder + embedding cache; "
          f"{args.passes} propagations per case")
    header = (f"{'case':32s} {'rule':8s} {'1st s':>7s} {'all s':>7s} {'enc':>4s} {'peak MB':>8s} {'DSC 1st':>8s} "
              f"{'DSC last':>8s}")
    print(header)
    totals = {"official": [0.0, 0.0, 0], "ours": [0.0, 0.0, 0]}
    cases = real_cases()[: args.cases or None]
    for case in cases:
        volume = read_volume(case.image)
        (target,) = targets_from_label(read_label(case.label, volume), case.name)
        official = run_session(official_segmenter, volume, case.window, target.mask, args.passes, "official",
                               shared_cache=False)
        ours = run_session(our_segmenter, volume, case.window, target.mask, args.passes, "ours", shared_cache=True)
        for rule, row in (("official", official), ("ours", ours)):
            totals[rule][0] += row["first"]
            totals[rule][1] += row["total"]
            totals[rule][2] += row["calls"]
            print(f"{case.name[:32]:32s} {rule:8s} {row['first']:7.1f} {row['total']:7.1f} {row['calls']:4d} "
                  f"{row['peak_mb']:8.0f} {row['dsc_first']:8.3f} {row['dsc_last']:8.3f}", flush=True)
    (of, ot, oc), (uf, ut, uc) = totals["official"], totals["ours"]
    print(f"TOTAL official: first pass {of:.1f} s, session {ot:.1f} s, {oc} encoder calls")
    print(f"TOTAL ours:     first pass {uf:.1f} s, session {ut:.1f} s, {uc} encoder calls")
    print(f"speed-up official/ours: first pass {of / uf:.2f}x, whole {args.passes}-propagation session "
          f"{ot / ut:.2f}x; encoder calls {oc / max(uc, 1):.2f}x fewer")


if __name__ == "__main__":
    main()
