"""Where the plugin finds rsir's core library: the copy inside the plugin zip (`make package` puts it at
rsir_qgis_plugin/core), else the development checkout's top-level `core` package. Plugin modules import the
core modules from here and nowhere else (`from .engine import builder`), each under its last name."""
import importlib

MODULES = ("default_model", "encoder", "errors", "expansion", "feedback", "find_all", "heatmap", "hits_io",
           "mark_labels", "modality", "queries", "search", "tile_vrt", "adapt.from_labels", "adapt.self_supervised",
           "archive.footprints", "archive.sources", "archive.value_check", "archive.values", "index.builder",
           "index.distributed", "index.reader")

try:  # packaged plugin
    importlib.import_module(f"{__package__}.core")
    _CORE = f"{__package__}.core"
except ModuleNotFoundError as exc:
    if exc.name != f"{__package__}.core":
        raise
    _CORE = "core"
# one list for both places: a packaged core that lacks a dependency (faiss...) fails here, naming it
for _module in MODULES:
    globals()[_module.rsplit(".", 1)[-1]] = importlib.import_module(f"{_CORE}.{_module}")

default_model_path = default_model.default_model_path  # noqa: F821 - set above; "" when no model is shipped
shipped_models = default_model.shipped_models  # noqa: F821 - set above; [] when no model is shipped
