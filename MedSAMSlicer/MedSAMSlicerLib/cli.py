"""``medsam-slicer``: segment, evaluate, run the demo, report annotation-time studies.

Errors the user can fix print one line (``medsam-slicer: error: ...``) and exit with a non-zero code; only bugs
show a traceback.  With ``--json`` the result is one JSON object on stdout; progress bars and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import Cancelled, MedSAMError, OptionError

log = logging.getLogger("MedSAMSlicerLib")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="litemedsam",
                       help="model name from model_weights/manifest.json (default: litemedsam)")
    group.add_argument("--checkpoint", help="checkpoint file (default: model_weights/, then the bundled LiteMedSAM)")
    group.add_argument("--checkpoint-sha256", help="expected sha256 of --checkpoint when the manifest has none")
    group.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    group.add_argument("--backend", default="auto", choices=("auto", "pytorch", "onnx"),
                       help="image encoder runtime; auto = ONNX Runtime on CPU when available (default)")
    group.add_argument("--window", default="auto",
                       help="auto, mr, none, a CT preset (soft_tissue, lung, bone, brain, mediastinum) or L,W")
    group.add_argument("--axis", default="axial", help="axial, coronal, sagittal, or the index axis k, j, i")
    group.add_argument("--cache-dir", help="keep embeddings on disk here between runs (default: "
                                           "$MEDSAM_SLICER_CACHE, else memory only)")
    group.add_argument("--fp16-cache", action="store_true", help="store cached embeddings as float16")


def _add_propagation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("propagation")
    group.add_argument("--rule", default="ours", choices=("ours", "official"),
                       help="ours: key boxes + stop rule; official: the CVPR24 LiteMedSAM rule (default: ours)")
    group.add_argument("--largest-component", action="store_true", help="keep the largest 3D connected component")
    group.add_argument("--fill-holes", action="store_true", help="fill enclosed holes in 3D")
    group.add_argument("--no-stop", action="store_true", help="ours: run over the whole range, never stop early")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-slicer", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment one structure from a box on one slice")
    segment.add_argument("image", help="3D image: NIfTI, NRRD, MHA, GIPL or MedSAM npz")
    segment.add_argument("--box", help="X0,Y0,X1,Y1 in voxel indices of the slice (see README: Box coordinates)")
    segment.add_argument("--slice", type=int, help="index of the slice the box is drawn on, along --axis")
    segment.add_argument("--propagate", action="store_true", help="propagate to neighbouring slices (3D)")
    segment.add_argument("--range", dest="slice_range", help="K0:K1, inclusive slice range to propagate over")
    segment.add_argument("--key-box", action="append", default=[], metavar="K:X0,Y0,X1,Y1",
                         help="an extra key box on slice K (repeatable; implies --propagate)")
    segment.add_argument("--out", required=True, help="output label: .nii.gz, .nii, .nrrd, .seg.nrrd, .mha or .npz")
    segment.add_argument("--json", action="store_true", help="print one JSON object")
    _add_model_options(segment)
    _add_propagation_options(segment)

    evaluate = commands.add_parser("eval", help="score the model against a label with simulated boxes")
    evaluate.add_argument("image")
    evaluate.add_argument("label", nargs="?", help="label on the image grid (omit for npz with 'gts')")
    evaluate.add_argument("--label-value", type=int, help="evaluate this label value only (default: all > 0)")
    evaluate.add_argument("--split-components", action="store_true",
                          help="evaluate each 3D connected component of the label separately")
    evaluate.add_argument("--mode", default="2d", choices=("2d", "3d"))
    evaluate.add_argument("--range-mode", default="both", choices=("label", "stop", "both"),
                          help="3d: propagate over the label's extent, by the stop rule, or both (default)")
    evaluate.add_argument("--keys", type=int, default=1, help="3d: number of key boxes (default 1)")
    evaluate.add_argument("--jitter", type=int, default=0, help="2d: push box sides out by random 0..N voxels")
    evaluate.add_argument("--box-per-piece", action="store_true",
                          help="2d: one box per connected piece of the target on each slice")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    evaluate.add_argument("--json", action="store_true")
    _add_model_options(evaluate)
    _add_propagation_options(evaluate)

    demo = commands.add_parser("demo", help="segment the right lung of the chest CT shipped with slicerio")
    demo.add_argument("--out", default="medsam-demo", help="output folder (default: ./medsam-demo)")
    demo.add_argument("--json", action="store_true")
    _add_model_options(demo)

    from .study_cli import add_study_parser

    add_study_parser(commands)
    return parser


def _parse_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise OptionError(f"--range {text!r} must be K0:K1 (two slice indices)") from None
    return low, high


def _parse_key_box(text: str):
    from .boxes import parse_box

    index, sep, box = text.partition(":")
    if not sep or not index.strip().lstrip("-").isdigit():
        raise OptionError(f"--key-box {text!r} must be K:X0,Y0,X1,Y1")
    return int(index), parse_box(box)


def make_session(args: argparse.Namespace, image_path: str):
    """Model, encoder backend, cache and windowed volume, from the shared options."""
    from .backends import make_segmenter
    from .cache import EmbeddingCache, default_disk_dir
    from .session import VolumeSession
    from .volume import read_volume

    volume = read_volume(image_path)
    segmenter = make_segmenter(args.model, args.checkpoint, args.device, args.backend, args.checkpoint_sha256)
    cache = EmbeddingCache(store_fp16=args.fp16_cache, disk_dir=args.cache_dir or default_disk_dir())
    session = VolumeSession(segmenter, volume, args.window, args.axis, cache)
    log.info("%s; encoder backend %s; window %s (%s)", segmenter.model.describe(), segmenter.backend_name,
             session.window.describe(), session.window_reason)
    return session


def _propagation_options(args: argparse.Namespace, slice_range=None):
    from .propagation import AUTO, PropagationOptions

    return PropagationOptions(rule=args.rule, slice_range=slice_range, stop=None if args.no_stop else AUTO,
                              largest_component=args.largest_component, fill_holes=args.fill_holes)


class _ProgressBar:
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


def _describe_run(session) -> dict:
    segmenter = session.segmenter
    return {"model": segmenter.model.name, "checkpoint": str(segmenter.model.checkpoint.path),
            "checkpoint_verified": segmenter.model.checkpoint.verified, "device": str(segmenter.model.device),
            "device_reason": segmenter.model.device_choice.reason, "backend": segmenter.backend_name,
            "window": session.window.describe(), "window_reason": session.window_reason,
            "axis": session.axis_name, "slice_axis": "kji"[session.np_axis]}


def run_segment(args: argparse.Namespace) -> dict:
    from .boxes import parse_box
    from .propagation import propagate
    from .volume import write_label

    key_boxes = dict(_parse_key_box(text) for text in args.key_box)
    if args.box is not None or args.slice is not None:
        if args.box is None or args.slice is None:
            raise OptionError("--box and --slice go together")
        key_boxes[args.slice] = parse_box(args.box)
    if not key_boxes:
        raise OptionError("give --box X0,Y0,X1,Y1 and --slice K (or --key-box K:X0,Y0,X1,Y1)")
    slice_range = _parse_range(args.slice_range)
    session = make_session(args, args.image)
    start = time.perf_counter()
    summary = {"image": args.image, **_describe_run(session)}
    if args.propagate or args.key_box or slice_range:
        bar = _ProgressBar("propagating")
        try:
            result = propagate(session, key_boxes, _propagation_options(args, slice_range), progress=bar)
        finally:
            bar.close()
        mask = result.mask
        summary.update(mode="3d", rule=args.rule, segmented_slices=result.segmented_slices,
                       stopped=result.stopped, key_boxes={k: str(v) for k, v in key_boxes.items()})
    else:
        (index, box), = key_boxes.items()
        result = session.segment_slice(index, box)
        mask = session.empty_mask()
        from .axes import put_slice

        put_slice(mask, session.np_axis, index, result.mask)
        summary.update(mode="2d", slice=index, box=str(result.box), predicted_iou=round(result.score, 4))
    out = write_label(args.out, mask, session.volume)
    summary.update(out=str(out), voxels=int(mask.sum()), encoder_calls=session.segmenter.encoder.calls,
                   seconds=round(time.perf_counter() - start, 2))
    return summary


def run_eval(args: argparse.Namespace) -> dict:
    from .evaluation import evaluate_2d, evaluate_3d, targets_from_label
    from .volume import read_label

    session = make_session(args, args.image)
    label = read_label(args.label, session.volume)
    targets = targets_from_label(label, Path(args.image).name, args.label_value, args.split_components)
    results = []
    from tqdm import tqdm

    for target in tqdm(targets, desc="evaluating", unit="target", file=sys.stderr, leave=False,
                       disable=len(targets) < 2):
        if args.mode == "2d":
            results.append(evaluate_2d(session, target, args.jitter, args.seed, args.tolerance,
                                       args.box_per_piece))
            continue
        modes = ("label", "stop") if args.range_mode == "both" else (args.range_mode,)
        for range_mode in modes:
            results.append(evaluate_3d(session, target, args.rule, range_mode, args.keys, args.tolerance,
                                       _propagation_options(args)))
    return {"image": args.image, "label": args.label or "(embedded)", **_describe_run(session),
            "results": [r.as_dict() for r in results]}


def _print_human(command: str, summary: dict) -> None:
    if command == "study":
        from .study_cli import study_text

        print(study_text(summary))
        return
    if command == "eval":
        print(f"{'case':40s} {'mode':18s} {'DSC':>6s} {'NSD':>6s} {'box2D':>6s} {'box3D':>6s} "
              f"{'slices':>6s} {'enc':>4s} {'sec':>6s}")
        for r in summary["results"]:
            print(f"{r['case'][:40]:40s} {r['mode']:18s} {r['dsc']:6.3f} {r['nsd']:6.3f} "
                  f"{r['box_baseline_dsc']:6.3f} {r['box3d_baseline_dsc']:6.3f} {r['segmented_slices']:6d} "
                  f"{r['encoder_calls']:4d} {r['seconds']:6.1f}")
        print(f"window: {summary['window']} ({summary['window_reason']}); backend {summary['backend']} on "
              f"{summary['device']}; box2D/box3D = Dice of the filled ground-truth boxes")
        return
    for key, value in summary.items():
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="medsam-slicer: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "segment":
            summary = run_segment(args)
        elif args.command == "eval":
            summary = run_eval(args)
        elif args.command == "demo":
            from .demo import run_demo

            summary = run_demo(args)
        else:
            from .study_cli import run_study

            summary = run_study(args)
    except Cancelled as error:
        print(f"medsam-slicer: cancelled: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("medsam-slicer: cancelled by the user; nothing was written", file=sys.stderr)
        return Cancelled.exit_code
    except MedSAMError as error:
        print(f"medsam-slicer: error: {error}", file=sys.stderr)
        return error.exit_code
    if getattr(args, "json", False):
        print(json.dumps(summary, default=str))
    else:
        _print_human(args.command, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
