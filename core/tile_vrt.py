"""A retrieved tile as a small VRT window of its source: a map layer without copying pixels."""
from __future__ import annotations

import os

import numpy as np
from osgeo import gdal

from .archive.sources import SourceSpec, open_source
from .fileio import atomic_path


def write_tile_vrt(source: str, kind: str, bands: list[int], x: int, y: int, w: int, h: int, out_path: str) -> str:
    """Write `out_path` (.vrt) showing window (x, y, w, h) of `source` with the bands the index used. A band-stack
    source is first written beside it as a VRT of its band files (`<spec name>.stack.vrt`), which the window
    refers to by path."""
    stack_vrt = ""
    if kind == "stack":
        name = os.path.splitext(os.path.basename(source))[0]
        folder = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(folder, exist_ok=True)
        stack_vrt = os.path.join(folder, f"{name}.stack.vrt")
    ds = open_source(SourceSpec(source, kind), stack_vrt)
    with atomic_path(out_path) as tmp:
        out = gdal.Translate(tmp, ds, format="VRT", srcWin=[x, y, w, h], bandList=list(bands))
        if out is None:
            raise RuntimeError(f"{source}: could not write a VRT window ({gdal.GetLastErrorMsg()})")
        out = None  # flush
    return out_path


def display_range(source: str, kind: str, bands: list[int], low: float = 2.0, high: float = 98.0,
                  side: int = 512) -> list[tuple[float, float]]:
    """(min, max) per band of the whole source at the `low`/`high` percentiles of its valid pixels (read at most
    `side` px across): the stretch QGIS gives the full scene, so a hit tile drawn with it looks like its place on
    the map (each tile stretched on its own made sea look like dark ground)."""
    ds = open_source(SourceSpec(source, kind))
    scale = min(1.0, side / max(ds.RasterXSize, ds.RasterYSize))
    w, h = max(1, int(ds.RasterXSize * scale)), max(1, int(ds.RasterYSize * scale))
    out = []
    for b in bands:
        band = ds.GetRasterBand(b)
        arr = band.ReadAsArray(buf_xsize=w, buf_ysize=h, resample_alg=gdal.GRIORA_NearestNeighbour)
        if band.GetMaskFlags() & gdal.GMF_ALL_VALID:  # no mask to read: GDAL's all-valid mask has no overviews,
            values = arr.ravel()                      # so reading it walked the full-resolution raster (1 s)
        else:
            valid = band.GetMaskBand().ReadAsArray(buf_xsize=w, buf_ysize=h) != 0
            values = arr[valid] if valid.any() else arr.ravel()
        lo, hi = np.percentile(values, [low, high]) if values.size else (0.0, 1.0)
        out.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return out
