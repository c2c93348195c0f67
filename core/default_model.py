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
