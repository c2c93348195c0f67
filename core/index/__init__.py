"""The index directory (contract 2, docs/contracts.md): build it resumably, open it, search it."""
from .builder import BuildOptions, BuildReport, build_index  # noqa: F401
from .reader import Index, TileRecord  # noqa: F401
