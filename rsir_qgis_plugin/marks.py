"""The analyst's relevance marks as a GeoPackage layer ("RSIR marks"): one polygon per marked tile (its footprint,
EPSG:4326) with tile_id, source, mark ("relevant" / "not relevant"), round and query. The layer is the record:
Refine reads the marks from it, so features the analyst edits, deletes or reloads count; it can be saved (it is
a file) and exported as a label layer for `rsir train` (data.kind = "index", label_field "class")."""
from __future__ import annotations

import os

from osgeo import ogr
from qgis.core import QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsRendererCategory, QgsVectorLayer

from .engine import footprints, mark_labels

LAYER = "marks"
RELEVANT, NOT_RELEVANT = "relevant", "not relevant"
MARKS_PROPERTY = "rsir/marks"  # on the layer: the index folder the marks are tile ids of
FIELDS = (("tile_id", ogr.OFTInteger64), ("source", ogr.OFTString), ("mark", ogr.OFTString),
          ("round", ogr.OFTInteger), ("query", ogr.OFTString))


def create(path: str) -> None:
    """An empty marks GeoPackage at `path` (replacing any file there)."""
    if os.path.exists(path):
        os.remove(path)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = ds.CreateLayer(LAYER, footprints.wgs84(), ogr.wkbPolygon)
    for name, kind in FIELDS:
        layer.CreateField(ogr.FieldDefn(name, kind))
    ds = None  # noqa: F841 - closes the file


def open_layer(path: str, index_dir: str, name: str = "RSIR marks") -> QgsVectorLayer:
    """The marks layer of `path`, styled: green outlines for relevant tiles, red for the others."""
    layer = QgsVectorLayer(f"{path}|layername={LAYER}", name, "ogr")
    if not layer.isValid() or layer.fields().indexOf("mark") < 0 or layer.fields().indexOf("tile_id") < 0:
        raise ValueError(f"{path}: not an RSIR marks layer (a GeoPackage layer '{LAYER}' with tile_id and mark)")
    categories = []
    # green, and purple dashed: the hits' rank colours run to red, which a red "not relevant" was confused with
    for value, colour, style in ((RELEVANT, "30,200,60,255", "solid"), (NOT_RELEVANT, "150,40,220,255", "dash")):
        symbol = QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": colour, "outline_width": "1.0",
                                             "outline_style": style})
        categories.append(QgsRendererCategory(value, symbol, value))
    layer.setRenderer(QgsCategorizedSymbolRenderer("mark", categories))
    layer.setCustomProperty(MARKS_PROPERTY, index_dir)
    return layer


def read(layer: QgsVectorLayer) -> dict[int, bool]:
    """{tile id: relevant?} of every feature (a tile in several features: the last one's mark)."""
    out: dict[int, bool] = {}
    for f in layer.getFeatures():
        if f["tile_id"] is not None and f["mark"] in (RELEVANT, NOT_RELEVANT):
            out[int(f["tile_id"])] = f["mark"] == RELEVANT
    return out


def set_mark(layer: QgsVectorLayer, hit, relevant: bool | None, round_: int, query: str) -> None:
    """Mark a hit (core.search.Hit) relevant, not relevant, or (None) clear its mark; written to the file now."""
    from qgis.core import QgsFeature, QgsGeometry

    ids = [f.id() for f in layer.getFeatures() if f["tile_id"] is not None and int(f["tile_id"]) == hit.tile_id]
    provider = layer.dataProvider()
    if ids:
        provider.deleteFeatures(ids)
    if relevant is not None:
        f = QgsFeature(layer.fields())
        f.setAttribute("tile_id", int(hit.tile_id))
        f.setAttribute("source", hit.source)
        f.setAttribute("mark", RELEVANT if relevant else NOT_RELEVANT)
        f.setAttribute("round", int(round_))
        f.setAttribute("query", query)
        if hit.footprint_wkt:
            f.setGeometry(QgsGeometry.fromWkt(hit.footprint_wkt))
        provider.addFeatures([f])
    layer.updateExtents()
    layer.triggerRepaint()


def export_labels(layer: QgsVectorLayer, path: str, class_name: str, index) -> int:
    """Write the marks as a label layer `rsir train` reads (core.mark_labels: footprints from the index, field
    "class": `class_name` for relevant tiles, "other" for the rest); returns the number of polygons."""
    return mark_labels.write_labels(path, index, read(layer), class_name)
