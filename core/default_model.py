"""Where the models shipped with rsir lie: `models/` beside the core package inside the plugin zip, else the
checkout's `default_model/`. `rsir index` uses the default when no --model is given (or a shipped copy by name:
`--model int8`); the plugin prefills its dialogs with it and offers the copies by name."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class ShippedModel:
    """One model file shipped with rsir, under the name the CLI and the plugin offer it by."""
    name: str      # "default", "int8", "fast": the shipped folder's sub-folder ("" is the default)
    path: str
    summary: str   # what it is for, one line for a chooser


# sub-folder -> (name, summary); measured in default_model/README.md and docs/benchmarks.md
_KINDS = (("", "default", "best on imagery it was not trained on"),
          ("int8", "int8", "the default quantised to int8: about twice as fast, within a point of it"),
          ("fast", "fast", "the default's trained part alone, int8: about ten times as fast, for the land uses it was "
                           "trained on"))


def _shipped_folder() -> str:
    for folder in (os.path.join(_PACKAGE_PARENT, "models"), os.path.join(_PACKAGE_PARENT, "default_model")):
        if glob.glob(os.path.join(folder, "*.onnx")):
            return folder
    return ""


def shipped_models() -> list[ShippedModel]:
    """The shipped models, the default first; empty when this installation ships none."""
    folder = _shipped_folder()
    out = []
    for sub, name, summary in _KINDS if folder else ():
        found = sorted(glob.glob(os.path.join(folder, sub, "*.onnx")))
        if found:
            out.append(ShippedModel(name, found[0], summary))
    return out


def default_model_path() -> str:
    """The default model file, or "" when this installation ships none."""
    models = shipped_models()
    return models[0].path if models else ""


def resolve_model(model: str | None) -> str:
    """A --model value as a file: None or "" is the default, a shipped model's name (`int8`) that model unless a
    file of that name exists; "" when nothing is shipped."""
    if not model:
        return default_model_path()
    if not os.path.exists(model):
        for m in shipped_models():
            if m.name == model:
                return m.path
    return model


def missing_model_message(path: str, sha256: str, how_to_pass: str = "") -> str:
    """One line for an index whose model file is gone (a default replaced by a newer one, a moved checkout): which
    file, and what the analyst can do about it."""
    shipped = default_model_path()
    rebuild = f"rebuild the index with the shipped model ({os.path.basename(shipped)})" if shipped else \
        "rebuild the index"
    other = f", {how_to_pass}," if how_to_pass else ""
    return (f"{path}: the model this index was built with (sha256 {sha256[:12]}) is not there any more; put it back "
            f"there{other} or {rebuild}. Searching by one of the index's tiles still works.")
