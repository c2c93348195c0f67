"""Where the plugin finds rsir's core library: the copy inside the plugin zip (`make package` puts it at
rsir_qgis_plugin/core), else the development checkout's top-level `core` package. Plugin modules import the
core modules from here and nowhere else."""
# ruff: noqa: F401
try:  # packaged plugin
    from .core import (
        default_model,
        encoder,
        errors,
        expansion,
        feedback,
        find_all,
        heatmap,
        hits_io,
        mark_labels,
        modality,
        queries,
        search,
        tile_vrt,
    )
    from .core.adapt import from_labels, self_supervised
    from .core.archive import footprints, sources, value_check, values
    from .core.index import builder, distributed, reader
except ModuleNotFoundError as exc:
    if exc.name != f"{__package__}.core":  # the packaged core is there but lacks a dependency (faiss...): say that
        raise
    from core import (
        default_model,
        encoder,
        errors,
        expansion,
        feedback,
        find_all,
        heatmap,
        hits_io,
        mark_labels,
        modality,
        queries,
        search,
        tile_vrt,
    )
    from core.adapt import from_labels, self_supervised
    from core.archive import footprints, sources, value_check, values
    from core.index import builder, distributed, reader

default_model_path = default_model.default_model_path  # the shipped model, "" when there is none
