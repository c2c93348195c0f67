"""tiles.gpkg: one polygon feature per tile (fid = tile id), footprints in EPSG:4326, written with OGR."""
from __future__ import annotations

import json

from osgeo import ogr

from ..archive.footprints import wgs84

LAYER = "tiles"
FIELDS = (
    ("source_id", ogr.OFTInteger), ("source", ogr.OFTString), ("x", ogr.OFTInteger), ("y", ogr.OFTInteger),
    ("w", ogr.OFTInteger), ("h", ogr.OFTInteger), ("label", ogr.OFTString), ("labels", ogr.OFTString),
    ("src_crs", ogr.OFTString), ("src_wkt", ogr.OFTString),
)


def create(path: str) -> tuple[ogr.DataSource, ogr.Layer]:
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = ds.CreateLayer(LAYER, wgs84(), ogr.wkbPolygon, options=["FID=fid", "SPATIAL_INDEX=YES"])
    for name, kind in FIELDS:
        layer.CreateField(ogr.FieldDefn(name, kind))
    return ds, layer


def open_update(path: str) -> tuple[ogr.DataSource, ogr.Layer]:
    ds = ogr.Open(path, update=1)
    return ds, ds.GetLayerByName(LAYER)


def add_tiles(layer: ogr.Layer, rows: list[dict]) -> None:
    """Append tiles; each row has `id`, the FIELDS values and optional `geom` (ogr.Geometry in EPSG:4326)."""
    defn = layer.GetLayerDefn()
    layer.StartTransaction()
    for row in rows:
        feat = ogr.Feature(defn)
        feat.SetFID(int(row["id"]))
        for name, _ in FIELDS:
            value = row.get(name)
            if value is not None:
                feat.SetField(name, json.dumps(value) if name == "labels" else value)
        if row.get("geom") is not None:
            feat.SetGeometry(row["geom"])
        if layer.CreateFeature(feat) != 0:
            raise RuntimeError(f"could not write tile {row['id']} to tiles.gpkg")
    layer.CommitTransaction()


def index_sources(ds: ogr.DataSource) -> None:
    """An SQL index on source_id: a source's windows (heat maps) are read without a scan of every tile."""
    ds.ExecuteSQL(f"CREATE INDEX IF NOT EXISTS {LAYER}_source_id ON {LAYER}(source_id)")
