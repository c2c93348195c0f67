"""A rule-based land-cover label layer from a scene's own bands, one polygon per tile.

For scenes without a land-cover map. Two rule sets:
- `ndvi` (green, red and near-infrared bands): water where McFeeters' NDWI (green - NIR) / (green + NIR) exceeds a
  threshold, else dense vegetation, sparse vegetation or bare / built by NDVI (NIR - red) / (NIR + red);
- `rgb` (red, green and blue, for orthophotos without NIR): vegetation where the green chromatic coordinate
  G / (R + G + B) exceeds a threshold, split into dark and light vegetation by brightness, else non-vegetation.
Each tile of the grid that `rsir train` cuts (`data.tile`, from the raster's origin) gets the class most of its
pixels have, if at least `min_share` of them do. Mixed tiles get no polygon, so the training data leave them out.
The labels are physical rules, not ground truth: coarse and reproducible, enough to train and score class-level
(uni-modal and cross-modal) retrieval on real paired scenes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr, osr

from core.archive.pixels import read_window
from core.archive.sources import resolve_bands
from core.archive.tiling import grid_windows
from core.errors import RsirError
from core.fileio import atomic_path

from .paired_data import open_georeferenced

NDVI_CLASSES = ("water", "dense_vegetation", "sparse_vegetation", "bare_or_built")
RGB_CLASSES = ("dark_vegetation", "light_vegetation", "non_vegetation")
NODATA = 255


@dataclass
class SpectralRules:
    """The rule set (`ndvi` or `rgb`) and its thresholds. Index thresholds are ratios, so any common scale of the
    bands works; `dark` is a fraction of `scale`, the raw value of full brightness."""

    kind: str = "ndvi"
    water_ndwi: float = 0.0
    dense_ndvi: float = 0.5
    sparse_ndvi: float = 0.2
    green_share: float = 0.37
    dark: float = 0.49
    scale: float = 255.0

    @property
    def classes(self) -> tuple[str, ...]:
        return NDVI_CLASSES if self.kind == "ndvi" else RGB_CLASSES

    @property
    def band_roles(self) -> str:
        return "green, red, near infrared" if self.kind == "ndvi" else "red, green, blue"


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), 0 where both are 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a + b > 0, (a - b) / (a + b), 0.0)


def pixel_classes(b1: np.ndarray, b2: np.ndarray, b3: np.ndarray, rules: SpectralRules = SpectralRules(),
                  valid: np.ndarray | None = None) -> np.ndarray:
    """Class index into `rules.classes` per pixel (uint8) from the rule set's three bands (`ndvi`: green, red,
    NIR; `rgb`: red, green, blue); NODATA where `valid` is False or all three bands are 0."""
    x1, x2, x3 = (np.asarray(a, dtype=np.float64) for a in (b1, b2, b3))
    if rules.kind == "ndvi":
        ndwi, ndvi = _ratio(x1, x3), _ratio(x3, x2)
        out = np.where(ndwi > rules.water_ndwi, 0,
                       np.where(ndvi > rules.dense_ndvi, 1, np.where(ndvi > rules.sparse_ndvi, 2, 3)))
    elif rules.kind == "rgb":
        total = x1 + x2 + x3
        with np.errstate(divide="ignore", invalid="ignore"):
            green = np.where(total > 0, x2 / total, 0.0)
        brightness = total / 3 / rules.scale
        out = np.where(green > rules.green_share, np.where(brightness < rules.dark, 0, 1), 2)
    else:
        raise RsirError(f"unknown spectral rule set {rules.kind!r} (ndvi or rgb)")
    out = out.astype(np.uint8)
    empty = (x1 == 0) & (x2 == 0) & (x3 == 0)
    if valid is not None:
        empty |= ~valid
    out[empty] = NODATA
    return out


def tile_class(classes: np.ndarray, min_share: float) -> tuple[int, float]:
    """(majority class, its share of the tile's pixels), or (-1, share) when that share is below `min_share`.
    Nodata pixels count in the denominator, so a tile mostly outside the scene is never labelled."""
    counts = np.bincount(classes.ravel(), minlength=NODATA + 1)[:NODATA]
    best = int(counts.argmax())
    share = float(counts[best]) / classes.size
    return (best if share >= min_share else -1), share


def write_spectral_labels(raster: str, bands: list, out_path: str, tile: int, min_share: float = 0.6,
                          rules: SpectralRules = SpectralRules(), progress=None) -> dict[str, int]:
    """Write `out_path` (GeoPackage, layer `labels`, fields `class` and `share`, raster's CRS): one square per
    tile of `tile` px whose majority class covers `min_share` of it. `bands`: the rule set's three bands (names
    or 1-based numbers; `ndvi`: green, red, NIR; `rgb`: red, green, blue). Returns the tile count per class."""
    if not 0 < min_share <= 1:
        raise RsirError(f"min_share must be in (0, 1], got {min_share}")
    if len(bands) != 3:
        raise RsirError(f"{raster}: give three bands ({rules.band_roles}), got {bands}")
    ds, path = open_georeferenced(raster, "spectral labels")
    if not ds.GetProjection():
        raise RsirError(f"{raster}: has no CRS; a label layer must be georeferenced to label the tiles cut from it")
    chosen = resolve_bands(ds, bands, raster)
    nodata = [ds.GetRasterBand(b).GetNoDataValue() for b in chosen]
    gt = ds.GetGeoTransform()
    windows = grid_windows(ds.RasterXSize, ds.RasterYSize, tile, tile)
    names = rules.classes
    counts = dict.fromkeys(names, 0)
    with atomic_path(out_path) as tmp:
        vec = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
        layer = vec.CreateLayer("labels", osr.SpatialReference(wkt=ds.GetProjection()), ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
        layer.CreateField(ogr.FieldDefn("share", ogr.OFTReal))
        layer.StartTransaction()
        for i, win in enumerate(windows):
            px = read_window(ds, chosen, win, tile, path).astype(np.float64)
            valid = np.ones(px.shape[1:], bool)
            for band, nd in zip(px, nodata):
                if nd is not None:
                    valid &= band != nd
            cls, share = tile_class(pixel_classes(*px, rules=rules, valid=valid), min_share)
            if cls >= 0:
                ring = ogr.Geometry(ogr.wkbLinearRing)
                for dx, dy in ((0, 0), (win.w, 0), (win.w, win.h), (0, win.h), (0, 0)):
                    ring.AddPoint_2D(*gdal.ApplyGeoTransform(gt, win.x + dx, win.y + dy))
                poly = ogr.Geometry(ogr.wkbPolygon)
                poly.AddGeometry(ring)
                feat = ogr.Feature(layer.GetLayerDefn())
                feat.SetField("class", names[cls])
                feat.SetField("share", round(share, 4))
                feat.SetGeometry(poly)
                layer.CreateFeature(feat)
                counts[names[cls]] += 1
            if progress:
                progress(i + 1, len(windows))
        layer.CommitTransaction()
        vec = None  # flush before the rename
    return counts
