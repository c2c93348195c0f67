"""Where the model shipped with rsir lies: `models/` beside the core package inside the plugin zip, else the
checkout's `default_model/`. `rsir index` uses it when no --model is given; the plugin prefills its dialogs with it."""
from __future__ import annotations

import glob
import os

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_model_path() -> str:
    """The default model file, or "" when this installation ships none."""
    for folder in (os.path.join(_PACKAGE_PARENT, "models"), os.path.join(_PACKAGE_PARENT, "default_model")):
        found = sorted(glob.glob(os.path.join(folder, "*.onnx")))
        if found:
            return found[0]
    return ""


def missing_model_message(path: str, sha256: str, how_to_pass: str = "") -> str:
    """One line for an index whose model file is gone (a default replaced by a newer one, a moved checkout): which
    file, and what the analyst can do about it."""
    shipped = default_model_path()
    rebuild = f"rebuild the index with the shipped model ({os.path.basename(shipped)})" if shipped else \
        "rebuild the index"
    other = f", {how_to_pass}," if how_to_pass else ""
    return (f"{path}: the model this index was built with (sha256 {sha256[:12]}) is not there any more; put it back "
            f"there{other} or {rebuild}. Searching by one of the index's tiles still works.")
