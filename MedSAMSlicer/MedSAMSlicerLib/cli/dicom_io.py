"""The CLI's DICOM and PACS options: ``--series``, ``--out NAME.dcm``, ``--out-dicom FOLDER``, ``--store``,
``--pacs-credentials``, ``--pacs-timeout``, ``--label``; opening the input (a file, a DICOM folder or a
``dicomweb://`` series) and writing every output with its provenance.  The work is in :mod:`..volumeio` and
:mod:`..pacs`; this module only wires options to it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import OptionError


def add_dicom_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DICOM and PACS")
    group.add_argument("--series", metavar="UID", help="the series to read when the DICOM folder holds several")
    group.add_argument("--out-dicom", metavar="FOLDER", help="also write the mask as DICOM SEG into this folder "
                                                             "(DICOM input only)")
    group.add_argument("--store", action="store_true", help="store the DICOM SEG in the PACS the series came from "
                                                            "(STOW-RS; dicomweb:// input only)")
    group.add_argument("--label", default="MedSAM", help="the segment's name (default: MedSAM)")
    group.add_argument("--pacs-credentials", metavar="FILE", help="file with user:password for the PACS (else "
                                                                  "MEDSAM_PACS_USER and MEDSAM_PACS_PASSWORD)")
    group.add_argument("--pacs-timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for each PACS answer (default 30)")


def check_outputs(args: argparse.Namespace) -> list[Path]:
    """Refuse impossible combinations before any model or PACS work."""
    from ..pacs.dicomweb import is_dicomweb
    from ..paths import check_output_file, check_output_folder
    from ..volumeio.provenance import sidecar_path
    from ..volumeio.dicomseg import is_dicom_output
    from ..volumeio.files import check_label_output

    remote = is_dicomweb(args.image)
    if args.store and not remote:
        raise OptionError("--store sends the DICOM SEG back to the PACS the series came from; give the image as "
                          "dicomweb://HOST:PORT/dicom-web/studies/<study>/series/<series>")
    if not (args.pacs_timeout > 0):
        raise OptionError("--pacs-timeout must be more than 0 seconds")
    inputs = [] if remote else [args.image]
    if (is_dicom_output(args.out) or args.out_dicom) and not remote:
        from ..volumeio.dicom import looks_like_dicom
        from ..volumeio.dicomseg import check_seg_source

        if not looks_like_dicom(args.image):  # a NIfTI/NRRD input: refused before the model runs
            from ..protocol import Volume

            check_seg_source(Volume(None, (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), args.image),
                             args.out if is_dicom_output(args.out) else args.out_dicom)
    if is_dicom_output(args.out):
        check_output_file(args.out, inputs)
    else:
        check_label_output(args.out, inputs)
        if not args.out.endswith(".seg.nrrd"):
            check_output_file(sidecar_path(args.out), inputs, what="--out's provenance sidecar")
    if args.out_dicom:
        check_output_folder(args.out_dicom, [], inputs, what="--out-dicom")
    if not remote and os.path.isdir(args.image):  # a file added to the series folder changes the user's input
        folder = os.path.realpath(args.image)
        for option, target in (("--out", args.out), ("--out-dicom", args.out_dicom)):
            where = os.path.realpath(target if option == "--out-dicom" else os.path.dirname(os.path.abspath(target))) \
                if target else ""
            if where and (where == folder or where.startswith(folder.rstrip(os.sep) + os.sep)):
                raise OptionError(f"{option} {target} is inside the DICOM folder {args.image}; write outside it (the "
                                  f"input folder is never changed)")
    return inputs


def open_input(args: argparse.Namespace):
    """(volume, pacs or None, address or None): reads a file or folder, or fetches a dicomweb:// series; a DICOM
    SEG output the volume cannot have is refused here, before the model loads."""
    from ..pacs.dicomweb import is_dicomweb, open_address
    from ..volumeio.dicomseg import check_seg_source, is_dicom_output

    pacs = address = None
    if not is_dicomweb(args.image):
        from ..volumeio.files import read_volume

        volume = read_volume(args.image, args.series)
    else:
        pacs, address = open_address(args.image, args.pacs_credentials, args.pacs_timeout)
        if args.series and args.series != address.series:
            raise OptionError(f"--series {args.series} differs from the series in the address ({address.series})")
        volume = pacs.open_series(address.study, address.series, f"series {address.series}")
    if is_dicom_output(args.out) or args.out_dicom or args.store:
        check_seg_source(volume, args.out if is_dicom_output(args.out) else args.out_dicom or "the PACS")
    return volume, pacs, address


def provenance_of(session, summary: dict):
    from ..volumeio.provenance import Provenance

    if getattr(session, "remote", False):
        info = session.client.info()
        model, sha = info.get("model") or "unknown", info.get("checkpoint_sha256") or "unknown"
    else:
        model, sha = session.segmenter.model.name, session.segmenter.model.checkpoint.sha256
    prompts = {key: summary[key] for key in ("mode", "slice", "box", "key_boxes", "rule", "axis") if key in summary}
    return Provenance(model=model, weights_sha256=sha, prompts=prompts)


def write_outputs(args: argparse.Namespace, mask, volume, provenance, pacs=None) -> dict:
    """Write --out (label + provenance, or DICOM SEG), --out-dicom and --store; returns what was written."""
    from ..volumeio.dicomseg import check_seg_source, is_dicom_output, seg_file_name, write_dicom_seg
    from ..volumeio.files import write_label

    inputs = [] if pacs is not None else [args.image]
    written: dict = {}
    wants_seg = is_dicom_output(args.out) or args.out_dicom or args.store
    if wants_seg:
        check_seg_source(volume, args.out if is_dicom_output(args.out) else args.out_dicom or "the PACS")
    if is_dicom_output(args.out):
        seg_path = write_dicom_seg(args.out, mask, volume, provenance, args.label, inputs)
    else:
        written["out"] = str(write_label(args.out, mask, volume, args.label, provenance=provenance))
        seg_path = None
    if args.out_dicom:
        seg_path = write_dicom_seg(Path(args.out_dicom) / seg_file_name(volume), mask, volume, provenance,
                                   args.label, inputs)
        written["out_dicom"] = str(seg_path)
    if seg_path is not None and "out" not in written:
        written["out"] = str(seg_path)
    if args.store:
        if seg_path is not None:
            pacs.store_file(seg_path)
        else:
            from ..volumeio.dicomseg import checked_seg

            pacs.store(checked_seg(mask, volume, provenance, args.label))
        written["stored"] = f"{pacs.where.removeprefix('the ')}, study {volume.source.study_uid}"
    return written
