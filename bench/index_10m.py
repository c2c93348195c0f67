"""The index at archive scale (issue 28): what opening and searching a 10M-tile index costs, each measurement in a
fresh process so its memory is its own.

    .venv/bin/python bench/synthetic_index.py demo_out/s2_rgb.vrt --mosaic 10 --tiles 10000000 \\
        --out cache/synthetic/s2-10m
    .venv/bin/python bench/index_10m.py cache/synthetic/s2-10m [--steps open,hash,float,plugin] [--cold]

Steps (each its own process; a markdown table at the end, with the issue's targets):
  open    `Index(dir)`: seconds, and resident memory after it (VmRSS = RssAnon + RssFile + RssShmem, from
          /proc/self/status) against the interpreter with the same modules imported and nothing opened.
  hash    `core.search.search(index, query, k=20, mode="hash")` for --queries tile queries
          (`core.queries.query_from_tile` of random tiles), one at a time: the first one (it reads codes.faiss)
          apart, then per-query median / p95 ms, the same for `Index.search_hamming` alone, and memory after.
  float   the same with mode="float" (float.faiss).
  plugin  a real QgsApplication (offscreen): `RetrievalSession(dir)` and `search_box` boxes of one tile on the
          index's raster (the synthetic mosaic) without heat map, float (the dock's default) and hash: the first
          box (it loads the encoder and the faiss index) apart from the next ones, with the time of each part.
  heatmap (not in the default steps) one box with the heat map on, for the record.
A step that misses its target is run again under cProfile and its top functions printed (--no-profile: not).
--cold evicts the index's files from the page cache (posix_fadvise DONTNEED on them: nothing else's) before
each step, so reads come from disk; by default they are warm, as after a build or a previous search.

What-if: `--variant scan` (the children patch core in memory, `apply_variant`): no hash tables, exact scans of
codes.u8 - what the on-disk multi-index hashing tables (core/index/mih_tables.py) save. The other what-ifs this
bench sized (pread rows, on-disk tables, the all-valid mask) are in core since 2026-12-07.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

TARGETS = {"rss_mb": 300.0, "hash_ms": 10.0, "box_s": 1.0}
DEFAULT_STEPS = ("open", "hash", "float", "plugin")
_KEEP: list = []


# -- memory ---------------------------------------------------------------------------------------------------------
def mem() -> dict:
    """VmRSS / RssAnon / RssFile / RssShmem / VmHWM of this process, MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


def rss_by_file(top: int = 6) -> list[tuple[str, float]]:
    """Resident MB per mapped file of this process (anonymous mappings together), largest first (/proc/self/smaps):
    which file a memory-mapped read made resident."""
    sizes: dict[str, float] = {}
    name = "[anon]"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if not head[0].endswith(":") or "-" in head[0]:
                name = head[5] if len(head) > 5 and head[5].startswith("/") else "[anon]"
            elif head[0] == "Rss:":
                sizes[name] = sizes.get(name, 0.0) + int(head[1]) / 1024
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
    return [(k.replace(root, ""), round(v, 1)) for k, v in ranked]


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def mem_str(m: dict) -> str:
    return (f"RSS {m['VmRSS']:.0f} MB (anon {m['RssAnon']:.0f}, file {m['RssFile']:.0f}, shmem "
            f"{m.get('RssShmem', 0):.0f}); peak {m['VmHWM']:.0f} MB")


def evict(index_dir: str) -> None:
    """Drop the index's own files from the page cache (the next reads come from disk)."""
    for root, _, files in os.walk(index_dir):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def profile_text(prof: cProfile.Profile, top: int = 25) -> str:
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("cumulative").print_stats(top)
    s.write("\n--- by own time ---\n")
    st.sort_stats("tottime").print_stats(12)
    text = s.getvalue()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    return text.replace(root, "")


def pct(times: list[float]) -> dict:
    a = np.asarray(times) * 1000
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max()),
            "mean_ms": float(a.mean())}


