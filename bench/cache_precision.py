"""What storing embeddings as float16 does to the masks (the cache's --fp16-cache option).

    .venv/bin/python bench/cache_precision.py [--cache-dir .cache/embeddings]

For every labelled slice of every real case: the mask from the float32 embedding and from the same embedding
rounded to float16, with the tight ground-truth box.  Prints changed pixels, Dice between the two masks, and the
change in Dice against the label.
"""

from __future__ import annotations

import argparse

import numpy as np

from common import engine, open_case, real_cases
from MedSAMSlicerLib.protocol import box_from_mask
from MedSAMSlicerLib.evaluation.evaluate import labelled_slices
from MedSAMSlicerLib.evaluation.metrics import dice
from MedSAMSlicerLib.engine.predictor import SliceEmbedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    segmenter, cache = engine(args.cache_dir)
    changed, pixels, agreement, delta = 0, 0, [], []
    for case in real_cases():
        session, target = open_case(case, segmenter, cache)
        label = target.mask
        for index in labelled_slices(label, 0):
            embedding = session.embedding(int(index))
            half = SliceEmbedding(embedding.features.half().float(), embedding.geometry)
            box = box_from_mask(label[index])
            full_mask, _ = segmenter.predict(embedding, box)
            half_mask, _ = segmenter.predict(half, box)
            changed += int(np.count_nonzero(full_mask != half_mask))
            pixels += int(full_mask.sum())
            agreement.append(dice(full_mask, half_mask))
            delta.append(dice(half_mask, label[index]) - dice(full_mask, label[index]))
        print(f"{case.name:32s} slices so far {len(agreement):4d}", flush=True)
    print(f"slices: {len(agreement)}; pixels changed: {changed} of {pixels} foreground "
          f"({100 * changed / max(pixels, 1):.3f} %)")
    print(f"Dice(fp32 mask, fp16 mask): min {min(agreement):.4f}, mean {np.mean(agreement):.5f}")
    print(f"change of per-slice Dice vs label: mean {np.mean(delta):+.5f}, worst {min(delta):+.4f}")


if __name__ == "__main__":
    main()
