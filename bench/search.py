"""Search at archive scale: Hamming k-NN over 1M and 10M x 64-bit codes (--bits), cosine k-NN over 1M x 128-d
floats.

Hamming, per database size: the memory-scan floor (numpy reading the code table once, on one thread and split
over --threads threads), exact search (faiss's IndexBinaryFlat search, and rsir's scan of the same table in one
shard per thread, core/index/hamming.py scan_knn, what rsir runs for BFlat indexes; with faiss's counting k-NN
kernel, rsir's, and its heap kernel, the one used before), binary IVF at two nprobe,
binary HNSW at two efSearch, and rsir's exact multi-index hashing k-NN over faiss hash tables. Times are the best
of 3 passes. Every method is reported as a ratio to both floors and as a speed-up over faiss's flat search; recall
= share of queries whose k-th distance is <= the exact k-th distance (ties are common in Hamming space, so ids are
not compared). Codes cluster as a trained model's do (2000 centres, each bit flipped with p = 0.08; queries are
database codes with 2 more bits flipped); --uniform draws uniform random codes and vectors instead (the worst case
for every sub-linear method).
Float: rsir's float index vs exact faiss vs numpy matmul, recall = top-k id overlap.

    .venv/bin/python bench/search.py [--sizes 1000000,10000000] [--float-n 1000000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.index import hamming
from core.index.faiss_build import (
    build_binary_index,
    build_float_index,
    default_binary_factory,
    default_float_factory,
    mih_factory,
    set_nprobe,
)

POPCOUNT = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def clustered_codes(rng, n: int, bits: int, centres: int = 2000, flip: float = 0.08) -> np.ndarray:
    """Packed codes around `centres` random centres, built in chunks to keep memory at a few bytes per code."""
    cbits = rng.integers(0, 2, (centres, bits), dtype=np.uint8)
    out = np.empty((n, bits // 8), np.uint8)
    for s in range(0, n, 1 << 20):
        m = min(n, s + (1 << 20)) - s
        b = cbits[rng.integers(0, centres, m)] ^ (rng.random((m, bits), dtype=np.float32) < flip).astype(np.uint8)
        out[s:s + m] = np.packbits(b, axis=1)
    return out


def flip_bits(rng, codes: np.ndarray, nflip: int) -> np.ndarray:
    bits = np.unpackbits(codes, axis=1)
    for row in bits:
        row[rng.choice(bits.shape[1], nflip, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def numpy_hamming(db: np.ndarray, q: np.ndarray) -> np.ndarray:
    return POPCOUNT[np.bitwise_xor(db, q)].sum(axis=1, dtype=np.uint16)


def best_of(fn, repeat: int = 3) -> float:
    """Best wall time of `fn()` in ms."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return min(times)


def ms_per_query(fn, queries: np.ndarray, single: bool) -> float:
    """Best of 3 passes over `queries`, one call per query (single) or one call for all, in ms per query."""
    if single:
        return best_of(lambda: [fn(q[None]) for q in queries]) / len(queries)
    return best_of(lambda: fn(queries)) / len(queries)


def threaded_floor(db64: np.ndarray, threads: int) -> float:
    """The memory-scan floor with every thread reading its own slice (numpy releases the GIL in reductions)."""
    with ThreadPoolExecutor(threads) as pool:
        parts = np.array_split(db64, threads)
        return best_of(lambda: list(pool.map(np.bitwise_or.reduce, parts)), 5)


def index_mb(index) -> float:
    return faiss.serialize_index_binary(index).nbytes / 2**20


