"""Run inside the real QGIS desktop (`qgis --code`): install the plugin from the zip into the fresh profile,
load it, search a box through the plugin's dock, save a screenshot and a JSON report, quit."""
import json
import os
import sys
import traceback
import zipfile

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface

CFG = json.load(open(os.environ["RSIR_E2E_CONFIG"]))
REPORT = {}


def run():
    try:
        import qgis.utils

        plugin_dir = os.path.join(QgsApplication.qgisSettingsDirPath(), "python", "plugins")
        os.makedirs(plugin_dir, exist_ok=True)
        zipfile.ZipFile(CFG["zip"]).extractall(plugin_dir)
        qgis.utils.updateAvailablePlugins()
        REPORT["loaded"] = qgis.utils.loadPlugin("rsir_qgis_plugin") and qgis.utils.startPlugin("rsir_qgis_plugin")
        plugin = qgis.utils.plugins["rsir_qgis_plugin"]
        REPORT["missing"] = plugin.missing
        REPORT["plugin_file"] = sys.modules["rsir_qgis_plugin"].__file__
        REPORT["engine"] = sys.modules["rsir_qgis_plugin.engine"].search.__name__
        layer = QgsRasterLayer(CFG["raster"], "scene")
        QgsProject.instance().addMapLayer(layer)
        canvas = iface.mapCanvas()
        canvas.setDestinationCrs(layer.crs())
        canvas.setExtent(layer.extent())
        if "window" in CFG:  # Xvfb has no window manager to maximise with
            iface.mainWindow().setGeometry(0, 0, *CFG["window"])
        dock = plugin.dock
        dock.show()
        dock.open_index(CFG["index"])
        dock.raster_combo.setLayer(layer)
        dock.k_spin.setValue(CFG.get("k", 5))
        dock.heat_check.setChecked(True)
        dock.box_tool.set_box(QgsRectangle(*CFG["box"]))
        dock.wait()
        REPORT["layers"] = [child.name() for child in dock.last_group.children()]
        REPORT["hits"] = [h.tile_id for h in dock.last_result.hits]
        REPORT["table_rows"] = dock.table.rowCount()
        canvas.refreshAllLayers()
    except Exception:  # noqa: BLE001 - reported to the test through the JSON
        REPORT["error"] = traceback.format_exc()
    QTimer.singleShot(4000, frame)


def frame():
    """QGIS gives a new project the CRS of its settings once the first layer is in: set the raster's CRS and
    extent again after that, then let the canvas render."""
    try:
        layer = QgsProject.instance().mapLayersByName("scene")[0]
        QgsProject.instance().setCrs(layer.crs())
        iface.mapCanvas().setDestinationCrs(layer.crs())
        iface.mapCanvas().setExtent(layer.extent())
        iface.mapCanvas().refreshAllLayers()
        REPORT["canvas_crs"] = [iface.mapCanvas().mapSettings().destinationCrs().authid(), layer.crs().authid()]
    except Exception:  # noqa: BLE001 - reported to the test through the JSON
        REPORT.setdefault("error", traceback.format_exc())
    QTimer.singleShot(3000, finish)


def finish():
    try:
        iface.mainWindow().grab().save(CFG["png"])
    finally:
        with open(CFG["report"], "w") as f:
            json.dump(REPORT, f)
        QgsApplication.exit(0)


QTimer.singleShot(1500, run)
