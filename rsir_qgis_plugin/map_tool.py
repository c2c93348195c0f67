"""Map tools: drag a box (rubber band) or click a footprint."""
from __future__ import annotations

from qgis.core import QgsPointXY, QgsRectangle
from qgis.gui import QgsMapToolEmitPoint, QgsMapToolExtent
from qgis.PyQt.QtCore import Qt, pyqtSignal


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


class MarkTool(QgsMapToolEmitPoint):
    """Click a hit on the map to mark it: `marked` carries the point (canvas CRS) and True for a left click
    (relevant), False for a right click (not relevant)."""

    marked = pyqtSignal(QgsPointXY, bool)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.canvasClicked.connect(lambda point, button: self.marked.emit(QgsPointXY(point),
                                                                          button != Qt.RightButton))
