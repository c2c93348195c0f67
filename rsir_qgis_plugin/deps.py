"""Check the plugin's Python dependencies and install missing ones into a folder of the QGIS profile.

QGIS ships numpy and GDAL; onnxruntime and faiss usually have to be added. Installing goes to the QGIS profile's
`rsir/python_deps-pyX.Y` (`deps_dir`: outside the plugin's folder, which installing a new version of the plugin
replaces), appended to the path (QGIS's own packages keep precedence), with numpy pinned to the very
version QGIS has already loaded: pip then picks the faiss-cpu and onnxruntime releases that declare support for it.
(Debian 12's QGIS runs numpy 1.24, which a plugin cannot replace once QGIS has imported it; faiss-cpu 1.12 and
later are built for numpy >= 1.25 and fail there with "No module named numpy._core", so an unpinned install left
the plugin broken, also after a restart.)
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import warnings

# import name -> pip requirement
REQUIRED = {"numpy": "numpy<2", "osgeo.gdal": "GDAL", "onnxruntime": "onnxruntime", "faiss": "faiss-cpu"}
# only for Learn from marks, which writes an ONNX model: installed on its first use
LEARN_REQUIRED = {"onnx": "onnx"}
LEARN_INSTALL_MB = 60  # onnx, ml_dtypes, protobuf, typing_extensions (measured, Debian 12)
# only for Build index with worker processes (Dask): installed on first use
DASK_REQUIRED = {"distributed": "dask[distributed]"}
DASK_INSTALL_MB = 45  # dask, distributed and what they need (measured, Debian 12)
NEEDS_NO_NUMPY = {"distributed"}  # installed without the numpy pin: pip then adds no numpy copy of its own


def deps_dir(plugin_dir: str = os.path.dirname(os.path.abspath(__file__))) -> str:
    """Where the installer puts packages: `<profile>/rsir/python_deps-pyX.Y` for a plugin installed in a QGIS
    profile (`<profile>/python/plugins/<plugin>`), so that a plugin upgrade, which replaces the plugin's folder,
    keeps them, and a QGIS on another Python version gets its own; `<plugin>/python_deps` for a plugin run from
    elsewhere (a development checkout). RSIR_PYTHON_DEPS overrides both."""
    if os.environ.get("RSIR_PYTHON_DEPS"):
        return os.environ["RSIR_PYTHON_DEPS"]
    plugins = os.path.dirname(os.path.abspath(plugin_dir))
    python = os.path.dirname(plugins)
    if os.path.basename(plugins) == "plugins" and os.path.basename(python) == "python":
        return os.path.join(os.path.dirname(python), "rsir",
                            f"python_deps-py{sys.version_info.major}.{sys.version_info.minor}")
    return os.path.join(plugin_dir, "python_deps")


DEPS_DIR = deps_dir()


def add_deps_dir_to_path() -> None:
    if os.path.isdir(DEPS_DIR) and DEPS_DIR not in sys.path:
        sys.path.append(DEPS_DIR)  # appended: QGIS's own packages keep precedence


def missing_modules(required: dict[str, str] | None = None) -> list[str]:
    """Import names that fail to import."""
    add_deps_dir_to_path()
    missing = []
    for name in (required or REQUIRED):
        try:
            with warnings.catch_warnings():  # faiss's SWIG wrappers warn on import: QGIS opened a "Python warning"
                warnings.simplefilter("ignore", DeprecationWarning)  # log tab for them on every start
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a broken install is as missing as an absent one
            missing.append(name)
    return missing


def missing_message(missing: list[str], required: dict[str, str] | None = None) -> str:
    reqs = [(required or REQUIRED).get(m, m) for m in missing]
    return (f"RSIR needs Python packages that this QGIS lacks: {', '.join(missing)} "
            f"(pip: {' '.join(reqs)}). Searching is disabled until they are installed.")


def python_executable() -> str:
    """The Python that runs QGIS, of the same version (inside QGIS sys.executable is the qgis binary; a python3
    found on PATH may be another one, e.g. a pyenv shim)."""
    exe = sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # the interpreter of this very installation first: embedded in QGIS, sys.executable is whatever "python3" PATH
    # finds first (a pyenv shim ran pip for QGIS's Debian Python)
    for cand in (os.path.join(sys.exec_prefix, "bin", version), os.path.join(sys.exec_prefix, "bin", "python3"),
                 exe if os.path.basename(exe).startswith("python") else None, shutil.which(version)):
        if cand and os.path.exists(cand):
            return cand
    return version


# For a numpy older than 1.25 (Debian 12 / Ubuntu 22.04 QGIS): faiss-cpu 1.12 and later fail to import ("No module
# named numpy._core"), 1.8 and 1.9 abort inside qgis_process (munmap_chunk in their std::regex), 1.10 and 1.11 work
# although their metadata asks for numpy >= 1.25 - so they are installed without pip's dependency resolution, with
# the dependencies they and onnxruntime 1.32 really have listed here (checked with /usr/bin/python3 and
# qgis_process of Debian 12's QGIS 3.22; tests/test_installer.py repeats it).
OLD_NUMPY_PINS = {"faiss": "faiss-cpu==1.11.0", "onnxruntime": "onnxruntime==1.32.0"}
OLD_NUMPY_EXTRAS = ("packaging", "flatbuffers", "protobuf>=4.25.8")
# the optional packages' tested pins for numpy < 1.25 (ml_dtypes releases after 0.5.4 are built for numpy 2)
OLD_NUMPY_OPTIONAL = {"onnx": ("onnx==1.23.2", "ml_dtypes==0.5.4", "typing_extensions", "protobuf>=4.25.8")}


def loaded_numpy() -> str | None:
    """The numpy version this Python has (QGIS imports it before any plugin, so it cannot be replaced)."""
    try:
        import numpy

        return numpy.__version__
    except ImportError:
        return None


def _old_numpy(version: str | None) -> bool:
    major, minor = (int(p) for p in (version or "2.0").split(".")[:2])
    return (major, minor) < (1, 25)


def pip_install_command(missing: list[str], required: dict[str, str] | None = None) -> list[str]:
    """The command the installer runs, as shown to the user: numpy pinned to the loaded one, so pip picks the
    releases that declare support for it; for numpy < 1.25 the tested pins above, without dependency resolution."""
    wanted = [m for m in missing if m not in ("osgeo.gdal", "numpy")]
    version = loaded_numpy()
    base = [python_executable(), "-m", "pip", "install", "--upgrade", "--target", DEPS_DIR]
    if required is not None and all(m in NEEDS_NO_NUMPY for m in wanted):
        return base + [required.get(m, m) for m in wanted]
    if version and _old_numpy(version):
        if required is None:
            return base + ["--no-deps"] + [OLD_NUMPY_PINS.get(m, REQUIRED.get(m, m)) for m in wanted] + \
                list(OLD_NUMPY_EXTRAS)
        return base + ["--no-deps"] + [p for m in wanted for p in OLD_NUMPY_OPTIONAL.get(m, (required.get(m, m),))]
    pin = f"numpy=={version}" if version else "numpy<2"
    return base + [pin] + [(required or REQUIRED).get(m, m) for m in wanted]


def pip_install(missing: list[str]) -> tuple[bool, str]:
    """Run pip; (success, output tail)."""
    os.makedirs(DEPS_DIR, exist_ok=True)
    proc = subprocess.run(pip_install_command(missing), capture_output=True, text=True)
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
