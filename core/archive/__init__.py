"""Archive reading: sources (rasters, band stacks, patch folders) -> tiles (windows, footprints) -> pixels."""
from .sources import SourceSpec, expand_archive, open_source, resolve_bands  # noqa: F401
from .tiling import TileWindow, plan_windows  # noqa: F401
