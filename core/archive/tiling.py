"""Regular tiling: pixel windows on a grid, with stride (overlap) and optional resampling to a ground resolution."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from osgeo import gdal, osr

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


class WindowGrid(Sequence):
    """The row-major windows of `size` px every `stride` px over a `width` x `height` raster, computed on demand:
    a 100,000 px square raster has millions of windows, and planning must not hold them all. A raster smaller
    than `size` gives one clipped window."""

    def __init__(self, width: int, height: int, size: int, stride: int):
        if size <= 0 or stride <= 0:
            raise ValueError(f"tile size and stride must be positive (got {size}, {stride})")
        self.width, self.height, self.size, self.stride = width, height, size, stride
        self._xs, self._ys = _starts(width, size, stride), _starts(height, size, stride)
        self._w, self._h = min(size, width), min(size, height)

    def __len__(self) -> int:
        return len(self._xs) * len(self._ys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        row, col = divmod(i, len(self._xs))
        return TileWindow(self._xs[col], self._ys[row], self._w, self._h)

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, WindowGrid)) else NotImplemented


def grid_windows(width: int, height: int, size: int, stride: int) -> WindowGrid:
    """Row-major windows of `size` px every `stride` px; a raster smaller than `size` gives one clipped window."""
    return WindowGrid(width, height, size, stride)


def source_gsd(ds: gdal.Dataset) -> float:
    """Ground sample distance (pixel width) in the source CRS units; 1.0 for images without georeference."""
    gt = ds.GetGeoTransform()
    return abs(gt[1]) if gt and gt[1] else 1.0


def plan_windows(ds: gdal.Dataset, kind: str, tile: int, stride: int, gsd: float | None, what: str) -> WindowGrid:
    """Windows for one source. Patches are one whole-image tile. With `gsd`, `tile`/`stride` are pixels *at that
    resolution* and are converted to source pixels (the read resamples them to the model input)."""
    if kind == "patch":
        return WindowGrid(ds.RasterXSize, ds.RasterYSize, max(ds.RasterXSize, ds.RasterYSize), 1)
    factor = 1.0
    if gsd:
        if not ds.GetProjection():
            raise RsirError(f"{what}: --gsd needs a georeferenced raster, and this one has no CRS")
        factor = gsd / source_gsd(ds)
    size, step = max(1, round(tile * factor)), max(1, round(stride * factor))
    if gsd and factor > 1 and size > ds.RasterXSize and size > ds.RasterYSize:
        srs = osr.SpatialReference(wkt=ds.GetProjection())
        unit = "degrees" if srs.IsGeographic() else (srs.GetLinearUnitsName() or "CRS units")
        raise RsirError(f"{what}: --gsd {gsd:g} is in the raster's CRS units ({unit}, {source_gsd(ds):.6g} per "
                        f"pixel here): one {tile} px tile at that resolution is larger than the whole "
                        f"{ds.RasterXSize} x {ds.RasterYSize} px raster; give --gsd in {unit}")
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
