"""``medsam-slicer``: segment, evaluate, run the demo, report annotation-time studies.

Errors the user can fix print one line (``medsam-slicer: error: ...``) and exit with a non-zero code (2; 130 for
Ctrl+C); only bugs show a traceback.  With ``--json`` the result is one JSON object on stdout; progress bars and
warnings go to stderr.
Each command lives in its own module (``add_parser`` + ``run_*``); this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import json
import logging
import math
import signal
import sys
from typing import NoReturn

from .. import atomic
from ..errors import Cancelled, MedSAMError, OptionError, first_line

# (command, module, runner).  Modules are imported inside main()'s try, when the parser is built, so that Ctrl+C
# during start-up is one line; each imports torch and SimpleITK only when it runs, so --help loads neither.
COMMANDS = (("segment", "segment", "run_segment"), ("eval", "evaluate", "run_eval"), ("demo", "demo", "run_demo"),
            ("study", "study", "run_study"), ("serve", "serve", "run_serve"), ("web", "web", "run_web"))


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage and the error (two lines) and exits; our rule is one line: raise instead."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise OptionError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


class _QuietImports(importlib.abc.MetaPathFinder):
    """Ctrl+C waits until these native packages have finished importing.  A KeyboardInterrupt raised inside a
    Python call that torch's (pybind11) initialisation makes turns into a C++ exception it cannot pass on, and the
    process aborts (exit -6, no line) instead of our one line.  SIGINT is blocked for the import (the calling
    thread's mask, which threads started meanwhile inherit) and delivered, as the usual KeyboardInterrupt, the
    moment the import returns."""

    PACKAGES = frozenset({"torch", "torchvision", "openvino", "onnxruntime", "cv2", "SimpleITK"})

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.PACKAGES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _SigintBlockedLoader(spec.loader)
                return spec
            if spec is not None:
                return spec
        return None


class _SigintBlockedLoader(importlib.abc.Loader):
    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.inner.exec_module(module)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def __getattr__(self, name: str):  # get_resource_reader, is_package...: the real loader's
        return getattr(self.inner, name)


def _module(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="medsam-slicer", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    commands = parser.add_subparsers(dest="command", required=True)  # sub-parsers inherit OneLineParser
    for _, module, _ in COMMANDS:
        _module(module).add_parser(commands)
    return parser


def json_safe(value, where: str = "", nulls: dict | None = None):
    """``value`` with every NaN/infinite number replaced by None; ``nulls`` collects where and why (JSON has no
    NaN: ``json.dumps`` would write a bare ``NaN`` that strict parsers refuse)."""
    if hasattr(value, "item") and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if nulls is not None:
            nulls[where or "value"] = f"{value} is not a finite number; JSON has none"
        return None
    if isinstance(value, dict):
        return {key: json_safe(item, f"{where}.{key}" if where else str(key), nulls) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item, f"{where}[{n}]", nulls) for n, item in enumerate(value)]
    return value


def _print_human(module, summary: dict) -> None:
    text = getattr(module, "study_text", None) or getattr(module, "eval_text", None)
    if text is not None:
        print(text(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="medsam-slicer: %(levelname)s: %(message)s", stream=sys.stderr)
    module_name, runner = next((m, r) for c, m, r in COMMANDS if c == args.command)
    module = _module(module_name)
    summary = getattr(module, runner)(args)
    if getattr(args, "json", False):
        nulls: dict[str, str] = {}
        clean = json_safe(summary, "", nulls)
        if nulls:
            clean["nulls"] = nulls
        print(json.dumps(clean, default=str, allow_nan=False))
    else:
        _print_human(module, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The entry point.  Everything, imports and argument parsing included, runs inside one boundary: user errors
    (:class:`MedSAMError`), OS errors (a full disk, a vanished file) and memory exhaustion print one line and exit 2
    (or the error's code); Ctrl+C at any moment prints one line and exits 130.  Only bugs show a traceback."""
    entry = argv is None  # the console script: the process ends when we return
    written_before = len(atomic.committed)
    if entry and not any(isinstance(finder, _QuietImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImports())
    try:
        code = _run(argv)
    except KeyboardInterrupt:
        if entry:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut this line short
        written = atomic.committed[written_before:]
        after = f" after writing {', '.join(map(str, written))}" if written else "; nothing was written"
        print(f"medsam-slicer: cancelled by the user{after}", file=sys.stderr)
        code = Cancelled.exit_code
    except Cancelled as error:
        print(f"medsam-slicer: cancelled: {error}", file=sys.stderr)
        code = error.exit_code
    except MedSAMError as error:
        print(f"medsam-slicer: error: {error}", file=sys.stderr)
        code = error.exit_code
    except MemoryError as error:
        print(f"medsam-slicer: error: not enough memory{': ' + first_line(error) if str(error) else ''}; "
              f"close other programs or use a smaller volume", file=sys.stderr)
        code = 2
    except OSError as error:  # the environment, not a bug: say which file and what the system said
        where = f"{error.filename}: " if error.filename else ""
        print(f"medsam-slicer: error: {where}{error.strerror or first_line(error)}", file=sys.stderr)
        code = 2
    if entry:  # the work is done (or refused): a Ctrl+C while the interpreter shuts down changes nothing
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if code == Cancelled.exit_code:
            _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process with ``code`` now.  CPython remembers a KeyboardInterrupt raised inside ``exec()`` (the
    dataclasses module builds methods with it, so Ctrl+C during imports often lands there) as "unhandled" even when
    we handled it, and then kills the process with SIGINT at exit (code -2 instead of 130)."""
    import atexit
    import os

    try:
        atexit._run_exitfuncs()  # what a normal exit would run (e.g. stopping a local engine child)
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
