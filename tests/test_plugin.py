"""The QGIS plugin with a real QgsApplication (pytest-qgis): box search through the map tool -> layer group,
hash layer, tile VRTs and heat map; QgsTask indexing and cancel/resume; Processing; bad input; missing deps."""
from __future__ import annotations

import os

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import Qgis, QgsApplication, QgsGeometry, QgsProject, QgsRasterLayer, QgsRectangle

from core.index import BuildOptions, Index, build_index
from tests.rasters import ORIGIN, write_raster

BOX_00 = QgsRectangle(ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1])  # tile (0, 0); its twin is tile 14


@pytest.fixture()
def indexed(tmp_path, twin_raster, tiny_model):
    out = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, out, BuildOptions(tile=64))
    return out


@pytest.fixture()
def dock(qgis_iface, qgis_new_project):
    from rsir_qgis_plugin.dock import RsirDock

    qgis_iface.messageBar().clear_messages()
    widget = RsirDock(qgis_iface)
    yield widget
    from qgis.PyQt import sip

    widget.wait()  # no search task may outlive the dock it reports to
    widget.release()
    for obj in (widget.box_tool, widget.pick_tool, widget.mark_tool, widget):
        sip.delete(obj)  # now, not at exitQgis(): Qt objects left for QGIS's teardown crash it
    QgsApplication.processEvents()


def _raster_layer(path: str, iface) -> QgsRasterLayer:
    layer = QgsRasterLayer(path, os.path.basename(path))
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    iface.mapCanvas().setDestinationCrs(layer.crs())
    return layer


def _done(dock, task):
    """Wait for a search the dock started in the background; its result (None: it failed or never started)."""
    if task is None:
        return None
    assert dock.wait()
    return task.result


def _box_search(dock, index_dir: str, raster: str, iface, k: int | None = None) -> None:
    """The raster loaded, the index open in the dock, the box over tile (0, 0) searched (and waited for)."""
    _raster_layer(raster, iface)
    dock.open_index(index_dir)
    if k is not None:
        dock.k_spin.setValue(k)
    dock.raster_combo.setLayer(QgsProject.instance().mapLayersByName(os.path.basename(raster))[0])
    dock.box_tool.set_box(BOX_00)
    assert dock.wait()


def _forget_dialog_settings() -> None:
    """The Build index dialog remembers its fields in QGIS's settings: each test starts from its defaults."""
    from qgis.core import QgsSettings

    QgsSettings().remove("rsir/index_dialog")


def _critical(iface) -> list[str]:
    return iface.messageBar().get_messages(Qgis.Critical)


def test_box_search_builds_the_layer_group(dock, indexed, twin_raster, qgis_iface):
    layer = _raster_layer(twin_raster, qgis_iface)
    assert dock.open_index(indexed) and "16 tiles of 64 px (640 m) from 1 source(s)" in dock.info.text()
    assert dock.info.text().endswith("values raw / 255 for 1 source(s)")
    assert dock.request().whole_box is False  # large boxes read as averaged tiles unless asked
    dock.whole_box_check.setChecked(True)
    assert dock.request().whole_box is True
    dock.whole_box_check.setChecked(False)
    dock.raster_combo.setLayer(layer)
    dock.k_spin.setValue(5)
    assert dock.radius_spin.value() == 13  # 20 % of the index's 64 bits
    dock.radius_check.setChecked(True)
    dock.tiles_spin.setValue(2)
    dock.heat_check.setChecked(True)
    dock.box_tool.set_box(BOX_00)  # as if the analyst dragged the box on the map
    dock.wait()
    assert not _critical(qgis_iface)
    result, group = dock.last_result, dock.last_group
    assert group.name().startswith("RSIR ") and group.parent() == QgsProject.instance().layerTreeRoot()
    assert group.name().endswith("(cosine)")  # how the hits were ranked
    names = [child.name() for child in group.children()]
    assert names[:3] == ["query", "hits", "hash results (Hamming radius)"]
    assert names[3].startswith("#1 tile ") and names[4].startswith("#2 tile ") and names[5] == "similarity heat map"

    hits_layer = group.children()[1].layer()
    feats = sorted(hits_layer.getFeatures(), key=lambda f: f["rank"])
    assert [f["rank"] for f in feats] == [1, 2, 3, 4, 5]
    assert {feats[0]["tile_id"], feats[1]["tile_id"]} == {0, 14}
    assert feats[0]["score"] > 0.998 and feats[2]["score"] < 0.999 and feats[0]["source"] == "twin.tif"
    assert [f.name() for f in hits_layer.fields()] == ["rank", "score", "hamming", "tile_id", "source", "label",
                                                       "bucket"]
    assert hits_layer.renderer().type() == "graduatedSymbol" and hits_layer.labelsEnabled()

    hash_layer = group.children()[2].layer()
    assert all(f["hamming"] <= 13 for f in hash_layer.getFeatures()) and hash_layer.featureCount() >= 2
    all_d = Index(indexed).hamming(result.query.code, np.arange(16))
    assert hash_layer.featureCount() == int((all_d <= 13).sum())
    from qgis.core import QgsExpression, QgsExpressionContext, QgsExpressionContextUtils

    label = hash_layer.labeling().settings()
    first = next(hash_layer.getFeatures())
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(hash_layer))
    context.setFeature(first)
    assert label.isExpression and QgsExpression(label.fieldName).evaluate(context) == f"d {first['hamming']}"

    # tile layers are VRT windows of the source: same pixels, no copies
    vrt = group.children()[3].layer()
    assert vrt.isValid() and vrt.source().endswith(".vrt")
    tid = feats[0]["tile_id"]
    x, y = (0, 0) if tid == 0 else (128, 192)
    src = gdal.Open(twin_raster).ReadAsArray(x, y, 64, 64)
    np.testing.assert_array_equal(gdal.Open(vrt.source()).ReadAsArray(), src)
    # drawn with the whole scene's stretch (2-98 %), not one of its own: a tile looks as it does on the map
    scene = np.asarray(gdal.Open(twin_raster).ReadAsArray(), float)
    red = vrt.renderer().redContrastEnhancement()
    assert (red.minimumValue(), red.maximumValue()) == pytest.approx(tuple(np.percentile(scene[0], [2, 98])))
    assert (red.minimumValue(), red.maximumValue()) != pytest.approx(tuple(np.percentile(src[0], [2, 98])))

    # heat map: maximal on the query tile and its twin, lower elsewhere
    heat = gdal.Open(result.heatmap_path).ReadAsArray()
    assert heat.shape == (4, 4)
    assert heat[0, 0] == pytest.approx(heat.max(), abs=2e-3) and heat[3, 2] == pytest.approx(heat.max(), abs=2e-3)
    others = np.delete(heat.ravel(), [0, 14])
    assert others.max() < heat.max() - 1e-3
    assert group.children()[5].layer().renderer().opacity() == 0.5
    assert dock.table.rowCount() == 5 and {dock.table.item(0, 1).text(), dock.table.item(1, 1).text()} == {"0", "14"}


def test_switching_float_and_hash_searches_the_last_query_again(dock, indexed, twin_raster, qgis_iface):
    _box_search(dock, indexed, twin_raster, qgis_iface, k=3)
    assert dock.last_group.name().endswith("(cosine)") and not dock.rerank_spin.isEnabled()
    dock.mode_combo.setCurrentIndex(1)  # as the analyst picks Hash (Hamming)
    assert dock.wait() and dock.rerank_spin.isEnabled()
    assert dock.last_group.name().endswith("(Hamming)") and dock.last_group.name().count("box") == 1
    assert {h.tile_id for h in dock.last_result.hits[:2]} == {0, 14}
    dock.mode_combo.setCurrentIndex(0)
    assert dock.wait() and dock.last_group.name().endswith("(cosine)")
    dock.open_index(indexed)  # another index (or the same, reopened): nothing to search again
    dock.mode_combo.setCurrentIndex(1)
    assert dock.task is None and dock.last_result is None


