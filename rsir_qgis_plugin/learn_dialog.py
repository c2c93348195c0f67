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


def default_model_path(index_dir: str, class_name: str) -> str:
    """Beside the index: <index>-learned-<class>.onnx (-2, -3, ... where taken)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", class_name).strip("-").lower()[:40] or "labels"
    index_dir = os.path.abspath(index_dir)
    base = os.path.join(os.path.dirname(index_dir), f"{os.path.basename(index_dir)}-learned-{slug}")
    path, k = f"{base}.onnx", 2
    while os.path.exists(path):
        path, k = f"{base}-{k}.onnx", k + 1
    return path


class LearnDialog(QDialog):
    def __init__(self, index_dir: str, marks: dict[int, bool], learned_before: bool = False, parent=None):
        super().__init__(parent)
        self.setWindowTitle("RSIR: learn from marks")
        self.setMinimumWidth(640)
        self.index_dir, self.marks, self.learned_before = index_dir, dict(marks), learned_before
        pos = sum(marks.values())
        root = QVBoxLayout(self)
        again = (" Earlier learning's labels count too: this refines the same adaptation of the index's original "
                 "model." if learned_before else "")
        intro = QLabel(f"Fit the index's model to your marks ({pos} relevant, {len(marks) - pos} not relevant) and "
                       "any label files you add, then re-encode the index with it (no image is read again). "
                       f"Searches use the adapted model afterwards; Marks > Undo learning goes back.{again}")
        intro.setWordWrap(True)
        root.addWidget(intro)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
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
        remove.clicked.connect(self._remove_files)
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
        self.out_edit.setMinimumWidth(380)
        self.out_edit.textChanged.connect(lambda text: self.out_edit.setToolTip(text))
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
        self.hint = QLabel("")
        self.hint.setStyleSheet("color: #b00020")
        root.addWidget(self.hint)
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
            self._auto_out = default_model_path(self.index_dir, text)
            self.out_edit.setText(self._auto_out)
        self._check()

    def _check(self) -> None:
        """OK only with something to learn from and a usable class name; the hint says what is missing."""
        name = self.name_edit.text().strip()
        if not self.marks and not self.files_list.count():
            hint = "Mark some hits relevant and not relevant first, or add label files."
        elif self.marks and name.lower() == "other":
            hint = '"other" is the class of the tiles marked not relevant: name what the relevant ones show.'
        elif self.marks and not name:
            hint = "Name what the relevant marks show."
        elif self.marks and all(self.marks.values()) and not self.files_list.count() and not self.learned_before:
            hint = "Only relevant marks: mark some hits not relevant too, so the model learns what to tell apart."
        else:
            hint = ""
        self.hint.setText(hint)
        ok = not hint and (bool(name) or not self.marks)
        self.button_box.button(QDialogButtonBox.Ok).setEnabled(ok)

    def _add_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Label files", "", "Vector files (*.gpkg *.shp *.geojson "
                                                "*.json *.sqlite);;All files (*)")
        for p in paths:
            self.files_list.addItem(p)
        self._check()

    def _remove_files(self) -> None:
        for item in self.files_list.selectedItems():
            self.files_list.takeItem(self.files_list.row(item))
        self._check()

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Adapted model", self.out_edit.text(), "ONNX (*.onnx)")
        if path:
            self.out_edit.setText(path if path.endswith(".onnx") else path + ".onnx")

    def options(self) -> LearnOptions:
        return LearnOptions(self.name_edit.text().strip(), self.out_edit.text().strip(),
                            [self.files_list.item(i).text() for i in range(self.files_list.count())],
                            self.shrinkage_spin.value())
