"""``medsam-slicer eval``: score the model against a label with boxes simulated from it (2D or 3D)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .remote import add_server_options
from .options import (add_model_options, add_propagation_options, describe_run, make_session, positive_float,
                      propagation_options)


def add_parser(commands) -> argparse.ArgumentParser:
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
    evaluate.add_argument("--tolerance", type=positive_float, default=2.0, help="NSD tolerance in mm (default 2)")
    evaluate.add_argument("--protocol", default="single", choices=("single", "interactive"),
                          help="interactive: the CVPR 2025 interactive protocol (a box, then --steps corrections)")
    evaluate.add_argument("--steps", type=int, default=5, help="interactive: corrections after the first box")
    evaluate.add_argument("--correction", default="box", choices=("box", "click"),
                          help="interactive: box on the slice where the largest error is largest, or on the slice "
                               "of its EDT centre (the challenge's click position)")
    evaluate.add_argument("--range", dest="interactive_range", default="label", choices=("label", "stop"),
                          help="interactive: the label's slice range given with the first box, or none")
    evaluate.add_argument("--baseline", choices=("boxes",),
                          help="interactive: no model, each slice the filled box interpolated between the keys")
    evaluate.add_argument("--jitter-seed", type=int,
                          help="interactive: widen the first box by the challenge's random 0-5 px (at 256 scale)")
    evaluate.add_argument("--json", action="store_true")
    add_model_options(evaluate)
    add_propagation_options(evaluate)
    add_server_options(evaluate)
    return evaluate


def run_eval(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from ..evaluation.evaluate import evaluate_2d, evaluate_3d, targets_from_label
    from ..volumeio.files import read_label

    session = make_session(args, args.image)
    label = read_label(args.label, session.volume)
    targets = targets_from_label(label, Path(args.image).name, args.label_value, args.split_components)
    if args.protocol == "interactive":
        return run_interactive(args, session, targets)
    results = []
    for target in tqdm(targets, desc="evaluating", unit="target", file=sys.stderr, leave=False,
                       disable=len(targets) < 2):
        if args.mode == "2d":
            results.append(evaluate_2d(session, target, args.jitter, args.seed, args.tolerance,
                                       args.box_per_piece))
            continue
        modes = ("label", "stop") if args.range_mode == "both" else (args.range_mode,)
        for range_mode in modes:
            results.append(evaluate_3d(session, target, args.rule, range_mode, args.keys, args.tolerance,
                                       propagation_options(args)))
    return {"image": args.image, "label": args.label or "(embedded)", **describe_run(session),
            "results": [r.as_dict() for r in results]}


def run_interactive(args: argparse.Namespace, session, targets) -> dict:
    from ..errors import OptionError
    from ..evaluation.interactive import evaluate_interactive

    if getattr(session, "remote", False):
        raise OptionError("--protocol interactive runs on the local engine; leave out --server")
    if args.steps < 0:
        raise OptionError(f"--steps {args.steps}: give 0 or more corrections")
    results = [evaluate_interactive(session, target, args.steps, args.correction, args.interactive_range,
                                    args.baseline, args.jitter_seed, args.tolerance) for target in targets]
    return {"image": args.image, "label": args.label or "(embedded)", **describe_run(session),
            "protocol": "interactive", "results": [r.as_dict() for r in results]}


def eval_text(summary: dict) -> str:
    if summary.get("protocol") == "interactive":
        lines = []
        for r in summary["results"]:
            lines.append(f"{r['case']}: range {r['range_mode']}, correction {r['correction']}"
                         f"{', no-model boxes' if r['baseline'] else ''}")
            lines.append(f"  {'step':>4s} {'action':24s} {'DSC':>6s} {'NSD':>6s} {'sec':>6s} {'enc':>4s} {'dec':>4s}")
            for n, s in enumerate(r["steps"]):
                lines.append(f"  {n:4d} {s['action'][:24]:24s} {s['dsc']:6.3f} {s['nsd']:6.3f} {s['seconds']:6.2f} "
                             f"{s['encoder_calls']:4d} {s['decoder_calls']:4d}")
            lines.append(f"  final DSC {r['final_dsc']:.3f}  final NSD {r['final_nsd']:.3f}  DSC AUC "
                         f"{r['dsc_auc']:.3f}  NSD AUC {r['nsd_auc']:.3f}")
        return "\n".join(lines)
    lines = [f"{'case':40s} {'mode':18s} {'DSC':>6s} {'NSD':>6s} {'box2D':>6s} {'box3D':>6s} "
             f"{'slices':>6s} {'enc':>4s} {'sec':>6s}"]
    for r in summary["results"]:
        lines.append(f"{r['case'][:40]:40s} {r['mode']:18s} {r['dsc']:6.3f} {r['nsd']:6.3f} "
                     f"{r['box_baseline_dsc']:6.3f} {r['box3d_baseline_dsc']:6.3f} {r['segmented_slices']:6d} "
                     f"{r['encoder_calls']:4d} {r['seconds']:6.1f}")
    lines.append(f"window: {summary['window']} ({summary['window_reason']}); backend {summary['backend']} on "
                 f"{summary['device']}; box2D/box3D = Dice of the filled ground-truth boxes")
    return "\n".join(lines)
