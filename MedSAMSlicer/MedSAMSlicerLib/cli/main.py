"""``medsam-slicer``: segment, evaluate, run the demo, report annotation-time studies.

Errors the user can fix print one line (``medsam-slicer: error: ...``) and exit with a non-zero code; only bugs
show a traceback.  With ``--json`` the result is one JSON object on stdout; progress bars and warnings go to stderr.
Each command lives in its own module (``add_parser`` + ``run_*``); this module only dispatches.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import Cancelled, MedSAMError
from . import demo, evaluate, segment, serve, study


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-slicer", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    commands = parser.add_subparsers(dest="command", required=True)
    segment.add_parser(commands)
    evaluate.add_parser(commands)
    demo.add_parser(commands)
    study.add_parser(commands)
    serve.add_parser(commands)
    return parser


RUNNERS = {"segment": segment.run_segment, "eval": evaluate.run_eval, "demo": demo.run_demo,
           "study": study.run_study, "serve": serve.run_serve}


def _print_human(command: str, summary: dict) -> None:
    if command == "study":
        print(study.study_text(summary))
    elif command == "eval":
        print(evaluate.eval_text(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="medsam-slicer: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        summary = RUNNERS[args.command](args)
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
