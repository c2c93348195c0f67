"""A large index without hours of encoding: the windows of a real raster (its footprints, tiles.gpkg, faiss files
and manifest written by the product's own builder), with random unit embeddings and codes in place of the model's.
Searches, heat maps and the plugin then run over it exactly as over an encoded index; only the hits mean nothing.

    .venv/bin/python bench/synthetic_index.py demo_out/s2_rgb.vrt --tiles 100000 --out cache/synthetic/s2-100k

The stride is chosen so the raster yields about --tiles windows (tile 64 px).

Archive scale (issue 28): above --stream-min tiles (or with --stream) the index is written chunk by chunk instead of
through `builder._finalize`, which loads every chunk and builds the float index in RAM (10M x 256-d: > 20 GB):

    .venv/bin/python bench/synthetic_index.py demo_out/s2_rgb.vrt --mosaic 10 --tiles 10000000 \\
        --out cache/synthetic/s2-10m

`--mosaic N` first writes an N x N mosaic of shifted copies of the raster (a GeoTIFF copy of it, N^2 VRT copies
with shifted georeference, one mosaic VRT over them, with overviews) under cache/synthetic/ and indexes that. The
streaming path writes, in the product's formats and through its own writers:
  * embeddings.f16 / codes.u8 chunk by chunk. Codes and embeddings are *clustered* and correlated, as a trained
    model's are: --centres random unit centres in embedding space; a tile's embedding is its centre plus Gaussian
    noise, and its code the sign bits of a fixed random projection of its embedding (random-hyperplane LSH), with
    the noise set so a tile's code differs from its centre's in about --flip of its bits. Tiles of one centre are
    then near in both spaces, and Hamming ties are ordered by cosine like a real model's.
  * codes.faiss with the product's default factory (`default_binary_factory(n, bits)`: multi-index hashing above
    2M codes) through `faiss_build.build_binary_index`;
  * float.faiss: the product's default (IVF, Flat: n x D float32 in RAM) does not fit, so --float-factory (default
    IVF1024,PQ32: 32 bytes a tile, trained on a sample, added in chunks from embeddings.f16);
  * tiles.gpkg through core/index/tiles_gpkg.py (create / add_tiles / index_sources), footprints from
    FootprintMaker, the same row fields `_finalize` writes; in a second process, beside the vectors;
  * the manifest with `_finalize`'s fields (`builder._model_fields`, `_next_generation`), installed by
    `builder._install`.
`--gpkg-from OTHER_INDEX` hard-links (else copies) the tiles.gpkg of an index over the same raster and tiling
instead of writing it again (e.g. a 64-bit variant of the same 10M tiles).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # faiss's OpenMP threads must not spin on shared cores

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.archive.sources import expand_archive  # noqa: E402
from core.default_model import default_model_path  # noqa: E402
from core.encoder import Encoder, l2_normalise, pack_signs  # noqa: E402
from core.index import builder, layout  # noqa: E402

STREAM_MIN = 2_000_000  # tiles: above this `build_synthetic` streams (the _finalize path does not fit in RAM)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_synthetic(raster: str, out: str, tiles: int, model: str, tile: int = 64, chunk: int = 200_000,
                    seed: int = 0, stream: bool | None = None, **stream_opts) -> int:
    """Write the index; returns its tile count. `stream` (default: above STREAM_MIN tiles): the chunked path
    (`build_streaming`, clustered vectors) instead of the builder's `_finalize` (uniform random vectors)."""
    if stream is None:
        stream = tiles > STREAM_MIN
    if stream:
        return build_streaming(raster, out, tiles, model, tile=tile, seed=seed, **stream_opts)
    spec = expand_archive([raster])[0]
    encoder = Encoder(model)
    probe = builder._plan_source(spec, encoder, builder.BuildOptions(tile=tile), check_values=False)
    w, h = probe.width, probe.height
    stride = max(1, int(math.sqrt((w - tile) * (h - tile) / max(tiles, 1))))
    opts = builder.BuildOptions(tile=tile, stride=stride, scale=probe.values.scale)
    plan = [builder._plan_source(spec, encoder, opts, check_values=False)]
    grid = plan[0].windows
    windows = np.asarray([(w.x, w.y, w.w, w.h) for w in grid], np.int64)
    shutil.rmtree(out, ignore_errors=True)
    partial = layout.path(out, layout.PARTIAL)
    os.makedirs(partial)
    rng = np.random.default_rng(seed)
    state = {"chunks": [], "kept": 0, "skipped": 0, "skipped_by_source": [0]}
    for start in range(0, len(windows), chunk):
        part = windows[start:start + chunk]
        emb = l2_normalise(rng.normal(size=(len(part), encoder.info.embedding_dim)).astype(np.float32))
        codes = pack_signs(rng.normal(size=(len(part), encoder.info.effective_code_bits)))
        meta = np.concatenate([np.zeros((len(part), 1), np.int64), part], axis=1)
        name = f"chunk_{len(state['chunks']):06d}.npz"
        np.savez(os.path.join(partial, name), emb=emb, codes=codes, meta=meta)
        state["chunks"].append(name)
        state["kept"] += len(part)
    generation = builder._finalize(plan, encoder, opts, os.path.abspath(out), None, partial, state)
    builder._install(os.path.abspath(out), partial, generation)
    return len(windows)


