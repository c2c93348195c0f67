"""Retake docs/img/qgis_plugin.png: the real QGIS desktop under Xvfb, the plugin installed from the built zip, the
demo's index and its scene as the VRT `make demo` writes, and the demo's beach box searched through the plugin's
dock (tests/e2e_qgis_script.py does the clicking; tests/test_qgis_desktop.py runs the same script).

    make demo
    .venv/bin/python tools/plugin_screenshot.py [--model default_model/...onnx] [--out docs/img/qgis_plugin.png]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEMO_BOX = (447730, 4170420, 448370, 4171060)  # the Makefile's DEMO_BOX, EPSG:32618
DEMO = os.path.join(ROOT, "demo_out")


def demo_index(model: str) -> str:
    """The index `make demo` built with `model` (the Makefile's DEMO_INDEX: model name and sha256 prefix)."""
    with open(model, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()[:12]
    path = os.path.join(DEMO, f"index-{os.path.splitext(os.path.basename(model))[0]}-{sha}")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        raise SystemExit(f"{path}: no demo index for this model; run `make demo MODEL={model}` first")
    return path


def main() -> int:
    from tools.package_plugin import build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from core.default_model import default_model_path

    ap.add_argument("--model", default=default_model_path(), help="model of the demo index (default: the shipped one)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "qgis_plugin.png"))
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    index, raster = demo_index(args.model), os.path.join(DEMO, "s2_rgb.vrt")
    if not os.path.exists(raster):
        raise SystemExit(f"{raster} not found: run `make demo` first")
    work = tempfile.mkdtemp(prefix="rsir-shot-")
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
