"""The app part of ``medsam-slicer web`` (the options are parsed in ``MedSAMSlicerLib.cli.web``): the options checked
before anything starts (a mistake is one line, exit 2), the engine started or reached, the page served.

Off loopback the page is a door into the server's files and scans: ``--host`` other than a loopback address refuses
to start without ``--reader-tokens`` (the login), and says so when there is no TLS (``--certfile/--keyfile``, or a
reverse proxy that terminates TLS in front of a loopback app).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedSAMSlicerLib.errors import OptionError


def run(args: argparse.Namespace) -> dict:
    """Check the options (one line, exit 2, before anything starts), start the engine (or reach ``--server``), serve
    the page until the process is stopped."""
    study = _study(args) if args.study else None
    images = list(args.images) + (_worklist(args.cases) if args.cases else [])
    if study is not None:
        images = [case.image for case in study.cases]
    for image in images:
        if not Path(image).is_file():
            raise OptionError(f"{image}: no such file")
    security = _security(args, images)
    pacs = None
    if args.dicomweb:
        from MedSAMSlicerLib.pacs.dicomweb import Pacs, load_credentials

        pacs = Pacs(args.dicomweb, load_credentials(args.pacs_credentials), args.pacs_timeout)
    if not images and pacs is None:
        from MedSAMSlicerLib.evaluation.demo_case import demo_files

        images = [str(demo_files()[0])]
    engine = _engine(args)
    from .app import WebApp

    app = WebApp(engine, images, log_folder=args.log_folder, reader=args.reader, out_folder=args.out_folder,
                 volume_rendering=args.volume_rendering, pacs=pacs, study=study, **security)
    scheme = "https" if security["ssl_context"] is not None else "http"
    print(f"{scheme}://{args.host}:{args.port}/", flush=True)
    try:
        app.start(host=args.host, port=args.port)
    finally:
        if args.server is None:
            engine.stop()
    return {"stopped": True}


def _study(args: argparse.Namespace):
    """``--study PLAN``: checked before anything starts (every scan here, case ids from the log folder's key)."""
    from MedSAMSlicerLib.study.arms import StudyMode
    from MedSAMSlicerLib.study.timelog import log_path

    if args.images or args.cases or args.dicomweb:
        raise OptionError("--study takes its cases from the plan: leave out IMAGE, --cases and --dicomweb")
    if not args.reader or not args.log_folder:
        raise OptionError("--study needs --reader (the reader's id in the logs) and --log-folder (the plan's --logs)")
    try:
        log_path(".", "check", args.reader, "manual")
    except ValueError as error:
        raise OptionError(f"--reader: {error}") from None
    return StudyMode.load(args.study, args.log_folder)


SCAN_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".nhdr")


def _worklist(where: str) -> list[str]:
    """The cases of ``--cases``: a folder's scans (labels and segmentations left out), or a list file's lines."""
    path = Path(where).expanduser()
    if path.is_dir():
        cases = sorted(str(p) for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SCAN_SUFFIXES)
                       and not p.name.lower().endswith(".seg.nrrd") and "label" not in p.name.lower())
    elif path.is_file():
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        cases = [str((path.parent / line).expanduser()) for line in lines if line and not line.startswith("#")]
    else:
        raise OptionError(f"--cases {where}: no such folder or list file")
    if not cases:
        raise OptionError(f"--cases {where}: no scans there")
    return cases


def _security(args: argparse.Namespace, images: list) -> dict:
    """The login, TLS and output folder, checked before anything starts (a mistake is one line, exit 2)."""
    from MedSAMSlicerLib.paths import check_output_folder

    from .security import Sessions, is_loopback, read_reader_tokens

    if not is_loopback(args.host) and not args.reader_tokens:
        raise OptionError(f"--host {args.host} serves the page to the network: give --reader-tokens FILE (one "
                          f"'READER TOKEN' line per reader) so that it asks for a login")
    if bool(args.certfile) != bool(args.keyfile):
        raise OptionError("give both --certfile and --keyfile (or neither)")
    if not 1 <= args.session_minutes <= 7 * 24 * 60:
        raise OptionError("--session-minutes must be between 1 and 10080 (a week)")
    ssl_context = None
    if args.certfile:
        import ssl

        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ssl_context.load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as error:
            raise OptionError(f"cannot use --certfile/--keyfile: {error}") from None
    elif not is_loopback(args.host):
        print(f"medsam-slicer: warning: --host {args.host} without --certfile/--keyfile: tokens and scans cross the "
              f"network in clear unless a TLS reverse proxy is in front (README, 'Browser app: login and TLS')",
              file=sys.stderr, flush=True)
    sessions = None
    tokens = read_reader_tokens(args.reader_tokens) if args.reader_tokens else None
    if tokens is not None:
        if args.reader is not None and args.reader not in {reader for reader, _ in tokens}:
            raise OptionError(f"--reader {args.reader} has no token in {args.reader_tokens}")
        sessions = Sessions(tokens, lifetime_s=args.session_minutes * 60.0)
    folder = args.out_folder or args.log_folder
    if folder:
        check_output_folder(Path(folder).expanduser(), [], [str(image) for image in images], what="--out-folder")
    return dict(sessions=sessions, ssl_context=ssl_context, owner=args.reader if tokens is not None else None)


def _engine(args: argparse.Namespace):
    from MedSAMSlicerLib.client import EngineClient, read_token_file

    if args.server:
        from MedSAMSlicerLib.server.auth import default_token_file  # stdlib only: no engine import

        return EngineClient(args.server, read_token_file(args.token_file or default_token_file(args.server)))
    print("medsam-slicer: starting a local engine...", file=sys.stderr, flush=True)
    return EngineClient.start_local(python=sys.executable, args=("--device", args.device))
