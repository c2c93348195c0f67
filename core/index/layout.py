"""File names inside an index directory and the manifest format version.

Format 2 (since 2026-12-07): the data files of each complete version of the index live in a generation folder
(IDX/gen-000003/) that the manifest names; an update builds the next generation beside it, renames it into place
and then replaces the manifest, so a reader sees one complete generation or the next, never a mix. Format 1 kept
the data files in IDX/ itself; they are read as they are and replaced by a generation at the next update.
"""
import os

FORMAT_VERSION = 3       # format 3: the codes may be fitted on the archive (CODE_FIT; manifest code_source)
FORMAT_MODEL_CODES = 2   # what an index whose codes are the model's is written as, so older rsir still reads it
READABLE_FORMATS = (1, 2, 3)
MANIFEST = "manifest.json"
TILES = "tiles.gpkg"
FLOAT_INDEX = "float.faiss"
BINARY_INDEX = "codes.faiss"
EMBEDDINGS = "embeddings.f16"  # float16 (N, D) row = tile id; heat maps, re-ranking, index rebuilds
CODES = "codes.u8"             # uint8 (N, bits/8) row = tile id; packed sign bits
MODEL_COPY = "model.onnx"      # the generation's model, hard-linked (or copied) when the generation is written
CODE_FIT = "codes_fit.npz"  # the map from embedding to code fitted on the archive (core/index/archive_codes.py)
WINDOWS = "windows.i32"        # int32 (N, 5) row = tile id: source id, x, y, w, h (heat maps without SQL; optional)
PARTIAL = ".partial"
BASE = "base"                  # the vectors and model as they were before an analyst's labels adapted the index
LOCK = ".lock"
GENERATION_PREFIX = "gen-"
DATA_FILES = (EMBEDDINGS, CODES, FLOAT_INDEX, BINARY_INDEX, TILES)


def path(index_dir: str, name: str) -> str:
    return os.path.join(index_dir, name)


def generation_name(number: int) -> str:
    """The folder of generation `number`: "gen-000003"."""
    return f"{GENERATION_PREFIX}{number:06d}"


def is_generation(name: str) -> bool:
    return name.startswith(GENERATION_PREFIX) and name[len(GENERATION_PREFIX):].isdigit()


def bookkeeping(name: str) -> bool:
    """Entries of an index folder that are not its data or manifest: an unfinished run, the lock, generations, the
    vectors from before learning."""
    return name in (PARTIAL, LOCK, BASE) or is_generation(name)
