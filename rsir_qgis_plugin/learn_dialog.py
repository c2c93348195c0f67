"""The Learn from marks dialog: what the relevant marks show (the class name), label files to add (exported labels
of earlier searches, any polygons with a "class" field), where the adapted model goes, and the shrinkage."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

DEFAULT_SHRINKAGE = 0.3  # core/adapt/from_labels.py's, chosen in docs/results.md


@dataclass
class LearnOptions:
    class_name: str                 # what the relevant marks show; the not relevant ones are "other"
    out_model: str
    label_files: list[str] = field(default_factory=list)
    shrinkage: float = DEFAULT_SHRINKAGE


def default_model_path(index_dir: str, model_path: str, class_name: str) -> str:
    """Beside the index: <index>-<model>-<class>.onnx (a new name, never the index's own model)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", class_name).strip("-").lower() or "labels"
    stem = os.path.splitext(os.path.basename(model_path))[0]
    index_dir = os.path.abspath(index_dir)
    base = os.path.join(os.path.dirname(index_dir), f"{os.path.basename(index_dir)}-{stem}-{slug}")
    path, k = f"{base}.onnx", 2
    while os.path.exists(path):
        path, k = f"{base}-{k}.onnx", k + 1
    return path


class LearnDialog(QDialog):
    def __init__(self, index_dir: str, model_path: str, marks: dict[int, bool], query: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("RSIR: learn from marks")
        self.setMinimumWidth(560)
        self.index_dir, self.model_path = index_dir, model_path
        pos = sum(marks.values())
        root = QVBoxLayout(self)
        intro = QLabel(f"Fit the index's model to what you marked ({pos} relevant, {len(marks) - pos} not relevant"
                       f"{' for ' + query if query else ''}) and any label files you add, then re-encode the "
                       "index with it (no image is read again). Searches use the adapted model afterwards; the "
                       "index's present model stays on disk.")
        intro.setWordWrap(True)
        root.addWidget(intro)
        form = QFormLayout()
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("e.g. solar farm")
        self.name_edit.setToolTip('The class the relevant marks show; the tiles marked not relevant become "other"')
        form.addRow("What the relevant marks show:", self.name_edit)
        files = QWidget()
        files_row = QHBoxLayout(files)
        files_row.setContentsMargins(0, 0, 0, 0)
        self.files_list = QListWidget()
        self.files_list.setMaximumHeight(80)
        self.files_list.setToolTip("Exported labels of earlier searches, or any polygon layer with a 'class' field: "
                                   "a tile takes the class of the polygon under its centre")
        buttons = QVBoxLayout()
        add, remove = QPushButton("Add…"), QPushButton("Remove")
        add.clicked.connect(self._add_files)
        remove.clicked.connect(lambda: [self.files_list.takeItem(self.files_list.row(i))
                                        for i in self.files_list.selectedItems()])
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        files_row.addWidget(self.files_list, 1)
        files_row.addLayout(buttons)
        form.addRow("More labels (optional):", files)
        out = QWidget()
        out_row = QHBoxLayout(out)
        out_row.setContentsMargins(0, 0, 0, 0)
        self.out_edit = QLineEdit()
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(browse)
        form.addRow("Adapted model:", out)
        self.shrinkage_spin = QDoubleSpinBox()
        self.shrinkage_spin.setRange(0.0, 0.95)
        self.shrinkage_spin.setSingleStep(0.1)
        self.shrinkage_spin.setValue(DEFAULT_SHRINKAGE)
        self.shrinkage_spin.setToolTip("How far the fit is pulled towards the model as it is (0: the marks alone; "
                                       "higher: safer with few marks). 0.3 was best in docs/results.md")
        form.addRow("Shrinkage:", self.shrinkage_spin)
        root.addLayout(form)
        self.button_box = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.button_box.button(QDialogButtonBox.Ok).setText("Learn and re-encode")
        self.button_box.accepted.connect(self.accept)
        self.button_box.rejected.connect(self.reject)
        root.addWidget(self.button_box)
        self.name_edit.textChanged.connect(self._name_changed)
        self._auto_out = ""
        self._name_changed("")

    def _name_changed(self, text: str) -> None:
        if self.out_edit.text() in ("", self._auto_out):  # follow the name until the analyst picks a path
            self._auto_out = default_model_path(self.index_dir, self.model_path, text)
            self.out_edit.setText(self._auto_out)
        ok = bool(text.strip()) and text.strip() != "other"
        self.button_box.button(QDialogButtonBox.Ok).setEnabled(ok)

    def _add_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Label files", "", "Vector files (*.gpkg *.shp *.geojson "
                                                "*.json *.sqlite);;All files (*)")
        for p in paths:
            self.files_list.addItem(p)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Adapted model", self.out_edit.text(), "ONNX (*.onnx)")
        if path:
            self.out_edit.setText(path if path.endswith(".onnx") else path + ".onnx")

    def options(self) -> LearnOptions:
        return LearnOptions(self.name_edit.text().strip(), self.out_edit.text().strip(),
                            [self.files_list.item(i).text() for i in range(self.files_list.count())],
                            self.shrinkage_spin.value())