def test_more_like_this_and_image_queries(dock, indexed, twin_raster, tmp_path, qgis_iface):
    _raster_layer(twin_raster, qgis_iface)
    dock.open_index(indexed)
    # click at the centre of tile (0, 0), in the canvas CRS (the raster's UTM)
    from qgis.core import QgsPointXY
    dock.pick_tool.picked.emit(QgsPointXY(ORIGIN[0] + 320, ORIGIN[1] - 320))
    dock.wait()
    assert dock.last_result.query.tile_id == 0 and dock.last_result.hits[0].tile_id == 14
    # the query layer shows the picked tile's footprint (it had no geometry: zooming to it failed)
    query_layer = next(n.layer() for n in dock.last_group.findLayers() if n.layer().name() == "query")
    query_geom = next(query_layer.getFeatures()).geometry()
    assert not query_geom.isEmpty()
    assert query_geom.boundingBox().toString(6) == QgsGeometry.fromWkt(
        dock.session.index.tile(0).footprint_wkt).boundingBox().toString(6)
    plain = [h.tile_id for h in dock.last_result.hits]
    dock.expand_spin.setValue(3)  # query expansion: the hits of the moved query, its description says so
    dock.pick_tool.picked.emit(QgsPointXY(ORIGIN[0] + 320, ORIGIN[1] - 320))
    dock.wait()
    assert "expanded with its 3 nearest tiles" in dock.last_result.query.description
    from core.expansion import expand_query
    from core.queries import query_from_tile
    from core.search import search
    index = dock.session.index
    want = search(index, expand_query(index, query_from_tile(index, 0), 3), k=len(plain))
    assert [h.tile_id for h in dock.last_result.hits] == [h.tile_id for h in want] != plain
    dock.expand_spin.setValue(0)
    assert not dock.rerank_spin.isEnabled()  # re-ranking is a hash-search option
    dock.mode_combo.setCurrentIndex(1)
    dock.rerank_spin.setValue(6)
    dock.pick_tool.picked.emit(QgsPointXY(ORIGIN[0] + 320, ORIGIN[1] - 320))
    dock.wait()
    want = search(index, query_from_tile(index, 0), k=len(plain), mode="hash", rerank=6)
    assert [h.tile_id for h in dock.last_result.hits] == [h.tile_id for h in want]
    scores = [h.score for h in dock.last_result.hits]
    assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:]))
    assert dock.last_group.name().endswith("(Hamming, top 6 re-ranked by cosine)")
    dock.rerank_spin.setValue(0)
    dock.mode_combo.setCurrentIndex(0)
    img = write_raster(str(tmp_path / "q.tif"), gdal.Open(twin_raster).ReadAsArray(0, 0, 64, 64), epsg=None)
    result = _done(dock, dock.search_image(img))
    assert {h.tile_id for h in result.hits[:2]} == {0, 14}
    assert dock.table.rowCount() == len(result.hits) and dock.table.item(0, 0).text() == "1"
    dock.open_index(indexed)  # another (here: the same) index opened: the old hits leave the table
    assert dock.table.rowCount() == 0 and dock.last_result is None


def test_heat_map_that_cannot_be_drawn_leaves_the_hits_and_a_warning(dock, indexed, twin_raster, tmp_path,
                                                                      qgis_iface):
    """A box on a scene that is not in the index still finds its places; only the heat map is left out."""
    elsewhere = write_raster(str(tmp_path / "elsewhere.tif"), gdal.Open(twin_raster).ReadAsArray(),
                             origin=(ORIGIN[0] + 50_000, ORIGIN[1]))
    layer = _raster_layer(elsewhere, qgis_iface)
    dock.open_index(indexed)
    dock.raster_combo.setLayer(layer)
    dock.k_spin.setValue(2)
    dock.heat_check.setChecked(True)
    qgis_iface.messageBar().clear_messages()
    dock.box_tool.set_box(QgsRectangle(ORIGIN[0] + 50_000, ORIGIN[1] - 640, ORIGIN[0] + 50_640, ORIGIN[1]))
    dock.wait()
    assert not _critical(qgis_iface)
    assert {h.tile_id for h in dock.last_result.hits} == {0, 14} and dock.last_result.heatmap_path is None
    assert [c.name() for c in dock.last_group.children()][:2] == ["query", "hits"]
    assert "similarity heat map" not in [c.name() for c in dock.last_group.children()]
    warning = qgis_iface.messageBar().get_messages(Qgis.Warning)[-1]
    assert "no heat map" in warning and "elsewhere.tif" in warning
    result = _done(dock, dock.search_image(elsewhere))  # an image-file query has no raster to map either
    assert result.hits and "no heat map" in qgis_iface.messageBar().get_messages(Qgis.Warning)[-1]


def test_selected_polygon_query_and_zoom_to_hit(dock, indexed, twin_raster, qgis_iface):
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = _raster_layer(twin_raster, qgis_iface)
    dock.open_index(indexed)
    dock.raster_combo.setLayer(layer)
    # a field boundary drawn in lon/lat over tile (0, 0) of the UTM raster
    polys = QgsVectorLayer("Polygon?crs=EPSG:4326", "fields", "memory")
    feat = QgsFeature()
    wkt = dock.session.index.tile(0).footprint_wkt
    feat.setGeometry(QgsGeometry.fromWkt(wkt).buffer(-1e-6, 2))
    polys.dataProvider().addFeatures([feat])
    QgsProject.instance().addMapLayer(polys)
    assert dock.search_selected_feature(polys) is None and "Select a polygon" in _critical(qgis_iface)[-1]
    polys.selectAll()
    result = _done(dock, dock.search_selected_feature(polys))
    assert {h.tile_id for h in result.hits[:2]} == {0, 14}
    dock.zoom_to_hit(0)
    extent = qgis_iface.mapCanvas().extent()
    hit = result.hits[0]
    assert extent.contains(QgsRectangle(ORIGIN[0] + hit.x * 10 + 1, ORIGIN[1] - (hit.y + 64) * 10 + 1,
                                        ORIGIN[0] + (hit.x + 64) * 10 - 1, ORIGIN[1] - hit.y * 10 - 1))
    # an L-shaped stand over tiles 0, 1 and 4: its bounding box spans 2 x 2 tiles, and only its three are the query
    index = dock.session.index
    shape = QgsGeometry.unaryUnion([QgsGeometry.fromWkt(index.tile(t).footprint_wkt) for t in (0, 1, 4)])
    feat.setGeometry(shape.buffer(-1e-6, 2))
    ell = QgsVectorLayer("Polygon?crs=EPSG:4326", "stand", "memory")
    ell.dataProvider().addFeatures([feat])
    QgsProject.instance().addMapLayer(ell)
    ell.selectAll()
    result = _done(dock, dock.search_selected_feature(ell))
    assert "polygon" in result.query.description and "(2 x 2 tiles of 64 px, 3 averaged)" in result.query.description
    want = index.embeddings([0, 1, 4]).mean(axis=0)
    np.testing.assert_allclose(result.query.embedding, want / np.linalg.norm(want), atol=2e-3)
    # two selected: the L and the field over tile 0 - one query, the L's three tiles and tile 0 averaged
    both = QgsVectorLayer("Polygon?crs=EPSG:4326", "stands", "memory")
    field = QgsFeature()
    field.setGeometry(QgsGeometry.fromWkt(wkt).buffer(-1e-6, 2))
    both.dataProvider().addFeatures([feat, field])
    QgsProject.instance().addMapLayer(both)
    both.selectAll()
    result = _done(dock, dock.search_selected_feature(both))
    assert result.query.description.startswith("2 polygons") and "(4 tiles averaged)" in result.query.description
    want = index.embeddings([0, 1, 4, 0]).mean(axis=0)
    np.testing.assert_allclose(result.query.embedding, want / np.linalg.norm(want), atol=3e-3)


