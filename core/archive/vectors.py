"""Query polygons from vector files (anything OGR reads)."""
from __future__ import annotations

import os

from osgeo import ogr

from ..errors import RsirError
from .footprints import srs_label


def open_first_layer(path: str, what: str = "file") -> tuple[ogr.DataSource, ogr.Layer]:
    """(data source, its first layer) of a vector file; RsirError naming the file when it is missing ("no such
    `what`") or not one OGR reads. Keep the data source referenced as long as the layer is used."""
    if not os.path.exists(path):
        raise RsirError(f"{path}: no such {what}")
    ds = ogr.Open(path)
    if ds is None or ds.GetLayerCount() == 0:
        raise RsirError(f"{path}: not a readable vector file")
    return ds, ds.GetLayer(0)


def read_polygon(path: str, fid: int | None = None) -> tuple[str, tuple[float, float, float, float], str | None]:
    """(WKT, envelope (xmin, ymin, xmax, ymax), CRS label) of the polygon feature `fid` of the first layer of
    `path`, or of its first feature. RsirError naming the file when it is missing, unreadable, empty, or the
    feature is not a polygon."""
    ds, layer = open_first_layer(path)
    feature = layer.GetFeature(fid) if fid is not None else layer.GetNextFeature()
    if feature is None:
        raise RsirError(f"{path}: {'has no feature ' + str(fid) if fid is not None else 'has no features'}")
    geom = feature.GetGeometryRef()
    if geom is None or ogr.GT_Flatten(geom.GetGeometryType()) not in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
        raise RsirError(f"{path}: feature {feature.GetFID()} is not a polygon")
    xmin, xmax, ymin, ymax = geom.GetEnvelope()
    return geom.ExportToWkt(), (xmin, ymin, xmax, ymax), srs_label(layer.GetSpatialRef()) or None