# -- what-ifs: the reader changed in this process only (core/ is not edited), to size a proposed fix ----------------
VARIANTS = ("product", "scan")


def apply_variant(names: str) -> None:
    """Patch the product in this process: "scan": no hash tables, exact k-NN and radius search scan codes.u8
    (memory-mapped) and drop its pages from the process after each search; "product": nothing."""
    chosen = set(names.split(","))
    unknown = chosen - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    if "scan" in chosen:
        _patch_scan()


def _patch_scan() -> None:
    from core.index import hamming, reader

    Index = reader.Index

    def search_hamming(self, queries, k, nprobe=None):
        try:
            return hamming.scan_knn(self._codes, np.ascontiguousarray(queries, np.uint8).reshape(-1, self.code_bytes),
                                    min(k, self.n))
        finally:
            reader._drop_pages(self._codes)

    def range_hamming(self, code, radius):
        try:
            dist, ids = hamming.scan_range(self._codes, code, radius)
            order = np.lexsort((ids, dist))
            return dist[order], ids[order]
        finally:
            reader._drop_pages(self._codes)

    Index.search_hamming, Index.range_hamming = search_hamming, range_hamming
    Index.hamming_exact = property(lambda self: True)
    Index.binary_index = property(lambda self: None)
    Index.mih = property(lambda self: None)


# -- steps (each in its own process) ------------------------------------------------------------------------------
def step_open(args) -> dict:
    from core import queries, search  # noqa: F401 - what a searching process imports
    from core.index.reader import Index

    base = mem()
    t = time.perf_counter()
    index = Index(args.index)
    open_s = time.perf_counter() - t
    after = mem()
    return {"tiles": index.n, "open_s": open_s, "mem_imports": base, "mem_open": after,
            "binary_factory": index.manifest.binary_factory, "float_factory": index.manifest.float_factory,
            "code_bits": index.code_bits, "dim": index.embedding_dim}


def _tile_queries(index, n: int, seed: int):
    from core.queries import query_from_tile

    rng = np.random.default_rng(seed)
    ids = rng.choice(index.n, n, replace=False)
    t = time.perf_counter()
    qs = [query_from_tile(index, int(i)) for i in ids]
    return qs, (time.perf_counter() - t) / n


def step_search(args, mode: str) -> dict:
    from core.index.reader import Index
    from core.search import search

    apply_variant(args.variant)
    out = {"mem_imports": mem(), "variant": args.variant}
    t = time.perf_counter()
    index = Index(args.index)
    out["open_s"] = time.perf_counter() - t
    queries, out["query_from_tile_ms"] = _tile_queries(index, args.queries + 1 + args.profile_queries, args.seed)
    out["query_from_tile_ms"] *= 1000
    out["mem_open"] = mem()
    reset_peak()
    t = time.perf_counter()
    if mode == "hash" and index.mih is not None:  # the product searches its tables on disk, not codes.faiss
        faiss_index = index.mih
    else:
        faiss_index = index.binary_index if mode == "hash" else index.float_index
    out["load_index_s"] = time.perf_counter() - t
    out["index_type"] = type(faiss_index).__name__ if faiss_index is not None else "scan of codes.u8"
    out["mem_index"] = mem()
    reset_peak()
    t = time.perf_counter()
    search(index, queries[0], k=20, mode=mode)
    out["first_search_ms"] = 1000 * (time.perf_counter() - t)
    times, raw, nhits, worst = [], [], [], (0.0, None)
    for q in queries[1:args.queries + 1]:
        t = time.perf_counter()
        hits = search(index, q, k=20, mode=mode)
        dt = time.perf_counter() - t
        times.append(dt)
        nhits.append(len(hits))
        if dt > worst[0]:
            worst = (dt, q.tile_id)
    out["search"] = pct(times)
    out["worst_query_tile"] = worst[1]
    out["hits_min"] = min(nhits)
    out["mem_after"] = mem()
    out["rss_by_file"] = rss_by_file()
    for q in queries[1:args.queries + 1]:  # the index search alone, without ranking ties and reading the hits
        t = time.perf_counter()
        if mode == "hash":
            index.search_hamming(q.code[None], 20)
        else:
            index.search_float(q.embedding[None], 21)
        raw.append(time.perf_counter() - t)
    out["raw"] = pct(raw)
    if mode == "hash":  # how far the k-NN had to look: distance of the 21st and 85th neighbour
        d = [index.search_hamming(q.code[None], 85)[0][0] for q in queries[1:min(len(queries), 31)]]
        out["dist_21st_median"] = float(np.median([x[20] for x in d]))
        out["dist_85th_median"] = float(np.median([x[84] for x in d]))
    if args.profile and (out["search"]["median_ms"] > TARGETS["hash_ms"] / 2
                         or out["search"]["p95_ms"] > TARGETS["hash_ms"]):
        prof = cProfile.Profile()
        prof.enable()
        for q in queries[args.queries + 1:]:
            search(index, q, k=20, mode=mode)
        prof.disable()
        out["profile"] = profile_text(prof)
    out["mem_end"] = mem()
    return out


