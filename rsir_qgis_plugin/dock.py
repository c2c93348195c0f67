"""The analyst's dock: open an index, query by box / footprint / image file, see hits as layers and a table."""
from __future__ import annotations

import time
import traceback

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsProject,
    QgsWkbTypes,
)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import layers, messages
from .controller import RetrievalSession, SearchRequest
from .engine import encoder, errors
from .feedback_panel import FeedbackPanel
from .map_tool import BoxTool, MarkTool, PickTool
from .tasks import SearchTask

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
COLUMNS = ("rank", "tile", "mark", "score", "hamming", "label", "source")


RADIUS_SHARE = 0.2  # the hash layer's default Hamming radius, as a share of the index's code bits


def _off_spin(maximum: int, tooltip: str) -> QSpinBox:
    """A count option whose 0 reads "off"."""
    spin = QSpinBox()
    spin.setRange(0, maximum)
    spin.setSpecialValueText("off")
    spin.setToolTip(tooltip)
    return spin


class RsirDock(QDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__("RSIR image retrieval", parent)
        self.setObjectName("RsirDock")
        self.iface = iface
        self.session: RetrievalSession | None = None
        self.last_result = None
        self.last_search = None  # the query of the last search (a function of session and request), for reruns
        self.last_group = None
        self.task = None      # the search running in the background
        self.pending = None   # the newest query asked for meanwhile
        self.warned: set[str] = set()  # warnings shown for the open index
        canvas = iface.mapCanvas()
        self.box_tool, self.pick_tool, self.mark_tool = BoxTool(canvas), PickTool(canvas), MarkTool(canvas)
        self.box_tool.boxDrawn.connect(self.on_box)
        self.pick_tool.picked.connect(self.on_pick)
        self.mark_tool.marked.connect(self.on_mark)
        self._build_ui()

    # -- UI -------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        body = QWidget()
        root = QVBoxLayout(body)
        self.index_widget = QgsFileWidget()
        self.index_widget.setStorageMode(QgsFileWidget.GetDirectory)
        # typed paths change on every keystroke: open only a folder that holds an index, and keep the open one
        # meanwhile (a path chosen with the button is opened whatever it is, so a wrong choice says why)
        self.index_widget.fileChanged.connect(self._index_path_changed)
        self.info = QLabel("Choose an index folder (made by `rsir index` or Build index…).")
        self.info.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Index", self.index_widget)
        root.addLayout(form)
        root.addWidget(self.info)

        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        # the plugin's own outputs (hit tiles, heat maps) are not query rasters: keep them out of the list
        QgsProject.instance().layersAdded.connect(self._except_outputs)
        self._except_outputs()
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 10000)
        self.k_spin.setValue(20)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["Float (cosine)", "Hash (Hamming)"])
        self.radius_check = QCheckBox("Hash layer, radius")
        self.radius_spin = QSpinBox()
        self.radius_spin.setRange(0, 1024)
        self.radius_spin.setValue(8)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto"] + encoder.available_devices())
        self.modality_combo = QComboBox()  # filled per index: auto + the modalities it can be queried with
        self.modality_combo.addItem("auto")
        self.modality_combo.setToolTip("Which encoder reads a box or image query. auto: the query raster's band "
                                       "count picks it (a SAR layer over an optical index uses the SAR encoder "
                                       "of the same cross-modal model).")
        self.tiles_spin = QSpinBox()
        self.tiles_spin.setRange(0, 100)
        self.tiles_spin.setValue(5)
        self.expand_spin = _off_spin(1000, "Search again with the query moved towards its N nearest tiles. Finds "
                                     "more of a common land cover; keep N below the number of matches you expect, "
                                     "or a rare one drifts to its neighbours' class.")
        self.rerank_spin = _off_spin(100_000, "Hash search: rank this many nearest tiles by Hamming distance again by "
                                     "cosine similarity. Near float-search quality at hash-search cost; helps "
                                     "most across sensors.")
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.rerank_spin.setEnabled(False)
        self.heat_check = QCheckBox("Similarity heat map over the query raster")
        self.whole_box_check = QCheckBox("Read a large box as one image")
        self.whole_box_check.setToolTip("A box of 1.5 index tiles a side or more is read as tiles of the index's "
                                        "size, their embeddings averaged: the network sees the ground resolution "
                                        "it sees in the archive. Check this to resample the whole box into one "
                                        "model input instead (a coarser view of it).")
        radius_row = QHBoxLayout()
        radius_row.addWidget(self.radius_check)
        radius_row.addWidget(self.radius_spin)
        opts = QFormLayout()
        opts.addRow("Query raster", self.raster_combo)
        opts.addRow("Hits (k)", self.k_spin)
        opts.addRow("Search", self.mode_combo)
        opts.addRow(radius_row)
        opts.addRow("Re-rank by cosine", self.rerank_spin)
        opts.addRow("Query expansion", self.expand_spin)
        opts.addRow("Tiles as layers", self.tiles_spin)
        opts.addRow("Query modality", self.modality_combo)
        opts.addRow("Device", self.device_combo)
        opts.addRow(self.heat_check)
        opts.addRow(self.whole_box_check)
        root.addLayout(opts)

        buttons = QHBoxLayout()
        self.box_button = QPushButton("Draw box")
        self.box_button.setCheckable(True)
        self.box_button.clicked.connect(lambda on: self._activate(self.box_tool if on else None))
        self.pick_button = QPushButton("More like this")
        self.pick_button.setToolTip("Click a place on the map: its tile's nearest neighbours")
        self.pick_button.setCheckable(True)
        self.pick_button.clicked.connect(lambda on: self._activate(self.pick_tool if on else None))
        self.feature_button = QPushButton("Selected polygon")
        self.feature_button.setToolTip("Use the bounding box of the selected feature of the active vector layer")
        self.feature_button.clicked.connect(lambda: self.search_selected_feature(self.iface.activeLayer()))
        self.image_button = QPushButton("Image file…")
        self.image_button.clicked.connect(self._choose_image)
        for b in (self.box_button, self.pick_button, self.feature_button, self.image_button):
            buttons.addWidget(b)
        root.addLayout(buttons)

        status_row = QHBoxLayout()
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # indeterminate: the search is running
        self.busy.setMaximumHeight(10)
        self.busy.setVisible(False)
        self.status = QLabel("")
        status_row.addWidget(self.status)
        status_row.addWidget(self.busy)
        root.addLayout(status_row)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.zoom_to_hit(row))
        self.table.verticalHeader().setVisible(False)  # the rank column numbers the rows
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)  # more rows seen
        self.table.horizontalHeader().setStretchLastSection(True)
        root.addWidget(self.table)
        self.feedback = FeedbackPanel(self)
        self.mark_button = QPushButton("Mark on map")
        self.mark_button.setToolTip("Click hits on the map: left click relevant, right click not relevant; the "
                                    "same click again clears the mark")
        self.mark_button.setCheckable(True)
        self.mark_button.clicked.connect(lambda on: self._activate(self.mark_tool if on else None))
        self.feedback.layout().itemAt(0).layout().insertWidget(2, self.mark_button)
        root.addWidget(self.feedback)
        self.index_button = QPushButton("Build index…")
        self.index_button.clicked.connect(self._open_index_dialog)
        root.addWidget(self.index_button)
        self.setWidget(body)

    def _except_outputs(self, *_args) -> None:
        self.raster_combo.setExceptedLayerList(
            [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.customProperty(layers.OUTPUT_PROPERTY)])

    def _activate(self, tool) -> None:
        canvas = self.iface.mapCanvas()
        self._show_tool(tool)
        if tool is None:
            if canvas.mapTool() in (self.box_tool, self.pick_tool, self.mark_tool):  # only our own
                canvas.unsetMapTool(canvas.mapTool())
        else:
            canvas.setMapTool(tool)
        if not getattr(self, "_follows_tools", False) and hasattr(canvas, "mapToolSet"):
            # QGIS's own tools (Pan...) replace ours: the buttons must not stay pressed. A method of the dock, not a
            # lambda: Qt drops the connection with the dock (a lambda outlived it, and every later tool change in
            # QGIS raised "wrapped C/C++ object ... has been deleted" after the plugin was unloaded or upgraded)
            canvas.mapToolSet.connect(self._tool_set)
            self._follows_tools = True

    def _tool_set(self, new, _old=None) -> None:
        self._show_tool(new)

    def release(self) -> None:
        """Give the map canvas back before the dock goes (the plugin unloads): our tools unset, no connection left."""
        self._activate(None)
        if getattr(self, "_follows_tools", False):
            self.iface.mapCanvas().mapToolSet.disconnect(self._tool_set)
            self._follows_tools = False

    def _show_tool(self, tool) -> None:
        self.box_button.setChecked(tool is self.box_tool)
        self.pick_button.setChecked(tool is self.pick_tool)
        self.mark_button.setChecked(tool is self.mark_tool)

    def _choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Query image", "", "Images (*.tif *.tiff *.png *.jpg *.jp2)")
        if path:
            self.search_image(path)

    def _open_index_dialog(self) -> None:
        from .index_dialog import IndexDialog

        dialog = IndexDialog(self.iface, self, on_built=self.open_index)  # the new index opens here when done
        dialog.exec_()

    # -- messages -------------------------------------------------------------------------------------------
    def _error(self, text: str) -> None:
        """The message bar shows one line (`messages.bar_text`); all of the error is under "Show more" and in the
        RSIR log."""
        messages.push(self.iface, text)

    def _index_path_changed(self, path: str) -> None:
        import os

        if os.path.isfile(os.path.join(path, "manifest.json")):
            self.open_index(path)
            return
        still = f" Still open: {self.session.index.dir}." if self.session is not None else ""
        if os.path.isdir(path):
            self.info.setText(f"{path} is not an rsir index (it has no manifest.json).{still}")
        elif self.session is None:
            self.info.setText("Choose an index folder (it holds manifest.json; made by `rsir index` or Build "
                              "index…).")
        else:
            self.info.setText(f"{path}: no such folder.{still}")

    # -- actions (also the API the tests drive) -------------------------------------------------------------
    def open_index(self, path: str) -> bool:
        try:
            self.session = RetrievalSession(path)
        except errors.RsirError as exc:
            self.session = None
            self.info.setText("No index open.")
            self._error(str(exc))
            return False
        self.last_result, self.last_search = None, None
        self.status.setText("")
        self.warned.clear()
        self.table.setRowCount(0)  # the old index's hits are not this one's
        self.feedback.index_changed()
        mods = self.session.modalities
        # similar tiles lie at 15-25 % of the bits (the demo's beach at 37-65 of 256); 8 suited 64-bit codes
        self.radius_spin.setValue(max(1, round(RADIUS_SHARE * self.session.index.code_bits)))
        self._describe_index()
        self._watch(path)
        self.modality_combo.clear()
        self.modality_combo.addItems(["auto"] + mods)
        if self.index_widget.filePath() != path:
            self.index_widget.blockSignals(True)
            self.index_widget.setFilePath(path)
            self.index_widget.blockSignals(False)
        return True

    def _describe_index(self) -> None:
        mods = self.session.modalities
        self.info.setText(self.session.describe() + (f"; cross-modal: queries from {', '.join(mods)}"
                                                     if len(mods) > 1 else ""))

    def _watch(self, path: str) -> None:
        """Follow updates of the open index by any writer (`rsir index`, another QGIS): each installs a new
        generation folder and manifest, and the dock's description and the index's tiles layer move to it."""
        from qgis.PyQt.QtCore import QFileSystemWatcher

        if getattr(self, "watcher", None) is None:
            self.watcher = QFileSystemWatcher(self)
            self.watcher.directoryChanged.connect(self._index_changed)
        if self.watcher.directories():
            self.watcher.removePaths(self.watcher.directories())
        self.watcher.addPath(path)

    def _index_changed(self, _path: str = "") -> None:
        if self.session is None:
            return
        try:
            if not self.session.refresh():
                return
        except errors.RsirError:  # mid-update or removed: the next change or search says
            return
        layers.follow_index(self.session.index.dir, self.session.index.tiles_path())
        self._describe_index()

    def request(self) -> SearchRequest:
        return SearchRequest(k=self.k_spin.value(), mode="hash" if self.mode_combo.currentIndex() else "float",
                             radius=self.radius_spin.value() if self.radius_check.isChecked() else None,
                             tile_rasters=self.tiles_spin.value(), heatmap=self.heat_check.isChecked(),
                             device=self.device_combo.currentText(),
                             query_modality=self.modality_combo.currentText() or "auto",
                             expand=self.expand_spin.value(), rerank=self.rerank_spin.value(),
                             whole_box=self.whole_box_check.isChecked())

    def on_box(self, rect, within: str | None = None) -> None:
        """Query with a box in the canvas CRS; `within`: the polygon (WKT, canvas CRS) it bounds, if any."""
        layer = self.raster_combo.currentLayer()
        if layer is None:
            self._error("Choose the query raster layer the box is read from (Query raster).")
            return
        crs = self.iface.mapCanvas().mapSettings().destinationCrs()
        box = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        source, wkt = layer.source(), crs.toWkt()  # read here: QGIS objects stay on the main thread
        return self.run_search(lambda s, req: s.search_box(source, box, wkt, req, within=within))

    def on_mark(self, point, relevant: bool) -> None:
        if not self.feedback.mark_at(point, relevant):
            self.iface.messageBar().pushMessage("RSIR", "No hit of the last search there.", level=Qgis.Info,
                                                duration=3)

    def on_pick(self, point) -> None:
        if not self._need_session():
            return
        crs = self.iface.mapCanvas().mapSettings().destinationCrs()
        geo = QgsCoordinateTransform(crs, WGS84, QgsProject.instance()).transform(point)

        def search_there(s, req):  # in the task: the index is read by one thread at a time
            tile = s.tile_at(geo.x(), geo.y())
            if tile is None:
                raise errors.RsirError("No indexed tile under that point.")
            return s.search_tile(tile, req)

        self.run_search(search_there)

    def search_selected_feature(self, layer):
        """Query with the selected polygons of `layer`: one polygon's tiles averaged (its bounding box read whole
        when it is under 1.5 tiles a side), or - several selected - the tiles of all of them averaged together:
        places like these fields."""
        feats = list(layer.selectedFeatures()) if layer is not None and hasattr(layer, "selectedFeatures") else []
        feats = [f for f in feats if f.geometry().type() == QgsWkbTypes.PolygonGeometry]
        if not feats:
            self._error("Select a polygon feature in the active vector layer first.")
            return None
        canvas_crs = self.iface.mapCanvas().mapSettings().destinationCrs()
        to_canvas = QgsCoordinateTransform(layer.crs(), canvas_crs, QgsProject.instance())
        geoms = []
        for f in feats:
            geom = QgsGeometry(f.geometry())
            geom.transform(to_canvas)
            geoms.append(geom)
        if len(geoms) == 1:
            return self.on_box(geoms[0].boundingBox(), within=geoms[0].asWkt())
        raster = self.raster_combo.currentLayer()
        if raster is None:
            self._error("Choose the query raster layer the polygons are read from (Query raster).")
            return None
        wkts = [g.asWkt() for g in geoms]
        source, wkt = raster.source(), canvas_crs.toWkt()
        return self.run_search(lambda s, req: s.search_polygons(source, wkts, wkt, req))

    def search_image(self, path: str):
        return self.run_search(lambda s, req: s.search_image(path, req))

    def _mode_changed(self, index: int) -> None:
        """Float <-> hash: re-ranking applies to hash search only, and the last query is searched again the new
        way (an analyst who switches wants to see the other ranking, not to draw the box again)."""
        self.rerank_spin.setEnabled(index == 1)
        if self.last_search is not None and self.session is not None:
            self.run_search(self.last_search)

    def _need_session(self) -> bool:
        if self.session is None:
            self._error("Open an index folder first.")
            return False
        return True

    def run_search(self, make_result):
        """Start a query in a background task (the map stays responsive); its layers are added when it is done.
        A query asked for while one runs waits for it, and only the newest waiting one runs: the older result is
        dropped. Returns the task (tests and scripts call `wait()`)."""
        if not self._need_session():
            return None
        task = SearchTask(self.session, make_result, self.request(), self._search_done)
        self.last_search = make_result
        if self.task is not None:  # one search at a time over the session's index and models
            self.task.superseded = True
            self.pending = task
        else:
            self._start(task)
        return task

    def _start(self, task) -> None:
        from qgis.core import QgsApplication

        self.task, self.pending = task, None
        self.status.setText("Searching…")
        self.busy.setVisible(True)
        QgsApplication.taskManager().addTask(task)

    def _search_done(self, task) -> None:
        self.task = None
        self.box_tool.clearRubberBand()  # the query layer outlines the box from now on
        self.busy.setVisible(False)
        self.status.setText("")
        if self.pending is not None:  # a newer query is waiting: this result is moot
            self._start(self.pending)
            return
        if task.result is None:
            self._error(task.error or "search failed")
            return
        try:
            group = layers.add_result_group(task.result, layers=task.layers or None)
        except Exception as exc:  # noqa: BLE001 - never an exception dialog in QGIS
            QgsMessageLog.logMessage(traceback.format_exc(), "RSIR", Qgis.Critical)
            self._error(f"adding the result layers failed: {type(exc).__name__}: {exc}")
            return
        self.last_result, self.last_group = task.result, group
        self._fill_table(task.result.hits)
        self.feedback.on_result(task.result, getattr(task, "refining", False))
        waited = time.perf_counter() - task.requested
        queued = f" ({waited - task.seconds:.1f} s of it behind the search before)" if waited > task.seconds + 0.5 \
            else ""
        self.status.setText(f"{len(task.result.hits)} hits in {waited:.2f} s{queued}")
        for warning in task.result.warnings:
            if warning not in self.warned:  # said once per open index: the tenth box on a source needs no repeat
                self.warned.add(warning)
                self.iface.messageBar().pushMessage("RSIR", warning, level=Qgis.Warning, duration=8)

    def wait(self, timeout: float = 120.0) -> bool:
        """Process events until no search runs or waits (for tests and scripts); False on timeout."""
        import time

        from qgis.core import QgsApplication

        end = time.monotonic() + timeout
        while (self.task is not None or self.pending is not None) and time.monotonic() < end:
            QgsApplication.processEvents()
            time.sleep(0.005)
        QgsApplication.processEvents()
        return self.task is None and self.pending is None

    def _fill_table(self, hits) -> None:
        self.table.clearSelection()  # a row chosen in the last results is not a hit of these
        self.table.scrollToTop()  # rank 1 first, not where the last results were scrolled to
        self.table.setRowCount(len(hits))
        for row, h in enumerate(hits):
            values = (h.rank, h.tile_id, "", f"{h.score:.4f}", h.hamming, h.label, h.source.rsplit("/", 1)[-1])
            for col, value in enumerate(values):
                self.table.setItem(row, col, QTableWidgetItem(str(value)))
        self.table.resizeColumnsToContents()

    def zoom_to_hit(self, row: int) -> None:
        if self.last_result is None or row >= len(self.last_result.hits):
            return
        hit = self.last_result.hits[row]
        if not hit.footprint_wkt:
            return
        canvas = self.iface.mapCanvas()
        geom = QgsGeometry.fromWkt(hit.footprint_wkt)
        geom.transform(QgsCoordinateTransform(WGS84, canvas.mapSettings().destinationCrs(), QgsProject.instance()))
        canvas.setExtent(geom.boundingBox().buffered(geom.boundingBox().width()))
        canvas.refresh()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._activate(None)
        super().closeEvent(event)

