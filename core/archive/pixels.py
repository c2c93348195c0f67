"""Pixel reads: a window of selected bands, resampled to the model's input size; nodata/empty detection."""
from __future__ import annotations

import numpy as np
from osgeo import gdal

from .gdal_open import read_array
from .tiling import TileWindow


def read_window(ds: gdal.Dataset, bands: list[int], win: TileWindow, size: int, what: str = "") -> np.ndarray:
    """(C, size, size) float32 of `bands` over `win`; averaging when shrinking, bilinear when enlarging."""
    alg = gdal.GRIORA_Average if max(win.w, win.h) > size else gdal.GRIORA_Bilinear
    arr = read_array(ds, what or ds.GetDescription(), xoff=win.x, yoff=win.y, xsize=win.w, ysize=win.h,
                     buf_xsize=size, buf_ysize=size, band_list=bands, resample_alg=alg)
    arr = np.asarray(arr, dtype=np.float32)
    return arr[None] if arr.ndim == 2 else arr


def resample_array(arr: np.ndarray, size: int, what: str = "array") -> np.ndarray:
    """An in-memory (C, H, W) array resampled to (C, size, size) by the same GDAL read as tiles."""
    from osgeo import gdal_array

    arr = np.asarray(arr, dtype=np.float32)
    return read_window(gdal_array.OpenArray(arr), list(range(1, arr.shape[0] + 1)),
                       TileWindow(0, 0, arr.shape[2], arr.shape[1]), size, what)


def invalid_fraction(ds: gdal.Dataset, bands: list[int], win: TileWindow, pixels: np.ndarray,
                     nodata: float | None = None) -> float:
    """Share of the tile's pixels that are nodata (GDAL masks: nodata value, alpha, mask band) in any band. A
    raster that declares none has no empty pixels, unless `nodata` names its fill value (the value in every band):
    a zero is data (radar water is 0 after calibration), and only what the data or the user declares is empty."""
    size = pixels.shape[-1]
    invalid = np.zeros((size, size), dtype=bool)
    any_mask = False
    for b in bands:
        band = ds.GetRasterBand(b)
        if band.GetMaskFlags() & gdal.GMF_ALL_VALID:
            continue
        any_mask = True
        mask = band.GetMaskBand().ReadAsArray(win.x, win.y, win.w, win.h, buf_xsize=size, buf_ysize=size)
        invalid |= mask == 0
    if not any_mask and nodata is not None:
        invalid = np.all(pixels == np.float32(nodata), axis=0)
    return float(invalid.mean())