def hamming_rows(n: int, args, rng) -> list[tuple]:
    """One table block for `n` codes: (method, build s, MB, single ms, batched ms, recall)."""
    k, bits = args.k, args.bits
    codes = (rng.integers(0, 256, (n, bits // 8), dtype=np.uint8) if args.uniform
             else clustered_codes(rng, n, bits))
    queries = (rng.integers(0, 256, (args.queries, bits // 8), dtype=np.uint8) if args.uniform
               else flip_bits(rng, codes[rng.integers(0, n, args.queries)], 2))
    db64 = codes.view(np.uint64).ravel()
    floor = best_of(lambda: np.bitwise_or.reduce(db64), 5)  # one pass over the same bytes
    rows = [("memory-scan floor (numpy, one pass, 1 thread)", 0.0, codes.nbytes / 2**20, floor, floor, None)]
    floor_n = threaded_floor(db64, args.threads)
    rows.append((f"memory-scan floor (numpy, one pass, {args.threads} threads)", 0.0, codes.nbytes / 2**20,
                 floor_n, floor_n, None))

    t = time.perf_counter()
    flat = build_binary_index(codes, bits, "BFlat")
    build = time.perf_counter() - t
    exact_d, _ = flat.search(queries, k)
    for q, d in zip(queries[:3], exact_d):  # faiss's exact distances are numpy's
        assert (np.sort(numpy_hamming(codes, q))[:k] == d).all(), "faiss Hamming distances differ from numpy"
    exact_kth = exact_d[:, -1]

    def recall(dists: np.ndarray, ids: np.ndarray) -> float:  # a missing k-th hit (-1) counts as a miss
        return float(np.mean((ids[:, -1] >= 0) & (dists[:, -1] <= exact_kth)))

    def timed(name, index, build_s, search):
        single = ms_per_query(search, queries[:args.single], True)
        batched = ms_per_query(search, queries, False)
        rows.append((name, build_s, index_mb(index), single, batched, recall(*search(queries))))

    default = default_binary_factory(n, bits)
    timed("exact: faiss BFlat search", flat, build, lambda q: flat.search(q, k))
    table = hamming.flat_codes(flat)
    mark = " (rsir default)" if default == "BFlat" else ""
    shards = hamming.scan_threads(n, args.threads)
    timed(f"exact: rsir scan of BFlat, {shards} shards, faiss heap kernel (before 2026-11-30)",
          flat, build, lambda q: hamming.scan_knn(table, q, k, threads=args.threads, variant="hc"))
    timed(f"exact: rsir scan of BFlat, {shards} shards, counting kernel{mark}",
          flat, build, lambda q: hamming.scan_knn(table, q, k, threads=args.threads))

    if n <= args.ivf_max_n:
        nlist = int(np.sqrt(n))
        t = time.perf_counter()
        ivf = build_binary_index(codes, bits, f"BIVF{nlist}")
        build = time.perf_counter() - t
        for nprobe in (4, 16):
            set_nprobe(ivf, nprobe)
            timed(f"BIVF{nlist}, nprobe {nprobe}", ivf, build, lambda q: ivf.search(q, k))

    if n <= args.hnsw_max_n:
        t = time.perf_counter()
        hnsw = build_binary_index(codes, bits, "BHNSW32")
        build = time.perf_counter() - t
        for ef in (32, 128):
            hnsw.hnsw.efSearch = ef
            timed(f"BHNSW32, efSearch {ef}", hnsw, build, lambda q: hnsw.search(q, k))

    for factory in dict.fromkeys(mih_factory(n, bits) if f == "auto" else f for f in args.mih.split(",")):
        t = time.perf_counter()
        mih = build_binary_index(codes, bits, factory)
        build = time.perf_counter() - t

        mark = ", rsir default" if factory == default else ""
        # its size includes the flat copy of the codes it scans when probing stops paying
        timed(f"multi-index hashing {factory} (rsir, exact{mark})", mih, build,
              lambda q, index=mih: hamming.mih_search(index, codes, q, k))
        del mih
    return rows


def print_hamming(n: int, rows: list[tuple], args) -> None:
    floor, floor_n = rows[0][3], rows[1][3]
    exact = next(r for r in rows if r[0].startswith("exact"))
    kind = "uniform" if args.uniform else "clustered"
    print(f"\nHamming, {n:,} x {args.bits}-bit codes ({kind}), {args.queries} queries, "
          f"k={args.k}, {args.threads} threads")
    print("| method | build s | memory MB | ms/query (one at a time) | ms/query (batch) | x floor (one at a time) "
          f"| x {args.threads}-thread floor (one at a time) | x floor (batch) | speed-up vs faiss flat (one at a time) "
          "| recall@k |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, build, mb, single, batched, rec in rows:
        rec_s = "-" if rec is None else f"{rec:.3f}"
        print(f"| {name} | {build:.1f} | {mb:.0f} | {single:.3f} | {batched:.3f} | {single / floor:.2f}x "
              f"| {single / floor_n:.2f}x | {batched / floor:.2f}x | {exact[3] / single:.1f}x | {rec_s} |")


def numpy_float_knn(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = q @ db.T
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, 1), axis=1), 1)


def float_table(n: int, args, rng) -> None:
    k, nq = args.k, args.queries
    if args.uniform:  # worst case for any approximate index: every neighbour is (nearly) equidistant
        emb = rng.normal(size=(n, 128)).astype(np.float32)
    else:  # embeddings of a trained model cluster by land cover: 2000 Gaussian clusters
        centres = rng.normal(size=(2000, 128)).astype(np.float32)
        emb = centres[rng.integers(0, 2000, n)] + 0.6 * rng.normal(size=(n, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    qemb = emb[rng.integers(0, n, nq)] + 0.05 * rng.normal(size=(nq, 128)).astype(np.float32)
    qemb /= np.linalg.norm(qemb, axis=1, keepdims=True)
    factory = default_float_factory(n)
    ours = build_float_index(emb, factory)
    exact = faiss.IndexFlatIP(128)
    exact.add(emb)
    exact_ids = numpy_float_knn(emb, qemb, k)
    rows = [(f"rsir ({factory}, nprobe 16)", lambda q: ours.search(q, k)),
            ("faiss IndexFlatIP (exact)", lambda q: exact.search(q, k)),
            ("numpy matmul", lambda q: numpy_float_knn(emb, q, k))]
    results = []
    for name, fn in rows:
        single = ms_per_query(fn, qemb[:args.single], True)
        batched = ms_per_query(fn, qemb, False)
        out = fn(qemb)
        ids = out[1] if isinstance(out, tuple) else out
        rec = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact_ids)]))
        results.append((name, single, batched, rec))
    print(f"\nfloat, {n:,} x 128-d ({'uniform on the sphere' if args.uniform else 'in 2000 clusters'}), {nq} queries, "
          f"k={k}, {args.threads} threads")
    print(f"| method | ms/query (one at a time) | ms/query (batch of {nq}) | numpy / method (batched) | recall@{k} |")
    print("|---|---|---|---|---|")
    base = results[-1][2]
    for name, single, batched, rec in results:
        print(f"| {name} | {single:.2f} | {batched:.3f} | {base / batched:.1f}x | {rec:.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="Hamming database sizes ('' = none)")
    ap.add_argument("--float-n", type=int, default=1_000_000, help="float database size (0 = skip)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--single", type=int, default=20, help="queries timed one at a time")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--bits", type=int, default=64, help="code length (a multiple of 64)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mih", default="auto,BHash4x16",
                    help="hash factories for multi-index hashing, comma-separated; auto = rsir's choice for the size")
    ap.add_argument("--ivf-max-n", type=int, default=10_000_000, help="skip binary IVF above this size")
    ap.add_argument("--hnsw-max-n", type=int, default=10_000_000, help="skip binary HNSW above this size")
    ap.add_argument("--uniform", action="store_true", help="uniform codes and vectors instead of clustered ones")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for n in [int(s) for s in args.sizes.split(",") if s]:
        print_hamming(n, hamming_rows(n, args, rng), args)
        sys.stdout.flush()
    if args.float_n:
        float_table(args.float_n, args, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
