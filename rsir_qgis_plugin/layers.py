"""SearchResult -> QGIS layers in one group per query (main thread only; the files are written by the search)."""
from __future__ import annotations

import os

from qgis.core import (
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsFeature,
    QgsField,
    QgsFillSymbol,
    QgsGeometry,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsMultiBandColorRenderer,
    QgsPalLayerSettings,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererRange,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor

INDEX_PROPERTY = "rsir/index_tiles"  # on a layer of an index's tiles.gpkg: the index folder it shows
OUTPUT_PROPERTY = "rsir/output"  # set on every layer the plugin adds: not offered as a query raster
HIT_FIELDS = (("rank", QVariant.Int), ("score", QVariant.Double), ("hamming", QVariant.Int),
              ("tile_id", QVariant.Int), ("source", QVariant.String), ("label", QVariant.String),
              ("bucket", QVariant.String))


def hit_attributes(hit) -> list:
    """Attribute values of a hit in HIT_FIELDS order."""
    return [hit.rank, hit.score, hit.hamming, hit.tile_id, os.path.basename(hit.source), hit.label, hit.bucket]


def _memory_layer(name: str, fields) -> QgsVectorLayer:
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", name, "memory")
    layer.dataProvider().addAttributes([QgsField(n, t) for n, t in fields])
    layer.updateFields()
    return layer


def hits_layer(hits, name: str, colour_by: str = "rank") -> QgsVectorLayer:
    """Footprints with rank, score, hamming, tile_id, source, label, bucket; graduated colours by `colour_by`,
    labelled with it (ranks as they are, Hamming distances as "d 37")."""
    layer = _memory_layer(name, HIT_FIELDS)
    feats = []
    for h in hits:
        f = QgsFeature(layer.fields())
        f.setAttributes(hit_attributes(h))
        if h.footprint_wkt:
            f.setGeometry(QgsGeometry.fromWkt(h.footprint_wkt))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    layer.updateExtents()
    if len(hits) > 1:
        layer.setRenderer(_integer_classes(colour_by, [getattr(h, colour_by) for h in hits]))
    labels = QgsPalLayerSettings()
    if colour_by == "rank":
        labels.fieldName = colour_by
    else:  # "d 37", not "37": beside the hits' ranks a bare distance reads as a rank
        labels.isExpression, labels.fieldName = True, f"'d ' || \"{colour_by}\""
    text = QgsTextFormat()  # white on a dark halo: readable over dark fills and bright imagery alike
    text.setColor(QColor("white"))
    text.setSize(10)
    halo = QgsTextBufferSettings()
    halo.setEnabled(True)
    halo.setColor(QColor(30, 30, 30))
    halo.setSize(1.0)
    text.setBuffer(halo)
    labels.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(labels))
    layer.setLabelsEnabled(True)
    return layer


def integer_breaks(values: list[int], classes: int = 5) -> list[tuple[int, int]]:
    """At most `classes` ranges of whole numbers covering `values` (ranks, Hamming distances): "1", "2-3", ...
    instead of the fractional classes ("1 - 2.8") of equal intervals."""
    lo, hi = min(values), max(values)
    n = min(classes, hi - lo + 1)
    edges = [lo + round(i * (hi - lo + 1) / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(n) if edges[i + 1] > edges[i]]


def _integer_classes(field: str, values: list[int]) -> QgsGraduatedSymbolRenderer:
    """Graduated colours (red: nearest) over integer ranges of `field`, labelled with their whole numbers."""
    ranges = integer_breaks(values)
    ramp = QgsGradientColorRamp(QColor(215, 25, 28), QColor(43, 131, 186))
    out = []
    for i, (a, b) in enumerate(ranges):
        colour = ramp.color(i / max(1, len(ranges) - 1))
        # a light wash and a strong outline: the tile's imagery stays readable under its footprint
        symbol = QgsFillSymbol.createSimple({"color": f"{colour.red()},{colour.green()},{colour.blue()},40",
                                             "outline_color": colour.name(), "outline_width": "0.6"})
        # half-open bounds so whole numbers fall in exactly one class
        out.append(QgsRendererRange(a - 0.5, b + 0.5, symbol, str(a) if a == b else f"{a}-{b}"))
    return QgsGraduatedSymbolRenderer(field, out)


def query_layer(query) -> QgsVectorLayer:
    layer = _memory_layer("query", (("description", QVariant.String),))
    f = QgsFeature(layer.fields())
    f.setAttributes([query.description])
    if query.footprint_wkt:
        f.setGeometry(QgsGeometry.fromWkt(query.footprint_wkt))
    layer.dataProvider().addFeatures([f])
    layer.setRenderer(layer.renderer().clone())
    layer.renderer().setSymbol(QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": "255,255,0",
                                                           "outline_width": "1.2"}))
    return layer


def heatmap_layer(path: str, vmin: float, vmax: float) -> QgsRasterLayer:
    layer = QgsRasterLayer(path, "similarity heat map")
    ramp = QgsColorRampShader(vmin, vmax)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList([QgsColorRampShader.ColorRampItem(vmin, QColor(43, 131, 186), f"{vmin:.2f}"),
                               QgsColorRampShader.ColorRampItem((vmin + vmax) / 2, QColor(255, 255, 191), ""),
                               QgsColorRampShader.ColorRampItem(vmax, QColor(215, 25, 28), f"{vmax:.2f}")])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setOpacity(0.5)
    layer.setRenderer(renderer)
    return layer


