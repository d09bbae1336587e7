"""``medsam-slicer demo``: the main job on a real scan that installs with our dependencies (see
:mod:`MedSAMSlicerLib.evaluation.demo_case`): one box, propagated with our rule, written as a Slicer ``.seg.nrrd``
and a NIfTI label with its provenance sidecar (as ``segment`` writes them), scored against the shipped segmentation.
"""

from __future__ import annotations

import argparse
import time

from ..paths import check_output_folder
from .dicom_io import provenance_of
from .options import ProgressBar, add_model_options, describe_run, make_session

DEMO_OUTPUTS = ("right_lung.seg.nrrd", "right_lung.nii.gz", "right_lung.json")  # the last: the NIfTI's sidecar


def add_parser(commands) -> argparse.ArgumentParser:
    demo = commands.add_parser("demo", help="segment the right lung of the chest CT shipped with slicerio")
    demo.add_argument("--out", default="medsam-demo", help="output folder (default: ./medsam-demo)")
    demo.add_argument("--json", action="store_true")
    add_model_options(demo)
    return demo


def run_demo(args: argparse.Namespace) -> dict:
    from ..engine.propagation import PropagationOptions, propagate
    from ..evaluation.demo_case import DEMO_SEGMENT, DEMO_WINDOW, demo_files, demo_reference
    from ..evaluation.evaluate import official_key, score
    from ..volumeio.files import write_label

    image_path, segmentation_path = demo_files()
    out = check_output_folder(args.out, DEMO_OUTPUTS, [image_path, segmentation_path])  # before any model work
    if args.window == "auto":
        args.window = DEMO_WINDOW
    session = make_session(args, str(image_path))
    reference = demo_reference(segmentation_path)
    key, box = official_key(reference, session.np_axis)
    start = time.perf_counter()
    bar = ProgressBar("propagating")
    try:
        result = propagate(session, {key: box}, PropagationOptions(rule="ours"), progress=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    dsc, nsd = score(result.mask, reference, session.volume.spacing_zyx, 2.0)
    summary = {"image": str(image_path), **describe_run(session), "segment": DEMO_SEGMENT, "key_slice": key,
               "box": str(box)}
    # the model, its weights' sha256 and the prompt, recorded as segment records a propagation
    provenance = provenance_of(session, {**summary, "mode": "3d", "rule": "ours", "key_boxes": {key: str(box)}})
    written = [write_label(out / DEMO_OUTPUTS[0], result.mask, session.volume, "right lung", provenance=provenance),
               write_label(out / DEMO_OUTPUTS[1], result.mask, session.volume, provenance=provenance),
               out / DEMO_OUTPUTS[2]]
    return {**summary, "dsc": round(dsc, 4), "nsd_2mm": round(nsd, 4),
            "segmented_slices": result.segmented_slices, "stopped": result.stopped,
            "encoder_calls": session.segmenter.encoder.calls, "seconds": round(seconds, 1),
            "written": [str(p) for p in written]}
