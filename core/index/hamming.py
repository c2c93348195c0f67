"""Exact Hamming searches over any faiss binary index: radius search and multi-index-hashing k-NN.

faiss answers radius queries exactly only for flat indexes; its hash indexes are exact once they probe enough
bit flips, and IVF / HNSW are approximate (HNSW has no radius search at all). This module makes every radius
search exact, choosing between the hash tables and a scan of the packed-code table, and adds the progressive
radius k-NN of multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012) on top of faiss's hash tables.
"""
from __future__ import annotations

from math import comb

import faiss
import numpy as np

SCAN_CHUNK = 1 << 20  # codes per temporary flat index in a scan (8 MB at 64 bits)


def hash_tables(index) -> tuple[int, int] | None:
    """(number of hash tables, bits per table) of a faiss hash index, None for other index types."""
    if isinstance(index, faiss.IndexBinaryMultiHash):
        return int(index.nhash), int(index.b)
    if isinstance(index, faiss.IndexBinaryHash):
        return 1, int(index.b)
    return None


def exact_flips(index, radius: int) -> int | None:
    """Bit flips per table that make a hash index's radius search exact (pigeonhole), None for other indexes.

    A code within `radius` of the query differs from it in at most radius // nhash bits of at least one of the
    nhash substrings; a single table of b bits sees only its b bits, so it needs min(radius, b) flips."""
    tables = hash_tables(index)
    if tables is None:
        return None
    nhash, b = tables
    return min(radius, b) if nhash == 1 else min(radius // nhash, b)


def probes(index, flips: int) -> int:
    """Buckets a hash index visits per query with `flips` flips: nhash x sum_{i <= flips} C(b, i)."""
    nhash, b = hash_tables(index)
    return nhash * sum(comb(b, i) for i in range(flips + 1))


def hash_radius_wins(index, radius: int) -> bool:
    """Whether exact hash-table probing is cheaper than scanning all codes (a bucket costs ~ 64 code distances)."""
    flips = exact_flips(index, radius)
    return flips is not None and probes(index, flips) * 64 < index.ntotal


def scan_range(codes: np.ndarray, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) of every row of `codes` (n x bytes, may be a memmap) within `radius` of one query."""
    query = np.ascontiguousarray(query, np.uint8).reshape(1, -1)
    dists, ids = [], []
    for start in range(0, len(codes), SCAN_CHUNK):
        flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        flat.add(np.ascontiguousarray(codes[start:start + SCAN_CHUNK], np.uint8))
        _, d, i = flat.range_search(query, radius + 1)  # faiss keeps d < its radius
        dists.append(d)
        ids.append(i + start)
    return np.concatenate(dists).astype(np.int32), np.concatenate(ids).astype(np.int64)


def range_search(index, codes: np.ndarray, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Every tile within Hamming distance <= radius of one query, sorted by distance then id; always exact.

    `codes` is the packed-code table the index was built from (row = id), scanned when the index cannot answer
    exactly or a scan is cheaper."""
    query = np.ascontiguousarray(query, np.uint8).reshape(1, -1)
    if isinstance(index, faiss.IndexBinaryFlat):
        _, dist, ids = index.range_search(query, radius + 1)
    elif hash_radius_wins(index, radius):
        index.nflip = exact_flips(index, radius)
        _, dist, ids = index.range_search(query, radius + 1)
    else:
        dist, ids = scan_range(codes, query, radius)
    order = np.lexsort((ids, dist))
    return dist[order].astype(np.int32), ids[order].astype(np.int64)


def scan_knn(codes: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `codes` (may be a memmap) to one query, chunk by chunk; (distances, ids)."""
    query = np.ascontiguousarray(query, np.uint8).reshape(1, -1)
    dists, ids = [], []
    for start in range(0, len(codes), SCAN_CHUNK):
        flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        flat.add(np.ascontiguousarray(codes[start:start + SCAN_CHUNK], np.uint8))
        d, i = flat.search(query, min(k, flat.ntotal))
        dists.append(d[0])
        ids.append(i[0] + start)
    return _top(np.concatenate(dists), np.concatenate(ids), k)


def mih_knn(index, codes: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest codes with a hash index: grow the radius until k codes lie within it (multi-index
    hashing's search); once probing would cost more than a scan, scan `codes` (the table the index was built from).

    Returns (distances, ids) of shape (k,), ties broken by id; -1 ids when the index holds fewer than k."""
    query = np.ascontiguousarray(query, np.uint8).reshape(1, -1)
    k_eff = min(k, index.ntotal)
    nhash, b = hash_tables(index)
    bits = index.code_size * 8
    for flips in range(b + 1):
        # the largest radius these flips answer exactly; every smaller radius comes with it
        radius = bits if flips == b else min(bits, flips if nhash == 1 else (flips + 1) * nhash - 1)
        if not hash_radius_wins(index, radius):
            break
        index.nflip = flips
        _, dist, ids = index.range_search(query, radius + 1)
        if len(ids) >= k_eff:
            return _top(dist, ids, k)
    return scan_knn(codes, query, k)


def _top(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, dist))[:k]
    d = np.full(k, -1, np.int32)
    i = np.full(k, -1, np.int64)
    d[:len(order)], i[:len(order)] = dist[order], ids[order]
    return d, i
