"""Map tools: drag a box (rubber band) or click a footprint."""
from __future__ import annotations

from qgis.core import QgsPointXY, QgsRectangle
from qgis.gui import QgsMapToolEmitPoint, QgsMapToolExtent
from qgis.PyQt.QtCore import pyqtSignal


class BoxTool(QgsMapToolExtent):
    """Drag a query box on the canvas; `boxDrawn` carries it in the canvas CRS when the mouse is released."""

    boxDrawn = pyqtSignal(QgsRectangle)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.extentChanged.connect(self._on_extent)

    def _on_extent(self, rect: QgsRectangle) -> None:
        if rect is not None and not rect.isEmpty():
            self.boxDrawn.emit(QgsRectangle(rect))

    def set_box(self, rect: QgsRectangle) -> None:
        """Programmatic equivalent of dragging `rect` (canvas CRS): draws the rubber band and emits boxDrawn."""
        self.extentChanged.emit(rect)


class PickTool(QgsMapToolEmitPoint):
    """Click on the map; `picked` carries the point in the canvas CRS ("more like this" on a footprint)."""

    picked = pyqtSignal(QgsPointXY)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.canvasClicked.connect(lambda point, _button: self.picked.emit(QgsPointXY(point)))