def test_bad_input_gives_one_message_and_no_layers(dock, indexed, twin_raster, tmp_path, qgis_iface):
    bar = qgis_iface.messageBar()
    assert not dock.open_index(str(tmp_path))
    assert "not an rsir index" in _critical(qgis_iface)[-1]
    layer = _raster_layer(twin_raster, qgis_iface)
    dock.open_index(indexed)
    dock.raster_combo.setLayer(layer)
    before = len(QgsProject.instance().layerTreeRoot().children())
    dock.box_tool.set_box(QgsRectangle(ORIGIN[0] - 320, ORIGIN[1] - 640, ORIGIN[0] + 320, ORIGIN[1]))
    dock.wait()
    message = _critical(qgis_iface)[-1]
    # short enough to read in the message bar: the CRS by its code, not its WKT
    assert "extends beyond raster" in message and "(EPSG:32618)" in message and "PROJCS" not in message
    assert "draw it inside" in message and len(message) <= 122  # one line in the message bar
    gray = _raster_layer(write_raster(str(tmp_path / "gray.tif"), np.zeros((1, 256, 256), np.uint8)), qgis_iface)
    dock.raster_combo.setLayer(gray)
    dock.box_tool.set_box(BOX_00)
    dock.wait()
    assert "gray.tif: has 1 band(s) but band 2 is needed" in _critical(qgis_iface)[-1]
    # degree-based CRS: works (box reprojected) but warns
    geo = write_raster(str(tmp_path / "geo.tif"), gdal.Open(twin_raster).ReadAsArray(), origin=(10.0, 1.0),
                       gsd=0.0001, epsg=4326)
    geo_layer = _raster_layer(geo, qgis_iface)
    dock.raster_combo.setLayer(geo_layer)
    dock.box_tool.set_box(QgsRectangle(10.0, 1.0 - 0.0064, 10.0064, 1.0))
    dock.wait()
    assert "degree-based CRS" in bar.get_messages(Qgis.Warning)[-1]
    assert {h.tile_id for h in dock.last_result.hits[:2]} == {0, 14}
    dock.box_tool.set_box(QgsRectangle(10.0, 1.0 - 0.0064, 10.0064, 1.0))  # the same source again: said once
    dock.wait()
    assert sum("degree-based CRS" in m for m in bar.get_messages(Qgis.Warning)) == 1
    layer_count = len(QgsProject.instance().layerTreeRoot().children())
    assert layer_count == before + 2 + 2  # gray and geo layers, two result groups; failures added none


def test_index_task_runs_and_resumes_after_cancel(tmp_path, twin_raster, tiny_model, qgis_new_project):
    import time

    from rsir_qgis_plugin.tasks import IndexTask

    class CancelMidway(IndexTask):
        def setProgress(self, progress):
            super().setProgress(progress)
            if progress > 30:
                self.cancel()

    out = str(tmp_path / "idx")
    opts = BuildOptions(tile=16, checkpoint_every=32, batch_size=16)
    first = CancelMidway([twin_raster], tiny_model, out, opts)
    assert first.run() is False and first.was_cancelled and "rerun the same command to resume" in first.error
    first.finished(False)
    assert not os.path.exists(os.path.join(out, "manifest.json"))

    done = {}
    again = IndexTask([twin_raster], tiny_model, out, opts,
                      on_done=lambda task, ok: done.update(ok=ok, report=task.report, summary=task.summary()))
    QgsApplication.taskManager().addTask(again)
    for _ in range(600):
        QgsApplication.processEvents()
        if done:
            break
        time.sleep(0.05)
    assert done.get("ok"), done
    assert done["report"].resumed_windows >= 64 and done["report"].total_tiles == 256
    assert "index now holds 256 tiles" in done["summary"]
    tiles_layers = QgsProject.instance().mapLayersByName("RSIR index tiles")
    assert len(tiles_layers) == 1 and tiles_layers[0].featureCount() == 256

    # an append writes the index's next generation: the tiles layer follows it (no second layer), and stays valid
    from tests.rasters import mosaic_with_twin, write_raster

    more = write_raster(str(tmp_path / "more.tif"), mosaic_with_twin(seed=4))
    done.clear()
    third = IndexTask([more], tiny_model, out, opts, on_done=lambda task, ok: done.update(ok=ok))
    QgsApplication.taskManager().addTask(third)
    for _ in range(600):
        QgsApplication.processEvents()
        if done:
            break
        time.sleep(0.05)
    assert done.get("ok"), third.error
    tiles_layers = QgsProject.instance().mapLayersByName("RSIR index tiles")
    assert len(tiles_layers) == 1 and tiles_layers[0].isValid() and tiles_layers[0].featureCount() == 512
    assert "gen-000002" in tiles_layers[0].source()


