"""End to end in the real QGIS desktop under Xvfb: a fresh profile, the plugin installed from the built zip,
a box search through the plugin's dock, a screenshot."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig

import numpy as np
from osgeo import gdal

from core.index import BuildOptions, build_index
from tests.rasters import ORIGIN
from tools.package_plugin import build

HERE = os.path.dirname(os.path.abspath(__file__))


def test_plugin_in_qgis_desktop(tmp_path, twin_raster, tiny_model):
    assert shutil.which("qgis") and shutil.which("xvfb-run"), "make setup installs qgis and xvfb"
    index = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, index, BuildOptions(tile=64))
    build(str(tmp_path / "rsir_qgis_plugin.zip"))
    cfg = {"zip": str(tmp_path / "rsir_qgis_plugin.zip"), "raster": twin_raster, "index": index,
           "box": [ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1]],
           "png": str(tmp_path / "qgis.png"), "report": str(tmp_path / "report.json")}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    # QGIS runs Debian's python3: give it the packages an analyst would install (numpy<2, onnxruntime, faiss)
    env = dict(os.environ, RSIR_E2E_CONFIG=str(tmp_path / "cfg.json"), PYTHONPATH=sysconfig.get_paths()["purelib"],
               QT_QPA_PLATFORM="xcb", HOME=str(tmp_path))
    env.pop("QGIS_PREFIX_PATH", None)
    proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "qgis", "--profiles-path",
                           str(tmp_path / "profiles"), "--nologo", "--noversioncheck", "--code",
                           os.path.join(HERE, "e2e_qgis_script.py")], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert os.path.exists(cfg["report"]), proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(open(cfg["report"]).read())
    assert "error" not in report, report["error"]
    assert report["loaded"] and report["missing"] == []
    assert report["plugin_file"].startswith(str(tmp_path / "profiles"))  # installed from the zip
    assert report["engine"] == "rsir_qgis_plugin.core.search"          # its bundled core
    assert report["layers"][:2] == ["query", "hits"] and report["layers"][-1] == "similarity heat map"
    assert sum(name.startswith("#") for name in report["layers"]) == 5
    assert set(report["hits"][:2]) == {0, 14} and report["table_rows"] == 5
    assert report["canvas_crs"][0] == report["canvas_crs"][1] != ""  # the map is drawn in the raster's CRS
    shot = gdal.Open(cfg["png"]).ReadAsArray().astype(np.float32)
    assert shot.shape[1] >= 600 and shot.shape[2] >= 800
    assert shot.std() > 20 and np.unique(shot[:3].reshape(3, -1)[:, ::97], axis=1).shape[1] > 200  # not blank