# -- a big raster ---------------------------------------------------------------------------------------------------
def mosaic_vrt(raster: str, copies: int, folder: str, overviews: bool = True) -> str:
    """An N x N mosaic (N = `copies`) of shifted copies of `raster`, as one VRT: a tiled GeoTIFF copy of the raster
    (fast reads; the demo scene is JPEG 2000), N^2 small VRTs of it with shifted georeference, one mosaic VRT over
    them and (`overviews`) an external .ovr, so a whole-scene read (the plugin's display stretch, QGIS's drawing)
    reads a few MB, as it would of a real large mosaic with pyramids. Reused when it exists."""
    from osgeo import gdal

    gdal.UseExceptions()
    os.makedirs(folder, exist_ok=True)
    mosaic = os.path.abspath(os.path.join(folder, f"mosaic_{copies}x{copies}.vrt"))
    if os.path.exists(mosaic) and (not overviews or os.path.exists(mosaic + ".ovr")):
        return mosaic
    base = os.path.abspath(os.path.join(folder, "base.tif"))  # the copies' VRTs must find it from anywhere
    if not os.path.exists(base):
        gdal.Translate(base, raster, creationOptions=["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"])
    ds = gdal.Open(base)
    ulx, px, _, uly, _, py = ds.GetGeoTransform()
    width, height = ds.RasterXSize * px, ds.RasterYSize * -py
    parts = []
    for r in range(copies):
        for c in range(copies):
            part = os.path.join(folder, "copies", f"copy_{r:03d}_{c:03d}.vrt")
            os.makedirs(os.path.dirname(part), exist_ok=True)
            x0, y0 = ulx + c * width, uly - r * height
            gdal.Translate(part, base, format="VRT", outputBounds=[x0, y0, x0 + width, y0 - height])
            parts.append(part)
    gdal.BuildVRT(mosaic, parts)
    if overviews:
        _log(f"{mosaic}: building overviews")
        gdal.SetConfigOption("COMPRESS_OVERVIEW", "DEFLATE")
        m = gdal.Open(mosaic)
        m.BuildOverviews("AVERAGE", [2, 4, 8, 16, 32, 64])
        m = None
    return mosaic


# -- clustered vectors ------------------------------------------------------------------------------------------------
class ClusteredVectors:
    """Embeddings around `centres` random unit centres and codes = sign bits of a fixed random projection of them
    (random-hyperplane LSH: Hamming distance ~ bits x angle / pi). The noise is set so a tile's code differs from its
    centre's in about `flip` of its bits: angle(tile, centre) = pi x flip, i.e. noise sd = tan(pi flip) / sqrt(D)."""

    def __init__(self, dim: int, bits: int, centres: int = 10_000, flip: float = 0.04, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.bits, self.seed = dim, bits, seed
        self.centres = l2_normalise(rng.normal(size=(centres, dim)).astype(np.float32))
        self.projection = rng.normal(size=(dim, bits)).astype(np.float32)
        self.sigma = math.tan(math.pi * flip) / math.sqrt(dim)

    def chunk(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unit embeddings float32, packed codes, centre of each) of tiles start..start+n-1 (deterministic)."""
        rng = np.random.default_rng([self.seed, start])
        which = rng.integers(0, len(self.centres), n)
        emb = self.centres[which] + self.sigma * rng.standard_normal((n, self.dim), dtype=np.float32)
        emb = l2_normalise(emb)
        codes = np.packbits((emb @ self.projection) > 0, axis=1)
        return emb, codes, which


# -- tiles.gpkg -------------------------------------------------------------------------------------------------------
def _grid_arrays(grid) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(x starts, y starts, window w, h) of a WindowGrid (row-major: id = row * len(xs) + col) without making
    10M TileWindow objects."""
    xs, ys = getattr(grid, "_xs", None), getattr(grid, "_ys", None)
    if xs is None:
        wins = list(grid)
        xs = sorted({w.x for w in wins})
        ys = sorted({w.y for w in wins})
    first = grid[0]
    return np.asarray(xs, np.int64), np.asarray(ys, np.int64), first.w, first.h


WKB_POLYGON = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"),
                        ("xy", "<f8", (10,))])  # a 2D polygon of one closed 5-point ring, little-endian WKB


