"""Batch indexing dialog: sources (loaded raster layers and files/folders), model, options -> an IndexTask."""
from __future__ import annotations

import os

from qgis.core import Qgis, QgsApplication, QgsMapLayerType, QgsProject
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QDoubleValidator
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from . import messages
from .engine import (
    builder,
    default_model_path,
    distributed,
    encoder,
    errors,
    shipped_models,
    sources,
    value_check,
    values,
)
from .layers import OUTPUT_PROPERTY
from .tasks import IndexTask


def _number(text: str) -> float | None:
    """The number typed, or None (empty, or still being typed: "-")."""
    try:
        return float(text)
    except ValueError:
        return None


# the Hash codes choices: (text, `rsir index` option: "archive" = fitted at the model's bits, "128" = --code-bits
# 128, "model" = --model-codes)
CODE_CHOICES = (("Fitted on this archive (the model's bits)", "archive"), ("Fitted on this archive, 128 bits", "128"),
                ("The model's own", "model"))


class IndexDialog(QDialog):
    def __init__(self, iface, parent=None, on_built=None):
        super().__init__(parent)
        self.on_built = on_built  # called with the index folder when a run finishes
        self.setWindowTitle("RSIR: build or extend an index")
        self.setMinimumWidth(640)  # model paths and the bands hint were cut at the default width
        self.iface = iface
        self.task: IndexTask | None = None
        root = QVBoxLayout(self)
        self.source_list = QListWidget()
        self.source_list.setMinimumHeight(140)
        active = iface.activeLayer() if hasattr(iface, "activeLayer") else None
        rasters = [layer for layer in QgsProject.instance().mapLayers().values()
                   if layer.type() == QgsMapLayerType.RasterLayer and not layer.customProperty(OUTPUT_PROPERTY)]
        # the plugin's own outputs (hit tiles, heat maps) are not archive imagery; the active raster (else the
        # first) starts checked, the usual case being "index what I am looking at"
        chosen = active if active in rasters else (rasters[0] if rasters else None)
        for layer in rasters:
            item = QListWidgetItem(f"{layer.name()}  ({layer.source()})")
            item.setData(Qt.UserRole, layer.source())
            item.setCheckState(Qt.Checked if layer is chosen else Qt.Unchecked)
            self.source_list.addItem(item)
        add_files, add_folder = QPushButton("Add files…"), QPushButton("Add patch folder…")
        add_files.clicked.connect(self._add_files)
        add_folder.clicked.connect(self._add_folder)
        row = QHBoxLayout()
        row.addWidget(add_files)
        row.addWidget(add_folder)
        root.addWidget(self.source_list)
        root.addLayout(row)
        self.model = QgsFileWidget()
        self.model.setFilter("ONNX models (*.onnx)")
        self.shipped = QComboBox()  # the shipped models by name, each saying what it is for; any exported model works
        for m in shipped_models():
            self.shipped.addItem(f"{m.name}: {m.summary}", m.path)
        self.shipped.addItem("another model file…", "")
        self.shipped.setToolTip("The default finds most on imagery no model was trained on; its int8 copy encodes "
                                "about twice as fast for about the same results; the fast model is for the land "
                                "uses it was trained on (default_model/README.md)")
        self.shipped.currentIndexChanged.connect(self._pick_shipped)
        self.model.fileChanged.connect(self._show_shipped)  # setting the file names the list's entry too
        self.model.setFilePath(default_model_path())
        self.out = QgsFileWidget()
        self.out.setStorageMode(QgsFileWidget.GetDirectory)
        self.tile, self.stride = QSpinBox(), QSpinBox()
        for spin, value in ((self.tile, 64), (self.stride, 64)):
            spin.setRange(4, 8192)
            spin.setValue(value)
        self.bands = QLineEdit()
        self.bands.setPlaceholderText("model's bands (e.g. 4,3,2 or B04,B03,B02)")
        self.scale = QDoubleSpinBox()
        self.scale.setRange(0, 1e9)
        self.scale.setSpecialValueText("model's scale")
        self.offset = QDoubleSpinBox()  # added to raw values before the scale: -1000 for newer Sentinel-2 products
        self.offset.setRange(-1e9, 1e9)
        self.offset.setToolTip("Added to raw pixel values before they are divided by the scale, e.g. -1000 for "
                               "Sentinel-2 products of processing baseline 04.00 and later; a band-stack spec's own "
                               "add_offset wins")
        self.nodata = QLineEdit()
        self.nodata.setPlaceholderText("the file's own (zeros are data)")
        self.nodata.setValidator(QDoubleValidator())
        self.nodata.setToolTip("Pixel value (in every band) that is empty in sources declaring no nodata of their "
                               "own, e.g. 0 for the fill around a scene. Left empty, a zero is data (radar water).")
        self.suggest = QPushButton("Suggest")
        self.suggest.setToolTip("Sample the first chosen source and set its scale: 3000 for reflectance x 10000 "
                                "(Sentinel-2), else the one that maps its bright end near 1 (16-bit imagery read "
                                "with an 8-bit model's 255 makes every tile look alike)")
        self.suggest.clicked.connect(self.suggest_scale)
        scale_row = QHBoxLayout()
        scale_row.addWidget(self.scale)
        scale_row.addWidget(self.suggest)
        self.workers = QSpinBox()
        self.workers.setRange(1, 256)
        self.workers.setValue(1)
        self.workers.setSpecialValueText("1 (inside QGIS)")
        self.workers.setToolTip("2 or more: encode in that many worker processes of a Dask cluster started on this "
                                "computer (about one per CPU core is fastest; the index is the same)")
        self.scheduler = QLineEdit()
        self.scheduler.setPlaceholderText("optional: tcp://HOST:8786 of a running Dask cluster")
        self.scheduler.setToolTip("Encode on an existing Dask cluster instead; its workers must see the sources and "
                                  "the model at the same paths")
        self.codes = QComboBox()
        for text, choice in CODE_CHOICES:
            self.codes.addItem(text, choice)
        self.codes.setToolTip("Hash search's binary codes. Fitted on this archive's own embeddings (PCA-ITQ, "
                              "seconds) they find more of what the model never trained on than the model's own "
                              "codes; 128 bits take half the memory. Indexes under 2 tiles per bit keep the "
                              "model's.")
        self.restart = QCheckBox("Discard an unfinished run in this folder and start over")
        self.restart.setToolTip("An interrupted run (this dialog's or `rsir index`'s) resumes when the same sources "
                                "and options are indexed again; to index others into the folder, discard it")
        form = QFormLayout()
        for label, widget in (("Model", self.shipped), ("Model file (.onnx)", self.model), ("Index folder", self.out),
                              ("Tile (px)", self.tile), ("Stride (px)", self.stride), ("Bands", self.bands),
                              ("Value scale", scale_row),
                              ("Value offset", self.offset), ("Nodata value", self.nodata), ("Hash codes", self.codes),
                              ("Worker processes", self.workers), ("Dask scheduler", self.scheduler),
                              ("", self.restart)):
            form.addRow(label, widget)
        root.addLayout(form)
        self.problem = QLabel("")  # the last run's error, when the dialog comes back for a fix
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #b00020")
        self.problem.setVisible(False)
        root.addWidget(self.problem)
        box = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        box.accepted.connect(self.start)
        box.rejected.connect(self.reject)
        root.addWidget(box)
        self._restore()

    def _pick_shipped(self, row: int) -> None:
        path = self.shipped.itemData(row)
        if path:
            self.model.setFilePath(path)

    def _show_shipped(self, path: str) -> None:
        """Name the shipped model the file is, else "another model file"."""
        row = self.shipped.findData(path)
        self.shipped.blockSignals(True)
        self.shipped.setCurrentIndex(row if row >= 0 else self.shipped.count() - 1)
        self.shipped.blockSignals(False)

    SETTINGS = "rsir/index_dialog/"

    def _remembered(self):
        """(key, getter, setter) of the fields the dialog remembers between runs (QGIS's settings)."""
        return (("model", self.model.filePath, lambda v: os.path.exists(v) and self.model.setFilePath(v)),
                ("out", self.out.filePath, self.out.setFilePath),
                ("tile", self.tile.value, lambda v: self.tile.setValue(int(v))),
                ("stride", self.stride.value, lambda v: self.stride.setValue(int(v))),
                ("bands", self.bands.text, self.bands.setText),
                ("scale", self.scale.value, lambda v: self.scale.setValue(float(v))),
                ("offset", self.offset.value, lambda v: self.offset.setValue(float(v))),
                ("nodata", self.nodata.text, self.nodata.setText),
                ("workers", self.workers.value, lambda v: self.workers.setValue(int(v))),
                ("scheduler", self.scheduler.text, self.scheduler.setText),
                ("codes", self.codes.currentData, lambda v: self.codes.setCurrentIndex(max(0, self.codes.findData(v)))))

    def _restore(self) -> None:
        from qgis.core import QgsSettings

        settings = QgsSettings()
        for key, _get, put in self._remembered():
            value = settings.value(self.SETTINGS + key, None)
            if value not in (None, ""):
                try:
                    put(value)
                except (TypeError, ValueError):
                    pass

    def _remember(self) -> None:
        from qgis.core import QgsSettings

        settings = QgsSettings()
        for key, get, _put in self._remembered():
            settings.setValue(self.SETTINGS + key, get())

    def _add_item(self, path: str) -> None:
        item = QListWidgetItem(path)
        item.setData(Qt.UserRole, path)
        item.setCheckState(Qt.Checked)
        self.source_list.addItem(item)

    def _add_files(self) -> None:
        for path in QFileDialog.getOpenFileNames(self, "Rasters or band-stack specs")[0]:
            self._add_item(path)

    def _add_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of image patches")
        if path:
            self._add_item(path)

    def chosen_sources(self) -> list[str]:
        items = [self.source_list.item(i) for i in range(self.source_list.count())]
        return [i.data(Qt.UserRole) for i in items if i.checkState() == Qt.Checked]

    def suggest_scale(self) -> float | None:
        """Set the value scale from a sample read of the first chosen source (rasters and band-stack specs); say
        what was seen."""
        srcs = [s for s in self.chosen_sources() if not s.endswith("/")]
        try:
            spec = sources.expand_archive(srcs[:1])[0]
            ds = sources.open_source(spec)
            info = encoder.Encoder(self.model.filePath(), device="cpu").info
            bands = sources.resolve_bands(ds, sources.parse_band_list(self.bands.text()) or info.bands, spec.path)
            reading = value_check.sample_reading(ds, bands, values.ValueScaling(info.scale, self.offset.value()),
                                                 spec.path)
        except (IndexError, errors.RsirError) as exc:
            self.iface.messageBar().pushMessage("RSIR", f"No scale to suggest: {exc or 'choose a source first'}",
                                                level=Qgis.Warning, duration=6)
            return None
        self.scale.setValue(reading.suggested_scale)
        self.problem.setVisible(False)  # the last run's problem is most often the scale: do not leave it standing
        messages.push(self.iface, f"{spec.path}: value scale set to {reading.suggested_scale:g} ({reading.basis}; "
                      f"98 % of its values are below {reading.p98:g})", level=Qgis.Info,
                      duration=8)  # replacing the last run's error
        return reading.suggested_scale

    def options(self) -> builder.BuildOptions:
        codes = self.codes.currentData()
        return builder.BuildOptions(tile=self.tile.value(), stride=self.stride.value(),
                                    bands=sources.parse_band_list(self.bands.text()),
                                    scale=self.scale.value() or None, add_offset=self.offset.value() or None,
                                    nodata=_number(self.nodata.text()), dask=self.dask_address(),
                                    model_codes=codes == "model", code_bits=int(codes) if codes.isdigit() else None)

    def dask_address(self) -> str | None:
        """Where to encode: the scheduler typed, else a local cluster of the chosen worker count, else in QGIS."""
        typed = self.scheduler.text().strip()
        if typed:
            return typed
        return f"local:{self.workers.value()}" if self.workers.value() > 1 else None

    def start(self) -> None:
        srcs, model, out = self.chosen_sources(), self.model.filePath(), self.out.filePath()
        if not srcs or not model or not out:
            self.iface.messageBar().pushMessage("RSIR", "Choose sources, a model and an index folder.",
                                                level=Qgis.Warning, duration=6)
            return
        address = self.dask_address()
        if address:
            try:
                distributed.check_address(address)
            except errors.RsirError as exc:
                messages.push(self.iface, str(exc), duration=10)
                return
            from . import deps

            missing = deps.missing_modules(deps.DASK_REQUIRED)
            if missing:
                from .install_task import offer_optional_install

                self.install_task = offer_optional_install(
                    self, self.iface, missing, deps.DASK_REQUIRED, "Worker processes run on Dask, which this QGIS "
                    "lacks", deps.DASK_INSTALL_MB, self.start, "Dask installed; indexing starts.")
                return
        self._remember()
        self.problem.setVisible(False)
        messages.clear_ours(self.iface)  # the last run's error, if any, must not come back over this one
        self.task = IndexTask(srcs, model, out, self.options(), on_done=self._done,
                              restart=self.restart.isChecked())
        QgsApplication.taskManager().addTask(self.task)
        self.accept()

    def _done(self, task: IndexTask, ok: bool) -> None:
        level = Qgis.Success if ok else (Qgis.Warning if task.was_cancelled else Qgis.Critical)
        if ok and self.on_built is not None:
            self.on_built(task.out_dir)
        from qgis.PyQt.QtCore import QTimer

        # after QGIS's own "Task complete" message, which would sit on top of this one
        QTimer.singleShot(1200, lambda: messages.push(self.iface, task.summary(), level=level,
                                                      duration=10 if ok else 20))
        if not ok and not task.was_cancelled:  # back with what was chosen, and the problem, to fix and retry
            self.problem.setText(task.summary())
            self.problem.setVisible(True)
            self.restart.setChecked(False)
            self.show()