def _min_max_stretch(layer: QgsRasterLayer, band: int, stretch: list) -> QgsContrastEnhancement:
    """A linear stretch of `band` over its (min, max) in `stretch` (one pair per band of the layer)."""
    enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
    enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    enhancement.setMinimumValue(stretch[band - 1][0])
    enhancement.setMaximumValue(stretch[band - 1][1])
    return enhancement


def tile_layer(path: str, name: str, stretch: list | None) -> QgsRasterLayer:
    """A hit tile (a VRT window) drawn with its whole source's stretch, so it looks as it does in the scene."""
    layer = QgsRasterLayer(path, name)
    renderer = layer.renderer()
    if stretch and isinstance(renderer, QgsMultiBandColorRenderer) and layer.bandCount() >= 3:
        renderer.setRedContrastEnhancement(_min_max_stretch(layer, renderer.redBand(), stretch))
        renderer.setGreenContrastEnhancement(_min_max_stretch(layer, renderer.greenBand(), stretch))
        renderer.setBlueContrastEnhancement(_min_max_stretch(layer, renderer.blueBand(), stretch))
    elif stretch and isinstance(renderer, QgsSingleBandGrayRenderer):
        renderer.setContrastEnhancement(_min_max_stretch(layer, renderer.grayBand(), stretch))
    return layer


def result_layers(result) -> list:
    """Every layer of a finished search, not yet in a project. A search task makes them in its worker thread and
    hands them to the main thread: opening a tile VRT reads its source's headers (JPEG 2000 band files take tens of
    milliseconds each), which is time the map must not wait."""
    from qgis.core import QgsApplication

    layers = [query_layer(result.query), hits_layer(result.hits, "hits")]
    if result.radius_hits:
        layers.append(hits_layer(result.radius_hits, "hash results (Hamming radius)", colour_by="hamming"))
    layers += [tile_layer(path, name, stretch) for path, name, stretch in result.tile_vrts]  # written by the search
    if result.heatmap_path:
        layers.append(heatmap_layer(result.heatmap_path, result.heatmap_min, result.heatmap_max))
    main = QgsApplication.instance().thread()
    for layer in layers:
        layer.moveToThread(main)  # a no-op on the main thread itself
    return layers


def follow_index(index_dir: str, tiles_path: str, project: QgsProject | None = None) -> int:
    """Point the layers of an index's tiles (INDEX_PROPERTY) at its current generation's tiles.gpkg: an update
    writes a new generation, and the one before the last is removed at the next update, which would leave them
    unavailable. Returns how many layers moved."""
    project = project or QgsProject.instance()
    uri, moved = f"{tiles_path}|layername=tiles", 0
    for layer in project.mapLayers().values():
        if layer.customProperty(INDEX_PROPERTY) == index_dir and layer.source() != uri:
            layer.setDataSource(uri, layer.name(), "ogr")
            moved += 1
    return moved


def add_on_top(layer, project: QgsProject | None = None):
    """Add `layer` to the project at the top of the layer tree (above the imagery and earlier results, which
    would hide it); returns its tree node."""
    project = project or QgsProject.instance()
    project.addMapLayer(layer, False)
    return project.layerTreeRoot().insertLayer(0, layer)


def move_to_top(layer, project: QgsProject | None = None) -> None:
    """Move a layer already in the tree to its top (a node is moved by inserting its clone)."""
    root = (project or QgsProject.instance()).layerTreeRoot()
    node = root.findLayer(layer.id())
    first = root.children()[0] if root.children() else None
    if node is None or getattr(first, "layerId", lambda: None)() == layer.id():
        return
    root.insertChildNode(0, node.clone())
    node.parent().removeChildNode(node)


def add_index_tiles(index_dir: str, tiles_path: str, project: QgsProject | None = None):
    """The index's footprints as a layer (outlines, switched off: thousands of filled squares hide the map), at
    the top of the layer tree, unless one is there already (then it follows the current generation)."""
    project = project or QgsProject.instance()
    if any(lyr.customProperty(INDEX_PROPERTY) == index_dir for lyr in project.mapLayers().values()):
        follow_index(index_dir, tiles_path, project)
        return None
    layer = QgsVectorLayer(f"{tiles_path}|layername=tiles", "RSIR index tiles", "ogr")
    if not layer.isValid():
        return None
    layer.setRenderer(layer.renderer().clone())
    layer.renderer().setSymbol(QgsFillSymbol.createSimple(
        {"color": "0,0,0,0", "outline_color": "255,140,0,160", "outline_width": "0.2"}))
    layer.setCustomProperty(OUTPUT_PROPERTY, True)
    layer.setCustomProperty(INDEX_PROPERTY, index_dir)
    add_on_top(layer, project).setItemVisibilityChecked(False)
    return layer


def add_result_group(result, project: QgsProject | None = None, layers: list | None = None):
    """Add a search's layers (made by `result_layers`, here if not given) in one group at the top of the layer
    tree."""
    project = project or QgsProject.instance()
    layers = layers if layers is not None else result_layers(result)
    root = project.layerTreeRoot()
    for older in root.children():  # earlier queries stay in the tree, hidden and folded, so layers never stack
        if older.name().startswith("RSIR ") and hasattr(older, "addLayer"):
            older.setItemVisibilityChecked(False)
            older.setExpanded(False)
    group = root.insertGroup(0, f"RSIR {result.title}")
    for layer in layers:
        layer.setCustomProperty(OUTPUT_PROPERTY, True)
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    group.setExpanded(True)
    return group
