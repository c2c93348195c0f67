"""Paired cross-modal tiles: the same footprint cut from two co-registered rasters (optical / SAR, RGB / NIR-SWIR).

The grid runs over raster A; each window's ground footprint is mapped to raster B through both geotransforms
(B is warped on the fly into A's CRS when they differ), so the two rasters may have different resolutions.
Tiles with nodata in either raster are skipped. With a vector label layer, a pair's label is the class of the
polygon covering the tile centre; without one, each pair is its own class (instance-level supervision)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr, osr

from core.archive.pixels import invalid_fraction, read_window
from core.archive.sources import SourceSpec, expand_archive, open_source, resolve_bands
from core.archive.tiling import TileWindow, grid_windows
from core.errors import RsirError

from .datasets import _compact
from .splits import shuffled_split


@dataclass
class PairedSet:
    """Pixels of both modalities for the same footprints, raw values (N, C, S, S) each."""

    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray  # (N,) class index; the pair's own index when unlabelled
    class_names: list[str]  # [] when unlabelled
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    def positions(self) -> np.ndarray:
        """(N, 2) pixel offsets of the tiles in raster A (their ids are "x,y")."""
        return np.array([[int(v) for v in i.split(",")] for i in self.ids], np.int64)

    def subset(self, idx) -> PairedSet:
        idx = np.asarray(idx, dtype=np.int64)
        labels = self.labels[idx] if self.labelled else np.arange(len(idx), dtype=np.int64)
        return PairedSet(self.a[idx], self.b[idx], labels, self.class_names, [self.ids[i] for i in idx])


def open_georeferenced(path: str, purpose: str = "paired tiles") -> tuple[gdal.Dataset, str]:
    """A raster or band-stack spec (not a patch folder) opened with GDAL, and the path its errors should name."""
    spec = expand_archive([path])[0]
    if spec.kind == "patch":
        raise RsirError(f"{path}: is a patch folder; {purpose} need a georeferenced raster or band-stack spec")
    return open_source(SourceSpec(spec.path, spec.kind)), spec.path


def label_lookup(vector_path: str, field: str, wkt: str):
    vec = ogr.Open(vector_path)
    if vec is None:
        raise RsirError(f"{vector_path}: not a vector file OGR can open")
    layer = vec.GetLayer(0)
    if layer.GetLayerDefn().GetFieldIndex(field) < 0:
        raise RsirError(f"{vector_path}: no field {field!r}")
    to_layer = None
    if layer.GetSpatialRef() is not None and wkt:
        src = osr.SpatialReference(wkt=wkt)
        src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        dst = layer.GetSpatialRef().Clone()
        dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        to_layer = osr.CoordinateTransformation(src, dst)

    def label_at(x: float, y: float):
        pt = ogr.Geometry(ogr.wkbPoint)
        pt.AddPoint_2D(*(to_layer.TransformPoint(x, y)[:2] if to_layer else (x, y)))
        layer.SetSpatialFilter(pt)
        found = next((f.GetField(field) for f in layer if f.GetGeometryRef().Contains(pt)), None)
        layer.SetSpatialFilter(None)
        return found

    return vec, label_at


def cut_paired_tiles(raster_a: str, raster_b: str, bands_a: list, bands_b: list, tile: int, size: int,
                     stride: int | None = None, max_invalid: float = 0.0, labels: str = "",
                     label_field: str = "class") -> PairedSet:
    """Pairs of (A, B) tiles of `tile` px of raster A (and the same ground window of B), both read at `size` px."""
    ds_a, path_a = open_georeferenced(raster_a)
    ds_b, path_b = open_georeferenced(raster_b)
    wkt_a, wkt_b = ds_a.GetProjection(), ds_b.GetProjection()
    if not wkt_a or not wkt_b:
        raise RsirError(f"{raster_a if not wkt_a else raster_b}: has no CRS; paired tiles need georeferenced rasters")
    if not osr.SpatialReference(wkt=wkt_a).IsSame(osr.SpatialReference(wkt=wkt_b)):
        ds_b = gdal.AutoCreateWarpedVRT(ds_b, wkt_b, wkt_a, gdal.GRA_Bilinear)
    chosen_a = resolve_bands(ds_a, bands_a, raster_a)
    chosen_b = resolve_bands(ds_b, bands_b, raster_b)
    gt_a, inv_b = ds_a.GetGeoTransform(), gdal.InvGeoTransform(ds_b.GetGeoTransform())
    keep = None
    if labels:
        keep, label_at = label_lookup(labels, label_field, wkt_a)
    a_tiles, b_tiles, names, ids = [], [], [], []
    for win in grid_windows(ds_a.RasterXSize, ds_a.RasterYSize, tile, stride or tile):
        corners = [gdal.ApplyGeoTransform(gt_a, win.x + dx, win.y + dy) for dx in (0, win.w) for dy in (0, win.h)]
        cols, rows = zip(*[gdal.ApplyGeoTransform(inv_b, x, y) for x, y in corners])
        x0, y0, x1, y1 = round(min(cols)), round(min(rows)), round(max(cols)), round(max(rows))
        if x0 < 0 or y0 < 0 or x1 > ds_b.RasterXSize or y1 > ds_b.RasterYSize or x1 <= x0 or y1 <= y0:
            continue  # footprint not (wholly) covered by raster B
        win_b = TileWindow(x0, y0, x1 - x0, y1 - y0)
        pa = read_window(ds_a, chosen_a, win, size, path_a)
        pb = read_window(ds_b, chosen_b, win_b, size, path_b)
        if (invalid_fraction(ds_a, chosen_a, win, pa) > max_invalid
                or invalid_fraction(ds_b, chosen_b, win_b, pb) > max_invalid):
            continue
        name = ""
        if labels:
            cx, cy = gdal.ApplyGeoTransform(gt_a, win.x + win.w / 2, win.y + win.h / 2)
            found = label_at(cx, cy)
            if found is None:
                continue
            name = str(found)
        a_tiles.append(pa)
        b_tiles.append(pb)
        names.append(name)
        ids.append(f"{win.x},{win.y}")
    del keep
    if not a_tiles:
        raise RsirError(f"{raster_a} / {raster_b}: no tile of {tile} px lies wholly inside both rasters"
                        + (" and a labelled polygon" if labels else "") + " without nodata")
    class_names = sorted(set(names)) if labels else []
    y = (np.array([class_names.index(n) for n in names], np.int64) if labels
         else np.arange(len(names), dtype=np.int64))
    return PairedSet(_compact(np.stack(a_tiles)), _compact(np.stack(b_tiles)), y, class_names, ids)


def split_pairs(data: PairedSet, seed: int = 42, train: float = 0.7, val: float = 0.1) -> dict[str, PairedSet]:
    """Random 70/10/20 split of the pairs (ids sorted, shuffled with `seed`)."""
    parts = shuffled_split(list(range(len(data))), seed, train, val, key=lambda i: data.ids[i])
    return {k: data.subset(sorted(v)) for k, v in parts.items()}
