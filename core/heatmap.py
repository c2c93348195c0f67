"""Similarity heat map: every indexed tile of one source scored against a query, overlaps averaged, as a GeoTIFF."""
from __future__ import annotations

import math

import numpy as np
from osgeo import gdal

from .errors import RsirError
from .fileio import atomic_path
from .index.reader import Index

NODATA = -2.0


def _rectangle_sums(rows: int, cols: int, r0, c0, r1, c1, values) -> np.ndarray:
    """(rows, cols) grid where each rectangle [r0, r1) x [c0, c1) adds its value: corner marks on a difference
    grid, then cumulative sums along both axes - one pass however many tiles (a loop over 100k tiles froze
    QGIS for seconds)."""
    width, size = cols + 1, (rows + 1) * (cols + 1)
    values = np.asarray(values, np.float64)
    corners = np.concatenate([r0 * width + c0, r0 * width + c1, r1 * width + c0, r1 * width + c1])
    weights = np.concatenate([values, -values, -values, values])
    diff = np.bincount(corners, weights, minlength=size).reshape(rows + 1, width)
    return diff.cumsum(axis=0).cumsum(axis=1)[:rows, :cols]


def similarity_heatmap(index: Index, query_embedding: np.ndarray, source_path: str, out_path: str,
                       max_cells: int = 2048) -> tuple[str, float, tuple[int, int]]:
    """Write a float32 GeoTIFF of cosine scores over `source_path`'s extent, on a grid fine enough that every tile
    window falls on cell edges (coarsened to a quarter of the smallest tile and at most `max_cells` cells a side:
    finer cells show nothing more of tiles that overlap every few pixels); nodata where no tile was scored.
    Returns (path, highest score, (x, y) source pixel of the best cell's corner)."""
    from .archive.sources import expand_archive, open_source

    spec = expand_archive([source_path])[0]
    entry = next(iter(index.same_grid_sources(open_source(spec), spec.path)), None)
    if entry is None:
        raise RsirError(f"{source_path}: is not in index {index.dir}, nor on the pixel grid of a raster that is; a "
                        "heat map scores indexed tiles, so index the raster first")
    ids, windows = index.source_windows(entry.id)
    if not len(ids):
        raise RsirError(f"{source_path}: has no indexed tiles (all skipped as nodata)")
    cell = int(np.gcd.reduce(windows.ravel()))
    cell = max(cell, math.ceil(max(entry.width, entry.height) / max_cells), int(windows[:, 2:].min()) // 4)
    cols, rows = math.ceil(entry.width / cell), math.ceil(entry.height / cell)
    scores = index.scores(ids, query_embedding)
    x, y, w, h = windows.T
    r0, c0 = y // cell, x // cell
    r1, c1 = np.maximum(r0 + 1, (y + h) // cell), np.maximum(c0 + 1, (x + w) // cell)
    total, count = _rectangle_sums(rows, cols, r0, c0, r1, c1, scores), _rectangle_sums(
        rows, cols, r0, c0, r1, c1, np.ones(len(scores)))
    count = np.rint(count)
    grid = np.where(count > 0, total / np.maximum(count, 1), NODATA).astype(np.float32)

    from .archive.sources import SourceSpec

    src = open_source(SourceSpec(entry.path, entry.kind))
    gt = src.GetGeoTransform()
    with atomic_path(out_path) as tmp:
        ds = gdal.GetDriverByName("GTiff").Create(tmp, cols, rows, 1, gdal.GDT_Float32, ["COMPRESS=DEFLATE"])
        ds.SetGeoTransform((gt[0], gt[1] * cell, gt[2] * cell, gt[3], gt[4] * cell, gt[5] * cell))
        ds.SetProjection(src.GetProjection())
        band = ds.GetRasterBand(1)
        band.SetNoDataValue(NODATA)
        band.SetDescription("cosine similarity to the query")
        band.WriteArray(grid)
        ds = None  # close before the rename
    best = np.unravel_index(np.argmax(np.where(count > 0, grid, -np.inf)), grid.shape)
    return out_path, float(grid[best]), (int(best[1] * cell), int(best[0] * cell))
