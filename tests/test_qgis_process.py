"""`qgis_process` (scripts, batch servers, CI) runs the plugin's algorithms: a fresh profile with the plugin
installed from its zip, Build index without a MODEL (the shipped default), then Search by extent, whose output
layer is read back."""
from __future__ import annotations

import os
import subprocess
import sysconfig
import zipfile

from osgeo import ogr

from tests.rasters import ORIGIN
from tools.package_plugin import build

QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # /usr/bin/qgis_process passes --noversioncheck, which 3.22 rejects


def _run(profile: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=profile,
               PYTHONPATH=sysconfig.get_paths()["purelib"])  # numpy<2, onnxruntime, faiss as an analyst has them
    env.pop("QGIS_PREFIX_PATH", None)
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=300)


def test_qgis_process_builds_an_index_and_searches_it(tmp_path, twin_raster):
    profile = str(tmp_path / "profile")
    plugins = os.path.join(profile, "profiles", "default", "python", "plugins")
    os.makedirs(plugins)
    build(str(tmp_path / "rsir.zip"))
    with zipfile.ZipFile(tmp_path / "rsir.zip") as zf:
        zf.extractall(plugins)
    os.makedirs(os.path.join(profile, "profiles", "default", "QGIS"))
    with open(os.path.join(profile, "profiles", "default", "QGIS", "QGIS3.ini"), "w") as f:
        f.write("[PythonPlugins]\nrsir_qgis_plugin=true\n")

    listed = _run(profile, "list")
    assert "rsir:buildindex" in listed.stdout and "rsir:searchbyextent" in listed.stdout, listed.stderr[-2000:]
    idx = str(tmp_path / "idx")
    built = _run(profile, "run", "rsir:buildindex", f"--SOURCES={twin_raster}", f"--OUT={idx}")
    assert built.returncode == 0 and "TILES:\t16" in built.stdout, built.stdout[-1500:] + built.stderr[-1500:]
    x0, y1 = ORIGIN
    hits = str(tmp_path / "hits.gpkg")
    searched = _run(profile, "run", "rsir:searchbyextent", f"--INDEX={idx}", f"--RASTER={twin_raster}",
                    f"--EXTENT={x0},{x0 + 640},{y1 - 640},{y1} [EPSG:32618]", "--K=3", f"--OUTPUT={hits}")
    assert searched.returncode == 0, searched.stdout[-1500:] + searched.stderr[-1500:]
    ds = ogr.Open(hits)  # kept: the layer dies with its dataset
    found = sorted((f.GetField("rank"), f.GetField("tile_id")) for f in ds.GetLayer(0))
    assert len(found) == 3 and {found[0][1], found[1][1]} == {0, 14}  # the box's tile and its twin
