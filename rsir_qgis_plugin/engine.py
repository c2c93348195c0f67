"""Where the plugin finds rsir's core library: the copy inside the plugin zip (`make package` puts it at
rsir_qgis_plugin/core), else the development checkout's top-level `core` package. Plugin modules import the
core modules from here and nowhere else (`from .engine import builder`), each under its last name."""
import importlib
import sys

MODULES = ("default_model", "encoder", "errors", "expansion", "feedback", "find_all", "heatmap", "hits_io",
           "mark_labels", "modality", "queries", "search", "tile_vrt", "adapt.from_labels", "adapt.self_supervised",
           "archive.footprints", "archive.sources", "archive.value_check", "archive.values", "index.builder",
           "index.distributed", "index.reader")

_BUNDLED = f"{__package__}.core"
# A core of an earlier version of the plugin may still be loaded: QGIS unloads the plugin modules its import hook saw,
# and the importlib calls below are not seen, so after an upgrade from ZIP the old core stayed beside the new plugin
# (initGui failed on a function it lacked). This module runs once per load of the plugin: drop the bundled core, so
# that its files are read again. (A development checkout's top-level `core` is not the plugin's own: left alone.)
for _name in [n for n in sys.modules if n == _BUNDLED or n.startswith(_BUNDLED + ".")]:
    del sys.modules[_name]
try:  # packaged plugin
    importlib.import_module(_BUNDLED)
    _CORE = _BUNDLED
except ModuleNotFoundError as exc:
    if exc.name != _BUNDLED:
        raise
    _CORE = "core"
# one list for both places: a packaged core that lacks a dependency (faiss...) fails here, naming it
for _module in MODULES:
    globals()[_module.rsplit(".", 1)[-1]] = importlib.import_module(f"{_CORE}.{_module}")

default_model_path = default_model.default_model_path  # noqa: F821 - set above; "" when no model is shipped
shipped_models = default_model.shipped_models  # noqa: F821 - set above; [] when no model is shipped
