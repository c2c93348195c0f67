"""Where the plugin finds rsir's core library: the copy inside the plugin zip (`make package` puts it at
rsir_qgis_plugin/core), else the development checkout's top-level `core` package. Plugin modules import the
core modules from here and nowhere else."""
# ruff: noqa: F401
try:  # packaged plugin
    from .core import encoder, errors, expansion, heatmap, hits_io, modality, queries, search, tile_vrt
    from .core.archive import footprints, sources
    from .core.index import builder, reader
except ImportError:  # development checkout
    from core import encoder, errors, expansion, heatmap, hits_io, modality, queries, search, tile_vrt
    from core.archive import footprints, sources
    from core.index import builder, reader

import glob as _glob
import os as _os

_HERE = _os.path.dirname(_os.path.abspath(__file__))


def default_model_path() -> str:
    """The model shipped with rsir: inside the plugin zip (models/), else the checkout's default_model/;
    "" when neither has one."""
    for folder in (_os.path.join(_HERE, "models"), _os.path.join(_os.path.dirname(_HERE), "default_model")):
        found = sorted(_glob.glob(_os.path.join(folder, "*.onnx")))
        if found:
            return found[0]
    return ""
