"""Requests per second and p95 latency of the single-node server and of ``serve --ray`` with 1 and 2 replicas.

    .venv/bin/python bench/scale_out.py [--readers 8] [--requests 25] [--device cpu] [--replica-cpus 1]

Each configuration is started as a real process on loopback (Ray: a local cluster), then ``--readers`` clients at
once, each on one of 4 volumes (real CT lesion slices, already windowed), send ``--requests`` box prompts with
jittered boxes.  Every slice is embedded once beforehand, so the figures are re-prompts (decoder) plus the serving
path: HTTP, and for Ray the proxy, the ingress and the routed call to the replica holding the volume.  On a machine
with few cores no speed-up is expected from a second replica; the ratio to the single-node server is the price of
the routing.  Every mask is checked against the single-node server's.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time

import numpy as np

import common  # first: puts the engine on sys.path
from MedSAMSlicerLib.client import EngineClient

BASE = (207.0, 175.0, 249.0, 235.0)  # the lesion of CT_Lesion_000009 on its slices 3..9


def volumes() -> list[np.ndarray]:
    case = common.SHARED_DATA / "medsam2_recist" / "CT_Lesion_000009_03_01_036-048.npz"
    with np.load(case) as data:
        imgs = np.ascontiguousarray(data["imgs"])
    return [np.ascontiguousarray(imgs[k:k + 1]) for k in (4, 5, 6, 7)]  # 4 contents, one 512x512 slice each


def run(client: EngineClient, arrays: list[np.ndarray], readers: int, requests: int, reference: dict | None):
    boxes = [tuple(float(v + d) for v, d in zip(BASE, np.random.default_rng(n).integers(-4, 5, size=4)))
             for n in range(requests)]
    opened = [client.open_volume(a, already_normalized=True) for a in arrays]
    for remote in opened:
        remote.segment_slice(0, BASE)  # embed once (the cost measured below is the serving path)
    latencies, masks, errors = [], {}, []

    def read(reader: int) -> None:
        mine = EngineClient(client.url, client.token)
        try:
            remote = mine.open_volume(arrays[reader % len(arrays)], already_normalized=True)
            for n, box in enumerate(boxes):
                start = time.perf_counter()
                mask, _ = remote.segment_slice(0, box)
                latencies.append(time.perf_counter() - start)
                masks[(reader % len(arrays), n)] = mask
        except Exception as error:
            errors.append(str(error))

    threads = [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"errors: {errors[:3]}")
    if reference is not None:
        assert all(np.array_equal(m, reference[k]) for k, m in masks.items()), "masks differ from single-node"
    return len(latencies) / wall, float(np.percentile(np.asarray(latencies) * 1000, 95)), masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replica-cpus", default="1")
    args = parser.parse_args()
    arrays = volumes()
    configurations = [("single-node serve", ())]
    for replicas in (1, 2):
        configurations.append((f"serve --ray, {replicas} replica{'s' if replicas > 1 else ''}",
                               ("--ray", "--replicas", str(replicas), "--replica-cpus", args.replica_cpus,
                                "--object-store-mb", "200")))
    reference, rows = None, []
    for name, extra in configurations:
        client = EngineClient.start_local(args=("--device", args.device, *extra), startup_timeout=600)
        try:
            client.wait_ready()
            rate, p95, masks = run(client, arrays, args.readers, args.requests, reference)
            reference = reference or masks
        finally:
            client.process.terminate()
            try:
                client.process.wait(90)
            except subprocess.TimeoutExpired:
                client.process.kill()
        rows.append((name, rate, p95))
        print(f"{name:28s} {rate:7.1f} requests/s   p95 {p95:7.1f} ms", flush=True)
    base_rate, base_p95 = rows[0][1], rows[0][2]
    for name, rate, p95 in rows[1:]:
        print(f"{name:28s} {rate / base_rate:5.2f}x the single-node rate, p95 {p95 / base_p95:5.2f}x")
    print(f"({args.readers} readers x {args.requests} re-prompts on 4 volumes, {args.device})")


if __name__ == "__main__":
    main()
