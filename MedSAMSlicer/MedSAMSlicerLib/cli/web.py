"""``medsam-slicer web``: the annotation app in a web browser (trame-slicer; ``MedSAMSlicerWeb``).

The model work goes to an engine server: ``--server URL`` (a ward's shared engine) or, without it, a private local
engine child started here.  Without an image the demo chest CT is loaded.  Needs ``pip install medsam-slicer[web]``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import OptionError


def add_parser(commands) -> argparse.ArgumentParser:
    web = commands.add_parser("web", help="the annotation app in a web browser (trame-slicer)")
    web.add_argument("images", nargs="*", metavar="IMAGE", help="volumes to load (default: the demo chest CT)")
    web.add_argument("--server", metavar="URL", help="engine server to use (default: start a local one)")
    web.add_argument("--token-file", help="the server's token (default: the file `serve` wrote for the URL's port, "
                                          "~/.config/medsam-slicer/server-PORT.token)")
    web.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default 127.0.0.1; "
                                                          "anything else exposes the app: put it behind TLS)")
    web.add_argument("--port", type=int, default=8080, help="TCP port of the page (default 8080)")
    web.add_argument("--log-folder", help="time-log folder (JSON Lines, as the Slicer panel writes)")
    web.add_argument("--reader", default="anonymous", help="reader id written to the time log")
    web.add_argument("--out-folder", help="default folder for saved segmentations (default: log folder, else cwd)")
    web.add_argument("--device", default="cpu", help="device of the local engine (default cpu)")
    web.add_argument("--volume-rendering", action="store_true", help="volume rendering in 3D (slow without a GPU)")
    web.add_argument("--dicomweb", metavar="URL", help="a PACS's DICOMweb root (dicomweb://HOST:PORT/dicom-web): "
                                                      "list and open its series; Save stores a DICOM SEG there")
    web.add_argument("--pacs-credentials", metavar="FILE", help="file with user:password for the PACS (else "
                                                                "MEDSAM_PACS_USER and MEDSAM_PACS_PASSWORD)")
    web.add_argument("--pacs-timeout", type=float, default=30.0, metavar="S", help="seconds per PACS answer")
    return web


def run_web(args: argparse.Namespace) -> dict:
    from pathlib import Path

    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        raise OptionError("the web app needs trame-slicer: pip install 'medsam-slicer[web]'") from None
    images = list(args.images)
    for image in images:
        if not Path(image).is_file():
            raise OptionError(f"{image}: no such file")
    pacs = None
    if args.dicomweb:
        from ..pacs.dicomweb import Pacs, load_credentials

        pacs = Pacs(args.dicomweb, load_credentials(args.pacs_credentials), args.pacs_timeout)
    if not images and pacs is None:
        from ..evaluation.demo_case import demo_files

        images = [str(demo_files()[0])]
    engine = _engine(args)
    from MedSAMSlicerWeb.app import WebApp

    app = WebApp(engine, images, log_folder=args.log_folder, reader=args.reader, out_folder=args.out_folder,
                 volume_rendering=args.volume_rendering, pacs=pacs)
    print(f"http://{args.host}:{args.port}/", flush=True)
    try:
        app.start(host=args.host, port=args.port)
    finally:
        if args.server is None:
            engine.stop()
    return {"stopped": True}


def _engine(args: argparse.Namespace):
    from ..client import EngineClient, read_token_file

    if args.server:
        from ..server.auth import default_token_file  # stdlib only: no engine import

        return EngineClient(args.server, read_token_file(args.token_file or default_token_file(args.server)))
    print("medsam-slicer: starting a local engine...", file=sys.stderr, flush=True)
    return EngineClient.start_local(python=sys.executable, args=("--device", args.device))
