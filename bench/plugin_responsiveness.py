"""Does the plugin keep QGIS responsive on a large index? The real dock under a real QgsApplication (offscreen),
a 20 ms QTimer on the main thread recording how late it fires (a stall: the map cannot repaint), while the dock
searches a box without and with the heat map, and while Build index runs as a task.

    .venv/bin/python bench/synthetic_index.py demo_out/s2_rgb.vrt --tiles 100000 --out cache/synthetic/s2-100k
    .venv/bin/python bench/plugin_responsiveness.py cache/synthetic/s2-100k demo_out/s2_rgb.vrt

Prints per step: box -> result layers (s, median of --repeats), the longest main-thread stall (ms) and its 99th
percentile. Targets (issue 25): stall <= 100 ms; box -> layers <= 0.5 s without heat map, <= 1.5 s with it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402


class Probe:
    """A QTimer every `period` ms; `stalls` are how much later than due each tick fired."""

    def __init__(self, period_ms: int = 20):
        from qgis.PyQt.QtCore import QTimer

        self.period = period_ms / 1000
        self.stalls: list[float] = []
        self.last = None
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.stalls.append(max(0.0, now - self.last - self.period))
        self.last = now

    def start(self) -> None:
        self.stalls, self.last = [], None
        self.timer.start(int(self.period * 1000))

    def stop(self) -> tuple[float, float]:
        self.timer.stop()
        s = np.asarray(self.stalls or [0.0]) * 1000
        return float(s.max()), float(np.percentile(s, 99))


def _pump(until, timeout: float = 600.0) -> None:
    from qgis.core import QgsApplication

    end = time.monotonic() + timeout
    while not until() and time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.001)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("raster", help="the raster the index tiles (a layer the box is drawn on)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--archive", help="a raster to index in the Build index step (default: the raster)")
    args = ap.parse_args()

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsRectangle
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtWidgets import QMainWindow

    app = QgsApplication([], True)
    app.initQgis()

    class Iface:  # the parts of QgisInterface the dock uses
        def __init__(self):
            self.window = QMainWindow()
            self.canvas = QgsMapCanvas(self.window)
            from qgis.gui import QgsMessageBar

            self.bar = QgsMessageBar()

        def mapCanvas(self):  # noqa: N802
            return self.canvas

        def messageBar(self):  # noqa: N802
            return self.bar

        def mainWindow(self):  # noqa: N802
            return self.window

        def activeLayer(self):  # noqa: N802
            return None

    iface = Iface()
    from rsir_qgis_plugin.dock import RsirDock

    layer = QgsRasterLayer(args.raster, "scene")
    assert layer.isValid(), args.raster
    QgsProject.instance().addMapLayer(layer)
    iface.canvas.setDestinationCrs(layer.crs())
    dock = RsirDock(iface)
    probe = Probe()
    probe.start()
    t0 = time.perf_counter()
    assert dock.open_index(args.index), "the index did not open"
    open_s = time.perf_counter() - t0
    open_stall = probe.stop()
    dock.raster_combo.setLayer(layer)
    dock.k_spin.setValue(20)
    ext = layer.extent()
    side = ext.width() * 64 / layer.width()
    rows = []
    for heat in (False, True):
        dock.heat_check.setChecked(heat)
        times, stalls = [], []
        for r in range(args.repeats + 1):  # the first run loads the model: reported apart
            x0 = ext.xMinimum() + (r + 1) * 3 * side
            y1 = ext.yMaximum() - (r + 1) * 3 * side
            box = QgsRectangle(x0, y1 - side, x0 + side, y1)
            probe.start()
            t0 = time.perf_counter()
            dock.box_tool.set_box(box)
            _pump(lambda: dock.task is None and dock.pending is None)
            elapsed = time.perf_counter() - t0
            stall = probe.stop()
            if dock.last_result is None:
                raise SystemExit("the search failed: " + str(iface.bar.get_messages(3)[-1:]))
            if r:
                times.append(elapsed)
                stalls.append(stall)
            else:
                rows.append((f"first search (model loads){' + heat map' if heat else ''}", elapsed, *stall))
        rows.append((f"box -> layers{' + heat map' if heat else ''} (median of {args.repeats})",
                     float(np.median(times)), max(s[0] for s in stalls), max(s[1] for s in stalls)))

    from rsir_qgis_plugin.engine import builder
    from rsir_qgis_plugin.tasks import IndexTask

    out = tempfile.mkdtemp(prefix="rsir-bench-index-")
    shutil.rmtree(out)
    task = IndexTask([args.archive or args.raster], dock.session.index.model.path, out,
                     builder.BuildOptions(tile=64, scale=3000), add_layer=False)
    probe.start()
    t0 = time.perf_counter()
    QgsApplication.taskManager().addTask(task)
    _pump(lambda: task.status() in (task.Complete, task.Terminated))
    rows.append((f"Build index as a task ({task.summary()})", time.perf_counter() - t0, *probe.stop()))
    shutil.rmtree(out, ignore_errors=True)

    print(f"index {args.index}: {dock.session.index.n} tiles; opened in {open_s:.2f} s "
          f"(stall {open_stall[0]:.0f} ms)\n")
    print("| step | seconds | longest stall (ms) | 99th percentile stall (ms) |\n|---|---|---|---|")
    for name, secs, worst, p99 in rows:
        print(f"| {name} | {secs:.2f} | {worst:.0f} | {p99:.0f} |")
    app.exitQgis()
    os._exit(0)  # QGIS's teardown of Python-made widgets can crash after the work is done


if __name__ == "__main__":
    sys.exit(main())