def test_processing_algorithms(tmp_path, twin_raster, tiny_model, qgis_processing, qgis_new_project):
    import processing

    from rsir_qgis_plugin.processing_provider import RsirProvider

    provider = RsirProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    try:
        layer = QgsRasterLayer(twin_raster, "twin")
        out = str(tmp_path / "idx")
        res = processing.run("rsir:buildindex", {"SOURCES": [layer], "MODEL": tiny_model, "TILE": 64, "STRIDE": 64,
                                                 "OUT": out})
        assert res["TILES"] == 16 and os.path.exists(os.path.join(out, "manifest.json"))
        assert Index(out).manifest.tiling.nodata is None  # no NODATA given: zeros are data
        # a 16-bit copy stored with +1000, indexed with the offset that undoes it: the same vectors
        shifted = write_raster(str(tmp_path / "shifted.tif"),
                               gdal.Open(twin_raster).ReadAsArray().astype(np.uint16) + 1000)
        res = processing.run("rsir:buildindex", {"SOURCES": [QgsRasterLayer(shifted, "shifted")], "MODEL": tiny_model,
                                                 "TILE": 64, "STRIDE": 64, "SCALE": 255, "ADD_OFFSET": -1000,
                                                 "NODATA": 0, "OUT": str(tmp_path / "shifted_idx")})
        shifted_index = Index(str(tmp_path / "shifted_idx"))
        tiling = shifted_index.manifest.tiling
        assert (tiling.add_offset, tiling.nodata) == (-1000, 0)
        np.testing.assert_allclose(shifted_index.embeddings(list(range(16))), Index(out).embeddings(list(range(16))),
                                   atol=2e-3)
        # 256 tiles of a 16-bit model: codes fitted on the archive, unless MODEL_CODES keeps the model's
        from tests.conftest import export_tiny

        model16 = export_tiny(str(tmp_path / "tiny16.onnx"), bits=16)
        for keep, bits, source in ((False, 0, "archive-itq"), (True, 0, "hash"), (False, 8, "archive-itq")):
            folder = str(tmp_path / f"codes_{keep}_{bits}")
            processing.run("rsir:buildindex", {"SOURCES": [layer], "MODEL": model16, "TILE": 16, "STRIDE": 16,
                                               "MODEL_CODES": keep, "CODE_BITS": bits, "OUT": folder})
            index = Index(folder)
            assert (index.n, index.manifest.code_source, index.code_bits) == (256, source, bits or 16)
        extent = f"{BOX_00.xMinimum()},{BOX_00.xMaximum()},{BOX_00.yMinimum()},{BOX_00.yMaximum()} [EPSG:32618]"
        res = processing.run("rsir:searchbyextent", {"INDEX": out, "RASTER": layer, "EXTENT": extent, "K": 3,
                                                     "HASH": False, "OUTPUT": "memory:"})
        feats = sorted(res["OUTPUT"].getFeatures(), key=lambda f: f["rank"])
        assert {feats[0]["tile_id"], feats[1]["tile_id"]} == {0, 14}
        # west of Greenwich and south of the equator: an extent of negative numbers, as QGIS writes it
        from tests.rasters import mosaic_with_twin
        south_west = write_raster(str(tmp_path / "south_west.tif"), mosaic_with_twin(), origin=(-60.0, -30.0),
                                  gsd=0.0001, epsg=4326)
        sw_layer = QgsRasterLayer(south_west, "south west")
        processing.run("rsir:buildindex", {"SOURCES": [sw_layer], "MODEL": tiny_model, "TILE": 64, "STRIDE": 64,
                                           "OUT": str(tmp_path / "sw_idx")})
        res = processing.run("rsir:searchbyextent", {"INDEX": str(tmp_path / "sw_idx"), "RASTER": sw_layer,
                                                     "EXTENT": "-60.0,-59.9936,-30.0064,-30.0 [EPSG:4326]", "K": 2,
                                                     "HASH": False, "OUTPUT": "memory:"})
        assert {f["tile_id"] for f in res["OUTPUT"].getFeatures()} == {0, 14}
        # polygons in batch: a field over tile (0, 0) and an L over tiles 0, 1 and 4, each with its own hits
        from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer
        fields_layer = QgsVectorLayer("Polygon?crs=EPSG:32618", "fields", "memory")
        x0, y0 = ORIGIN
        feats = []
        for wkt in (f"POLYGON(({x0 + 10} {y0 - 10},{x0 + 630} {y0 - 10},{x0 + 630} {y0 - 630},{x0 + 10} {y0 - 10}))",
                    f"POLYGON(({x0 + 1} {y0 - 1},{x0 + 1279} {y0 - 1},{x0 + 1279} {y0 - 639},{x0 + 639} {y0 - 639},"
                    f"{x0 + 639} {y0 - 1279},{x0 + 1} {y0 - 1279},{x0 + 1} {y0 - 1}))"):
            feat = QgsFeature()
            feat.setGeometry(QgsGeometry.fromWkt(wkt))
            feats.append(feat)
        fields_layer.dataProvider().addFeatures(feats)
        res = processing.run("rsir:searchbypolygons", {"INDEX": out, "RASTER": layer, "POLYGONS": fields_layer,
                                                       "K": 3, "HASH": False, "OUTPUT": "memory:"})
        by_query = {}
        for f in res["OUTPUT"].getFeatures():
            by_query.setdefault(f["query_fid"], []).append((f["rank"], f["tile_id"], f["score"]))
        assert sorted(by_query) == [1, 2] and all(len(v) == 3 for v in by_query.values())
        assert {t for r, t, _ in sorted(by_query[1])[:2]} == {0, 14}
        ell = Index(out).embeddings([0, 1, 4]).mean(axis=0)
        best = max(Index(out).embeddings(list(range(16))) @ (ell / np.linalg.norm(ell)))
        assert sorted(by_query[2])[0][2] == pytest.approx(best, abs=3e-3)  # the L's own query: its 3 tiles averaged
        res = processing.run("rsir:searchbypolygons", {"INDEX": out, "RASTER": layer, "POLYGONS": fields_layer,
                                                       "ONE_QUERY": True, "K": 3, "HASH": False, "OUTPUT": "memory:"})
        one = sorted((f["rank"], f["score"], f["query_fid"]) for f in res["OUTPUT"].getFeatures())
        both = Index(out).embeddings([0, 0, 1, 4]).mean(axis=0)  # the field (about tile 0) and the L's three tiles
        best = max(Index(out).embeddings(list(range(16))) @ (both / np.linalg.norm(both)))
        assert len(one) == 3 and {q for _, _, q in one} == {-1} and one[0][1] == pytest.approx(best, abs=5e-3)
        # a 2-tile extent: averaged tiles by default, one resampled image with WHOLE_BOX; different scores
        wide = f"{BOX_00.xMinimum()},{BOX_00.xMaximum() + 640},{BOX_00.yMinimum()},{BOX_00.yMaximum()} [EPSG:32618]"
        scores = [sorted(f["score"] for f in processing.run(
            "rsir:searchbyextent", {"INDEX": out, "RASTER": layer, "EXTENT": wide, "K": 16, "HASH": False,
                                    "WHOLE_BOX": whole, "OUTPUT": "memory:"})["OUTPUT"].getFeatures())
            for whole in (False, True)]
        assert len(scores[0]) == 16 and np.abs(np.array(scores[0]) - np.array(scores[1])).max() > 1e-4
        img = write_raster(str(tmp_path / "q.tif"), gdal.Open(twin_raster).ReadAsArray(0, 0, 64, 64), epsg=None)
        res = processing.run("rsir:searchbyimage", {"INDEX": out, "IMAGE": img, "K": 2, "HASH": True,
                                                    "OUTPUT": "memory:"})
        assert {f["tile_id"] for f in res["OUTPUT"].getFeatures()} == {0, 14}
        # expanded with its nearest tile, a copy of itself, the query keeps its code: the same two hits
        res = processing.run("rsir:searchbyimage", {"INDEX": out, "IMAGE": img, "K": 2, "HASH": True, "EXPAND": 1,
                                                    "OUTPUT": "memory:"})
        assert {(f["tile_id"], f["hamming"]) for f in res["OUTPUT"].getFeatures()} == {(0, 0), (14, 0)}
        res = processing.run("rsir:searchbyextent", {"INDEX": out, "RASTER": layer, "EXTENT": extent, "K": 4,
                                                     "HASH": True, "RERANK": 10, "OUTPUT": "memory:"})
        ranked = sorted(res["OUTPUT"].getFeatures(), key=lambda f: f["rank"])
        assert all(a["score"] >= b["score"] - 1e-6 for a, b in zip(ranked, ranked[1:]))
        assert {ranked[0]["tile_id"], ranked[1]["tile_id"]} == {0, 14}
        heat = str(tmp_path / "heat.tif")
        processing.run("rsir:similarityheatmap", {"INDEX": out, "RASTER": layer, "EXTENT": extent, "OUTPUT": heat})
        arr = gdal.Open(heat).ReadAsArray()
        assert np.unravel_index(np.argmax(arr), arr.shape) in {(0, 0), (3, 2)}
        heat1 = str(tmp_path / "heat1.tif")  # expanded with a copy of itself: the same query, the same map
        processing.run("rsir:similarityheatmap", {"INDEX": out, "RASTER": layer, "EXTENT": extent, "EXPAND": 1,
                                                  "OUTPUT": heat1})
        np.testing.assert_allclose(gdal.Open(heat1).ReadAsArray(), arr, atol=2e-3)
        from qgis.core import QgsProcessingException
        with pytest.raises(QgsProcessingException, match="not an rsir index"):
            processing.run("rsir:searchbyimage", {"INDEX": str(tmp_path), "IMAGE": img, "K": 2, "HASH": False,
                                                  "OUTPUT": "memory:"})
    finally:
        QgsApplication.processingRegistry().removeProvider(provider)


def test_missing_dependency_is_reported_not_fatal(qgis_iface, monkeypatch):
    from rsir_qgis_plugin import deps
    from rsir_qgis_plugin.plugin import RsirPlugin

    monkeypatch.setitem(deps.REQUIRED, "rsir_no_such_module", "rsir-no-such-package")
    plugin = RsirPlugin(qgis_iface)
    plugin.initGui()
    assert plugin.missing == ["rsir_no_such_module"] and plugin.dock is None and plugin.provider is None
    item = qgis_iface.messageBar().currentItem()
    assert "rsir_no_such_module" in item.text() and "rsir-no-such-package" in item.text()
    # the Install… button asks first, showing the command (its clicked(bool) once skipped the question and ran pip)
    from qgis.PyQt.QtWidgets import QMessageBox, QPushButton

    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda _parent, _title, text: asked.append(text) or QMessageBox.No)
    button = next(b for b in item.findChildren(QPushButton) if b.text() == "Install…")
    button.click()
    assert len(asked) == 1 and "pip install" in asked[0] and plugin.install_task is None
    import sys

    import numpy

    command = deps.pip_install_command(plugin.missing)
    # numpy pinned to the one QGIS has loaded: pip then picks faiss/onnxruntime releases that work with it
    assert command[-2:] == [f"numpy=={numpy.__version__}", "rsir-no-such-package"]
    assert command[0] == sys.executable or os.path.basename(command[0]).startswith("python3")
    # Debian 12's QGIS runs numpy 1.24: the pins that import and run there, without pip's resolver
    monkeypatch.setattr(deps, "loaded_numpy", lambda: "1.24.2")
    old = deps.pip_install_command(["onnxruntime", "faiss"])
    assert old[old.index("--no-deps"):] == ["--no-deps", "onnxruntime==1.32.0", "faiss-cpu==1.11.0", "packaging",
                                            "flatbuffers", "protobuf>=4.25.8"]
    # the optional packages: onnx (Learn from marks) with its tested pins; Dask without any numpy
    learn = deps.pip_install_command(["onnx"], deps.LEARN_REQUIRED)
    assert learn[learn.index("--no-deps"):] == ["--no-deps", "onnx==1.23.2", "ml_dtypes==0.5.4", "typing_extensions",
                                                "protobuf>=4.25.8"]
    dask = deps.pip_install_command(["distributed"], deps.DASK_REQUIRED)
    assert dask[-1] == "dask[distributed]" and not any(a.startswith("numpy") or a == "--no-deps" for a in dask)
    plugin.unload()


