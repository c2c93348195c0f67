"""Open rasters with GDAL and turn its failures into RsirError messages naming the file."""
from __future__ import annotations

import contextlib
import os
import sys

from osgeo import gdal

from ..errors import RsirError


def open_raster(path: str) -> gdal.Dataset:
    """Open `path` read-only; raise RsirError naming the file if it is missing, unreadable or not a raster."""
    if not os.path.exists(path):
        raise RsirError(f"{path}: no such file")
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        gdal.ErrorReset()
        ds = gdal.Open(path, gdal.GA_ReadOnly)
        msg = gdal.GetLastErrorMsg()
    finally:
        gdal.PopErrorHandler()
    if ds is None or ds.RasterCount == 0:
        detail = f" ({msg})" if msg else ""
        raise RsirError(f"{path}: not a readable raster{detail}")
    return ds


def read_array(ds: gdal.Dataset, what: str, **kwargs):
    """`ds.ReadAsArray(**kwargs)` that raises RsirError (naming `what`) on a read failure, e.g. a truncated file."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    # a truncated JPEG (or JPEG-compressed TIFF) decodes as grey garbage with only a libjpeg warning: an error here
    previous = gdal.GetThreadLocalConfigOption("GDAL_ERROR_ON_LIBJPEG_WARNING", None)
    gdal.SetThreadLocalConfigOption("GDAL_ERROR_ON_LIBJPEG_WARNING", "TRUE")
    try:
        gdal.ErrorReset()
        arr = ds.ReadAsArray(**kwargs)
        failed = gdal.GetLastErrorType() >= gdal.CE_Failure
        msg = gdal.GetLastErrorMsg()
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_ERROR_ON_LIBJPEG_WARNING", previous)
        gdal.PopErrorHandler()
    if arr is None or failed:
        raise RsirError(f"{what}: reading pixels failed ({msg or 'unknown GDAL error'}); the file may be truncated "
                        "or damaged")
    return arr


@contextlib.contextmanager
def gdal_messages_once(stream=None):
    """GDAL's warnings and errors printed once each while the block runs, not once per call: a GeoTIFF whose CRS
    keys differ from the EPSG registry warned on every footprint, tile and search. For command-line runs; QGIS
    keeps its own handler (its log)."""
    seen: set[tuple[int, str]] = set()

    def handler(err_class, _err_no, message):
        if err_class >= gdal.CE_Warning and (err_class, message) not in seen:
            seen.add((err_class, message))
            kind = "warning" if err_class == gdal.CE_Warning else "error"
            print(f"GDAL {kind}: {message}", file=stream or sys.stderr)

    gdal.PushErrorHandler(handler)
    try:
        yield seen
    finally:
        gdal.PopErrorHandler()
