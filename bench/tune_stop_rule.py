"""Grid search of the propagation stop rule on the real cases (prints a table; nothing is timed).

This tunes on the same 11 cases the README reports, so the chosen rule is fitted to them: the README says so.
Embeddings come from the disk cache given by --cache-dir, so after the first run this takes decoder time only.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from common import engine, open_case, real_cases
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices, official_key
from MedSAMSlicerLib.evaluation.metrics import dice
from MedSAMSlicerLib.engine.propagation import PropagationOptions, StopRule, propagate
from MedSAMSlicerLib.engine.session import VolumeSession


def one_box_dsc(session: VolumeSession, target: np.ndarray, rule: str, mode: str, stop: StopRule | None) -> float:
    """Dice of a propagation from the official key box (DSC only: NSD would dominate the grid's run time)."""
    key, box = official_key(target, session.np_axis)
    present = labelled_slices(target, session.np_axis)
    slice_range = (int(present[0]), int(present[-1])) if mode == "label" else None
    result = propagate(session, {key: box}, PropagationOptions(rule=rule, slice_range=slice_range, stop=stop))
    return dice(result.mask, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    args = parser.parse_args()
    segmenter, cache = engine(args.cache_dir)
    opened = []
    for case in real_cases():
        session, target = open_case(case, segmenter, cache)
        official = one_box_dsc(session, target.mask, "official", "label", None)
        opened.append((case.name, session, target.mask, official))
    grid = itertools.product([0.1, 0.25], [0.0, 0.3, 0.5], [0.0, 0.2, 0.4], [0.0, 2.5])
    rows = []
    for area, score, overlap, shift in grid:
        rule = StopRule(True, area, score, overlap, shift)
        per_mode = {}
        for mode in ("label", "stop"):
            dscs = [one_box_dsc(s, t, "ours", mode, rule) for _, s, t, _ in opened]
            per_mode[mode] = dscs
        worst_gap = min(d - o for d, (_, _, _, o) in zip(per_mode["label"], opened))
        rows.append((np.mean(per_mode["stop"]), np.mean(per_mode["label"]), worst_gap, rule, per_mode))
    rows.sort(key=lambda r: (r[2] >= -1e-9, r[0]), reverse=True)
    print("official (label range):", " ".join(f"{o:.3f}" for *_, o in opened))
    for stop_mean, label_mean, gap, rule, per_mode in rows[:15]:
        print(f"stop-mean {stop_mean:.3f} label-mean {label_mean:.3f} worst(label-official) {gap:+.3f} "
              f"area<{rule.min_area_ratio} score<{rule.min_score} overlap<{rule.min_overlap} "
              f"shift>{rule.max_intensity_shift} | stop: {' '.join(f'{d:.2f}' for d in per_mode['stop'])}")


if __name__ == "__main__":
    main()