def test_installed_packages_live_outside_the_plugin_folder(tmp_path, monkeypatch):
    """Installing a new version of the plugin replaces its folder: the packages its installer fetched must not be in
    it, or every upgrade disables searching until they are fetched again (seen in the desktop check)."""
    import sys

    from rsir_qgis_plugin import deps

    monkeypatch.delenv("RSIR_PYTHON_DEPS", raising=False)
    profile = tmp_path / "profiles" / "default"
    installed = profile / "python" / "plugins" / "rsir_qgis_plugin"
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    assert deps.deps_dir(str(installed)) == str(profile / "rsir" / f"python_deps-{version}")
    assert deps.deps_dir(str(tmp_path / "checkout" / "rsir_qgis_plugin")) == \
        str(tmp_path / "checkout" / "rsir_qgis_plugin" / "python_deps")  # not in a profile: its own folder
    monkeypatch.setenv("RSIR_PYTHON_DEPS", str(tmp_path / "mine"))
    assert deps.deps_dir(str(installed)) == str(tmp_path / "mine")
    assert deps.pip_install_command(["faiss"])[deps.pip_install_command(["faiss"]).index("--target") + 1] == \
        deps.DEPS_DIR


INSTALL_WITHOUT_FAISS = r"""
import sys, time
sys.modules["faiss"] = sys.modules["onnxruntime"] = None  # stock QGIS: neither is installed, so importing fails
from qgis.core import QgsApplication
app = QgsApplication([], False); app.initQgis()
from rsir_qgis_plugin import deps, plugin
from rsir_qgis_plugin.install_task import InstallTask
print("missing", deps.missing_modules())
done = []
task = InstallTask([sys.executable, "-c", "print('pip would run here')"], done.append)
QgsApplication.taskManager().addTask(task)
t0 = time.time()
while not done and time.time() - t0 < 60:
    QgsApplication.processEvents(); time.sleep(0.05)
print("ok", done[0].ok, done[0].log.strip())
"""


