"""Every runtime side by side in one run: encoder, decoder, cold and warm 3D propagation, DSC, start-up.

    .venv/bin/python bench/runtimes.py [--cases N] [--repeats 5] [--runtimes pytorch,onnxruntime,openvino,...]
                                       [--official CHECKOUT [--official-python PY]] [--json OUT]

Runtimes (``--runtimes``, default all): ``pytorch``, ``onnxruntime``, ``openvino`` (exact, fp32), ``openvino-ahead``
(exact, encode-ahead forced on), ``openvino-fast`` (bf16 encoder).  Everything goes through the project's own code
path (``make_segmenter``, ``VolumeSession``, ``propagate``), on the real labelled cases of ../shared/data.

- encoder: ``Segmenter.embed`` per 512² CT slice (preprocessing included), median over slices and repeats;
- decoder: ``Segmenter.predict`` on a cached embedding (prompt encoder + mask decoder + mask back to the slice grid);
- cold 3D: the official rule (one box on the middle labelled slice, the label's slice range) from an empty cache;
  warm 3D: the same again on the filled cache; DSC 3D is the cold propagation's, DSC 2D a ground-truth box on every
  labelled slice (``eval --mode 2d``), computed on the embeddings the cold propagation left in the cache;
- start-up: a fresh process until ``make_segmenter`` returns (model ready, runtime compiled), best of 3, with the
  exported files already on disk (a warm disk cache).
The **yardstick** for "x times faster than the official script" is the ``pytorch`` row: our re-implementation of the
official rule with the PyTorch encoder and nothing cached, as ``bench/propagation.py`` runs it.  ``--official``
also runs the unmodified official ``CVPR24_LiteMedSAM_infer.py`` from a checkout you give (LiteMedSAM branch of
bowang-lab/MedSAM; the project ships none of its code) on the same cases, boxes and ranges, and reads its own
per-case timing (``efficiency.csv``: in-process, its overlay PNG included).  It needs pandas and matplotlib in
``--official-python`` (default: this interpreter).

Runtimes take turns case by case, so that load from other processes hits all of them alike; the load average is
printed at the start and the end.  On a shared or busy machine, quote ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, open_case, real_cases
from MedSAMSlicerLib.engine.backends import make_segmenter
from MedSAMSlicerLib.protocol import Box
from MedSAMSlicerLib.engine.cache import EmbeddingCache
from MedSAMSlicerLib.engine.propagation import PropagationOptions, propagate
from MedSAMSlicerLib.evaluation.evaluate import evaluate_2d, labelled_slices, official_key
from MedSAMSlicerLib.evaluation.metrics import dice

CONFIGS = {  # name: (backend, precision, encode-ahead)
    "pytorch": ("pytorch", "exact", "off"),
    "onnxruntime": ("onnx", "exact", "off"),
    "openvino": ("openvino", "exact", "off"),
    "openvino-ahead": ("openvino", "exact", "on"),
    "openvino-fast": ("openvino", "fast", "off"),
}
AHEAD_ENV = "MEDSAM_SLICER_ENCODE_AHEAD"
STARTUP = """
import sys, time
sys.path.insert(0, {root!r})
from MedSAMSlicerLib.engine.backends import make_segmenter
segmenter = make_segmenter("litemedsam", device="cpu", backend={backend!r}, precision={precision!r})
if segmenter.runtime is None or not segmenter.runtime.has_decoder:
    segmenter.model.net  # PyTorch runs the network: ready means read
