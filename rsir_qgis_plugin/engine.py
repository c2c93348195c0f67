"""Where the plugin finds rsir's core library: the copy inside the plugin zip (`make package` puts it at
rsir_qgis_plugin/core), else the development checkout's top-level `core` package. Plugin modules import the
core modules from here and nowhere else."""
# ruff: noqa: F401
try:  # packaged plugin
    from .core import encoder, errors, heatmap, hits_io, search, tile_vrt
    from .core.archive import footprints, sources
    from .core.index import builder, reader
except ImportError:  # development checkout
    from core import encoder, errors, heatmap, hits_io, search, tile_vrt
    from core.archive import footprints, sources
    from core.index import builder, reader
