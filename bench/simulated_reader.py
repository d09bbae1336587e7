"""A simulated reader in the real browser app: one case read as the interactive protocol says, in Chromium.

    .venv/bin/python bench/simulated_reader.py [--image lung2_image.nrrd --label lung2_label.nrrd] [--out DIR]
        [--wait-scale 1.0 | --no-wait] [--accept-dice 0.8] [--crop MARGIN]
        [--before REV [--rounds N] [--now-first]]   # side by side with the app and engine as at git revision REV
    .venv/bin/medsam-slicer study report DIR/logs         # -> DIR/logs/simulated_reader.md (both arms)

``--before REV`` exports the package as it was at REV (``git archive``; the working tree is not touched) and reads
the case with it and with this tree, each on a fresh engine (empty embedding cache), alternating ``--rounds`` times
(before, now, before, now...), then prints each run's measured system time (propagation, corrective boxes, the rest),
the assisted arm and the fraction saved, and the ratios to the old tree's system time.  Each round runs three
apps: the old tree, this tree with the reader polling ``app_state`` as the old one must, and this tree polled with
the light ``app_progress`` (see ``Reader``).

Starts an engine server and ``medsam-slicer web`` on it, opens the page in Chromium (Playwright) and, as a person
would with mouse and keys: turns the time log on, turns review on, drags the tight box around the label on its
middle labelled slice, propagates, then reviews every slice the object or the label covers, from one end to the
other: a slice whose Dice with the label reaches ``--accept-dice`` is accepted (Ctrl+Alt+O); a worse slice with
label gets a corrective box (the label's tight box, dragged on that slice), and is accepted when that brought it up
to the threshold, else marked wrong (Ctrl+Alt+W) and left for the manual tools; a slice the object covers past the
label's end is "the object ends here" (Ctrl+Alt+E) when it lies beyond the key boxes, else left for the manual
tools.  Then "next doubtful slice" (Ctrl+Alt+N) until none is left, and Accept.

The reader knows the label (it is the simulation's reference), looks at the app's mask of each slice through the
app's read-only ``review_slice`` trigger, and waits the time model's think time before each action
(``MedSAMSlicerLib.study.time_model.Constants``: KLM operators, scaled by ``--wait-scale``; ``--no-wait`` for CI).
The slices left for the manual tools are not drawn in the page: they are priced (edit ratio x drawing the slice),
and the final Dice is the app's mask before them.  Writes ``simulated_reader.json`` beside the app's real time log
(every action with the system seconds measured in the page: from the action until the app is idle again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pyradiomics"
POLL_MS = {"app_progress": 50, "app_state": 100}  # the reader's poll for the end of an action (its grain)
KEYS = {"accept": "Control+Alt+KeyO", "wrong": "Control+Alt+KeyW", "cut": "Control+Alt+KeyE",
        "next_doubtful": "Control+Alt+KeyN"}


def _paths() -> None:
    for path in (REPO / "MedSAMSlicer", REPO / "Testing" / "Python"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                    platform.processor())
    except OSError:
        return platform.processor()


def crop_case(image: Path, label: Path, folder: Path, margin: int, slices: int | None = None) -> tuple[Path, Path]:
    """A small real case: the image and label cropped to the label's extent + ``margin`` voxels in-plane and one
    slice on each end (NRRD, same spacing and physical position), for a quick run in CI.  ``slices``: keep only
    that many labelled slices around the middle one (the label's other slices are cropped away with them)."""
    import SimpleITK as sitk

    img, lab = sitk.ReadImage(str(image)), sitk.ReadImage(str(label))
    array = sitk.GetArrayFromImage(lab) > 0
    k, j, i = (np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3))
    if slices is not None and slices < len(k):
        middle = len(k) // 2
        k = k[max(0, middle - slices // 2):][:slices]
    lo = [max(0, int(i[0]) - margin), max(0, int(j[0]) - margin), max(0, int(k[0]) - 1)]
    hi = [min(n, int(e[-1]) + 1 + m) for n, e, m in zip(img.GetSize(), (i, j, k), (margin, margin, 1))]
    size = [b - a for a, b in zip(lo, hi)]
    out = (folder / "case_image.nrrd", folder / "case_label.nrrd")
    sitk.WriteImage(sitk.RegionOfInterest(img, size, lo), str(out[0]))
    sitk.WriteImage(sitk.RegionOfInterest(lab, size, lo), str(out[1]))
    return out


def tight_box(plane: np.ndarray) -> tuple[int, int, int, int]:
    j, i = np.nonzero(plane)
    return int(i.min()), int(j.min()), int(i.max()), int(j.max())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


class Reader:
    """The reader's moves on the page, each timed from the action until the app is idle again."""

    def __init__(self, page, label: np.ndarray, wait_scale: float, light_poll: bool = True) -> None:
        from MedSAMSlicerLib.study.reader_report import HUMAN_TIME
        from MedSAMSlicerLib.study.time_model import Constants

        self.page, self.label, self.wait_scale = page, label, wait_scale
        # While an action runs, the reader polls the app for its end: ``app_progress`` (light) where the app has it,
        # else ``app_state``, which copies and hashes every segment on the app's event loop at each poll (in the
        # page's time, so it inflates the system time measured: the runs say which one they used).
        self.poll_trigger = "app_progress" if light_poll and self._has_progress() else "app_state"
        self.constants, self.human = Constants(), HUMAN_TIME
        self.actions: list[dict] = []

    def think(self, action: str) -> None:
        seconds = self.human[action](self.constants) * self.wait_scale if action in self.human else 0.0
        if seconds > 0:
            self.page.page.wait_for_timeout(seconds * 1000)

    def _has_progress(self) -> bool:
        from playwright.sync_api import Error as PageError

        try:
            return isinstance(self.page.ask("app_progress"), dict)
        except PageError:  # an app without the trigger (an older tree run side by side)
            return False

    def progress(self) -> dict:
        return self.page.ask(self.poll_trigger)

    def wait_done(self, before: int, what: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.progress()
            if not state["busy"] and state["actions"] > before:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last state {state}")
            self.page.page.wait_for_timeout(POLL_MS[self.poll_trigger])

    def act(self, action: str, do, index: int | None = None) -> dict:
        """Think, do, wait until the app has finished; record the measured system seconds."""
        self.think(action)
        before = self.progress()["actions"]
        start = time.monotonic()
        do()
        state = self.wait_done(before, f"the app after {action}")
        self.actions.append({"action": action, **({"slice": index} if index is not None else {}),
                             "system_s": round(time.monotonic() - start, 3)})
        if state.get("error"):
            self.actions[-1]["error"] = state["error"]
        return state

    def note(self, action: str, index: int | None = None) -> None:
        """An action with no system part (looking at a slice; a slice left for the manual tools)."""
        if action != "manual_edit":
            self.think(action)
        self.actions.append({"action": action, **({"slice": index} if index is not None else {}), "system_s": 0.0})

    def show(self, k: int) -> None:
        shape = self.label.shape
        self.page.ask("show_slice", "Red", [(shape[2] - 1) / 2, (shape[1] - 1) / 2, k])

    def drag_box(self, k: int, box: tuple[int, int, int, int], button: str) -> None:
        i0, j0, i1, j1 = box
        self.page.click(button)
        self.page.drag(self.page.view_point("Red", (i0, j0, k)), self.page.view_point("Red", (i1, j1, k)))

    def slice_mask(self, k: int) -> tuple[np.ndarray, dict]:
        from MedSAMSlicerLib.protocol.wire import unpack_mask

        answer = self.page.ask("review_slice", k)
        return unpack_mask(answer["mask"]), answer

    def key(self, action: str, k: int) -> dict:
        self.show(k)
        return self.act(action, lambda: self.page.page.keyboard.press(KEYS[action]), k)


def read_case(page, label: np.ndarray, accept_dice: float, wait_scale: float,
              light_poll: bool = True) -> tuple[list[dict], dict, str]:
    """The protocol on one case; the actions taken, the last review state, the trigger polled."""
    reader = Reader(page, label, wait_scale, light_poll)
    labelled = np.flatnonzero(label.any(axis=(1, 2)))
    key = int(labelled[len(labelled) // 2])
    page.click("#btn-review-mode")
    page.wait_state(lambda s: s.get("review_mode"), "review mode on")
    reader.show(key)
    reader.act("box", lambda: reader.drag_box(key, tight_box(label[key]), "#btn-box"), key)
    reader.act("propagate", lambda: page.click("#btn-propagate"), key)
    _, review = reader.slice_mask(key)
    low, high = int(labelled[0]), int(labelled[-1])
    covered = [k for k in range(label.shape[0]) if reader.slice_mask(k)[0].any()]
    first, last = min([low, *covered]), max([high, *covered])
    order = list(range(key, last + 1)) + list(range(key - 1, first - 1, -1))  # outwards from the key, each side
    cut_above = cut_below = False
    for k in order:
        if (k > key and cut_above) or (k < key and cut_below):
            continue
        reader.show(k)
        reader.note("review", k)
        mask, review = reader.slice_mask(k)
        truth = label[k]
        if k in review.get("locked", []):
            continue
        if dice(mask, truth) >= accept_dice:
            if mask.any() or truth.any():
                reader.key("accept", k)
            continue
        keys = [int(s) for s in review.get("keys", {})]
        if truth.any() and k in keys:  # the key box is the label's own tight box already: nothing a box can add
            reader.key("wrong", k)
            reader.note("manual_edit", k)
            continue
        if truth.any():
            reader.show(k)
            reader.act("corrective_box", lambda: reader.drag_box(k, tight_box(truth), "#btn-key-box"), k)
            mask, review = reader.slice_mask(k)
            if dice(mask, truth) >= accept_dice:
                reader.key("accept", k)
            else:
                reader.key("wrong", k)
                reader.note("manual_edit", k)
            continue
        if keys and (k > max(keys) or k < min(keys)):
            reader.key("cut", k)
            cut_above, cut_below = cut_above or k > key, cut_below or k < key
        else:
            reader.note("manual_edit", k)  # an island between key boxes: erased by hand
    seen: set[int] = set()
    for _ in range(label.shape[0]):  # what the engine still doubts: look at it once, accept or leave it
        state = reader.act("next_doubtful", lambda: page.page.keyboard.press(KEYS["next_doubtful"]))
        if state.get("last_action") != "review_jump" or int(state["review_slice"]) in seen:
            break
        k = int(state["review_slice"])
        seen.add(k)
        mask, review = reader.slice_mask(k)
        if k in review.get("wrong", []):
            continue  # already left for the manual tools
        if dice(mask, label[k]) >= accept_dice:
            reader.key("accept", k)
        else:
            reader.key("wrong", k)
            reader.note("manual_edit", k)
    _, review = reader.slice_mask(key)
    return reader.actions, review, reader.poll_trigger


def start_engine_from(folder: Path, source: Path, cache_dir: str | None = None):
    """``medsam-slicer serve`` as the tests start it, but from ``source`` (a package folder) and with no disk cache
    unless ``cache_dir`` (a cold start for every run)."""
    token = folder / "token"
    env = {k: v for k, v in os.environ.items() if k != "MEDSAM_SLICER_CACHE"}
    env["PYTHONPATH"] = str(source)
    command = [sys.executable, "-m", "MedSAMSlicerLib.cli", "serve", "--port", "0", "--token-file", str(token),
               "--device", "cpu", *(["--cache-dir", cache_dir] if cache_dir else [])]
    with open(folder / "engine.log", "w") as log_file:  # the child keeps its own handle
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env,
                                   start_new_session=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise RuntimeError(f"engine did not start: {(folder / 'engine.log').read_text()[-2000:]}")
    return process, url, token


@contextmanager
def served_from(folder: Path, source: Path | None, cache_dir: str | None = None) -> Iterator:
    """``web_driver.served`` (an engine, then the app by ``start_app``; both stopped when the block ends), with the
    engine from ``source`` (a package folder exported by ``export_tree``; None: this tree, no disk cache)."""
    from web_driver import served

    if source is None:
        saved = os.environ.pop("MEDSAM_SLICER_CACHE", None)  # a cold start for every run
        try:
            with served(folder, cache_dir) as running:
                yield running
        finally:
            if saved is not None:
                os.environ["MEDSAM_SLICER_CACHE"] = saved
        return
    with served(folder, cache_dir, lambda where, cache: start_engine_from(where, source, cache)) as running:
        yield running


def run(image: Path, label_path: Path, out: Path, wait_scale: float, accept_dice: float,
        cache_dir: str | None = None, source: Path | None = None, light_poll: bool = True) -> Path:
    """The whole run (engine, app, Chromium); returns the log folder holding the time log and the record.
    ``source``: the package folder to run the engine and the app from (None: this tree)."""
    _paths()
    from playwright.sync_api import sync_playwright
    from web_driver import Page

    from MedSAMSlicerLib.study.reader_report import RECORD_NAME
    from MedSAMSlicerLib.study.time_model import Constants, contour_segments
    from MedSAMSlicerLib.volumeio.files import read_label, read_volume

    volume = read_volume(image)
    label = read_label(label_path, volume) > 0
    spacing = tuple(float(s) for s in volume.spacing_zyx[1:])
    out.mkdir(parents=True, exist_ok=True)
    with served_from(out, source, cache_dir) as running:
        from MedSAMSlicerLib.client import EngineClient, read_token_file

        # the model's load is not the reader's
        EngineClient(running.url, read_token_file(running.token)).wait_ready(timeout=900)
        page_url = running.start_app(image, reader="simulated",
                                     env={"PYTHONPATH": str(source)} if source is not None else None)
        with sync_playwright() as playwright:
            page = Page(playwright, page_url)
            try:
                page.click("#btn-log")
                page.wait_state(lambda s: bool(s["log_path"]), "the time log")
                actions, review, polled = read_case(page, label, accept_dice, wait_scale, light_poll)
                final = np.stack([Reader(page, label, 0).slice_mask(k)[0] for k in range(label.shape[0])])
                before = page.state()["actions"]
                page.click("#btn-accept")
                page.wait_state(lambda s: s["actions"] > before, "accept")
                state = page.state()
                page.click("#btn-log")  # stop: the case's log is closed
                page.wait_state(lambda s: not s["log_running"] if "log_running" in s else True, "log stopped")
            finally:
                page.close()
    contours = {}
    for k in np.flatnonzero(label.any(axis=(1, 2))):
        segments, length = contour_segments(label[k], spacing, Constants().contour_tolerance_mm)
        contours[str(int(k))] = {"segments": segments, "length_mm": round(length, 2)}
    logs = Path(state["log_path"]).parent
    record = {"case": Path(state["log_path"]).name.split(".")[0], "image": image.name, "accept_dice": accept_dice,
              "wait_scale": wait_scale, "cpu": cpu_name(), "polled": polled, "actions": actions, "contours": contours,
              "final_dice": round(dice(final, label), 4), "doubtful_left": review.get("doubtful", []),
              "locked": review.get("locked", [])}
    (logs / RECORD_NAME).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return logs


def export_tree(revision: str, where: Path) -> Path:
    """The package folder as it was at ``revision`` (``git archive``: the working tree is not touched)."""
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "MedSAMSlicer"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    weights = where / "model_weights"  # the manifest and the weights are found beside the package
    if not weights.exists():
        weights.symlink_to(REPO / "model_weights")
    return where / "MedSAMSlicer"


def summary(logs: Path) -> dict:
    """One run's figures from its record: system seconds by action, the assisted arm, the fraction saved."""
    from MedSAMSlicerLib.study.reader_report import RECORD_NAME, price
    from MedSAMSlicerLib.study.time_model import Constants

    record = json.loads((logs / RECORD_NAME).read_text(encoding="utf-8"))
    system = {"propagate": 0.0, "corrective_box": 0.0, "rest": 0.0}
    for action in record["actions"]:
        part = action["action"] if action["action"] in system else "rest"
        system[part] += float(action["system_s"])
    priced = price(record, Constants())
    engine = {}  # the engine's own seconds and encoder calls of the propagation and the corrective boxes (time log)
    for path in logs.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event.get("kind") in ("propagate", "corrective_box"):
                seen = engine.setdefault(event["kind"], {"seconds": 0.0, "encoder_calls": 0, "decoder_calls": 0})
                for key in seen:
                    seen[key] = round(seen[key] + event.get(key, 0), 3)
    return {"system": {k: round(v, 2) for k, v in system.items()}, "system_s": round(sum(system.values()), 2),
            "engine": engine,
            "manual_s": round(priced["manual_s"], 1), "assisted_s": round(priced["assisted_s"], 1),
            "saved": round(100 * priced["saved_fraction"], 1), "final_dice": record["final_dice"],
            "actions": len(record["actions"])}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(DATA / "lung2_image.nrrd"))
    parser.add_argument("--label", default=str(DATA / "lung2_label.nrrd"))
    parser.add_argument("--out", help="folder for the run (default: a new temporary folder)")
    parser.add_argument("--wait-scale", type=float, default=1.0, help="x the time model's think times (default 1)")
    parser.add_argument("--no-wait", action="store_true", help="no think times (CI)")
    parser.add_argument("--accept-dice", type=float, default=0.80, help="per-slice Dice accepted as is (Menze 2015)")
    parser.add_argument("--crop", type=int, metavar="MARGIN", help="read a crop around the label (+MARGIN voxels)")
    parser.add_argument("--slices", type=int, help="with --crop: only this many labelled slices around the middle")
    parser.add_argument("--cache-dir", help="engine's embedding cache folder")
    parser.add_argument("--before", help="git revision to read the case with too, side by side (e.g. 81722e3: "
                        "main before the prefetch-ahead work of issue 18)")
    parser.add_argument("--rounds", type=int, default=1, help="with --before: rounds of runs, alternating")
    parser.add_argument("--now-first", action="store_true", help="with --before: this tree first in each round")
    args = parser.parse_args()
    _paths()
    from web_driver import missing_browser_parts

    why = missing_browser_parts()
    if why:
        print(f"simulated_reader: {why}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="simulated-reader-"))
    image, label = Path(args.image), Path(args.label)
    if args.crop is not None:
        image, label = crop_case(image, label, out, args.crop, args.slices)
    wait = 0.0 if args.no_wait else args.wait_scale
    if args.before:
        return side_by_side(args, image, label, out, wait)
    logs = run(image, label, out, wait, args.accept_dice, args.cache_dir)
    report = subprocess.run([sys.executable, "-m", "MedSAMSlicerLib.cli", "study", "report", str(logs)],
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "MedSAMSlicer")})
    print(report.stdout or report.stderr)
    print(f"log folder: {logs}")
    return report.returncode


def side_by_side(args, image: Path, label: Path, out: Path, wait: float) -> int:
    """Runs of the old and this tree, alternating; a table of each run and the ratios of their means.  Three apps
    per round: the old tree (its reader polls ``app_state``, the only trigger it has), this tree polled the same way
    (the product's change alone), and this tree polled with ``app_progress`` (the measurement's change too)."""
    source = export_tree(args.before, out / "before-tree")
    order = [("now", None, True), ("now-state", None, False), (f"before-{args.before}", source, False)]
    if not args.now_first:
        order.reverse()
    rows = []
    for round_ in range(1, args.rounds + 1):
        for name, tree, light in order:
            load_start = load_average()
            started = time.monotonic()
            logs = run(image, label, out / f"{name}-{round_}", wait, args.accept_dice, args.cache_dir, tree, light)
            row = {"app": name, "round": round_, "load_start": load_start, "load_end": load_average(),
                   "wall_s": round(time.monotonic() - started, 1), **summary(logs), "logs": str(logs)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nsimulated reader, {image.name}, think times x{wait}, CPU: {cpu_name()}")
    print(f"{'app':<18} {'round':>5} {'load 1-min start/end':>21} {'propagate s':>11} {'corr. box s':>11} "
          f"{'rest s':>7} {'system s':>8} {'assisted s':>10} {'saved %':>7} {'Dice':>6}")
    for r in rows:
        print(f"{r['app']:<18} {r['round']:>5} {r['load_start'].split()[0] + ' / ' + r['load_end'].split()[0]:>21} "
              f"{r['system']['propagate']:>11.2f} {r['system']['corrective_box']:>11.2f} {r['system']['rest']:>7.2f} "
              f"{r['system_s']:>8.2f} {r['assisted_s']:>10.1f} {r['saved']:>7.1f} {r['final_dice']:>6.3f}")
    before = [r for r in rows if r["app"].startswith("before")]
    for name in ("now-state", "now"):
        now = [r for r in rows if r["app"] == name]
        parts = []
        for part in ("propagate", "corrective_box", "rest"):
            b = float(np.mean([r["system"][part] for r in before]))
            n = float(np.mean([r["system"][part] for r in now]))
            parts.append(f"{part} {n:.2f} / {b:.2f} s" + (f" (x{n / b:.2f})" if b else ""))
        b, n = float(np.mean([r["system_s"] for r in before])), float(np.mean([r["system_s"] for r in now]))
        print(f"{name}/before: system time the reader waits {n:.2f} / {b:.2f} s = x{n / b:.2f}; " + "; ".join(parts)
              + f"; saved {np.mean([r['saved'] for r in now]):.1f} % vs {np.mean([r['saved'] for r in before]):.1f} %")
    (out / "side_by_side.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"runs: {out / 'side_by_side.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
