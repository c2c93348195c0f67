"""Hits -> a GeoPackage with a `hits` layer (ranked footprints) and a `query` layer, in EPSG:4326."""
from __future__ import annotations

import os

from osgeo import ogr

from .archive.footprints import wgs84
from .fileio import atomic_path
from .queries import Query
from .search import Hit

HIT_FIELDS = (("rank", ogr.OFTInteger), ("tile_id", ogr.OFTInteger), ("score", ogr.OFTReal),
              ("hamming", ogr.OFTInteger), ("bucket", ogr.OFTString), ("source", ogr.OFTString),
              ("label", ogr.OFTString), ("x", ogr.OFTInteger), ("y", ogr.OFTInteger), ("w", ogr.OFTInteger),
              ("h", ogr.OFTInteger))


def write_hits_gpkg(path: str, query: Query, hits: list[Hit]) -> str:
    """Write (atomically) layers `query` and `hits`; returns `path`."""
    with atomic_path(path) as tmp:
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
        qlayer = ds.CreateLayer("query", wgs84(), ogr.wkbPolygon)
        qlayer.CreateField(ogr.FieldDefn("description", ogr.OFTString))
        qlayer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
        feat = ogr.Feature(qlayer.GetLayerDefn())
        feat.SetField("description", query.description)
        feat.SetField("kind", query.kind)
        if query.footprint_wkt:
            feat.SetGeometry(ogr.CreateGeometryFromWkt(query.footprint_wkt))
        qlayer.CreateFeature(feat)
        layer = ds.CreateLayer("hits", wgs84(), ogr.wkbPolygon)
        for name, kind in HIT_FIELDS:
            layer.CreateField(ogr.FieldDefn(name, kind))
        layer.StartTransaction()
        for hit in hits:
            feat = ogr.Feature(layer.GetLayerDefn())
            for name, _ in HIT_FIELDS:
                value = getattr(hit, name)
                feat.SetField(name, os.path.basename(value) if name == "source" else value)
            if hit.footprint_wkt:
                feat.SetGeometry(ogr.CreateGeometryFromWkt(hit.footprint_wkt))
            layer.CreateFeature(feat)
        layer.CommitTransaction()
        ds = None  # flush and close before the rename
    return path
