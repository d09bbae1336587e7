"""``segment|eval --server URL``: the same commands, with the model work done by an engine server.

:class:`RemoteSession` stands in for :class:`~MedSAMSlicerLib.engine.session.VolumeSession` where the commands and
the evaluation code use one (geometry, ``segment_slice``, ``empty_mask``, encoder counters) and adds ``propagate``.
The volume is read and the label written here, with the same code as in-process, so the output files are
byte-identical; only pixels and geometry travel to the server (no file names, no patient data).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import numpy as np

from ..client import EngineClient, read_token_file
from ..errors import Cancelled, OptionError
from ..protocol import Box, PropagationResult, SessionSpec, SliceResult

log = logging.getLogger("MedSAMSlicerLib")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine server")
    group.add_argument("--server", metavar="URL", help="run the model work on this engine server "
                                                       "(medsam-slicer serve), e.g. http://127.0.0.1:8765")
    group.add_argument("--token-file", help="the server's token (default: the file `serve` wrote for the URL's "
                                            "port, ~/.config/medsam-slicer/server-PORT.token)")


@dataclass
class _Window:
    text: str

    def describe(self) -> str:
        return self.text


class _Encoder:
    def __init__(self, remote) -> None:
        self.remote = remote

    @property
    def calls(self) -> int:
        """Encoder calls the server made for this volume (shared by every session on it)."""
        return int(self.remote.info()["encoder_calls"])


class _Segmenter:
    def __init__(self, remote) -> None:
        self.encoder = _Encoder(remote)


class RemoteSession:
    remote = True

    def __init__(self, client: EngineClient, volume, window: str, axis: str) -> None:
        self.client = client
        self.volume = volume
        self.handle = client.open_spec(volume.array, SessionSpec.of_volume(volume, window, axis))
        self.np_axis = self.handle.np_axis
        self.axis_name = self.handle.axis_name
        self.window = _Window(self.handle.window)
        self.window_reason = self.handle.window_reason
        self.segmenter = _Segmenter(self.handle)

    @property
    def slice_count(self) -> int:
        return self.handle.slice_count

    @property
    def slice_shape(self) -> tuple[int, int]:
        return self.handle.slice_shape

    def empty_mask(self) -> np.ndarray:
        return np.zeros(self.volume.array.shape, dtype=bool)

    def segment_slice(self, index: int, box: Box, allow_degenerate: bool = False) -> SliceResult:
        mask, score = self.handle.segment_slice(index, box, allow_degenerate=allow_degenerate)
        return SliceResult(index, mask, score, box)

    def propagate(self, key_boxes: dict, options, progress=None) -> PropagationResult:
        from ..engine.settings import propagation_settings  # here, not at the top: `--help` must not load torch

        job = self.handle.propagate(key_boxes, propagation_settings(options))
        try:
            result = job.result(progress)
        except KeyboardInterrupt:
            job.cancel()
            raise Cancelled("propagation cancelled by the user; nothing was written") from None
        return PropagationResult(result["mask"], result["segmented_slices"], result["stopped"], result["scores"])

    def describe(self) -> dict:
        info = self.client.info()
        return {"server": self.client.url, "model": info.get("model"), "device": info.get("device"),
                "backend": info.get("backend"), "window": self.window.describe(),
                "window_reason": self.window_reason, "axis": self.axis_name, "slice_axis": "kji"[self.np_axis]}


def connect(args: argparse.Namespace) -> EngineClient:
    from ..server.auth import default_token_file

    token_file = args.token_file or default_token_file(args.server)
    client = EngineClient(args.server, read_token_file(token_file))
    client.wait_ready()
    model = client.info().get("model")
    if args.model != model:
        raise OptionError(f"the server at {args.server} runs {model}, not {args.model}; drop --model or start a "
                          f"server with --model {args.model}")
    for name in ("checkpoint", "cache_dir"):
        if getattr(args, name, None):
            log.warning("--%s is the server's choice with --server; ignored", name.replace("_", "-"))
    return client


def open_remote_session(args: argparse.Namespace, image_path: str, volume=None) -> RemoteSession:
    from ..volumeio.files import read_volume

    volume = read_volume(image_path) if volume is None else volume  # only voxels and geometry go to the server
    session = RemoteSession(connect(args), volume, args.window, args.axis)
    log.info("engine server %s; window %s (%s)", args.server, session.window.describe(), session.window_reason)
    return session
