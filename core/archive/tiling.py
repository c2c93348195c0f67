"""Regular tiling: pixel windows on a grid, with stride (overlap) and optional resampling to a ground resolution."""
from __future__ import annotations

from dataclasses import dataclass

from osgeo import gdal

from ..errors import RsirError


@dataclass(frozen=True)
class TileWindow:
    """A pixel window of a source: column `x`, row `y`, width `w`, height `h`."""

    x: int
    y: int
    w: int
    h: int


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:  # one more window flush with the far edge, so the whole raster is covered
        starts.append(length - size)
    return starts


def grid_windows(width: int, height: int, size: int, stride: int) -> list[TileWindow]:
    """Row-major windows of `size` px every `stride` px; a raster smaller than `size` gives one clipped window."""
    if size <= 0 or stride <= 0:
        raise ValueError(f"tile size and stride must be positive (got {size}, {stride})")
    return [TileWindow(x, y, min(size, width), min(size, height))
            for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def source_gsd(ds: gdal.Dataset) -> float:
    """Ground sample distance (pixel width) in the source CRS units; 1.0 for images without georeference."""
    gt = ds.GetGeoTransform()
    return abs(gt[1]) if gt and gt[1] else 1.0


def plan_windows(ds: gdal.Dataset, kind: str, tile: int, stride: int, gsd: float | None, what: str) -> list[TileWindow]:
    """Windows for one source. Patches are one whole-image tile. With `gsd`, `tile`/`stride` are pixels *at that
    resolution* and are converted to source pixels (the read resamples them to the model input)."""
    if kind == "patch":
        return [TileWindow(0, 0, ds.RasterXSize, ds.RasterYSize)]
    factor = 1.0
    if gsd:
        if not ds.GetProjection():
            raise RsirError(f"{what}: --gsd needs a georeferenced raster, and this one has no CRS")
        factor = gsd / source_gsd(ds)
    size, step = max(1, round(tile * factor)), max(1, round(stride * factor))
    return grid_windows(ds.RasterXSize, ds.RasterYSize, size, step)


def cover_windows(win: TileWindow, tile: int, max_per_side: int = 8) -> list[TileWindow]:
    """Tile-sized windows spread evenly over `win` (a query box), row-major: ceil(w / tile) x ceil(h / tile) of
    them, the first and last flush with the box's edges, overlapping where the box is not a whole number of
    tiles; at most `max_per_side` a side (then they sample the box with gaps). A box under 1.5 tiles a side is
    one window, itself."""
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if max(win.w, win.h) < 1.5 * tile:
        return [win]
    tw, th = min(tile, win.w), min(tile, win.h)

    def starts(origin: int, length: int, size: int) -> list[int]:
        n = min(max_per_side, -(-length // size))
        return [origin + round(i * (length - size) / (n - 1)) for i in range(n)] if n > 1 else [origin]

    return [TileWindow(x, y, tw, th) for y in starts(win.y, win.h, th) for x in starts(win.x, win.w, tw)]
