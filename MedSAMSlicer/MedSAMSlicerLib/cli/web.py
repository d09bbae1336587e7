"""``medsam-slicer web``: the annotation app in a web browser (trame-slicer; ``MedSAMSlicerWeb``).

The model work goes to an engine server: ``--server URL`` (a ward's shared engine) or, without it, a private local
engine child started here.  Without an image the demo chest CT is loaded.  Needs ``pip install medsam-slicer[web]``.

The options are parsed here; checking them, starting the engine and serving the page is the app's
(``MedSAMSlicerWeb.launch``), so that this stays a thin front door.
"""

from __future__ import annotations

import argparse

from ..errors import OptionError


def add_parser(commands) -> argparse.ArgumentParser:
    web = commands.add_parser("web", help="the annotation app in a web browser (trame-slicer)")
    web.add_argument("images", nargs="*", metavar="IMAGE", help="volumes to load (default: the demo chest CT)")
    cases = web.add_argument_group("cases")
    cases.add_argument("--cases", metavar="FOLDER|LIST", help="a worklist: the scans in FOLDER (sorted), or the "
                       "files a text file LIST names (one a line, relative to the list); the page's 'Next case' "
                       "opens the next one not done")
    cases.add_argument("--study", metavar="PLAN", help="study mode: the case list of `medsam-slicer study plan` "
                       "(needs --reader and --log-folder, the plan's --logs): the page opens the reader's cases in "
                       "the plan's order and arm, hides and refuses MedSAM in the manual arm, logs each case by itself")
    cases.add_argument("--dicomweb", metavar="URL", help="a PACS's DICOMweb root (dicomweb://HOST:PORT/dicom-web): "
                       "list and open its series; Save stores a DICOM SEG there")
    cases.add_argument("--pacs-credentials", metavar="FILE", help="file with user:password for the PACS (else "
                       "MEDSAM_PACS_USER and MEDSAM_PACS_PASSWORD)")
    cases.add_argument("--pacs-timeout", type=float, default=30.0, metavar="S", help="seconds per PACS answer")
    engine = web.add_argument_group("the engine")
    engine.add_argument("--server", metavar="URL", help="engine server to use (default: start a local one)")
    engine.add_argument("--token-file", help="the server's token (default: the file `serve` wrote for the URL's "
                        "port, ~/.config/medsam-slicer/server-PORT.token)")
    engine.add_argument("--device", default="cpu", help="device of the local engine (default cpu)")
    page = web.add_argument_group("the page: address, login, TLS")
    page.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default 127.0.0.1; any "
                      "other needs --reader-tokens, and TLS)")
    page.add_argument("--port", type=int, default=8080, help="TCP port of the page (default 8080)")
    page.add_argument("--reader-tokens", metavar="FILE", help="login: one 'READER TOKEN' line per reader (tokens "
                      "of 16+ characters, file mode 600); required when --host is not loopback")
    page.add_argument("--session-minutes", type=float, default=480.0, help="a login lasts this long (default 480)")
    page.add_argument("--certfile", help="TLS certificate (PEM) for https; with --keyfile")
    page.add_argument("--keyfile", help="TLS private key (PEM) for https; with --certfile")
    page.add_argument("--volume-rendering", action="store_true", help="volume rendering in 3D (slow without a GPU)")
    work = web.add_argument_group("the reader's work")
    work.add_argument("--reader", default=None, help="reader id written to the time log (with --reader-tokens: the "
                      "only reader who may log in; default: the first who does)")
    work.add_argument("--log-folder", help="time-log folder (JSON Lines, as the Slicer panel writes)")
    work.add_argument("--out-folder", help="the folder saved segmentations go to; the page only picks a file name "
                      "(default: the log folder; without either, saving is off)")
    return web


def run_web(args: argparse.Namespace) -> dict:
    import importlib.util

    if importlib.util.find_spec("trame_slicer") is None:
        raise OptionError("the web app needs trame-slicer: pip install 'medsam-slicer[web]'")
    from MedSAMSlicerWeb.launch import run

    return run(args)
