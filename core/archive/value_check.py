"""Is a source read with sensible values? A 16-bit scene divided by a model's 8-bit scale of 255 puts nearly every
pixel far above 1: every tile then looks the same to the network (all hits at cosine 1, Hamming 0). A decimated
read of the source tells that before anything is encoded, and suggests the scale that maps its bright end near 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from .gdal_open import read_array
from .values import ValueScaling

SAMPLE_SIDE = 256  # the overview read: at most this many pixels a side
TOO_BRIGHT = 1.5  # (raw + offset) / scale above this is beyond what an 8-bit-trained model ever saw
MAX_BRIGHT_SHARE = 0.5  # more than this share of the valid pixels that bright: the reading is wrong


# Integer values whose 98th percentile lies in this range read like reflectance x 10,000 (Sentinel-2 L1C/L2A,
# PlanetScope): they get the one scale the demo reads Sentinel-2 with, whatever the scene holds. Scaling each
# scene by its own bright end instead reads a scene of open water (the demo's: 98 % below 1,410) twice as bright
# as one of land, and archive scenes must be read alike to compare; at 3000 the land of the demo scene sits near
# the median of EuroSAT's images (0.36 of the 8-bit range).
REFLECTANCE_RANGE = (300.0, 4000.0)  # up to 4000: at 3000 it stays below TOO_BRIGHT
REFLECTANCE_SCALE = 3000.0


@dataclass
class ValueReading:
    """What the sample saw: the share of valid pixels read above TOO_BRIGHT, their 98th percentile (raw), the
    scale to read them with (REFLECTANCE_SCALE for reflectance-like integers, else the one that maps that
    percentile to about 1) and why, in words."""

    bright_share: float
    p98: float
    suggested_scale: float
    basis: str = ""

    @property
    def wrong(self) -> bool:
        return self.bright_share > MAX_BRIGHT_SHARE


def nice_scale(value: float) -> float:
    """`value` rounded up to 1, 1.5, 2, 3, 5 or 7.5 times a power of ten (2870 -> 3000, 41000 -> 50000)."""
    if value <= 0:
        return 1.0
    power = 10 ** np.floor(np.log10(value))
    for step in (1, 1.5, 2, 3, 5, 7.5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def sample_reading(ds: gdal.Dataset, bands: list[int], values_read: ValueScaling, what: str) -> ValueReading:
    """Read `bands` of `ds` decimated to at most SAMPLE_SIDE pixels a side and measure how they would reach the
    model; nodata (GDAL masks) and all-zero pixels are left out."""
    f = max(1, int(np.ceil(max(ds.RasterXSize, ds.RasterYSize) / SAMPLE_SIDE)))
    w, h = max(1, ds.RasterXSize // f), max(1, ds.RasterYSize // f)
    arr = np.asarray(read_array(ds, what, buf_xsize=w, buf_ysize=h, band_list=bands,
                                resample_alg=gdal.GRIORA_NearestNeighbour), np.float64)
    arr = arr.reshape(len(bands), -1)
    valid = ~np.all(arr == 0, axis=0)
    for i, b in enumerate(bands):
        nodata = ds.GetRasterBand(b).GetNoDataValue()
        if nodata is not None:
            valid &= arr[i] != nodata
    values = arr[:, valid].ravel()
    if not values.size:
        return ValueReading(0.0, 0.0, values_read.scale)
    p98 = float(np.percentile(values, 98))
    share = float(np.mean(values_read.apply(values) > TOO_BRIGHT))
    bright = p98 + values_read.add_offset
    integer = gdal.GetDataTypeName(ds.GetRasterBand(bands[0]).DataType).startswith(("Byte", "Int", "UInt"))
    if integer and REFLECTANCE_RANGE[0] <= bright <= REFLECTANCE_RANGE[1]:
        return ValueReading(share, p98, REFLECTANCE_SCALE, "reflectance x 10000, as the demo reads Sentinel-2")
    return ValueReading(share, p98, nice_scale(max(bright, 1.0)), "its bright end read near the top of the model's "
                        "range")


def reading_problem(reading: ValueReading, path: str, values: ValueScaling) -> str | None:
    """One line naming the file, what is wrong and the fix; None when the reading looks right."""
    if not reading.wrong:
        return None
    offset = f" + {values.add_offset:g}" if values.add_offset else ""
    return (f"{path}: read as (raw{offset}) / {values.scale:g}, {100 * reading.bright_share:.0f} % of its pixels are "
            f"far above the model's range (98th percentile {reading.p98:g}): every tile would look alike. Give its "
            f"value scale: --scale {reading.suggested_scale:g} (rsir index), Value scale {reading.suggested_scale:g} "
            "(the Build index dialog), or \"scale\" in its band-stack spec")
