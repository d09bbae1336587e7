"""Re-prompt latency (decoder only) through the engine server vs in-process, p50/p95, in one run.

    .venv/bin/python bench/server_overhead.py [--repeats 60] [--device cpu]

One 512x512 slice of a real CT lesion (../shared/data/medsam2_recist), embedded once on both sides; then the same
sequence of jittered boxes is sent alternately in-process (``VolumeSession.segment_slice``) and through a local
server on loopback (``RemoteVolume.segment_slice``: HTTP + JSON + packed-bit mask).  Alternating keeps both sides
under the same machine load.  The overhead is server p50 - in-process p50 (goal: <= 15 ms).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import common  # first: puts the engine on sys.path
from MedSAMSlicerLib.client import EngineClient
from MedSAMSlicerLib.engine.session import VolumeSession
from MedSAMSlicerLib.protocol import Box, Volume


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    case = common.SHARED_DATA / "medsam2_recist" / "CT_Lesion_000009_03_01_036-048.npz"
    with np.load(case) as data:
        image = np.ascontiguousarray(data["imgs"][6:7])  # one 512x512 slice, already windowed
    base = (207.0, 175.0, 249.0, 235.0)
    rng = np.random.default_rng(0)
    boxes = [tuple(v + d for v, d in zip(base, rng.integers(-4, 5, size=4))) for _ in range(args.repeats)]

    segmenter, cache = common.engine()
    local = VolumeSession(segmenter, Volume(image, (1, 1, 5), (0, 0, 0), tuple(np.eye(3).ravel()),
                                            already_normalized=True), "auto", "axial", cache)
    client = EngineClient.start_local(args=("--device", args.device))
    try:
        client.wait_ready()
        remote = client.open_volume(image, (1, 1, 5), already_normalized=True)
        local.segment_slice(0, Box(*base))  # embeds (both sides), warms kernels
        remote.segment_slice(0, base)
        in_process, served = [], []
        for box in boxes:
            start = time.perf_counter()
            expected = local.segment_slice(0, Box(*box)).mask
            in_process.append(time.perf_counter() - start)
            start = time.perf_counter()
            mask, _ = remote.segment_slice(0, box)
            served.append(time.perf_counter() - start)
            assert np.array_equal(mask, expected), "server and in-process masks differ"
        info = client.info()
    finally:
        client.stop()
    result = {"slice": "512x512", "repeats": args.repeats, "device": info["device"], "backend": info["backend"],
              "in_process_ms": {"p50": round(percentile(in_process, 50), 1), "p95": round(percentile(in_process, 95), 1)},
              "server_ms": {"p50": round(percentile(served, 50), 1), "p95": round(percentile(served, 95), 1)},
              "overhead_p50_ms": round(percentile(served, 50) - percentile(in_process, 50), 1),
              "overhead_p95_ms": round(percentile(served, 95) - percentile(in_process, 95), 1),
              "server_encoder_calls": info["encoder_calls"]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
