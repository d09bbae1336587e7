"""The time model with sources on every shared case (study/time_model.py), pooled as MedSAM pooled its 10 cases.

    .venv/bin/python bench/time_model.py [--cache-dir .cache/embeddings] [--range label|stop] [--out Resources/study]

Runs the interactive protocol (first box, 5 box corrections) on each case, prices both arms with the cited
constants and the measured encoder/decoder seconds, and prints the per-case table, the sensitivity table (each
constant at half and double) and the sources; writes time_model.md and time_model.json to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import engine, open_case, real_cases
from MedSAMSlicerLib.study.time_model import case_actions, time_markdown, time_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--range", dest="range_mode", default="label", choices=("label", "stop"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    segmenter, cache = engine(args.cache_dir)
    actions = []
    for case in real_cases():
        session, target = open_case(case, segmenter, cache)
        actions.append(case_actions(session, target.mask, case.name, args.range_mode)[0])
        print(f"done {case.name}", flush=True)
    report = time_report(actions)
    live_encode = max(a.encode_s for a in actions)
    live_decode = sum(a.decode_s for a in actions) / len(actions)
    markdown = (f"Time model, range {args.range_mode}, LiteMedSAM.  System time priced at the quiet-machine figures "
                f"(constants encode_s, decode_s); in this run, on a shared machine, an encoder call took up to "
                f"{live_encode:.2f} s and a decoder call {live_decode:.3f} s on average (the x10 column of the "
                f"sensitivity table covers that).\n\n" + time_markdown(report))
    print(markdown)
    if args.out:
        out = Path(args.out)
        (out / "time_model.md").write_text(markdown)
        (out / "time_model.json").write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
