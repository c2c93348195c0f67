"""Build the installable plugin zip: rsir_qgis_plugin/ + a copy of core/ inside it + the top-level metadata.txt.

    python tools/package_plugin.py dist/rsir_qgis_plugin.zip
"""
from __future__ import annotations

import argparse
import glob
import os
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"__pycache__", "python_deps"}


def _files(folder: str):
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith((".pyc", ".aux.xml")):
                yield os.path.join(here, name)


def build(out_path: str) -> list[str]:
    """Write the zip atomically; return the archive names."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # a temporary name of its own: two builds at once must not write one file
    fd, tmp = tempfile.mkstemp(prefix=".rsir_qgis_plugin.", suffix=".zip.partial",
                               dir=os.path.dirname(os.path.abspath(out_path)))
    os.close(fd)
    names = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        plugin = os.path.join(ROOT, "rsir_qgis_plugin")
        for path in _files(plugin):
            names.append("rsir_qgis_plugin/" + os.path.relpath(path, plugin))
            zf.write(path, names[-1])
        for path in _files(os.path.join(ROOT, "core")):
            names.append("rsir_qgis_plugin/core/" + os.path.relpath(path, os.path.join(ROOT, "core")))
            zf.write(path, names[-1])
        models = os.path.join(ROOT, "default_model")
        # the shipped model, its int8 copy and the fast model without view averaging (in models/int8/ and
        # models/fast/, so default_model_path still finds the default one)
        shipped = [p for sub in ("", "int8", "fast") for pattern in ("*.onnx", "*.prior.npz")
                   for p in glob.glob(os.path.join(models, sub, pattern))]  # priors: Learn from marks mixes them in
        for path in sorted(shipped):
            names.append("rsir_qgis_plugin/models/" + os.path.relpath(path, models).replace(os.sep, "/"))
            zf.write(path, names[-1])
        zf.write(os.path.join(ROOT, "metadata.txt"), "rsir_qgis_plugin/metadata.txt")
        names.append("rsir_qgis_plugin/metadata.txt")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_path)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the installable QGIS plugin zip (the plugin, a copy of "
                                     "core/, the shipped models and metadata.txt).")
    parser.add_argument("out", nargs="?", default=os.path.join(ROOT, "dist", "rsir_qgis_plugin.zip"),
                        help="zip to write (default: dist/rsir_qgis_plugin.zip)")
    out = parser.parse_args(argv).out
    if not out.endswith(".zip"):
        parser.error(f"{out}: the plugin zip's name must end in .zip")
    print(f"wrote {out} ({len(build(out))} files)")


if __name__ == "__main__":
    main()
