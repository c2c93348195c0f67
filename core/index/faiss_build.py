"""Choose and build faiss indexes: flat below a size threshold; above it IVF (float) and multi-index hashing
(binary); factory strings override."""
from __future__ import annotations

import math

import faiss
import numpy as np

from ..errors import RsirError

# Exact scans stay interactive up to these sizes (float: <~50 ms/query on 2 cores; binary: a few ms); above them
# float search uses IVF and binary search multi-index hashing (exact, sub-linear on clustered codes).
FLAT_MAX_FLOAT = 200_000
FLAT_MAX_BINARY = 2_000_000
DEFAULT_NPROBE = 16


def _nlist(n: int) -> int:
    return int(min(65536, max(16, 4 * math.sqrt(n))))


def default_float_factory(n: int) -> str:
    """Flat up to FLAT_MAX_FLOAT tiles; above, IVF whose lists store float16 (SQfp16): the embeddings are float16
    in the index's table already, so it ranks as IVF over float32 would, at half the size (5 GB at 10M x 256-d),
    and is memory-mapped at search time (the reader touches only the lists it probes)."""
    return "Flat" if n <= FLAT_MAX_FLOAT else f"IVF{_nlist(n)},SQfp16"


def mih_factory(n: int, bits: int) -> str:
    """Multi-index hashing tables for `n` codes of `bits` bits: substrings of about log2(n) bits, so that a
    bucket holds about one code on average (Norouzi et al. 2012)."""
    nhash = max(1, min(bits // 8, round(bits / max(1.0, math.log2(max(n, 2))))))
    b = min(bits // nhash, 64)
    return f"BHash{b}" if nhash == 1 else f"BHash{nhash}x{b}"


def default_binary_factory(n: int, bits: int = 64) -> str:
    """Exact search either way: a flat scan up to FLAT_MAX_BINARY codes, multi-index hashing above
    (core/index/hamming.py answers k-NN and radius queries exactly over its tables; docs/benchmarks.md)."""
    return "BFlat" if n <= FLAT_MAX_BINARY else mih_factory(n, bits)


ADD_CHUNK = 1 << 18   # rows converted and added at a time: the tables are never copied whole into memory
TRAIN_SAMPLE = 1 << 18  # rows an index that needs training (IVF, PQ, hash tables do not) is trained on


def _ivf(index):
    if isinstance(index, faiss.IndexBinary):
        return faiss.downcast_IndexBinary(index) if hasattr(faiss.downcast_IndexBinary(index), "nlist") else None
    return faiss.extract_index_ivf(index)


def _rows(data: np.ndarray, start: int, stop: int, dtype) -> np.ndarray:
    return np.ascontiguousarray(data[start:stop], dtype=dtype)


def _build(make, data: np.ndarray, kind: str, factory: str, dtype):
    """`make()`'s index trained on an even sample of `data` (a table or memmap, any dtype) and given every row,
    ADD_CHUNK rows at a time."""
    try:
        index = make()
    except RuntimeError as exc:
        raise RsirError(f"faiss {kind} factory {factory!r} is not valid ({str(exc).splitlines()[0]})") from None
    try:
        if not index.is_trained:
            size = TRAIN_SAMPLE
            try:  # k-means wants ~40-256 points per list: enough of them for an IVF of many lists
                size = max(size, 64 * _ivf(index).nlist)
            except (RuntimeError, AttributeError):
                pass
            step = max(1, len(data) // size)
            index.train(np.ascontiguousarray(data[::step][:size], dtype=dtype))
        for start in range(0, len(data), ADD_CHUNK):
            index.add(_rows(data, start, start + ADD_CHUNK, dtype))
    except RuntimeError as exc:  # e.g. an IVF with more lists than tiles to train them on
        raise RsirError(f"faiss {kind} factory {factory!r} cannot index {len(data)} tiles "
                        f"({str(exc).splitlines()[0]})") from None
    set_nprobe(index, DEFAULT_NPROBE)
    return index


def check_factory(kind: str, factory: str, width: int) -> None:
    """RsirError now, not after hours of encoding, when `factory` is not a valid faiss factory string of `kind`
    ("float": `width` = dimension, "binary": `width` = bits)."""
    try:
        if kind == "float":
            faiss.index_factory(width, factory, faiss.METRIC_INNER_PRODUCT)
        else:
            faiss.index_binary_factory(width, factory)
    except RuntimeError as exc:
        raise RsirError(f"--{kind}-factory {factory!r}: not a valid faiss {kind} index factory "
                        f"({str(exc).splitlines()[0]})") from None


def build_float_index(emb: np.ndarray, factory: str) -> faiss.Index:
    """Inner-product index over L2-normalised embeddings (row i = tile id i; a float16 memmap is fine)."""
    return _build(lambda: faiss.index_factory(emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT), emb, "float",
                  factory, np.float32)


def build_binary_index(codes: np.ndarray, bits: int, factory: str) -> faiss.IndexBinary:
    """Hamming index over packed codes (row i = tile id i; a memmap is fine)."""
    return _build(lambda: faiss.index_binary_factory(bits, factory), codes, "binary", factory, np.uint8)


def set_nprobe(index, nprobe: int) -> None:
    """Search effort of approximate indexes: inverted lists visit `nprobe` lists per query, HNSW graphs keep
    4 x `nprobe` candidates (efSearch); no-op for exact indexes."""
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(16, 4 * nprobe)
        return
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
        return
    if isinstance(index, faiss.Index):  # IVF wrapped in a pre-transform etc.
        try:
            faiss.extract_index_ivf(index).nprobe = nprobe
        except RuntimeError:  # not an IVF index: nothing to set
            pass
