"""Exact Hamming searches over any faiss binary index: radius search and multi-index-hashing k-NN.

faiss answers radius queries exactly only for flat indexes; its hash indexes are exact once they probe enough
bit flips, and IVF / HNSW are approximate (HNSW has no radius search at all). This module makes every radius
search exact, choosing between the hash tables and a scan of the packed-code table, and adds the progressive
radius k-NN of multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012) on top of faiss's hash tables.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from math import comb

import faiss
import numpy as np

SCAN_CHUNK = 1 << 20  # codes per temporary flat index in a range scan (8 MB at 64 bits)
# Below this many codes per thread a k-NN scan stays on the calling thread: handing work to a pool costs more
# than it saves (docs/benchmarks.md).
SHARD_MIN = 1 << 17


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


# Costs in units of one code distance in a flat scan (~0.5 ns): a bucket lookup and the check of one candidate
# code found in a bucket, as faiss's multi-hash range search spends them (fitted on 10M x 64-bit codes, 3 x 21-bit
# tables: 0.1-1.6 ms for 3-700 probes, 12 ms for 4,700, against 5.4 ms for a flat scan; docs/benchmarks.md).
PROBE_COST = 2000
CANDIDATE_COST = 500


def probe_cost(index, flips: int) -> float:
    """Expected cost of one table probe round with `flips` flips, in scanned-code units: every bucket visited
    costs a lookup plus its expected occupancy (codes spread over 2^b buckets) in candidate checks."""
    _, b = hash_tables(index)
    return probes(index, flips) * (PROBE_COST + CANDIDATE_COST * index.ntotal / 2.0 ** b)


def hash_radius_wins(index, radius: int) -> bool:
    """Whether exact hash-table probing for `radius` is expected to cost less than half a scan of all codes."""
    flips = exact_flips(index, radius)
    return flips is not None and probe_cost(index, flips) < index.ntotal / 2


def _storage(index):
    """The flat table of codes a multi-hash index keeps beside its buckets (None for a single hash table)."""
    if isinstance(index, faiss.IndexBinaryMultiHash):
        return faiss.downcast_IndexBinary(index.storage)
    return None


def _flat_chunks(codes: np.ndarray):
    """(first id, flat index) over consecutive chunks of a code table, so a memmap is never loaded whole."""
    for start in range(0, len(codes), SCAN_CHUNK):
        flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        flat.add(np.ascontiguousarray(codes[start:start + SCAN_CHUNK], np.uint8))
        yield start, flat


def scan_range(codes: np.ndarray, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) of every row of `codes` (n x bytes, may be a memmap) within `radius` of one query."""
    query = np.ascontiguousarray(query, np.uint8).reshape(1, -1)
    dists, ids = [], []
    for start, flat in _flat_chunks(codes):
        _, d, i = flat.range_search(query, radius + 1)  # faiss keeps d < its radius
        dists.append(d)
        ids.append(i + start)
    return np.concatenate(dists).astype(np.int32), np.concatenate(ids).astype(np.int64)


def range_search(index, codes: np.ndarray, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Every tile within Hamming distance <= radius of one query, sorted by distance then id; always exact.

    `codes` is the packed-code table the index was built from (row = id), scanned when the index cannot answer
    exactly or a scan is cheaper."""
    query = np.ascontiguousarray(query, np.uint8).reshape(1, -1)
    flat = index if isinstance(index, faiss.IndexBinaryFlat) else _storage(index)
    if hash_radius_wins(index, radius):
        index.nflip = exact_flips(index, radius)
        _, dist, ids = index.range_search(query, radius + 1)  # faiss keeps d < its radius
    elif flat is not None:
        _, dist, ids = flat.range_search(query, radius + 1)
    else:
        dist, ids = scan_range(codes, query, radius)
    order = np.lexsort((ids, dist))
    return dist[order].astype(np.int32), ids[order].astype(np.int64)


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool whose workers each run faiss on one OpenMP thread: they already split the work between them, and
    a team per worker would put two spinning threads on every core."""
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="rsir-hamming",
                                             initializer=faiss.omp_set_num_threads, initargs=(1,))
    return _pools[threads]


def flat_codes(index: faiss.IndexBinaryFlat) -> np.ndarray:
    """The packed codes a flat binary index holds, as an (ntotal, code_size) view of its memory (no copy); the
    view does not keep the index alive, so use it only while the caller holds the index."""
    n, size = int(index.ntotal), int(index.code_size)
    if n == 0:
        return np.zeros((0, size), np.uint8)
    return faiss.rev_swig_ptr(index.xb.data(), n * size).reshape(n, size)