def test_the_installer_starts_where_faiss_and_onnxruntime_are_missing(tmp_path):
    """The Install… button runs exactly when faiss/onnxruntime are absent: its task must not import core (it did,
    through the indexing task's module, and failed with 'No module named faiss')."""
    import subprocess
    import sys

    script = tmp_path / "install.py"
    script.write_text(INSTALL_WITHOUT_FAISS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-W", "always::ResourceWarning", str(script)], capture_output=True,
                         text=True, timeout=120, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "missing ['onnxruntime', 'faiss']" in out.stdout
    assert "ok True pip would run here" in out.stdout
    assert "ResourceWarning" not in out.stderr, out.stderr[-2000:]  # pip's output pipe is closed


def test_index_dialog_starts_a_task_over_loaded_layers(tmp_path, twin_raster, tiny_model, qgis_iface,
                                                       qgis_new_project):
    import time

    from qgis.PyQt.QtCore import Qt

    from rsir_qgis_plugin.index_dialog import IndexDialog

    _raster_layer(twin_raster, qgis_iface)
    output = QgsRasterLayer(twin_raster, "hit 1: tile 14")  # a result layer of the plugin is not offered
    output.setCustomProperty("rsir/output", True)
    QgsProject.instance().addMapLayer(output)
    qgis_iface.messageBar().clear_messages()
    built = []
    _forget_dialog_settings()
    dialog = IndexDialog(qgis_iface, on_built=built.append)  # the dock passes its open_index
    assert dialog.source_list.count() == 1  # the loaded raster layer is offered, checked
    assert dialog.source_list.item(0).checkState() == Qt.Checked and "hit 1" not in dialog.source_list.item(0).text()
    from rsir_qgis_plugin.engine import default_model_path

    assert dialog.model.filePath() == default_model_path() != ""  # starts on the shipped model
    dialog.source_list.item(0).setCheckState(Qt.Unchecked)
    dialog.start()  # nothing chosen: a message, no task
    assert dialog.task is None and "Choose sources" in qgis_iface.messageBar().get_messages(Qgis.Warning)[-1]
    dialog.source_list.item(0).setCheckState(Qt.Checked)
    dialog.model.setFilePath(tiny_model)
    out = str(tmp_path / "idx")
    dialog.out.setFilePath(out)
    dialog.tile.setValue(32)
    dialog.stride.setValue(32)
    assert dialog.chosen_sources() == [twin_raster] and dialog.options().tile == 32
    assert (dialog.options().scale, dialog.options().add_offset) == (None, None)  # the model's scale, no offset
    dialog.offset.setValue(-1000)
    assert dialog.options().add_offset == -1000
    dialog.offset.setValue(0)
    dialog.nodata.setText("0")
    assert dialog.options().nodata == 0.0
    dialog.nodata.setText("")
    assert dialog.options().nodata is None
    dialog.start()
    for _ in range(600):
        QgsApplication.processEvents()
        if qgis_iface.messageBar().get_messages(Qgis.Success):
            break
        time.sleep(0.05)
    assert "index now holds 64 tiles" in qgis_iface.messageBar().get_messages(Qgis.Success)[-1]
    assert Index(out).n == 64 and built == [out]
    # the footprints come as outlines, switched off: not thousands of filled squares over the map
    tiles = QgsProject.instance().mapLayersByName("RSIR index tiles")[0]
    node = QgsProject.instance().layerTreeRoot().findLayer(tiles.id())
    assert not node.itemVisibilityChecked() and tiles.renderer().symbol().color().alpha() == 0


def test_index_dialog_worker_processes_run_on_dask(tmp_path, twin_raster, tiny_model, qgis_iface, qgis_new_project):
    """Worker processes > 1 in Build index: the task encodes on a Dask LocalCluster of that many processes and
    the index is the one the dialog makes inside QGIS; a scheduler address wins; a bad one is refused at once."""
    from qgis.PyQt.QtCore import Qt

    from rsir_qgis_plugin.index_dialog import IndexDialog
    from rsir_qgis_plugin.tasks import IndexTask

    _raster_layer(twin_raster, qgis_iface)
    _forget_dialog_settings()
    dialog = IndexDialog(qgis_iface)
    dialog.source_list.item(0).setCheckState(Qt.Checked)
    dialog.model.setFilePath(tiny_model)
    dialog.tile.setValue(32)
    dialog.stride.setValue(32)
    assert dialog.options().dask is None  # 1 worker: inside QGIS
    single = IndexTask([twin_raster], tiny_model, str(tmp_path / "single"), dialog.options(), add_layer=False)
    assert single.run()
    dialog.workers.setValue(2)
    assert dialog.options().dask == "local:2"
    task = IndexTask([twin_raster], tiny_model, str(tmp_path / "dask"), dialog.options(), add_layer=False)
    assert task.run(), task.error
    a, b = Index(str(tmp_path / "single")), Index(str(tmp_path / "dask"))
    assert a.n == b.n == 64 and np.array_equal(a.embeddings(np.arange(64)), b.embeddings(np.arange(64)))
    assert np.array_equal(a.codes(np.arange(64)), b.codes(np.arange(64)))
    dialog.scheduler.setText("tcp://10.1.2.3:8786")
    assert dialog.options().dask == "tcp://10.1.2.3:8786"
    dialog.scheduler.setText("my cluster")
    dialog.out.setFilePath(str(tmp_path / "never"))
    dialog.start()
    assert dialog.task is None and "--dask my cluster: give local" in _critical(qgis_iface)[-1]
    dialog.deleteLater()


def test_index_dialog_suggests_the_scale_of_a_16_bit_source(tmp_path, tiny_model, qgis_iface, qgis_new_project):
    from qgis.PyQt.QtCore import Qt

    from rsir_qgis_plugin.index_dialog import IndexDialog
    from tests.rasters import mosaic_with_twin

    raster = write_raster(str(tmp_path / "s2_16bit.tif"), mosaic_with_twin().astype(np.uint16) * 10 + 500)
    _raster_layer(raster, qgis_iface)
    _forget_dialog_settings()
    dialog = IndexDialog(qgis_iface)
    dialog.model.setFilePath(tiny_model)
    dialog.source_list.item(0).setCheckState(Qt.Unchecked)
    assert dialog.suggest_scale() is None  # nothing chosen
    dialog.source_list.item(0).setCheckState(Qt.Checked)
    assert dialog.suggest_scale() == 3000 and dialog.options().scale == 3000  # 98 % of 500..3050 below ~2900
    assert "value scale set to 3000" in qgis_iface.messageBar().get_messages(Qgis.Info)[-1]


def test_quiet_dock_one_visible_query_integer_legend_and_no_outputs_as_query_rasters(dock, indexed, twin_raster,
                                                                                     qgis_iface, tmp_path):
    from rsir_qgis_plugin.layers import integer_breaks

    layer = _raster_layer(twin_raster, qgis_iface)
    # typing a path letter by letter opens nothing and shouts nothing; the index opens when the path is one
    for partial in (indexed[:5], indexed[:-2], indexed):
        dock.index_widget.setFilePath(partial)
    assert not _critical(qgis_iface) and dock.session is not None and dock.session.index.dir == indexed
    dock.index_widget.setFilePath(str(tmp_path))  # an existing folder that is no index: said, index kept
    assert dock.info.text() == f"{tmp_path} is not an rsir index (it has no manifest.json). Still open: {indexed}."
    assert dock.session.index.dir == indexed and not _critical(qgis_iface)
    dock.index_widget.setFilePath(indexed)
    assert dock.info.text().startswith(dock.session.describe()[:20])
    dock.raster_combo.setLayer(layer)
    dock.k_spin.setValue(10)
    dock.tiles_spin.setValue(2)
    dock.box_tool.set_box(BOX_00)
    dock.wait()
    first = dock.last_group
    dock.box_tool.set_box(BOX_00)
    dock.wait()
    second = dock.last_group
    assert second.isVisible() and second.isExpanded()
    assert not first.itemVisibilityChecked() and not first.isExpanded()  # the older query hidden, folded
    labels = [r.label() for r in second.children()[1].layer().renderer().ranges()]
    assert labels == ["1-2", "3-4", "5-6", "7-8", "9-10"]
    assert integer_breaks([1, 2, 3]) == [(1, 1), (2, 2), (3, 3)] and integer_breaks([0, 7], 3) == [(0, 2), (3, 4),
                                                                                                  (5, 7)]
    # the hit tiles are rasters too, but not query rasters
    offered = [dock.raster_combo.layer(i) for i in range(dock.raster_combo.count())]
    assert [lyr.name() for lyr in offered] == [layer.name()]


def test_searches_run_in_the_background_and_the_newest_query_wins(dock, indexed, twin_raster, qgis_iface):
    layer = _raster_layer(twin_raster, qgis_iface)
    dock.open_index(indexed)
    dock.raster_combo.setLayer(layer)
    root = QgsProject.instance().layerTreeRoot()
    groups_before = len(root.children())
    first = dock.box_tool.set_box(BOX_00)  # returns at once: the search runs in a QgsTask
    assert dock.task is not None and not dock.busy.isHidden() and dock.status.text() == "Searching…"
    box_33 = QgsRectangle(ORIGIN[0] + 1920, ORIGIN[1] - 2560, ORIGIN[0] + 2560, ORIGIN[1] - 1920)
    dock.on_box(box_33)  # asked for while the first runs: it waits, and the first result is dropped
    dock.on_box(BOX_00.buffered(-1))  # newer still: replaces the waiting one
    assert dock.pending is not None
    assert dock.wait()
    assert len(root.children()) == groups_before + 1  # one result group: the newest query's
    assert dock.last_result.query.description.startswith("box 500001,")
    import re

    # the time the analyst waited, also behind the search that was running
    assert dock.busy.isHidden() and re.search(r"hits in \d+\.\d\d s", dock.status.text())
    del first


def _assert_all_valid(group) -> list[str]:
    names = []
    for child in group.children():
        assert child.layer() is not None and child.layer().isValid(), child.name()
        names.append(child.name())
    return names


def test_every_layer_is_valid_for_band_stack_and_patch_indexes(dock, tmp_path, tiny_model, qgis_iface):
    """The hit tiles of a band-stack index were 'Unavailable layer!' (empty SourceFilename); those of a patch folder
    must open too."""
    import json

    from tests.rasters import mosaic_with_twin, write_class_folder

    data = mosaic_with_twin()
    bands = []
    for i, band in enumerate(data):
        write_raster(str(tmp_path / f"b{i + 1}.tif"), band[None])
        bands.append({"name": f"B{i + 1}", "path": f"b{i + 1}.tif"})
    spec = tmp_path / "stack.json"
    spec.write_text(json.dumps({"type": "rsir.band_stack", "bands": bands}))
    stack_index = str(tmp_path / "stack_idx")
    build_index([str(spec)], tiny_model, stack_index, BuildOptions(tile=64))
    vrt = str(tmp_path / "stack.vrt")
    gdal.BuildVRT(vrt, [str(tmp_path / f"b{i + 1}.tif") for i in range(3)], separate=True)
    layer = _raster_layer(vrt, qgis_iface)  # as the analyst views a band stack in QGIS
    dock.open_index(stack_index)
    dock.raster_combo.setLayer(layer)
    dock.tiles_spin.setValue(3)
    dock.heat_check.setChecked(True)
    dock.box_tool.set_box(BOX_00)
    dock.wait()
    assert not _critical(qgis_iface)
    names = _assert_all_valid(dock.last_group)
    assert sum(n.startswith("#") for n in names) == 3 and names[-1] == "similarity heat map"

    patches = write_class_folder(str(tmp_path / "patches"), n_classes=2, per_class=4, size=32)
    patch_index = str(tmp_path / "patch_idx")
    build_index([patches], tiny_model, patch_index, BuildOptions())
    dock.open_index(patch_index)
    dock.heat_check.setChecked(False)
    result = _done(dock, dock.search_image(os.path.join(patches, "class0", "img000.tif")))
    assert result.hits[0].label == "class0"
    assert sum(n.startswith("#") for n in _assert_all_valid(dock.last_group)) == 3


def test_dock_follows_updates_by_other_writers(dock, tmp_path, twin_raster, tiny_model):
    """`rsir index` appends to the index open in the dock: the dock's description and the index's tiles layer
    move to the new generation (two updates later the old one is gone: a layer left on it would draw nothing)."""
    import time

    from rsir_qgis_plugin import layers
    from tests.rasters import mosaic_with_twin, write_raster

    out = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, out, BuildOptions(tile=64))
    assert dock.open_index(out)
    tiles = layers.add_index_tiles(out, Index(out).tiles_path())
    assert tiles.isValid() and tiles.featureCount() == 16 and "16 tiles" in dock.info.text()
    root = QgsProject.instance().layerTreeRoot()
    assert root.children()[0].layer() is tiles  # on top of the imagery, not under it
    for seed in (5, 6):  # two appends by another writer
        more = write_raster(str(tmp_path / f"more{seed}.tif"), mosaic_with_twin(seed=seed))
        build_index([more], tiny_model, out, BuildOptions(tile=64))
    deadline = time.time() + 10
    while "48 tiles" not in dock.info.text() and time.time() < deadline:  # QFileSystemWatcher's signal
        QgsApplication.processEvents()
        time.sleep(0.02)
    assert "48 tiles" in dock.info.text() and "gen-000003" in tiles.source()
    tiles.reload()
    assert tiles.isValid() and tiles.featureCount() == 48
    assert layers.add_index_tiles(out, Index(out).tiles_path()) is None  # one layer per index


def test_index_task_discards_an_unfinished_run_only_when_asked(tmp_path, twin_raster, tiny_model, qgis_new_project):
    """A run killed in the folder (another command's) blocks other sources with a message naming it; the
    dialog's "Discard an unfinished run" (restart) lets the analyst index theirs."""
    from core.errors import Cancelled
    from rsir_qgis_plugin.tasks import IndexTask
    from tests.rasters import mosaic_with_twin, write_raster

    out = str(tmp_path / "idx")
    with pytest.raises(Cancelled):
        build_index([twin_raster], tiny_model, out, BuildOptions(tile=16, checkpoint_every=32, batch_size=16),
                    cancel=iter([False] * 4 + [True] * 100).__next__)
    mine = write_raster(str(tmp_path / "mine.tif"), mosaic_with_twin(seed=7))
    blocked = IndexTask([mine], tiny_model, out, BuildOptions(tile=64))
    assert blocked.run() is False
    assert "unfinished indexing run with other inputs or options (of twin.tif, started" in blocked.error
    assert "64 of 256 tiles encoded" in blocked.error and "Discard an unfinished run" in blocked.error
    task = IndexTask([mine], tiny_model, out, BuildOptions(tile=64), restart=True)
    assert task.run() is True and task.report.total_tiles == 16


