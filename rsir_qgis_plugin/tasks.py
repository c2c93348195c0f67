"""Batch indexing as a QgsTask: progress and cancel in QGIS's task manager; layers added in finished()."""
from __future__ import annotations

from qgis.core import Qgis, QgsFillSymbol, QgsMessageLog, QgsProject, QgsTask, QgsVectorLayer

from .engine import builder, errors

INDEX_PROPERTY = "rsir/index_tiles"  # on a layer of an index's tiles.gpkg: the index folder it shows


class IndexTask(QgsTask):
    """Runs core's resumable builder off the main thread. A cancelled run keeps its checkpoints: starting the same
    task again resumes it."""

    def __init__(self, sources: list[str], model: str, out_dir: str, options=None, add_layer: bool = True,
                 on_done=None):
        super().__init__(f"RSIR: indexing {len(sources)} source(s) into {out_dir}", QgsTask.CanCancel)
        self.sources, self.model, self.out_dir = list(sources), model, out_dir
        self.options = options or builder.BuildOptions()
        self.add_layer = add_layer
        self.on_done = on_done
        self.report = None
        self.error: str | None = None
        self.was_cancelled = False

    def run(self) -> bool:  # worker thread: no GUI, no layers
        try:
            self.report = builder.build_index(self.sources, self.model, self.out_dir, self.options,
                                              progress=lambda done, total: self.setProgress(100.0 * done /
                                                                                            max(total, 1)),
                                              cancel=self.isCanceled,
                                              notice=lambda message: QgsMessageLog.logMessage(message, "RSIR",
                                                                                              Qgis.Info))
            return True
        except errors.Cancelled as exc:
            self.was_cancelled, self.error = True, str(exc)
        except errors.RsirError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - report, never crash QGIS
            self.error = f"{type(exc).__name__}: {exc}"
        return False

    def finished(self, ok: bool) -> None:  # main thread
        if ok and self.report.tiles_path:
            uri = f"{self.report.tiles_path}|layername=tiles"
            # each update writes a new generation of the index: layers of this index's tiles follow it (the old
            # generation's file is removed at the update after next, which would leave them unavailable)
            for old in QgsProject.instance().mapLayers().values():
                if old.customProperty(INDEX_PROPERTY) == self.report.index_dir:
                    old.setDataSource(uri, old.name(), "ogr")
        if ok and self.add_layer and not any(lyr.customProperty(INDEX_PROPERTY) == self.report.index_dir
                                             for lyr in QgsProject.instance().mapLayers().values()):
            layer = QgsVectorLayer(f"{self.report.tiles_path}|layername=tiles", "RSIR index tiles", "ogr")
            if layer.isValid():
                layer.setCustomProperty(INDEX_PROPERTY, self.report.index_dir)
                # the index's footprints as outlines, off until wanted: thousands of filled squares hide the map
                layer.setRenderer(layer.renderer().clone())
                layer.renderer().setSymbol(QgsFillSymbol.createSimple(
                    {"color": "0,0,0,0", "outline_color": "255,140,0,160", "outline_width": "0.2"}))
                layer.setCustomProperty("rsir/output", True)
                QgsProject.instance().addMapLayer(layer, False)
                node = QgsProject.instance().layerTreeRoot().addLayer(layer)
                node.setItemVisibilityChecked(False)
        if not ok:
            QgsMessageLog.logMessage(self.error or "indexing stopped", "RSIR", Qgis.Warning)
        if self.on_done:
            self.on_done(self, ok)

    def summary(self) -> str:
        if self.report is None:
            return self.error or "indexing did not run"
        r = self.report
        return (f"indexed {r.tiles_added} tiles ({r.skipped} skipped as nodata) in {r.seconds:.1f} s; "
                f"index now holds {r.total_tiles} tiles")


class SearchTask(QgsTask):
    """One query off the main thread: reading and encoding it, ranking, the heat map and the tile VRTs all happen in
    `run()` (the map keeps drawing); `finished()` hands the result object to `on_done` on the main thread, which
    adds the layers. `superseded` marks a task whose result a newer query has made moot."""

    def __init__(self, session, make_result, request, on_done, description: str = "RSIR: searching"):
        super().__init__(description, QgsTask.CanCancel)
        self.session, self.make_result, self.request, self.on_done = session, make_result, request, on_done
        self.result = None
        self.error: str | None = None
        self.details: str = ""
        self.superseded = False
        self.seconds = 0.0
        self.layers: list = []

    def run(self) -> bool:  # worker thread: no GUI, no layers
        import time
        import traceback

        t0 = time.perf_counter()
        try:
            self.result = self.make_result(self.session, self.request)
            if not self.superseded:
                from .layers import result_layers

                self.layers = result_layers(self.result)
            return True
        except errors.RsirError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - report, never crash QGIS
            self.error = f"search failed: {type(exc).__name__}: {exc} (details in the RSIR log)"
            self.details = traceback.format_exc()
        finally:
            self.seconds = time.perf_counter() - t0
        return False

    def finished(self, ok: bool) -> None:  # main thread
        if self.details:
            QgsMessageLog.logMessage(self.details, "RSIR", Qgis.Critical)
        self.on_done(self)

