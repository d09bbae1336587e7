"""``medsam-slicer segment``: one structure from a box on one slice, on that slice or propagated in 3D."""

from __future__ import annotations

import argparse
import time

from ..errors import OptionError
from .dicom_io import add_dicom_options, check_outputs, open_input, provenance_of, write_outputs
from .remote import add_server_options
from .options import (ProgressBar, add_model_options, add_propagation_options, describe_run, make_session,
                      parse_key_box, parse_range, propagation_options)


def add_parser(commands) -> argparse.ArgumentParser:
    segment = commands.add_parser("segment", help="segment one structure from a box on one slice")
    segment.add_argument("image", help="3D image: NIfTI, NRRD, MHA, GIPL, MedSAM npz, a DICOM series folder, a "
                                       "multi-frame DICOM file, or dicomweb://HOST:PORT/dicom-web/studies/<study>/"
                                       "series/<series>")
    segment.add_argument("--box", help="X0,Y0,X1,Y1 in voxel indices of the slice (see README: Box coordinates)")
    segment.add_argument("--slice", type=int, help="index of the slice the box is drawn on, along --axis")
    segment.add_argument("--propagate", action="store_true", help="propagate to neighbouring slices (3D)")
    segment.add_argument("--range", dest="slice_range", help="K0:K1, inclusive slice range to propagate over")
    segment.add_argument("--key-box", action="append", default=[], metavar="K:X0,Y0,X1,Y1",
                         help="an extra key box on slice K (repeatable; implies --propagate)")
    segment.add_argument("--out", required=True, help="output label: .nii.gz, .nii, .nrrd, .seg.nrrd, .mha, .npz, "
                                                      "or .dcm (DICOM SEG; DICOM input only)")
    segment.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_options(segment)
    add_propagation_options(segment)
    add_server_options(segment)
    add_dicom_options(segment)
    return segment


def run_segment(args: argparse.Namespace) -> dict:
    from ..protocol.axes import put_slice
    from ..protocol import parse_box
    from ..engine.propagation import propagate

    key_boxes = {}
    for text in args.key_box:
        index, box = parse_key_box(text)
        if index in key_boxes:
            raise OptionError(f"--key-box {text!r}: slice {index} already has a key box; give one box per slice")
        key_boxes[index] = box
    if args.box is not None or args.slice is not None:
        if args.box is None or args.slice is None:
            raise OptionError("--box and --slice go together")
        if args.slice in key_boxes:
            raise OptionError(f"--key-box on slice {args.slice} repeats --slice {args.slice}, which has --box; give "
                              f"one box per slice")
        key_boxes[args.slice] = parse_box(args.box)
    if not key_boxes:
        raise OptionError("give --box X0,Y0,X1,Y1 and --slice K (or --key-box K:X0,Y0,X1,Y1)")
    slice_range = parse_range(args.slice_range)
    check_outputs(args)  # before any model or PACS work: never overwrite the scan, fail early
    volume, pacs, _ = open_input(args)
    session = make_session(args, args.image, volume)
    start = time.perf_counter()
    summary = {"image": args.image, **describe_run(session)}
    if args.propagate or args.key_box or slice_range:
        bar = ProgressBar("propagating")
        try:
            options = propagation_options(args, slice_range)
            result = (session.propagate(key_boxes, options, progress=bar) if getattr(session, "remote", False)
                      else propagate(session, key_boxes, options, progress=bar))
        finally:
            bar.close()
        mask = result.mask
        summary.update(mode="3d", rule=args.rule, segmented_slices=result.segmented_slices,
                       stopped=result.stopped, key_boxes={k: str(v) for k, v in key_boxes.items()})
    else:
        (index, box), = key_boxes.items()
        result = session.segment_slice(index, box)
        mask = session.empty_mask()
        put_slice(mask, session.np_axis, index, result.mask)
        summary.update(mode="2d", slice=index, box=str(result.box), predicted_iou=round(result.score, 4))
    summary.update(write_outputs(args, mask, session.volume, provenance_of(session, summary), pacs))
    summary.update(voxels=int(mask.sum()), encoder_calls=session.segmenter.encoder.calls,
                   seconds=round(time.perf_counter() - start, 2))
    return summary