class Timer:
    """Wraps functions and properties to add up their wall time per name (the plugin's search, in parts)."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        label = label or name
        fn = getattr(owner, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - t

        setattr(owner, name, timed)

    def wrap_property(self, cls, name: str, label: str) -> None:
        prop = getattr(cls, name)
        timer = self

        def get(obj):
            t = time.perf_counter()
            try:
                return prop.fget(obj)
            finally:
                timer.spent[label] = timer.spent.get(label, 0.0) + time.perf_counter() - t

        setattr(cls, name, property(get))

    def take(self) -> dict:
        spent, self.spent = self.spent, {}
        return {k: round(v, 4) for k, v in spent.items()}


def _boxes(raster: str, n: int, seed: int) -> tuple[list[tuple], str]:
    """`n` boxes of one index tile (64 px) spread over the raster, in its CRS."""
    from osgeo import gdal

    from core.archive.footprints import FootprintMaker

    ds = gdal.Open(raster)
    gt = ds.GetGeoTransform()
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        c, r = rng.integers(0, ds.RasterXSize - 64), rng.integers(0, ds.RasterYSize - 64)
        x0, y0 = gt[0] + c * gt[1], gt[3] + r * gt[5]
        boxes.append((x0, y0 + 64 * gt[5], x0 + 64 * gt[1], y0))
    return boxes, FootprintMaker(ds).crs


def step_plugin(args, heatmap: bool = False) -> dict:
    from qgis.core import QgsApplication

    t = time.perf_counter()
    app = QgsApplication([], False)
    app.initQgis()
    out = {"qgis_init_s": time.perf_counter() - t}
    apply_variant(args.variant)
    from rsir_qgis_plugin import controller
    from rsir_qgis_plugin.engine import reader

    out["mem_imports"] = mem()
    timer = Timer()
    timer.wrap(controller.queries, "query_from_box")
    timer.wrap(controller.search, "search")
    timer.wrap(controller.heatmap, "similarity_heatmap")
    timer.wrap(controller.core_encoder, "Encoder", "Encoder (load model)")
    timer.wrap(controller.RetrievalSession, "write_tile_vrts")
    timer.wrap(controller.tile_vrt, "display_range")
    timer.wrap_property(reader.Index, "float_index", "read float.faiss")
    timer.wrap_property(reader.Index, "binary_index", "read codes.faiss")
    timer.wrap(reader.Index, "tile", "Index.tile (OGR GetFeature)")
    prof = cProfile.Profile() if args.profile_plugin else None
    if prof:
        prof.enable()
    t = time.perf_counter()
    session = controller.RetrievalSession(args.index)
    out["session_open_s"] = time.perf_counter() - t
    out["mem_open"] = mem()
    raster = args.raster or session.index.sources[0].path
    boxes, crs = _boxes(raster, 2 * (args.boxes + 1), args.seed)
    runs = []
    modes = ("float", "hash") if not heatmap else ("float",)
    for mode in modes:
        for i in range(args.boxes + 1 if not heatmap else 1):
            box = boxes.pop()
            req = controller.SearchRequest(k=20, mode=mode, heatmap=heatmap)
            t = time.perf_counter()
            result = session.search_box(raster, box, crs, req)
            dt = time.perf_counter() - t
            runs.append({"mode": mode, "first": i == 0, "s": dt, "hits": len(result.hits), "parts": timer.take(),
                         "mem": mem()})
            if prof and i == 0 and mode == "float":
                prof.disable()
                out["profile"] = profile_text(prof, 35)
                prof = None
    out["runs"] = runs
    out["raster"] = raster
    out["mem_end"] = mem()
    out["rss_by_file"] = rss_by_file()
    _KEEP.append(app)  # freed only by os._exit: QGIS's teardown can crash after the work is done
    return out


def run_step(args, step: str, extra: list[str] | None = None, timeout: int = 1800) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), args.index, "--step", step, "--queries", str(args.queries),
           "--boxes", str(args.boxes), "--seed", str(args.seed), "--variant", args.variant]
    cmd += ["--raster", args.raster] if args.raster else []
    cmd += extra or []
    if args.cold:
        evict(args.index)
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"step {step} failed (exit code {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_wall_s"] = wall
    return res


def sizes(index_dir: str) -> list[tuple[str, int]]:
    from core.index.reader import Index

    data = Index(index_dir).data_dir
    return [(name, os.path.getsize(os.path.join(data, name))) for name in sorted(os.listdir(data))]


def report(args, results: dict) -> None:
    rows = []

    def row(what, value, target="", met=None):
        rows.append((what, value, target, "" if met is None else ("yes" if met else "**no**")))

    if "open" in results:
        r = results["open"]
        print(f"\nreader variant: {args.variant}")
        print(f"\nindex {args.index}: {r['tiles']:,} tiles, {r['dim']}-d embeddings, {r['code_bits']}-bit codes; "
              f"float {r['float_factory']}, binary {r['binary_factory']}; page cache {'cold' if args.cold else 'warm'}")
        row("Index() open", f"{r['open_s'] * 1000:.1f} ms")
        row("RSS, imports only", mem_str(r["mem_imports"]))
        row("RSS after Index()", mem_str(r["mem_open"]), "<= 300 MB", r["mem_open"]["VmRSS"] <= TARGETS["rss_mb"])
    for mode in ("hash", "float"):
        if mode not in results:
            continue
        r = results[mode]
        row(f"{mode}: read {'codes' if mode == 'hash' else 'float'}.faiss ({r['index_type']})",
            f"{r['load_index_s']:.2f} s; after: {mem_str(r['mem_index'])}")
        row(f"{mode}: first search (k=20)", f"{r['first_search_ms']:.1f} ms")
        s = r["search"]
        row(f"{mode}: search(k=20), {args.queries} tile queries", f"median {s['median_ms']:.2f} ms, p95 "
            f"{s['p95_ms']:.2f}, max {s['max_ms']:.1f}", "<= 10 ms" if mode == "hash" else "",
            s["median_ms"] <= TARGETS["hash_ms"] if mode == "hash" else None)
        row(f"{mode}: Index.search_{'hamming' if mode == 'hash' else 'float'} alone",
            f"median {r['raw']['median_ms']:.2f} ms, p95 {r['raw']['p95_ms']:.2f}")
        if mode == "hash":
            row("hash: median Hamming distance of the 21st / 85th neighbour",
                f"{r['dist_21st_median']:.0f} / {r['dist_85th_median']:.0f}")
        row(f"{mode}: RSS after open + {args.queries + 1} searches", mem_str(r["mem_after"]), "<= 300 MB"
            if mode == "hash" else "", r["mem_after"]["VmRSS"] <= TARGETS["rss_mb"] if mode == "hash" else None)
        row(f"{mode}: query_from_tile", f"{r['query_from_tile_ms']:.2f} ms each")
        row(f"{mode}: resident MB by mapping after the searches",
            "; ".join(f"{k} {v:.0f}" for k, v in r["rss_by_file"]))
    for name in ("plugin", "heatmap"):
        if name not in results:
            continue
        r = results[name]
        row(f"{name}: QgsApplication init", f"{r['qgis_init_s']:.2f} s")
        row(f"{name}: RetrievalSession() open", f"{r['session_open_s'] * 1000:.0f} ms; {mem_str(r['mem_open'])}")
        for mode in ("float", "hash"):
            runs = [x for x in r["runs"] if x["mode"] == mode]
            if not runs:
                continue
            first = runs[0]
            label = f"{name}: search_box {mode}{' + heat map' if name == 'heatmap' else ''}"
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(first["parts"].items(), key=lambda kv: -kv[1]))
            opened = r["session_open_s"] + first["s"]
            row(f"{label}, first (session open + box)", f"{opened:.2f} s (box {first['s']:.2f} s: {parts})",
                "<= 1 s" if name == "plugin" else "", opened <= TARGETS["box_s"] if name == "plugin" else None)
            if len(runs) > 1:
                later = [x["s"] for x in runs[1:]]
                agg: dict[str, float] = {}
                for x in runs[1:]:
                    for k, v in x["parts"].items():
                        agg[k] = agg.get(k, 0.0) + v / len(later)
                parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(agg.items(), key=lambda kv: -kv[1]))
                row(f"{label}, next {len(later)} (median)", f"{np.median(later):.2f} s (mean parts: {parts})",
                    "<= 1 s" if name == "plugin" else "", float(np.median(later)) <= TARGETS["box_s"]
                    if name == "plugin" else None)
            row(f"{label}: RSS after", mem_str(runs[-1]["mem"]))
        row(f"{name}: resident MB by mapping at the end", "; ".join(f"{k} {v:.0f}" for k, v in r["rss_by_file"]))
    print("\n| measurement | value | target | met? |\n|---|---|---|---|")
    for what, value, target, met in rows:
        print(f"| {what} | {value} | {target} | {met} |")
    print("\nfiles:", ", ".join(f"{n} {s / 2**20:,.0f} MB" for n, s in sizes(args.index)))
    for name, r in results.items():
        if r.get("profile"):
            print(f"\n### cProfile: {name}\n```\n{r['profile']}```")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--raster", help="the raster boxes are drawn on (default: the index's first source)")
    ap.add_argument("--steps", default=",".join(DEFAULT_STEPS))
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--boxes", type=int, default=5, help="plugin: boxes after the first, per mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold", action="store_true", help="evict the index's files from the page cache before each step")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--variant", default="product",
                    help="patch the product in the children to size a fix, comma-separated: " + ", ".join(VARIANTS)
                    + " (see apply_variant)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--profile-queries", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--profile-plugin", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.step:  # a child: one step, its result as one JSON line
        fn = {"open": step_open, "hash": lambda a: step_search(a, "hash"),
              "float": lambda a: step_search(a, "float"), "plugin": step_plugin,
              "heatmap": lambda a: step_plugin(a, heatmap=True)}[args.step]
        res = fn(args)
        print("RESULT " + json.dumps(res), flush=True)
        os._exit(0)  # QGIS's teardown can crash after the work is done

    results = {}
    for step in args.steps.split(","):
        print(f"[{time.strftime('%H:%M:%S')}] step {step} ...", flush=True)
        results[step] = run_step(args, step)
        r = results[step]
        if step in ("plugin",) and args.profile:
            first = r["session_open_s"] + r["runs"][0]["s"]
            if first > TARGETS["box_s"]:
                print(f"[{time.strftime('%H:%M:%S')}] plugin: first box {first:.2f} s > 1 s; again under cProfile",
                      flush=True)
                r["profile"] = run_step(args, "plugin", ["--profile-plugin", "--boxes", "0"]).get("profile")
        if step in ("hash", "float") and not args.profile:
            r.pop("profile", None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
