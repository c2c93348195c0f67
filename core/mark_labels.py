"""An analyst's relevance marks -> a label layer `rsir train` reads (data.kind = "index", label_field "class"):
the footprint of each marked tile, class = the analyst's name for what they searched for, "other" for the tiles
marked not relevant."""
from __future__ import annotations

from osgeo import ogr

from .archive.footprints import wgs84
from .errors import RsirError
from .fileio import atomic_path

OTHER = "other"


def write_labels(path: str, index, marks: dict[int, bool], class_name: str) -> int:
    """Write (atomically) a GeoPackage layer "labels" (fields class, tile_id; footprints in EPSG:4326) of the
    marked tiles of `index` (a core.index.reader.Index); returns the number written. Tiles without a footprint
    (ungeoreferenced patches) cannot be labelled by place and are left out."""
    name = class_name.strip()
    if not name:
        raise RsirError('name the class you searched for (e.g. --label "solar farm")')
    if name == OTHER:
        raise RsirError(f"{OTHER!r} is the class of the tiles marked not relevant; name what you searched for")
    n = 0
    with atomic_path(path) as tmp:
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
        out = ds.CreateLayer("labels", wgs84(), ogr.wkbPolygon)
        out.CreateField(ogr.FieldDefn("class", ogr.OFTString))
        out.CreateField(ogr.FieldDefn("tile_id", ogr.OFTInteger64))
        out.StartTransaction()
        for tid, relevant in sorted(marks.items()):
            wkt = index.tile(tid).footprint_wkt
            if not wkt:
                continue
            feat = ogr.Feature(out.GetLayerDefn())
            feat.SetField("class", name if relevant else OTHER)
            feat.SetField("tile_id", int(tid))
            feat.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
            out.CreateFeature(feat)
            n += 1
        out.CommitTransaction()
        ds = None  # noqa: F841 - flush and close before the rename
    return n
