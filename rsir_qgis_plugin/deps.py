"""Check the plugin's Python dependencies and install missing ones into a plugin-local folder.

QGIS ships numpy and GDAL; onnxruntime and faiss usually have to be added. Installing goes to
`<plugin>/python_deps` with `numpy<2` kept, so QGIS's own numpy-1.x-built GDAL keeps working.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys

# import name -> pip requirement
REQUIRED = {"numpy": "numpy<2", "osgeo.gdal": "GDAL", "onnxruntime": "onnxruntime", "faiss": "faiss-cpu"}
DEPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "python_deps")


def add_deps_dir_to_path() -> None:
    if os.path.isdir(DEPS_DIR) and DEPS_DIR not in sys.path:
        sys.path.append(DEPS_DIR)  # appended: QGIS's own packages keep precedence


def missing_modules(required: dict[str, str] | None = None) -> list[str]:
    """Import names that fail to import."""
    add_deps_dir_to_path()
    missing = []
    for name in (required or REQUIRED):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a broken install is as missing as an absent one
            missing.append(name)
    return missing


def missing_message(missing: list[str], required: dict[str, str] | None = None) -> str:
    reqs = [(required or REQUIRED).get(m, m) for m in missing]
    return (f"RSIR needs Python packages that this QGIS lacks: {', '.join(missing)} "
            f"(pip: {' '.join(reqs)}). Searching is disabled until they are installed.")


def python_executable() -> str:
    """The Python that runs QGIS (sys.executable is the qgis binary inside QGIS)."""
    exe = sys.executable
    if os.path.basename(exe).startswith("python"):
        return exe
    for cand in (os.path.join(sys.exec_prefix, "bin", "python3"), shutil.which("python3")):
        if cand and os.path.exists(cand):
            return cand
    return "python3"


def pip_install_command(missing: list[str], required: dict[str, str] | None = None) -> list[str]:
    reqs = [(required or REQUIRED).get(m, m) for m in missing if m != "osgeo.gdal"]
    return [python_executable(), "-m", "pip", "install", "--upgrade", "--target", DEPS_DIR, "numpy<2", *reqs]


def pip_install(missing: list[str]) -> tuple[bool, str]:
    """Run pip; (success, output tail)."""
    os.makedirs(DEPS_DIR, exist_ok=True)
    proc = subprocess.run(pip_install_command(missing), capture_output=True, text=True)
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