def footprint_wkbs(maker, xs: np.ndarray, ys: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(source-CRS WKB, EPSG:4326 WKB) of the windows (xs[i], ys[i], w, h), as numpy WKB records: the same corner
    arithmetic as `FootprintMaker.corners` and the same CoordinateTransformation as `FootprintMaker.polygons`,
    for a whole chunk at once (`write_tiles_gpkg` checks the geometries equal `polygons`' on a sample)."""
    gt = maker.gt
    cols = np.stack([xs, xs + w, xs + w, xs, xs], axis=1).astype(np.float64)
    rows = np.stack([ys, ys, ys + h, ys + h, ys], axis=1).astype(np.float64)
    px, py = gt[0] + cols * gt[1] + rows * gt[2], gt[3] + cols * gt[4] + rows * gt[5]
    src = np.zeros(len(xs), WKB_POLYGON)
    src["order"], src["type"], src["rings"], src["points"] = 1, 3, 1, 5
    geo = src.copy()
    src["xy"][:, 0::2], src["xy"][:, 1::2] = px, py
    flat = np.stack([px.ravel(), py.ravel()], axis=1)
    out = np.asarray(maker.to_wgs84.TransformPoints(flat), np.float64)[:, :2].reshape(len(xs), 5, 2)
    geo["xy"][:, 0::2], geo["xy"][:, 1::2] = out[..., 0], out[..., 1]
    return src, geo


def write_tiles_gpkg(path: str, planned, grid_xy, n: int, batch: int = 50_000, log_every: int = 1_000_000,
                     check: int = 2000) -> None:
    """tiles.gpkg of one source's windows 0..n-1, through the product's writer (tiles_gpkg.create / add_tiles /
    index_sources), each row as `builder._finalize` makes it; footprints computed a batch at a time
    (`footprint_wkbs`), checked against `FootprintMaker.polygons` for `check` windows spread over the grid."""
    from osgeo import ogr

    from core.archive.footprints import FootprintMaker
    from core.archive.sources import open_source
    from core.archive.tiling import TileWindow
    from core.index import tiles_gpkg

    xs, ys, tw, th = grid_xy
    ncol = len(xs)
    maker = FootprintMaker(open_source(planned.spec))
    if maker.srs is None:
        raise SystemExit(f"{planned.path}: no georeference; the streaming path writes footprints")
    probe = np.unique(np.linspace(0, n - 1, check).astype(np.int64))
    src, geo = footprint_wkbs(maker, xs[probe % ncol], ys[probe // ncol], tw, th)
    for i, s, g in zip(probe, src, geo):
        want_src, want_geo = maker.polygons(TileWindow(int(xs[i % ncol]), int(ys[i // ncol]), tw, th))
        if bytes(want_src.ExportToWkb()) != s.tobytes() or bytes(want_geo.ExportToWkb()) != g.tobytes():
            raise SystemExit(f"footprint of window {i} differs from FootprintMaker.polygons")
    label = planned.spec.label
    labels = [label] if label else []
    gds, layer = tiles_gpkg.create(path)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        ids = np.arange(start, min(n, start + batch))
        bx, by = xs[ids % ncol], ys[ids // ncol]
        src, geo = footprint_wkbs(maker, bx, by, tw, th)
        rows = []
        for i, x, y, s, g in zip(ids.tolist(), bx.tolist(), by.tolist(), src, geo):
            rows.append({"id": i, "source_id": 0, "source": planned.path, "x": x, "y": y, "w": tw, "h": th,
                         "label": label, "labels": labels, "src_crs": planned.crs,
                         "src_wkt": ogr.CreateGeometryFromWkb(s.tobytes()).ExportToWkt(),
                         "geom": ogr.CreateGeometryFromWkb(g.tobytes())})
        tiles_gpkg.add_tiles(layer, rows)
        done = start + len(ids)
        if done % log_every < batch or done == n:
            rate = done / (time.perf_counter() - t0)
            _log(f"tiles.gpkg: {done:,} / {n:,} rows ({rate:,.0f} rows/s, ~{(n - done) / rate / 60:.1f} min left)")
    t1 = time.perf_counter()
    tiles_gpkg.index_sources(gds)
    t2 = time.perf_counter()
    gds = None  # closes the GeoPackage (GDAL fills the deferred R-tree here)
    _log(f"tiles.gpkg: rows {t1 - t0:.0f} s, source index {t2 - t1:.0f} s, close (R-tree) "
         f"{time.perf_counter() - t2:.0f} s")


def _gpkg_worker(path, planned, grid_xy, n, done):
    from osgeo import gdal

    gdal.SetConfigOption("OGR_SQLITE_CACHE", "1024")  # MB of SQLite page cache: the source_id index, the R-tree
    try:
        write_tiles_gpkg(path, planned, grid_xy, n)
        done.value = 1
    except BaseException as exc:  # reported by the parent too
        _log(f"tiles.gpkg writer failed: {exc!r}")
        done.value = -1
        raise


# -- faiss -------------------------------------------------------------------------------------------------------------
def build_streaming(raster: str, out: str, tiles: int, model: str, tile: int = 64, seed: int = 0,
                    centres: int = 10_000, flip: float = 0.04, float_factory: str = "IVF1024,PQ32",
                    binary_factory: str | None = None, chunk: int = 500_000, gpkg_from: str | None = None,
                    ) -> int:
    """The index of `raster`'s ~`tiles` windows, written chunk by chunk (module docstring); returns its tile count."""

    from core.index.faiss_build import default_binary_factory
    from core.index.manifest import Manifest, write_manifest

    t_start = time.perf_counter()
    spec = expand_archive([raster])[0]
    encoder = Encoder(model)
    info = encoder.info
    probe = builder._plan_source(spec, encoder, builder.BuildOptions(tile=tile), check_values=False)
    w, h = probe.width, probe.height
    stride = max(1, int(math.sqrt((w - tile) * (h - tile) / max(tiles, 1))))
    opts = builder.BuildOptions(tile=tile, stride=stride, scale=probe.values.scale, float_factory=float_factory,
                                binary_factory=binary_factory)
    planned = builder._plan_source(spec, encoder, opts, check_values=False)
    n = len(planned.windows)
    dim, bits = info.embedding_dim, info.effective_code_bits
    _log(f"{planned.path}: {w} x {h} px, tile {tile} stride {stride}: {n:,} windows; model {info.path} "
         f"({dim}-d, {bits}-bit codes)")

    out = os.path.abspath(out)
    shutil.rmtree(out, ignore_errors=True)
    partial = layout.path(out, layout.PARTIAL)
    final = os.path.join(partial, "final")
    os.makedirs(final)

    gpkg = os.path.join(final, layout.TILES)
    writer = None
    if gpkg_from:
        from core.index.reader import Index

        other = Index(gpkg_from)
        if other.n != n or other.manifest.tiling.stride != stride or other.sources[0].path != planned.path:
            raise SystemExit(f"{gpkg_from}: not the same tiles ({other.n} tiles, stride "
                             f"{other.manifest.tiling.stride}, {other.sources[0].path})")
        try:
            os.link(other.tiles_path(), gpkg)
            _log(f"tiles.gpkg: hard link to {other.tiles_path()}")
        except OSError:
            shutil.copyfile(other.tiles_path(), gpkg)
            _log(f"tiles.gpkg: copied from {other.tiles_path()}")
    else:
        done = mp.get_context("fork").Value("i", 0)
        writer = mp.get_context("fork").Process(target=_gpkg_worker,
                                                args=(gpkg, planned, _grid_arrays(planned.windows), n, done))
        writer.start()
        _log(f"tiles.gpkg: writing in process {writer.pid}")

    # embeddings.f16 and codes.u8, chunk by chunk; the codes (n x bits/8) stay in RAM for the binary index
    vectors = ClusteredVectors(dim, bits, centres, flip, seed)
    codes = np.empty((n, bits // 8), np.uint8)
    emb_path = os.path.join(final, layout.EMBEDDINGS)
    t0 = time.perf_counter()
    with open(emb_path, "wb") as fe:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            emb, c, _ = vectors.chunk(start, m)
            fe.write(emb.astype(np.float16).tobytes())
            codes[start:start + m] = c
            if (start // chunk) % 4 == 3 or start + m == n:
                _log(f"vectors: {start + m:,} / {n:,} ({time.perf_counter() - t0:.0f} s)")
    codes.tofile(os.path.join(final, layout.CODES))
    xs, ys, tw, th = _grid_arrays(planned.windows)  # windows.i32: source 0, x, y, w, h per tile (row-major)
    ids = np.arange(n)
    np.column_stack([np.zeros(n, np.int32), xs[ids % len(xs)], ys[ids // len(xs)], np.full(n, tw),
                     np.full(n, th)]).astype(np.int32).tofile(os.path.join(final, layout.WINDOWS))
    del ids

    # the product's writer: faiss files from the (memory-mapped) tables in chunks, and the hash tables on disk
    binary_factory = binary_factory or default_binary_factory(n, bits)
    t = time.perf_counter()
    builder._write_faiss(final, np.memmap(emb_path, np.float16, "r", shape=(n, dim)), codes, bits, float_factory,
                         binary_factory)
    _log(f"faiss files: {float_factory}, {binary_factory} (+ mih/ tables) in {time.perf_counter() - t:.0f} s")
    del codes

    if writer is not None:
        _log("waiting for the tiles.gpkg writer")
        writer.join()
        if writer.exitcode != 0 or done.value != 1:
            raise SystemExit(f"tiles.gpkg writer failed (exit code {writer.exitcode})")

    now = builder._now()
    manifest = Manifest(**builder._model_fields(info), tiling=opts.tiling(), tiles=n, skipped=0,
                        float_factory=float_factory, binary_factory=binary_factory,
                        sources=(planned.entry(0, n, 0),), created=now, updated=now,
                        **builder._next_generation(None),
                        extra={"synthetic": {"centres": centres, "flip": flip, "seed": seed,
                                             "note": "bench/synthetic_index.py: random clustered vectors"}})
    write_manifest(os.path.join(final, layout.MANIFEST), manifest)
    builder._fsync_folder(final)
    builder._install(out, partial, manifest.generation)
    _log(f"{out}: {n:,} tiles installed in {time.perf_counter() - t_start:.0f} s")
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raster", help="a raster or band-stack spec whose windows the tiles are")
    ap.add_argument("--tiles", type=int, default=100_000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=default_model_path(), help="the model the manifest names (its sizes)")
    ap.add_argument("--mosaic", type=int, default=0, metavar="N",
                    help="index an N x N mosaic of shifted copies of the raster (written under cache/synthetic/)")
    ap.add_argument("--mosaic-dir", default=os.path.join("cache", "synthetic", "mosaic"))
    stream = ap.add_mutually_exclusive_group()
    stream.add_argument("--stream", dest="stream", action="store_true", default=None,
                        help=f"write chunk by chunk with clustered vectors (default above {STREAM_MIN:,} tiles)")
    stream.add_argument("--no-stream", dest="stream", action="store_false")
    ap.add_argument("--centres", type=int, default=10_000, help="streaming: clusters of the vectors")
    ap.add_argument("--flip", type=float, default=0.04,
                    help="streaming: share of a code's bits that differ from its cluster centre's (about)")
    ap.add_argument("--float-factory", default="IVF1024,PQ32", help="streaming: the float faiss index")
    ap.add_argument("--binary-factory", default=None,
                    help="streaming: the binary faiss index (default: the product's default_binary_factory)")
    ap.add_argument("--gpkg-from", help="streaming: reuse the tiles.gpkg of an index of the same tiles (hard link)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    raster = args.raster
    if args.mosaic:
        raster = mosaic_vrt(raster, args.mosaic, args.mosaic_dir)
        _log(f"mosaic {raster} ready ({time.perf_counter() - t0:.0f} s)")
    extra = {}
    if args.stream or (args.stream is None and args.tiles > STREAM_MIN):
        extra = {"centres": args.centres, "flip": args.flip, "float_factory": args.float_factory,
                 "binary_factory": args.binary_factory, "gpkg_from": args.gpkg_from}
    n = build_synthetic(raster, args.out, args.tiles, args.model, stream=args.stream, **extra)
    print(f"wrote {args.out}: {n} tiles in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
