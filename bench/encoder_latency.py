"""Encoder and decoder latency per model and backend, median of repeats, measured side by side in one run.

    .venv/bin/python bench/encoder_latency.py [--repeats 7] [--medsam PATH] [--sam-vit-b PATH]

Uses slice 17 of slicerio's CTChest4.nrrd.  For ONNX Runtime and OpenVINO it also times the runtime alone on the
same prepared input, so that any cost the project's own path adds shows as a difference.  ``bench/runtimes.py`` is
the fuller comparison (propagation, DSC, start-up).  Prints medians and the ratios between backends; the ratios are
the figures to quote (this machine is noisy; absolute times drift between runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from MedSAMSlicerLib.engine.backends import make_segmenter
from MedSAMSlicerLib.protocol import Box
from MedSAMSlicerLib.evaluation.demo_case import demo_files
from MedSAMSlicerLib.engine.intensity import normalize_volume, parse_window
from MedSAMSlicerLib.volumeio.files import read_volume


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_median_seconds(first, second, repeats: int) -> tuple[float, float]:
    """Medians of two pieces of work timed in turns, so that drift in the machine's load hits both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for work, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            work()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--medsam", help="medsam_vit_b.pth, to include MedSAM ViT-B")
    parser.add_argument("--sam-vit-b", help="sam_vit_b_01ec64.pth, to include SAM ViT-B")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    image_path, _ = demo_files()
    plane = normalize_volume(read_volume(image_path).array, parse_window("soft_tissue"))[17]
    box = Box(30, 40, 90, 100)
    models = [("litemedsam", None)]
    if args.medsam:
        models.append(("medsam", args.medsam))
    if args.sam_vit_b:
        models.append(("sam_vit_b", args.sam_vit_b))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"median of {args.repeats}")
    for name, checkpoint in models:
        results = {}
        for backend in ("pytorch", "onnx", "openvino"):
            if backend != "pytorch" and args.device != "cpu":
                continue
            segmenter = make_segmenter(name, checkpoint, args.device, backend)
            embedding = segmenter.embed(plane)
            encoder = median_seconds(lambda: segmenter.embed(plane), args.repeats)
            decoder = median_seconds(lambda: segmenter.predict(embedding, box), args.repeats * 3)
            results[backend] = (encoder, decoder)
            print(f"{name:12s} {segmenter.backend_name:12s} encoder {encoder * 1000:8.1f} ms   "
                  f"prompt encoder + decoder {decoder * 1000:6.1f} ms")
            if segmenter.runtime is not None:
                # The runtime alone on the same prepared input: what the project's path (preprocessing, the
                # request's lock, the copies into and out of torch) adds on top of the runtime it calls.
                prepared = segmenter.pipeline.image_tensor(plane)[0].numpy()
                path, alone = paired_median_seconds(lambda: segmenter.embed(plane),
                                                    lambda: segmenter.runtime.encode(prepared), args.repeats)
                print(f"{name:12s} {segmenter.backend_name:12s} in turns: project path {path * 1000:8.1f} ms, "
                      f"runtime alone {alone * 1000:8.1f} ms: the path adds {(path - alone) * 1000:+.1f} ms "
                      f"({path / alone:.3f}x)")
        for backend in ("onnx", "openvino"):
            if backend in results:
                print(f"{name:12s} encoder speed-up {backend} / pytorch: "
                      f"{results['pytorch'][0] / results[backend][0]:.2f}x")


if __name__ == "__main__":
    main()