def test_relevance_feedback_in_the_dock(dock, indexed, twin_raster, tmp_path, qgis_iface):
    """Mark hits (table keys and buttons, map clicks), Undo, Refine in the background, and the marks layer: a
    GeoPackage that is the record of the marks, saved, reloaded and exported as training labels."""
    from osgeo import ogr
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsPointXY

    from rsir_qgis_plugin import marks as marks_io

    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")

    _box_search(dock, indexed, twin_raster, qgis_iface, k=8)
    hits = dock.last_result.hits
    panel = dock.feedback
    assert not panel.refine_button.isEnabled() and panel.layer is None
    dock.table.selectRow(1)
    panel.mark_selected(True)
    panel.set_mark(2, False)
    panel.set_mark(3, True)
    assert [dock.table.item(r, 2).text() for r in range(4)] == ["", "✓ relevant", "✗ not", "✓ relevant"]
    panel.undo()  # takes back the last mark
    assert panel.marks() == {hits[1].tile_id: True, hits[2].tile_id: False}
    # a click on a hit's footprint with the Mark tool: right click = not relevant
    centre = QgsGeometry.fromWkt(hits[4].footprint_wkt).centroid().asPoint()
    canvas_crs = qgis_iface.mapCanvas().mapSettings().destinationCrs()
    point = QgsCoordinateTransform(wgs84, canvas_crs, QgsProject.instance()).transform(QgsPointXY(centre))
    assert panel.mark_at(point, False) and panel.marks()[hits[4].tile_id] is False
    # the marks layer is the record: a file with one feature per marked tile, on top of the layer tree
    path = panel.layer.source().split("|")[0]
    ds = ogr.Open(path)
    rows = sorted((f.GetField("tile_id"), f.GetField("mark"), f.GetField("round")) for f in ds.GetLayer("marks"))
    assert rows == sorted([(hits[1].tile_id, "relevant", 0), (hits[2].tile_id, "not relevant", 0),
                           (hits[4].tile_id, "not relevant", 0)])
    ds = None
    assert QgsProject.instance().layerTreeRoot().children()[0].layer() is panel.layer
    # Refine: a background search of the loop's query with the marks; a new result group, round 1
    task = panel.refine()
    assert task is not None and task.refining and dock.wait()
    assert "refined (linear) with 1 relevant and 2 not relevant" in dock.last_result.query.description
    assert dock.last_group.children()[1].layer().isValid() and panel.round == 1
    assert QgsProject.instance().layerTreeRoot().children()[0].layer() is panel.layer  # over the new group
    assert panel.loop_query.description.startswith("box")  # the loop still refines the original query
    # saved, reloaded, exported as labels for `rsir train`
    saved = str(tmp_path / "saved_marks.gpkg")
    panel.save_to(saved)
    panel.set_mark(0, True)
    assert panel.load_from(saved) and len(panel.marks()) == 3
    labels = str(tmp_path / "labels.gpkg")
    assert marks_io.export_labels(panel.layer, labels, "twin pattern", dock.session.index) == 3
    ds = ogr.Open(labels)
    classes = sorted(f.GetField("class") for f in ds.GetLayer(0))
    assert classes == ["other", "other", "twin pattern"]
    # a new query starts a new loop with no marks
    old = panel.layer
    dock.box_tool.set_box(BOX_00)
    assert dock.wait() and panel.layer is None and panel.round == 0 and not panel.refine_button.isEnabled()
    assert old.name().endswith("(earlier query)")
    assert not QgsProject.instance().layerTreeRoot().findLayer(old.id()).itemVisibilityChecked()


def test_learn_from_marks_in_the_dock(dock, twin_raster, tiny_model, tmp_path, qgis_iface):
    """Learn from marks: a background task fits the index's model to the marks, writes the adapted model beside
    the index and re-encodes the index; the dock then encodes queries with the new model, and a refine of the old
    loop is refused (its query is in the old model's space). A cancelled run leaves the index as it was."""
    import time

    from rsir_qgis_plugin.learn_dialog import LearnDialog, LearnOptions, default_model_path
    from rsir_qgis_plugin.tasks import LearnTask

    indexed = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, indexed, BuildOptions(tile=32))  # 64 tiles: enough for 32-bit ITQ
    _box_search(dock, indexed, twin_raster, qgis_iface, k=8)
    first_query = dock.last_result.query.embedding
    panel = dock.feedback
    for row, relevant in ((0, True), (1, True), (2, False), (3, False), (4, False)):
        panel.set_mark(row, relevant)
    before = Index(indexed)
    base = before.model.path
    # the dialog's default path: beside the index, named after it and the class; never taken
    dialog = LearnDialog(indexed, panel.marks())
    dialog.name_edit.setText("Twin pattern!")
    expected = os.path.join(os.path.dirname(indexed), "idx-learned-twin-pattern.onnx")
    assert dialog.options().out_model == expected == default_model_path(indexed, "Twin pattern!")
    assert dialog.button_box.button(dialog.button_box.Ok).isEnabled()
    dialog.name_edit.setText("Other")  # the class of the not relevant marks: refused, and the hint says why
    assert not dialog.button_box.button(dialog.button_box.Ok).isEnabled() and '"other"' in dialog.hint.text()
    dialog.deleteLater()
    empty = LearnDialog(indexed, {})  # nothing to learn from
    assert not empty.button_box.button(empty.button_box.Ok).isEnabled() and "Mark some hits" in empty.hint.text()
    empty.deleteLater()
    # cancelled before its first chunk: nothing changes, nothing is left behind
    out_model = str(tmp_path / "adapted.onnx")
    cancelled = LearnTask(indexed, LearnOptions("twin", out_model), panel.marks(), lambda *_: None)
    cancelled.cancel()
    assert cancelled.run() is False and cancelled.was_cancelled and "index is as it was" in cancelled.error, \
        cancelled.error
    assert Index(indexed).manifest.generation == before.manifest.generation
    assert not os.path.exists(os.path.join(indexed, ".partial"))
    # the real thing, through the panel
    task = panel.learn(LearnOptions("twin", out_model))
    deadline = time.time() + 60
    while not os.path.exists(out_model) or Index(indexed).model.path != out_model or \
            dock.session._model_sha == before.model.sha256:  # noqa: SLF001
        assert time.time() < deadline, (task.error, qgis_iface.messageBar().messages)
        QgsApplication.processEvents()
        time.sleep(0.02)
    after = Index(indexed)
    assert task.adapter.classes == {"twin": 2, "other": 3}
    assert after.manifest.generation == before.manifest.generation + 1 and after.n == before.n
    deadline = time.time() + 10  # said after QGIS's own "task complete", which would hide it
    while not any("Learned from 5 labelled tiles" in m for m in qgis_iface.messageBar().get_messages(Qgis.Success)):
        assert time.time() < deadline
        QgsApplication.processEvents()
        time.sleep(0.02)
    # the old loop cannot refine: its query was encoded with the old model
    assert not panel.refine_button.isEnabled() and "search again" in panel.summary.text()
    # a new search encodes with the adapted model
    dock.box_tool.set_box(BOX_00)
    assert dock.wait() and dock.last_result.model_sha == after.model.sha256
    assert dock.session.encoder().info.path == out_model
    assert float(dock.last_result.query.embedding @ first_query) < 0.99  # another space
    # Adapt to this archive (no labels): the same machinery, another model; Undo goes back from it as well
    adapt = panel.adapt_to_archive(ask=False)
    deadline = time.time() + 120
    while not Index(indexed).model.path.endswith("-adapted.onnx"):
        assert time.time() < deadline, (adapt.error, qgis_iface.messageBar().messages)
        QgsApplication.processEvents()
        time.sleep(0.05)
    # Undo learning: the vectors and model from before, as a new generation
    panel._menu_about_to_show()
    assert panel.undo_learning_action.isEnabled()
    undo = panel.undo_learning()
    deadline = time.time() + 60
    while Index(indexed).model.path != base or dock.session._model_sha != before.model.sha256:  # noqa: SLF001
        assert time.time() < deadline, (undo.error, qgis_iface.messageBar().messages)
        QgsApplication.processEvents()
        time.sleep(0.02)
    back = Index(indexed)
    ids = np.arange(back.n)
    assert np.array_equal(back.embeddings(ids), before.embeddings(ids)) and np.array_equal(back.codes(ids),
                                                                                           before.codes(ids))
    panel._menu_about_to_show()
    assert not panel.undo_learning_action.isEnabled()


