"""Label layers over an index: which tiles an analyst's polygons label. A tile takes the class of the polygon under
its centre. Candidates come from tiles.gpkg's R-tree, polygon by polygon, so the cost follows the labels, not the
size of the index (10M tiles are not read to find 400)."""
from __future__ import annotations

import numpy as np
from osgeo import ogr, osr

from ..archive.footprints import wgs84
from ..archive.vectors import open_first_layer
from ..errors import RsirError


def _open_labels(path: str, field: str) -> tuple[ogr.DataSource, ogr.Layer]:
    ds, layer = open_first_layer(path, "label file")
    defn = layer.GetLayerDefn()
    if defn.GetFieldIndex(field) < 0:
        names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        raise RsirError(f"{path}: no field {field!r} (fields: {', '.join(names) or 'none'})")
    return ds, layer


def labelled_tiles(index, path: str, field: str = "class") -> dict[int, str]:
    """{tile id: label} of the tiles of `index` (a core.index.reader.Index) whose centre lies in a polygon of the
    first layer of `path`; label = that polygon's `field`. Where polygons overlap, the later feature wins."""
    ds, layer = _open_labels(path, field)
    to_wgs84 = None
    if layer.GetSpatialRef() is not None:
        source = layer.GetSpatialRef().Clone()
        source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        to_wgs84 = osr.CoordinateTransformation(source, wgs84())
    out: dict[int, str] = {}
    for feat in layer:
        geom, label = feat.GetGeometryRef(), feat.GetField(field)
        if geom is None or label is None or str(label).strip() == "":
            continue
        geom = geom.Clone()
        if to_wgs84 is not None and geom.Transform(to_wgs84) != 0:
            raise RsirError(f"{path}: feature {feat.GetFID()} cannot be projected to EPSG:4326")
        minx, maxx, miny, maxy = geom.GetEnvelope()
        for tid in index.ids_in_box(minx, miny, maxx, maxy):
            wkt = index.tile(tid).footprint_wkt
            if wkt and geom.Contains(ogr.CreateGeometryFromWkt(wkt).Centroid()):
                out[tid] = str(label)
    return out


def labelled_ids(index, label_paths: list[str], field: str = "class") -> tuple[np.ndarray, list[str]]:
    """(tile ids, their labels), in id order, of every tile of `index` labelled by one of `label_paths`; a tile
    labelled in several files takes the last file's label."""
    labels: dict[int, str] = {}
    for path in label_paths:
        labels.update(labelled_tiles(index, path, field))
    if not labels:
        raise RsirError(f"{', '.join(label_paths)}: no tile of {index.dir} has its centre in a labelled polygon")
    ids = np.array(sorted(labels), np.int64)
    return ids, [labels[int(t)] for t in ids]
