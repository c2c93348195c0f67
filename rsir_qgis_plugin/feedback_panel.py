"""Relevance feedback in the dock: mark hits relevant or not (buttons, the R / N / Delete keys on the table, or
left / right clicks on the map with the Mark tool), Refine (the next round, a background search), Undo, and the
marks layer's Save / Load / Export labels. Each new query starts a loop with its own marks layer (marks.py)."""
from __future__ import annotations

import datetime as _dt
import os

import numpy as np
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFillSymbol,
    QgsGeometry,
    QgsMessageLog,
    QgsPointXY,
    QgsProject,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QKeySequence
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMenu,
    QPushButton,
    QShortcut,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import layers, messages
from . import marks as marks_io
from .engine import errors, from_labels
from .engine import find_all as engine_find_all

MARK_COLUMN = 2  # in the dock's results table
SYMBOL = {True: "✓ relevant", False: "✗ not", None: ""}
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


class FeedbackPanel(QWidget):
    """Works on the dock's last result (`dock.last_result`) and starts searches through `dock.run_search`."""

    def __init__(self, dock):
        super().__init__(dock)
        self.dock = dock
        self.loop_query = None      # the query the marks refine (the loop's first search, not a refined one)
        self.loop_raster = None
        self.loop_model = ""        # the index's model the loop's query was encoded with
        self.stale_text = ""        # after learning: the loop's query is in the old model's space
        self.round = 0
        self.layer = None           # the loop's marks layer
        self.undo_stack: list[tuple[object, bool | None]] = []  # (hit, its mark before) per change
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.relevant_button = QPushButton("✓ Relevant")
        self.relevant_button.setToolTip("Mark the selected hits as what you look for (R; on the map: the Mark tool, "
                                        "left click)")
        self.relevant_button.clicked.connect(lambda: self.mark_selected(True))
        self.not_button = QPushButton("✗ Not relevant")
        self.not_button.setToolTip("Mark the selected hits as not what you look for (N; on the map: the Mark tool, "
                                   "right click)")
        self.not_button.clicked.connect(lambda: self.mark_selected(False))
        self.refine_button = QPushButton("Refine")
        self.refine_button.setToolTip("Search again with the query refined by every mark of this query so far")
        self.refine_button.clicked.connect(self.refine)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Take back the last mark")
        self.undo_button.clicked.connect(self.undo)
        self.find_button = QPushButton("Find all…")
        self.find_button.setToolTip("Every tile of the index that scores above a threshold you choose (with a "
                                    "histogram of the scores) as one layer, not a top k")
        self.find_button.clicked.connect(lambda: self.find_all())
        self.method_combo = QComboBox()
        self.method_combo.addItems(["linear", "rocchio"])
        self.method_combo.setToolTip("linear: a classifier fitted on the marks scores every tile (best in "
                                     "docs/results.md); rocchio: the query moved towards the relevant marks")
        more = QToolButton()
        more.setText("Marks")
        more.setPopupMode(QToolButton.InstantPopup)
        menu = QMenu(more)
        menu.addAction("Save marks as…", self.save_as)
        menu.addAction("Load marks…", self.load)
        menu.addAction("Export labels for training…", self.export_labels)
        menu.addSeparator()
        menu.addAction("Learn from marks…", self.learn)
        menu.addAction("Adapt to this archive (no labels)…", self.adapt_to_archive)
        self.undo_learning_action = menu.addAction("Undo learning", self.undo_learning)
        menu.aboutToShow.connect(self._menu_about_to_show)
        more.setMenu(menu)
        for w in (self.relevant_button, self.not_button, self.refine_button, self.undo_button, self.find_button,
                  self.method_combo, more):
            row.addWidget(w)
        root.addLayout(row)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)  # a long line would widen the dock past the screen
        root.addWidget(self.summary)
        table = dock.table
        for key, value in (("R", True), ("N", False), ("Delete", None), ("Backspace", None)):
            shortcut = QShortcut(QKeySequence(key), table)
            shortcut.setContext(Qt.WidgetShortcut)
            shortcut.activated.connect(lambda v=value: self.mark_selected(v))
        self._update()

    # -- the loop -------------------------------------------------------------------------------------------
    def on_result(self, result, refined: bool) -> None:
        """A search finished: a refined one continues the loop, any other starts a new one."""
        if not refined or self.loop_query is None:
            for old in (self.layer, getattr(self, "found_layer", None)):  # the last query's: hidden, named so
                if old is None:
                    continue
                node = QgsProject.instance().layerTreeRoot().findLayer(old.id())
                if node is not None:
                    node.setItemVisibilityChecked(False)
                old.setName(f"{old.name()} (earlier query)")
            self.found_layer = None
            self.loop_query, self.loop_raster, self.round = result.query, result.raster, 0
            self.loop_model = result.model_sha
            self.stale_text = ""
            self.layer, self.undo_stack = None, []
        else:
            self.round += 1
        if self.layer is not None:  # over the new result group: its outlines would hide the marks
            layers.move_to_top(self.layer)
        self.show_marks()
        self._update()

    def index_changed(self) -> None:
        """Another index was opened: the loop's query and marks are tile ids of the one before."""
        self.loop_query, self.stale_text, self.round = None, "", 0
        if self.layer is not None:
            node = QgsProject.instance().layerTreeRoot().findLayer(self.layer.id())
            if node is not None:
                node.setItemVisibilityChecked(False)
        self.layer, self.undo_stack = None, []
        self._update()

    def marks(self) -> dict[int, bool]:
        return marks_io.read(self.layer) if self.layer is not None else {}

    def _ensure_layer(self):
        if self.layer is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            folder = self.dock.last_result.results_dir or os.getcwd()
            path = os.path.join(folder, f"marks-{stamp}.gpkg")
            marks_io.create(path)
            self.layer = marks_io.open_layer(path, self.dock.session.index.dir,
                                             f"RSIR marks {_dt.datetime.now():%H:%M:%S}")
            layers.add_on_top(self.layer)  # over the hits: their outlines show the marks
        return self.layer

    def set_mark(self, row: int, relevant: bool | None) -> None:
        """Mark the hit on table row `row` (None: clear its mark)."""
        result = self.dock.last_result
        if result is None or not 0 <= row < len(result.hits):
            return
        hit = result.hits[row]
        before = self.marks().get(hit.tile_id)
        if before == relevant:
            return
        self.undo_stack.append((hit, before))
        marks_io.set_mark(self._ensure_layer(), hit, relevant, self.round, self.loop_query.description)
        self.show_marks()
        self._update()

    def mark_selected(self, relevant: bool | None) -> None:
        rows = sorted({i.row() for i in self.dock.table.selectedIndexes()})
        if not rows:
            messages.push(self.dock.iface, "Select hits in the table first (or use the Mark tool on the map).",
                          duration=5)
            return
        for row in rows:
            self.set_mark(row, relevant)

    def mark_at(self, point: QgsPointXY, relevant: bool) -> bool:
        """Mark the hit whose footprint holds `point` (canvas CRS); False when none does."""
        result = self.dock.last_result
        if result is None:
            return False
        canvas_crs = self.dock.iface.mapCanvas().mapSettings().destinationCrs()
        geo = QgsCoordinateTransform(canvas_crs, WGS84, QgsProject.instance()).transform(point)
        where = QgsGeometry.fromPointXY(geo)
        for row, hit in enumerate(result.hits):
            if hit.footprint_wkt and QgsGeometry.fromWkt(hit.footprint_wkt).contains(where):
                current = self.marks().get(hit.tile_id)
                self.set_mark(row, None if current == relevant else relevant)  # the same click again clears
                return True
        return False

    def undo(self) -> None:
        if not self.undo_stack or self.layer is None:
            return
        hit, before = self.undo_stack.pop()
        marks_io.set_mark(self.layer, hit, before, self.round, self.loop_query.description)
        self.show_marks()
        self._update()

    def refine(self):
        """The next round in the background: the loop's query refined by every mark in the marks layer."""
        marked = self.marks()
        if not marked:
            messages.push(self.dock.iface, "Mark some hits as relevant or not first.", duration=5)
            return None
        query, raster, method = self.loop_query, self.loop_raster, self.method_combo.currentText()
        model = self.loop_model
        task = self.dock.run_search(lambda s, req: s.refine(query, marked, method, req, raster, model))
        if task is not None:
            task.refining = True
        return task

    # -- find all ---------------------------------------------------------------------------------------------
    def find_all(self, threshold: float | None = None):
        """Score every tile against the current query (refined or not) in the background, then (the dialog, or
        `threshold` for scripts and tests) write every tile above the threshold as a layer. Returns the task."""
        from qgis.core import QgsApplication, QgsTask

        result, session = self.dock.last_result, self.dock.session
        if result is None or session is None:
            messages.push(self.dock.iface, "Search first: Find all scores the index against the last query.",
                          duration=5)
            return None
        index, query, relevant = session.index, result.query, [t for t, ok in self.marks().items() if ok]

        def run(_task):
            # in a dict: QgsTask.fromFunction tests the returned value's truth, which an array has none of
            return {"scores": engine_find_all.all_scores(index, query.embedding)}

        def done(exception, returned=None):
            try:
                finish(exception, returned["scores"] if returned else None)
            except Exception as exc:  # noqa: BLE001 - QGIS swallows a task callback's exception: say it
                import traceback

                messages.push(self.dock.iface, f"Find all failed: {type(exc).__name__}: {exc}\n"
                              f"{traceback.format_exc()}")

        def finish(exception, scores):
            if exception is not None or scores is None:
                messages.push(self.dock.iface, f"Find all failed: {exception}")
                return
            # the lower of the lowest relevant mark's score and the last hit's: the marked tiles alone are no
            # "find all"
            start = min(engine_find_all.default_threshold(scores, relevant, len(result.hits)),
                        engine_find_all.default_threshold(scores, (), len(result.hits)))
            chosen = threshold
            if chosen is None:
                from .find_all_dialog import FindAllDialog

                dialog = FindAllDialog(scores, start, query.description, self)
                if not dialog.exec_():
                    return
                chosen = dialog.threshold
            self._write_found(index, scores, chosen, query.description, result.results_dir)

        self.find_task = QgsTask.fromFunction("RSIR: scoring every tile", run, on_finished=done)
        QgsApplication.taskManager().addTask(self.find_task)
        return self.find_task

    def _write_found(self, index, scores, threshold: float, description: str, folder: str) -> None:
        from qgis.core import QgsVectorLayer

        rejected = [t for t, ok in self.marks().items() if not ok]  # the analyst said these are not it
        ids = np.setdiff1d(np.flatnonzero(scores >= threshold), rejected)
        path = os.path.join(folder or os.getcwd(), f"find_all-{_dt.datetime.now():%H%M%S}.gpkg")
        n = engine_find_all.write_tiles_layer(path, index, ids, scores)
        layer = QgsVectorLayer(f"{path}|layername=tiles", f"RSIR all tiles >= {threshold:.3f} ({n})", "ogr")
        layer.renderer().setSymbol(QgsFillSymbol.createSimple(  # outlines: the imagery must show through
            {"color": "40,120,255,40", "outline_color": "40,120,255,255", "outline_width": "0.6"}))
        layer.setCustomProperty(layers.OUTPUT_PROPERTY, True)
        layers.add_on_top(layer)
        if self.layer is not None:  # the marks stay on top of what was found
            layers.move_to_top(self.layer)
        self.found_layer = layer
        messages.push(self.dock.iface, f"{n} tiles score {threshold:.3f} or more against {description}",
                      level=Qgis.Success, duration=8)

    # -- display --------------------------------------------------------------------------------------------
    def show_marks(self) -> None:
        """The mark column of the results table."""
        result, marked = self.dock.last_result, self.marks()
        if result is None:
            return
        for row, hit in enumerate(result.hits[:self.dock.table.rowCount()]):
            self.dock.table.setItem(row, MARK_COLUMN, QTableWidgetItem(SYMBOL[marked.get(hit.tile_id)]))
        self.dock.table.resizeColumnToContents(MARK_COLUMN)

    def _update(self) -> None:
        marked = self.marks()
        pos = sum(marked.values())
        has_result = self.dock.last_result is not None
        for b in (self.relevant_button, self.not_button, self.find_button):
            b.setEnabled(has_result)
        self.refine_button.setEnabled(bool(marked) and self.loop_query is not None)
        self.undo_button.setEnabled(bool(self.undo_stack))
        if self.loop_query is None and self.stale_text:
            self.summary.setText(self.stale_text)
        else:
            self.summary.setText(f"round {self.round}: {pos} relevant, {len(marked) - pos} not relevant marked"
                                 if marked or self.round else "")

    def _menu_about_to_show(self) -> None:
        session = self.dock.session
        self.undo_learning_action.setEnabled(session is not None and from_labels.learned_before(session.index.dir))

    # -- the marks file -------------------------------------------------------------------------------------
    def save_as(self) -> None:
        if self.layer is None:
            messages.push(self.dock.iface, "No marks yet.", duration=5)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save marks", "marks.gpkg", "GeoPackage (*.gpkg)")
        if path:
            self.save_to(path)

    def save_to(self, path: str) -> None:
        from osgeo import gdal

        # through SQLite, not a file copy: the open layer's latest edits may still be in the -wal file
        if os.path.exists(path):
            os.remove(path)
        if gdal.VectorTranslate(path, self.layer.source().split("|")[0], format="GPKG") is None:
            messages.push(self.dock.iface, f"{path}: cannot be written")
            return
        messages.push(self.dock.iface, f"marks saved to {path}", level=Qgis.Success, duration=5)

    def load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load marks", "", "GeoPackage (*.gpkg)")
        if path:
            self.load_from(path)

    def load_from(self, path: str) -> bool:
        """Use the marks of a saved marks layer (of this index) for the current query."""
        try:
            layer = marks_io.open_layer(path, self.dock.session.index.dir)
        except ValueError as exc:
            messages.push(self.dock.iface, str(exc))
            return False
        if self.layer is not None:
            QgsProject.instance().removeMapLayer(self.layer.id())
        self.layer, self.undo_stack = layer, []
        layers.add_on_top(layer)
        self.show_marks()
        self._update()
        return True

    def export_labels(self) -> None:
        if self.layer is None:
            messages.push(self.dock.iface, "No marks yet.", duration=5)
            return
        name, ok = QInputDialog.getText(self, "Export labels", "What did you search for (the class name)?")
        if not ok:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", f"{name or 'labels'}.gpkg",
                                              "GeoPackage (*.gpkg)")
        if path:
            try:
                n = marks_io.export_labels(self.layer, path, name, self.dock.session.index)
            except (ValueError, errors.RsirError) as exc:
                messages.push(self.dock.iface, str(exc))
                return
            messages.push(self.dock.iface, f"{n} labelled tiles written to {os.path.basename(path)}",
                          level=Qgis.Success, duration=10)
            QgsMessageLog.logMessage(f"{path}: class \"{name}\" and \"other\"; train with data.kind = \"index\", "
                                     f"data.labels = that file", "RSIR", Qgis.Info)

    # -- learn from marks ------------------------------------------------------------------------------------
    def learn(self, options=None):
        """Fit the index's model to the marks (and any label files the analyst adds) and re-encode the index in
        the background (core/adapt/from_labels.py, `rsir learn-labels`). `options` (a learn_dialog.LearnOptions)
        skips the dialog (scripts, tests). Returns the task, or None."""
        session = self._ready_session(lambda: self.learn(options))
        if session is None:
            return None
        if options is None:
            from .learn_dialog import LearnDialog

            dialog = LearnDialog(session.index.dir, self.marks(), from_labels.learned_before(session.index.dir),
                                 self)
            if not dialog.exec_():
                return None
            options = dialog.options()
        from .tasks import LearnTask

        return self._run_adapt(LearnTask(session.index.dir, options, self.marks(), self._adapted),
                               "Learning from the marks in the background…")

    def adapt_to_archive(self, ask: bool = True):
        """Self-supervised adaptation of the index's model to its own tiles, in the background (`rsir adapt`).
        Returns the task, or None."""
        from .engine import self_supervised
        from .tasks import AdaptTask

        session = self._ready_session(lambda: self.adapt_to_archive(ask))
        if session is None:
            return None
        out = self_supervised.default_out(session.index.dir)
        if ask:
            from qgis.PyQt.QtWidgets import QMessageBox

            tiles = min(session.index.n, self_supervised.DEFAULT_SAMPLE)
            if QMessageBox.question(self, "RSIR", "Adapt the index's model to this archive without labels? Two "
                                    f"altered views of each of {tiles:,} of its tiles train a correction of the "
                                    f"model (about {max(1, round(tiles / 60 / 60))} min), written to\n\n{out}\n\n"
                                    "and the index is re-encoded with it. It finds a little more on imagery unlike "
                                    "the model's training data (aerial land uses it never saw: 66 % of the right "
                                    "matches ranked first instead of 65 %) and a little less on imagery like it. "
                                    "Marks > Undo learning goes back.") != QMessageBox.Yes:
                return None
        return self._run_adapt(AdaptTask(session.index.dir, out, self._adapted), "Adapting to the archive…")

    def undo_learning(self):
        """Put back the vectors and model the index had before learning, in the background. Returns the task."""
        from .tasks import UndoLearningTask

        session = self.dock.session
        if session is None or not from_labels.learned_before(session.index.dir):
            messages.push(self.dock.iface, "This index has not learned from marks: nothing to undo.",
                          level=Qgis.Info, duration=5)
            return None
        return self._run_adapt(UndoLearningTask(session.index.dir, self._adapted), "Undoing the learning…")

    def _run_adapt(self, task, text: str):
        from qgis.core import QgsApplication

        self.adapt_task = task
        QgsApplication.taskManager().addTask(task)
        bar = self.dock.iface.messageBar()
        self.adapt_note = bar.createMessage("RSIR", text)  # taken down when the task ends (it may end first)
        bar.pushWidget(self.adapt_note, Qgis.Info, 0)
        return task

    def _take_down_note(self) -> None:
        note, self.adapt_note = getattr(self, "adapt_note", None), None
        if note is not None:
            try:
                self.dock.iface.messageBar().popWidget(note)
            except (RuntimeError, TypeError):  # closed by the analyst meanwhile
                pass

    def _ready_session(self, then):
        """The open session when onnx (which writing an adapted model needs) is there; else None, after offering
        to install onnx and to call `then()` when it imports."""
        from . import deps

        session = self.dock.session
        if session is None:
            messages.push(self.dock.iface, "Open an index first.", duration=5)
            return None
        missing = deps.missing_modules(deps.LEARN_REQUIRED)
        if missing:
            from .install_task import offer_optional_install

            self.install_task = offer_optional_install(
                self, self.dock.iface, missing, deps.LEARN_REQUIRED, "Adapting the model writes an ONNX model, "
                "which needs the Python package onnx", deps.LEARN_INSTALL_MB, then, "onnx installed.")
            return None
        return session

    def _adapted(self, task, ok: bool) -> None:
        """A learning or undo task ended: on success the dock moves to the new model, the loop's query (encoded
        with the old one) cannot be refined any more, and the message says to search again."""
        self._take_down_note()
        if not ok:
            if task.error:
                messages.push(self.dock.iface, task.error, level=Qgis.Warning if task.was_cancelled else
                              Qgis.Critical)
            return
        self.dock.session.refresh()  # the new generation and its model: queries are encoded with it now
        self.dock._describe_index()  # noqa: SLF001 - the dock's own summary line
        layers.follow_index(self.dock.session.index.dir, self.dock.session.index.tiles_path())
        self.loop_query = None  # its embedding is in the old model's space
        self.stale_text = "The index has a new model: search again."
        self._update()
        QgsMessageLog.logMessage(task.log_text, "RSIR", Qgis.Info)
        from qgis.PyQt.QtCore import QTimer

        # after QGIS's own "Task complete" message, which would hide this one under "1 more"
        QTimer.singleShot(1200, lambda: messages.push(self.dock.iface, task.done_text, level=Qgis.Success,
                                                      duration=15))