def test_find_all_in_the_dock(dock, indexed, twin_raster, qgis_iface):
    """Find all scores every tile in a background task and adds one layer of those above the threshold."""
    import time

    _box_search(dock, indexed, twin_raster, qgis_iface)
    panel = dock.feedback
    assert panel.find_button.isEnabled()
    task = panel.find_all(threshold=0.99)
    deadline = time.time() + 30
    while getattr(panel, "found_layer", None) is None and time.time() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.02)
    layer = getattr(panel, "found_layer", None)
    assert layer is not None, [m for m in qgis_iface.messageBar().messages.values()]
    assert task is not None and layer.isValid() and layer.name().startswith("RSIR all tiles >= 0.990")
    tiles = {f["tile_id"] for f in layer.getFeatures()}
    assert {0, 14} <= tiles and all(f["score"] >= 0.99 for f in layer.getFeatures())
    assert QgsProject.instance().layerTreeRoot().children()[0].layer() is layer
    dock.box_tool.set_box(BOX_00)  # a new query: what the last one found is hidden and named so
    assert dock.wait() and layer.name().endswith("(earlier query)") and panel.found_layer is None
    assert not QgsProject.instance().layerTreeRoot().findLayer(layer.id()).itemVisibilityChecked()


def test_find_all_dialog_histogram_and_threshold(qgis_iface):
    from rsir_qgis_plugin.find_all_dialog import FindAllDialog

    scores = np.linspace(0.0, 1.0, 101).astype(np.float32)
    dialog = FindAllDialog(scores, 0.895, "tile 0")
    assert dialog.threshold == pytest.approx(0.895) and dialog.count.text() == "11 of 101 tiles"
    dialog.set_threshold(0.495)
    assert dialog.count.text() == "51 of 101 tiles" and dialog.histogram.threshold == pytest.approx(0.495)
    image = dialog.histogram.grab().toImage()  # painted: blue bars above the threshold, grey below
    assert image.width() >= 420


def test_index_dialog_remembers_its_fields(tmp_path, twin_raster, tiny_model, qgis_iface, qgis_new_project):
    """A started run's fields come back the next time the dialog opens (a model that is gone does not)."""
    from qgis.PyQt.QtCore import Qt

    from rsir_qgis_plugin.index_dialog import IndexDialog

    _forget_dialog_settings()
    _raster_layer(twin_raster, qgis_iface)
    dialog = IndexDialog(qgis_iface)
    dialog.source_list.item(0).setCheckState(Qt.Checked)
    dialog.model.setFilePath(tiny_model)
    dialog.out.setFilePath(str(tmp_path / "idx"))
    dialog.tile.setValue(32)
    dialog.scale.setValue(3000)
    dialog.workers.setValue(3)
    assert (dialog.options().model_codes, dialog.options().code_bits) == (False, None)  # fitted, the model's bits
    dialog.codes.setCurrentIndex(1)
    assert (dialog.options().model_codes, dialog.options().code_bits) == (False, 128)
    dialog._remember()
    again = IndexDialog(qgis_iface)
    assert (again.model.filePath(), again.out.filePath(), again.tile.value(), again.scale.value(),
            again.workers.value(), again.options().code_bits) == (tiny_model, str(tmp_path / "idx"), 32, 3000, 3,
                                                                   128)
    again.codes.setCurrentIndex(2)
    assert (again.options().model_codes, again.options().code_bits) == (True, None)
    _forget_dialog_settings()
    for d in (dialog, again):
        d.deleteLater()


def test_optional_packages_are_offered_with_their_command(dock, indexed, qgis_iface, monkeypatch):
    """Learn from marks / Adapt without onnx, and worker processes without Dask: a question shows the pip command
    and the size; declining starts nothing."""
    from qgis.PyQt.QtWidgets import QMessageBox

    from rsir_qgis_plugin import deps

    dock.open_index(indexed)
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda _parent, _title, text: asked.append(text) or QMessageBox.No)
    monkeypatch.setattr(deps, "missing_modules", lambda required=None: list(required or []))
    assert dock.feedback.learn() is None and dock.feedback.adapt_to_archive() is None
    assert len(asked) == 2 and all("onnx" in t and f"about {deps.LEARN_INSTALL_MB} MB" in t and "pip install" in t
                                   for t in asked)
    assert dock.feedback.install_task is None


def test_opening_another_index_ends_the_feedback_loop(dock, indexed, twin_raster, tmp_path, tiny_model, qgis_iface):
    """Marks and the loop's query are tile ids of the index they were made on: opening another one ends the loop
    (buttons off, marks layer hidden) instead of leaving them enabled over an empty table."""
    _box_search(dock, indexed, twin_raster, qgis_iface)
    panel = dock.feedback
    panel.set_mark(0, True)
    marks_layer = panel.layer
    assert panel.relevant_button.isEnabled() and panel.refine_button.isEnabled()
    other = str(tmp_path / "other")
    build_index([twin_raster], tiny_model, other, BuildOptions(tile=32))
    assert dock.open_index(other)
    assert not panel.relevant_button.isEnabled() and not panel.refine_button.isEnabled()
    assert not panel.find_button.isEnabled() and panel.layer is None and panel.loop_query is None
    assert not QgsProject.instance().layerTreeRoot().findLayer(marks_layer.id()).itemVisibilityChecked()


def test_unloading_the_plugin_leaves_no_connection_to_the_canvas(qgis_iface, qgis_new_project, monkeypatch):
    """After unload (QGIS's plugin manager, an upgrade from ZIP) every map-tool change in QGIS raised "wrapped C/C++
    object of type QPushButton has been deleted": a lambda on the canvas's mapToolSet outlived the dock (found in the
    desktop check)."""
    import sys

    from qgis.gui import QgsMapToolPan
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    from rsir_qgis_plugin.plugin import RsirPlugin

    canvas = qgis_iface.mapCanvas()
    before = canvas.receivers(canvas.mapToolSet)
    window = qgis_iface.mainWindow()
    shown = window.isVisible()
    window.show()  # a running QGIS: enabling or upgrading the plugin shows its dock at once
    # pytest-qgis's interface adds dock widgets nowhere; a running QGIS docks them in its main window and shows them
    # at once (the desktop check saw the dock open beside a toolbar button that said it was closed)
    monkeypatch.setattr(qgis_iface, "addDockWidget",
                        lambda area, dock_widget: (window.addDockWidget(area, dock_widget), dock_widget.show()))
    plugin = RsirPlugin(qgis_iface)
    plugin.initGui()
    assert plugin.dock is not None
    assert plugin.dock.isVisible() and plugin.action.isChecked()  # the toolbar button says the dock is open
    plugin.dock.box_button.click()  # the analyst draws a box: our tool on the canvas, the dock follows tool changes
    assert canvas.mapTool() is plugin.dock.box_tool and canvas.receivers(canvas.mapToolSet) == before + 1
    pan = QgsMapToolPan(canvas)
    canvas.setMapTool(pan)  # QGIS's own tool: the dock's button pops up
    assert not plugin.dock.box_button.isChecked()
    plugin.dock.box_button.click()
    plugin.unload()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # the dock is gone
    assert canvas.receivers(canvas.mapToolSet) == before and canvas.mapTool() is None
    errors = []
    hook, sys.excepthook = sys.excepthook, lambda *exc: errors.append(exc)  # where PyQt reports a failing slot
    try:
        canvas.setMapTool(pan)
        canvas.unsetMapTool(pan)
    finally:
        sys.excepthook = hook
        window.setVisible(shown)
    assert errors == []