def _shard_knn(part: np.ndarray, queries: np.ndarray, k: int, start: int, variant: str = "mc"
               ) -> tuple[np.ndarray, np.ndarray]:
    """k-NN within one shard of a code table whose first row has id `start`.

    faiss's counting variant ("mc": one bucket per distance value, filled in id order) keeps the same ids as its
    heap variant and runs 1.2-1.4x faster on one query, 2.3x on batches at k = 400 (docs/benchmarks.md)."""
    dist, ids = faiss.knn_hamming(queries, np.ascontiguousarray(part, np.uint8), min(k, len(part)), variant=variant)
    return dist, ids + start


def scan_threads(n: int, threads: int | None = None) -> int:
    """Threads `scan_knn` splits n codes over: all of faiss's (or `threads`), fewer on small tables."""
    return max(1, min(threads or faiss.omp_get_max_threads(), n // SHARD_MIN))


def scan_knn(codes: np.ndarray, queries: np.ndarray, k: int, threads: int | None = None, variant: str = "mc"
             ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `codes` (n x bytes; an array, a memmap or `flat_codes`) to each query, read in
    place: (distances, ids), each (nq, k), ties broken by id, -1 ids where fewer than k codes exist.

    faiss parallelises a scan over queries, so one query runs on one core at 2-3x the memory-read floor; here
    the table is cut into one contiguous shard per thread and each thread scans its own (faiss.knn_hamming
    over a view): one query over 10M codes at 1.0-1.9x the one-thread floor on 2 cores, by host (docs/benchmarks.md).
    `variant` is faiss's k-NN kernel, "mc" (counting, the default) or "hc" (heap; kept for the benchmark)."""
    queries = np.ascontiguousarray(queries, np.uint8).reshape(-1, codes.shape[1])
    n = len(codes)
    threads = scan_threads(n, threads)
    if n == 0:
        found = [(np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64))]
    elif threads == 1:
        found = [_shard_knn(codes, queries, k, 0, variant)]
    else:
        bounds = np.linspace(0, n, threads + 1).astype(np.int64)
        pool = _pool(threads)
        jobs = [pool.submit(_shard_knn, codes[a:b], queries, k, int(a), variant)
                for a, b in zip(bounds[:-1], bounds[1:])]
        found = [job.result() for job in jobs]
    return _top(np.concatenate([d for d, _ in found], axis=1), np.concatenate([i for _, i in found], axis=1), k)


def mih_knn(index, codes: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest codes with a hash index: grow the radius until k codes lie within it (multi-index
    hashing's search); once probing would cost more than a scan, scan `codes` (the table the index was built from).

    Returns (distances, ids) of shape (k,), ties broken by id; -1 ids when the index holds fewer than k."""
    query = np.ascontiguousarray(query, np.uint8).reshape(1, -1)
    k_eff = min(k, index.ntotal)
    nhash, b = hash_tables(index)
    bits = index.code_size * 8
    spent = 0.0
    for flips in range(b + 1):
        # the largest radius these flips answer exactly; every smaller radius comes with it
        radius = bits if flips == b else min(bits, flips if nhash == 1 else (flips + 1) * nhash - 1)
        spent += probe_cost(index, flips)
        # rounds repeat earlier probes: stop while a scan still pays off. Not divided by the scan's threads: that
        # halves the budget and sent clustered queries to the scan 2.5x slower (4.2 vs 1.7 ms at 10M, benchmarks.md)
        if spent >= index.ntotal / 2:
            break
        index.nflip = flips
        _, dist, ids = index.range_search(query, radius + 1)
        if len(ids) >= k_eff:
            return _top(dist, ids, k)
    flat = _storage(index)
    dist, ids = scan_knn(codes if flat is None else flat_codes(flat), query, k)
    return dist[0], ids[0]


def mih_search(index, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`mih_knn` for each row of `queries`: (distances, ids), each (nq, k)."""
    found = [mih_knn(index, codes, q, k) for q in np.asarray(queries, np.uint8).reshape(-1, index.code_size)]
    return np.stack([d for d, _ in found]), np.stack([i for _, i in found])


def _top(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest distances of each row (or of a 1-D array), ties broken by id, padded with -1."""
    order = np.lexsort((ids, dist), axis=-1)[..., :k]
    d = np.full(dist.shape[:-1] + (k,), -1, np.int32)
    i = np.full(ids.shape[:-1] + (k,), -1, np.int64)
    m = order.shape[-1]
    d[..., :m], i[..., :m] = np.take_along_axis(dist, order, -1), np.take_along_axis(ids, order, -1)
    return d, i
