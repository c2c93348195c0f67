"""Find all: a histogram of every tile's score against the current query and a threshold to cut it at."""
from __future__ import annotations

import numpy as np
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QPainter, QPen
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QLabel, QVBoxLayout, QWidget


class Histogram(QWidget):
    """Bars of the score histogram (log counts: the few high scores must show beside the many low ones) and a
    red line at the threshold; a click sets the threshold."""

    def __init__(self, scores: np.ndarray, on_click, parent=None):
        super().__init__(parent)
        self.counts, self.edges = np.histogram(scores, bins=60)
        self.threshold = float(self.edges[0])
        self.on_click = on_click
        self.setMinimumSize(420, 160)

    def _x(self, value: float) -> float:
        lo, hi = self.edges[0], self.edges[-1]
        return 4 + (self.width() - 8) * (value - lo) / max(hi - lo, 1e-12)

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(250, 250, 250))
        top = np.log1p(self.counts.max()) if self.counts.max() else 1.0
        axis = 16  # px below the bars for the score axis's labels
        base = self.height() - axis
        h = base - 4
        for i, c in enumerate(self.counts):
            x0, x1 = self._x(self.edges[i]), self._x(self.edges[i + 1])
            bar = h * np.log1p(c) / top
            colour = QColor(60, 130, 200) if self.edges[i + 1] > self.threshold else QColor(180, 180, 180)
            p.fillRect(int(x0), int(base - bar), max(1, int(x1 - x0) - 1), int(bar), colour)
        p.setPen(QPen(QColor(220, 30, 30), 2))
        x = int(self._x(self.threshold))
        p.drawLine(x, 0, x, base)
        p.setPen(QColor(60, 60, 60))  # the score axis: its two ends, under the bars
        p.drawLine(4, base, self.width() - 4, base)
        p.drawText(4, self.height() - 3, f"{self.edges[0]:.3f}")
        p.drawText(self.width() - 44, self.height() - 3, f"{self.edges[-1]:.3f}")
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        lo, hi = self.edges[0], self.edges[-1]
        self.on_click(float(lo + (hi - lo) * (event.x() - 4) / max(self.width() - 8, 1)))


class FindAllDialog(QDialog):
    """Choose the score above which every tile is kept."""

    def __init__(self, scores: np.ndarray, start: float, query: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("RSIR: find all")
        self.scores = np.sort(np.asarray(scores, np.float64))
        root = QVBoxLayout(self)
        label = QLabel(f"Every tile of the index scored against: {query}. Tiles marked not relevant are left out.")
        label.setWordWrap(True)  # a long query description must not stretch the dialog
        root.addWidget(label)
        self.setMaximumWidth(640)
        self.histogram = Histogram(self.scores, self.set_threshold, self)
        root.addWidget(self.histogram)
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(4)
        self.spin.setSingleStep(0.001)
        self.spin.setRange(float(self.scores[0]) if len(self.scores) else -1.0,
                           float(self.scores[-1]) if len(self.scores) else 1.0)
        self.spin.valueChanged.connect(self._changed)
        self.count = QLabel("")
        form = QFormLayout()
        form.addRow("Keep tiles scoring at least", self.spin)
        form.addRow("", self.count)
        root.addLayout(form)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        root.addWidget(buttons)
        self.set_threshold(start)

    def set_threshold(self, value: float) -> None:
        self.spin.setValue(value)
        self._changed(self.spin.value())

    def _changed(self, value: float) -> None:
        self.histogram.threshold = value
        self.histogram.update()
        n = len(self.scores) - int(np.searchsorted(self.scores, value, side="left"))
        self.count.setText(f"{n} of {len(self.scores)} tiles")
        self.count.setAlignment(Qt.AlignLeft)

    @property
    def threshold(self) -> float:
        return self.spin.value()