print(segmenter.backend_name, segmenter.precision)
"""


def median_ms(work, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def startup_seconds(backend: str, precision: str, runs: int = 3) -> float:
    code = STARTUP.format(root=str(REPO / "MedSAMSlicer"), backend=backend, precision=precision)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"


def load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def propagate_case(segmenter, case, ahead: str) -> dict:
    os.environ[AHEAD_ENV] = ahead
    cache = EmbeddingCache()
    session, target = open_case(case, segmenter, cache)
    key, box = official_key(target.mask, session.np_axis)
    present = labelled_slices(target.mask, session.np_axis)
    options = PropagationOptions(rule="official", slice_range=(int(present[0]), int(present[-1])))
    calls = segmenter.encoder.calls
    start = time.perf_counter()
    cold = propagate(session, {key: box}, options)
    cold_s = time.perf_counter() - start
    encodes = segmenter.encoder.calls - calls
    start = time.perf_counter()
    propagate(session, {key: box}, options)
    warm_s = time.perf_counter() - start
    two_d = evaluate_2d(session, target)
    return {"cold_s": cold_s, "warm_s": warm_s, "slices": len(present), "encodes": encodes,
            "dsc3d": dice(cold.mask, target.mask), "dsc2d": two_d.dsc, "mask": cold.mask,
            "extra_encodes_2d": two_d.encoder_calls}


def official_run(checkout: Path, python: str, cases, segmenter) -> dict[str, dict]:
    """The unmodified official script on our cases: its per-case time and its masks' DSC."""
    script = checkout / "CVPR24_LiteMedSAM_infer.py"
    if not script.is_file():
        sys.exit(f"--official: {script} not found (give a checkout of the LiteMedSAM branch of bowang-lab/MedSAM)")
    inclusive = "z_max = min(z_max+1" in script.read_text()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="medsam-official-") as work:
        inputs, outputs, overlays = (Path(work) / name for name in ("imgs", "segs", "png"))
        inputs.mkdir()
        targets = {}
        for case in cases:
            session, target = open_case(case, segmenter, EmbeddingCache())
            image = np.moveaxis(session.image, session.np_axis, 0)  # the official script slices along axis 0
            mask = np.moveaxis(target.mask, session.np_axis, 0)
            present = labelled_slices(mask, 0)
            _, box = official_key(mask, 0)
            low, high = int(present[0]), int(present[-1])
            # The LiteMedSAM branch's loops include z_min and z_max; older copies (main branch) stop one slice
            # short at both ends.  Either way these bounds give the label's range and official_key's middle slice.
            pad = 0 if inclusive else 1
            boxes = np.array([[box.x0, box.y0, low - pad, box.x1, box.y1, high + pad]], dtype=np.int64)
            np.savez(inputs / f"3D_{case.name}.npz", imgs=image, spacing=np.array(case_spacing(session)),
                     boxes=boxes)
            targets[case.name] = (mask, session.np_axis)
        command = [python, str(script), "-i", str(inputs), "-o", str(outputs), "-lite_medsam_checkpoint_path",
                   str(segmenter.model.checkpoint.path), "-device", "cpu", "-png_save_dir", str(overlays)]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"--official: the official script failed:\n{done.stderr[-2000:]}")
        with (outputs / "efficiency.csv").open() as handle:
            for row in csv.DictReader(handle):
                name = row["case"][len("3D_"):-len(".npz")]
                mask, np_axis = targets[name]
                segs = np.load(outputs / row["case"])["segs"] > 0
                results[name] = {"seconds": float(row["time"]), "dsc3d": dice(segs, mask),
                                 "mask": np.moveaxis(segs, 0, np_axis)}
        results["_process_wall_s"] = {"seconds": wall}
    return results


