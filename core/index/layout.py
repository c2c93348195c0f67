"""File names inside an index directory and the manifest format version."""
import os

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TILES = "tiles.gpkg"
FLOAT_INDEX = "float.faiss"
BINARY_INDEX = "codes.faiss"
EMBEDDINGS = "embeddings.f16"  # float16 (N, D) row = tile id; heat maps, re-ranking, index rebuilds
CODES = "codes.u8"             # uint8 (N, bits/8) row = tile id; packed sign bits
PARTIAL = ".partial"
# Renamed into place in this order; the manifest goes last so a reader never trusts a half-moved set.
DATA_FILES = (EMBEDDINGS, CODES, FLOAT_INDEX, BINARY_INDEX, TILES)


def path(index_dir: str, name: str) -> str:
    return os.path.join(index_dir, name)
