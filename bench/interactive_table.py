"""The README's interactive-protocol table (CVPR 2025 protocol, box corrections), on ../shared/data.

    .venv/bin/python bench/interactive_table.py [--cache-dir .cache/embeddings] [--seeds 0 1 2] [--json out.json]

Per case: step-0 DSC, DSC after each of 5 corrections, final NSD, AUC, the largest drop of any single correction,
decoder calls and seconds per correction; for range label and range stop, the model and the no-model box baseline,
tight boxes and (with --seeds) the challenge's 0-5 px jitter of the first box.  Also prints seconds per correction.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common import engine, open_case, real_cases
from MedSAMSlicerLib.evaluation.interactive import evaluate_interactive


def run(session, target, range_mode, baseline=None, seed=None):
    return evaluate_interactive(session, target, 5, "box", range_mode, baseline, seed).as_dict()


def summary(rows: list[dict]) -> str:
    dscs = np.array([[s["dsc"] for s in r["steps"]] for r in rows])
    drops = np.array([max(0.0, max(a - b for a, b in zip(d[:-1], d[1:]))) for d in dscs])
    below = int(sum(d[-1] < d[0] - 1e-9 for d in dscs))
    corr = [s for r in rows for s in r["steps"][1:] if s["action"].startswith("box")]
    dec = np.mean([s["decoder_calls"] for s in corr]) if corr else 0.0
    enc = sum(s["encoder_calls"] for r in rows for s in r["steps"][1:])
    sec = np.median([s["seconds"] for s in corr]) if corr else 0.0
    return (f"mean DSC by step {' -> '.join(f'{v:.3f}' for v in dscs.mean(axis=0))}; final NSD "
            f"{np.mean([r['final_nsd'] for r in rows]):.3f}; DSC AUC {np.mean([r['dsc_auc'] for r in rows]):.3f}; "
            f"largest single drop {drops.max():.3f}; cases ending below step 0: {below}; decoder calls per box "
            f"correction {dec:.1f}; encoder calls after step 0: {enc}; median seconds per box correction {sec:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="*", default=[])
    parser.add_argument("--json", default=None)
    parser.add_argument("--from-json", default=None, help="print the tables of a saved --json run (no model run)")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as saved:
            tables(json.load(saved))
        return
    segmenter, cache = engine(args.cache_dir)
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for case in real_cases():
        session, target = open_case(case, segmenter, cache)
        for range_mode in ("label", "stop"):
            for baseline in (None, "boxes"):
                for seed in [None, *args.seeds]:
                    name = f"{range_mode}{'-baseline' if baseline else ''}{'' if seed is None else f'-seed{seed}'}"
                    results.setdefault(name, []).append(run(session, target, range_mode, baseline, seed))
        print(f"done {case.name} ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    tables(results)


def largest_drop(row: dict) -> float:
    dscs = [s["dsc"] for s in row["steps"]]
    return max(0.0, max(a - b for a, b in zip(dscs[:-1], dscs[1:])))


def tables(results: dict[str, list[dict]]) -> None:
    seeds = sorted({name.split("-seed")[1] for name in results if "-seed" in name}, key=int)
    for name in ("label", "stop"):
        print(f"\n### range {name}, tight boxes\n")
        print("| case | step 0 | 1 | 2 | 3 | 4 | 5 | final NSD | DSC AUC | no-model boxes final | dec/corr |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row, base in zip(results[name], results[f"{name}-baseline"]):
            steps = row["steps"]
            corr = [s["decoder_calls"] for s in steps[1:] if s["action"].startswith("box")]
            print(f"| {row['case']} | " + " | ".join(f"{s['dsc']:.3f}" for s in steps) +
                  f" | {row['final_nsd']:.3f} | {row['dsc_auc']:.3f} | {base['final_dsc']:.3f} | "
                  f"{np.mean(corr) if corr else 0:.1f} |")
        if seeds:
            print(f"\n### range {name}: final DSC, tight first box and jittered (seeds {', '.join(seeds)})\n")
            runs = ["", *(f"-seed{v}" for v in seeds)]
            print("| case | " + " | ".join(f"model {r[1:] or 'tight'}" for r in runs) + " | " +
                  " | ".join(f"no-model {r[1:] or 'tight'}" for r in runs) + " | largest drop (model) | below step 0 |")
            print("|---|" + "---:|" * (2 * len(runs) + 2))
            for n, row in enumerate(results[name]):
                model = [results[name + r][n] for r in runs]
                base = [results[f"{name}-baseline{r}"][n] for r in runs]
                below = sum(m["steps"][-1]["dsc"] < m["steps"][0]["dsc"] - 1e-9 for m in model)
                print(f"| {row['case']} | " + " | ".join(f"{m['final_dsc']:.3f}" for m in model) + " | " +
                      " | ".join(f"{b['final_dsc']:.3f}" for b in base) +
                      f" | {max(largest_drop(m) for m in model):.3f} | {below} of {len(model)} |")
    print()
    for name, rows in results.items():
        print(f"{name:22s} {summary(rows)}")


if __name__ == "__main__":
    main()
