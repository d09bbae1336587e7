"""The README's accuracy tables, measured on the real labelled cases of ../shared/data.

    .venv/bin/python bench/accuracy_table.py [--cache-dir .cache/embeddings]

Per case: 2D (ground-truth box on every labelled slice) and 3D from one box (official CVPR24 rule over the label's
range; ours over the label's range; ours with no range, ended by the stop rule), each with DSC and NSD (2 mm), and
the filled-box baselines.  Prints markdown.
"""

from __future__ import annotations

import argparse

import numpy as np

from common import engine, open_case, real_cases
from MedSAMSlicerLib.evaluation.evaluate import evaluate_2d, evaluate_3d

REFERENCE_2D = [0.946, 0.855, 0.913, 0.673, 0.842, 0.484, 0.903, 0.942, 0.886, 0.674, 0.675]
REFERENCE_OFFICIAL_3D = [0.923, 0.811, 0.936, 0.654, 0.786, 0.387, 0.895, 0.944, 0.323, 0.494, 0.692]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    segmenter, cache = engine(args.cache_dir)
    rows = []
    for case, ref2d, ref3d in zip(real_cases(), REFERENCE_2D, REFERENCE_OFFICIAL_3D):
        session, target = open_case(case, segmenter, cache)
        two_d = evaluate_2d(session, target)
        official = evaluate_3d(session, target, "official", "label")
        ours = evaluate_3d(session, target, "ours", "label")
        stop = evaluate_3d(session, target, "ours", "stop")
        two_keys = evaluate_3d(session, target, "ours", "stop", keys=2)
        rows.append((case.name, ref2d, ref3d, two_d, official, ours, stop, two_keys))
        print(f"done {case.name}", flush=True)

    print("\n| case | slices | 2D DSC (reference) | 2D NSD | filled box | 3D box | official 3D (reference) | "
          "ours, label range | ours, stop rule (slices) | ours, 2 key boxes, stop rule |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ref2d, ref3d, two_d, official, ours, stop, two_keys in rows:
        print(f"| {name} | {two_d.labelled_slices} | {two_d.dsc:.3f} ({ref2d:.3f}) | {two_d.nsd:.3f} | "
              f"{two_d.box_baseline_dsc:.3f} | {two_d.box3d_baseline_dsc:.3f} | {official.dsc:.3f} ({ref3d:.3f}) | "
              f"{ours.dsc:.3f} | {stop.dsc:.3f} ({stop.segmented_slices}) | {two_keys.dsc:.3f} |")
    means = [np.mean([getattr(r[i], "dsc") for r in rows]) for i in (3, 4, 5, 6, 7)]
    baseline = np.mean([r[3].box_baseline_dsc for r in rows])
    baseline3d = np.mean([r[3].box3d_baseline_dsc for r in rows])
    print(f"| **mean** | | {means[0]:.3f} | | {baseline:.3f} | {baseline3d:.3f} | {means[1]:.3f} | {means[2]:.3f} | "
          f"{means[3]:.3f} | {means[4]:.3f} |")
    print("\n3D NSD (2 mm): official / ours label / ours stop")
    for name, _, _, _, official, ours, stop, _ in rows:
        print(f"{name:32s} {official.nsd:.3f} {ours.nsd:.3f} {stop.nsd:.3f}  stopped: {stop.details['stopped']}")


if __name__ == "__main__":
    main()