def case_spacing(session) -> tuple[float, ...]:
    return tuple(float(v) for v in session.volume.spacing_zyx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=0, help="only the first N cases (0: all 11)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the encoder/decoder micro-benchmarks")
    parser.add_argument("--runtimes", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--official", type=Path, help="checkout of the official LiteMedSAM code, to time it too")
    parser.add_argument("--official-python", default=sys.executable, help="interpreter for the official script")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown runtime(s) {unknown}; choose from {', '.join(CONFIGS)}")
    print(f"machine: {machine()}; {load()} at the start")

    segmenters = {}
    for name in names:
        backend, precision, _ = CONFIGS[name]
        segmenters[name] = make_segmenter("litemedsam", device="cpu", backend=backend, precision=precision)
        print(f"  {name:15s} -> {segmenters[name].describe_backend()} ({segmenters[name].backend_reason})")

    # encoder and decoder, round-robin over real 512² CT slices
    cases = real_cases()[: args.cases or None]
    lung = next(c for c in real_cases() if c.name == "lung2")
    session, _ = open_case(lung, segmenters[names[0]], EmbeddingCache())
    planes = [session.image[i] for i in range(16, 24)]
    encoder_ms = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            if name.endswith("-ahead") and "openvino" in names:
                continue  # the same interactive path as openvino
            for plane in planes[:3]:
                start = time.perf_counter()
                segmenters[name].embed(plane)
                encoder_ms[name].append((time.perf_counter() - start) * 1000)
    decoder_ms = {}
    box = Box(300, 260, 380, 330)
    for name in names:
        embedding = segmenters[name].embed(planes[4])
        decoder_ms[name] = median_ms(lambda: segmenters[name].predict(embedding, box), args.repeats * 4)

    # propagation per case, runtimes taking turns
    per_case: dict[str, dict[str, dict]] = {}
    for case in cases:
        per_case[case.name] = {}
        for name in names:
            per_case[case.name][name] = propagate_case(segmenters[name], case, CONFIGS[name][2])
        row = "  ".join(f"{n} {r['cold_s']:.1f}s" for n, r in per_case[case.name].items())
        print(f"  {case.name[:32]:32s} {row}", flush=True)
    os.environ.pop(AHEAD_ENV, None)

    official = official_run(args.official, args.official_python, cases, segmenters[names[0]]) \
        if args.official else None
    startup = {} if args.no_startup else {n: startup_seconds(*CONFIGS[n][:2]) for n in names
                                          if not n.endswith("-ahead")}
    print(f"{load()} at the end")

    # -- tables ------------------------------------------------------------------------------------------------
    slices = sum(next(iter(r.values()))["slices"] for r in per_case.values())
    reference = "pytorch" if "pytorch" in names else None
    totals = {n: {k: sum(per_case[c][n][k] for c in per_case) for k in ("cold_s", "warm_s", "encodes")}
              for n in names}
    print(f"\nper runtime ({len(cases)} cases, {slices} labelled slices; official rule over the label's range):")
    print(f"| runtime | encoder ms/slice | decoder + mask ms | cold 3D s (ms/slice) | warm 3D s (ms/slice) | "
          f"DSC 3D | DSC 2D | start-up s | cold speed-up vs official rule (pytorch) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        t = totals[name]
        enc = f"{statistics.median(encoder_ms[name]):.0f}" if encoder_ms[name] else "= openvino"
        dsc3 = statistics.mean(per_case[c][name]["dsc3d"] for c in per_case)
        dsc2 = statistics.mean(per_case[c][name]["dsc2d"] for c in per_case)
        ratio = f"{totals[reference]['cold_s'] / t['cold_s']:.2f}x" if reference else "—"
        up = f"{startup[name]:.2f}" if name in startup else "—"
        print(f"| {name} | {enc} | {decoder_ms[name]:.1f} | {t['cold_s']:.1f} ({t['cold_s'] / slices * 1000:.0f}) | "
              f"{t['warm_s']:.2f} ({t['warm_s'] / slices * 1000:.0f}) | {dsc3:.4f} | {dsc2:.4f} | {up} | {ratio} |")
    if reference:
        print("\nmasks against the pytorch row (voxels that differ in the cold 3D propagation, all cases):")
        for name in names:
            changed = sum(int((per_case[c][name]["mask"] != per_case[c][reference]["mask"]).sum()) for c in per_case)
            print(f"  {name:15s} {changed} voxels")

    if "openvino" in names and "openvino-fast" in names:
        print("\nfast mode accuracy per case (DSC; 2D = ground-truth box on every labelled slice, 3D = official rule):")
        print("| case | slices | 2D exact | 2D fast | Δ | 3D exact | 3D fast | Δ |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        deltas2, deltas3 = [], []
        for case, rows in per_case.items():
            e, f = rows["openvino"], rows["openvino-fast"]
            deltas2.append(f["dsc2d"] - e["dsc2d"])
            deltas3.append(f["dsc3d"] - e["dsc3d"])
            print(f"| {case} | {e['slices']} | {e['dsc2d']:.4f} | {f['dsc2d']:.4f} | {deltas2[-1]:+.4f} | "
                  f"{e['dsc3d']:.4f} | {f['dsc3d']:.4f} | {deltas3[-1]:+.4f} |")
        print(f"| **mean** | | | | {statistics.mean(deltas2):+.4f} | | | {statistics.mean(deltas3):+.4f} |")
        print(f"worst case: 2D {min(deltas2):+.4f}, 3D {min(deltas3):+.4f}")

    if official:
        print("\nthe official script (unmodified, its own per-case time: in-process, overlay PNG included):")
        print("| case | official s | " + " | ".join(f"{n} s" for n in names) + " | official DSC | ours (pytorch) DSC |"
              + " voxels ≠ |")
        print("|---|---:|" + "---:|" * len(names) + "---:|---:|---:|")
        off_total = 0.0
        for case, rows in per_case.items():
            o = official[case]
            off_total += o["seconds"]
            ours = rows[reference or names[0]]
            print(f"| {case} | {o['seconds']:.2f} | " + " | ".join(f"{rows[n]['cold_s']:.2f}" for n in names)
                  + f" | {o['dsc3d']:.4f} | {ours['dsc3d']:.4f} | {int((o['mask'] != ours['mask']).sum())} |")
        print("| **total** | " + f"{off_total:.1f} | " + " | ".join(f"{totals[n]['cold_s']:.1f}" for n in names)
              + " | | | |")
        print("cold speed-up vs the official script: " + ", ".join(
            f"{n} {off_total / totals[n]['cold_s']:.2f}x" for n in names)
              + f"; its whole process took {official['_process_wall_s']['seconds']:.1f} s")

    if args.json:
        figures = {"machine": machine(), "encoder_ms": encoder_ms, "decoder_ms": decoder_ms, "startup_s": startup,
                   "per_case": {c: {n: {k: v for k, v in r.items() if k != "mask"} for n, r in rows.items()}
                                for c, rows in per_case.items()},
                   "official": {c: {k: v for k, v in r.items() if k != "mask"} for c, r in (official or {}).items()}}
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
