"""Options shared by the CLI's commands, and the objects they build: model, encoder runtime, cache, session.

Every command module (:mod:`.segment`, :mod:`.evaluate`, :mod:`.demo`, :mod:`.study`) imports from here and never
from another command, so the CLI has no import circles.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys

from ..errors import OptionError

log = logging.getLogger("MedSAMSlicerLib")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="litemedsam",
                       help="model name from model_weights/manifest.json (default: litemedsam)")
    group.add_argument("--checkpoint", help="checkpoint file (default: model_weights/, then the bundled LiteMedSAM)")
    group.add_argument("--checkpoint-sha256", help="expected sha256 of --checkpoint when the manifest has none")
    group.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    group.add_argument("--backend", default="auto", choices=("auto", "openvino", "onnx", "pytorch"),
                       help="network runtime; auto = OpenVINO on the CPU, else ONNX Runtime, else PyTorch (default)")
    group.add_argument("--precision", default="exact", choices=("exact", "fast"),
                       help="exact: fp32 (default); fast: bf16 image encoder in OpenVINO where the CPU has bf16 "
                            "(about 2x faster, DSC cost measured in the README)")
    group.add_argument("--window", default="auto",
                       help="auto, mr, none, a CT preset (soft_tissue, lung, bone, brain, mediastinum) or L,W")
    group.add_argument("--axis", default="axial", help="axial, coronal, sagittal, or the index axis k, j, i")
    group.add_argument("--cache-dir", help="keep embeddings on disk here between runs (default: "
                                           "$MEDSAM_SLICER_CACHE, else memory only)")
    group.add_argument("--fp16-cache", action="store_true", help="store cached embeddings as float16")


def add_propagation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("propagation")
    group.add_argument("--rule", default="ours", choices=("ours", "official"),
                       help="ours: key boxes + stop rule; official: the CVPR24 LiteMedSAM rule (default: ours)")
    group.add_argument("--largest-component", action="store_true", help="keep the largest 3D connected component")
    group.add_argument("--fill-holes", action="store_true", help="fill enclosed holes in 3D")
    group.add_argument("--no-stop", action="store_true", help="ours: run over the whole range, never stop early")


def finite_float(text: str) -> float:
    """argparse type: a finite number ("nan", "inf" and "1e999" are refused with one line)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type (and ``NAME=SECONDS`` values): a finite number of 0 or more."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


_INDEX = re.compile(r"^\s*-?[0-9]+\s*$")  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses


def parse_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(_INDEX.match(v) and len(v.strip()) <= 12 for v in parts):
        raise OptionError(f"--range {text!r} must be K0:K1 (two slice indices)")
    low, high = (int(v) for v in parts)
    return low, high


def parse_key_box(text: str):
    from ..protocol import parse_box

    index, sep, box = text.partition(":")
    if not sep or not _INDEX.match(index) or len(index.strip()) > 12:
        raise OptionError(f"--key-box {text!r} must be K:X0,Y0,X1,Y1")
    return int(index), parse_box(box)


def make_session(args: argparse.Namespace, image_path: str, volume=None):
    """Model, encoder backend, cache and windowed volume, from the shared options (or a server's, --server);
    ``volume``: already read (a DICOM series fetched from a PACS), else read from ``image_path``."""
    if getattr(args, "server", None):
        from .remote import open_remote_session

        return open_remote_session(args, image_path, volume)
    from ..engine.backends import make_segmenter
    from ..engine.cache import EmbeddingCache, default_disk_dir
    from ..engine.session import VolumeSession
    from ..volumeio.files import read_volume

    volume = read_volume(image_path) if volume is None else volume
    segmenter = make_segmenter(args.model, args.checkpoint, args.device, args.backend, args.checkpoint_sha256,
                               getattr(args, "precision", "exact"))
    cache = EmbeddingCache(store_fp16=args.fp16_cache, disk_dir=args.cache_dir or default_disk_dir())
    session = VolumeSession(segmenter, volume, args.window, args.axis, cache)
    log.info("%s; runtime %s (%s); window %s (%s)", segmenter.model.describe(), segmenter.describe_backend(),
             segmenter.backend_reason, session.window.describe(), session.window_reason)
    return session


def propagation_options(args: argparse.Namespace, slice_range=None):
    from ..engine.propagation import AUTO, PropagationOptions

    return PropagationOptions(rule=args.rule, slice_range=slice_range, stop=None if args.no_stop else AUTO,
                              largest_component=args.largest_component, fill_holes=args.fill_holes)


class ProgressBar:
    """A tqdm bar on stderr that appears with the first progress report, so early errors print alone."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit="slice", file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def describe_run(session) -> dict:
    if getattr(session, "remote", False):  # cli.remote.RemoteSession: the server describes its model
        return session.describe()
    segmenter = session.segmenter
    return {"model": segmenter.model.name, "checkpoint": str(segmenter.model.checkpoint.path),
            "checkpoint_verified": segmenter.model.checkpoint.verified, "device": str(segmenter.model.device),
            "device_reason": segmenter.model.device_choice.reason, "backend": segmenter.backend_name,
            "precision": segmenter.precision, "backend_reason": segmenter.backend_reason,
            "window": session.window.describe(), "window_reason": session.window_reason,
            "axis": session.axis_name, "slice_axis": "kji"[session.np_axis]}
