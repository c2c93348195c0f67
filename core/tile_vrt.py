"""A retrieved tile as a small VRT window of its source: a map layer without copying pixels."""
from __future__ import annotations

import os

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
