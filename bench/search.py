"""Search latency at archive scale: 1M x 64-bit codes (Hamming) and 1M x 128-d floats (cosine), same run.

Hamming: rsir's binary index (core/index/faiss_build, the default factory for this size) vs a bare faiss
IndexBinaryFlat vs numpy brute force (XOR + byte popcount table). Float: rsir's float index vs numpy matmul.
Random codes; float vectors in 2000 Gaussian clusters (or uniform with --uniform). Recall: Hamming, share of queries whose k-th distance equals the exact k-th distance (ties are
common in Hamming space); float, mean overlap of the top-k ids with exact search.

    .venv/bin/python bench/search.py [--n 1000000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.index.faiss_build import build_binary_index, build_float_index, default_binary_factory, default_float_factory

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def numpy_hamming_knn(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(q), k), np.int64)
    for i, code in enumerate(q):
        d = POPCOUNT[np.bitwise_xor(db, code)].sum(axis=1, dtype=np.uint16)
        part = np.argpartition(d, k)[:k]
        out[i] = part[np.argsort(d[part], kind="stable")]
    return out


def numpy_float_knn(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = q @ db.T
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, 1), axis=1), 1)


def ms_per_query(fn, queries: np.ndarray, single: bool) -> float:
    t = time.perf_counter()
    if single:
        for q in queries:
            fn(q[None])
    else:
        fn(queries)
    return 1000 * (time.perf_counter() - t) / len(queries)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--uniform", action="store_true", help="float data uniform on the sphere instead of clustered")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    k, nq = args.k, args.queries

    codes = rng.integers(0, 256, (args.n, 8), dtype=np.uint8)
    qcodes = rng.integers(0, 256, (nq, 8), dtype=np.uint8)
    factory = default_binary_factory(args.n)
    ours = build_binary_index(codes, 64, factory)
    bare = faiss.IndexBinaryFlat(64)
    bare.add(codes)
    d_ours, _ = ours.search(qcodes, k)
    d_np = POPCOUNT[np.bitwise_xor(codes[numpy_hamming_knn(codes, qcodes[:5], k)], qcodes[:5, None])].sum(-1)
    assert (d_ours[:5] == d_np).all(), "rsir Hamming distances differ from numpy brute force"
    exact_kth = POPCOUNT[np.bitwise_xor(codes[numpy_hamming_knn(codes, qcodes, k)], qcodes[:, None])].sum(-1)[:, -1]
    rows = [("Hamming 64-bit", f"rsir ({factory})", lambda q: ours.search(q, k)),
            ("Hamming 64-bit", "faiss IndexBinaryFlat", lambda q: bare.search(q, k)),
            ("Hamming 64-bit", "numpy brute force", lambda q: numpy_hamming_knn(codes, q, k))]

    if args.uniform:  # worst case for any approximate index: every neighbour is (nearly) equidistant
        emb = rng.normal(size=(args.n, 128)).astype(np.float32)
    else:  # embeddings of a trained model cluster by land cover: 2000 Gaussian clusters
        centres = rng.normal(size=(2000, 128)).astype(np.float32)
        emb = centres[rng.integers(0, 2000, args.n)] + 0.6 * rng.normal(size=(args.n, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    qemb = emb[rng.integers(0, args.n, nq)] + 0.05 * rng.normal(size=(nq, 128)).astype(np.float32)
    qemb /= np.linalg.norm(qemb, axis=1, keepdims=True)
    ffactory = default_float_factory(args.n)
    fl = build_float_index(emb, ffactory)
    exact_float = faiss.IndexFlatIP(128)
    exact_float.add(emb)
    exact_ids = numpy_float_knn(emb, qemb, k)
    rows += [("float 128-d", f"rsir ({ffactory}, nprobe 16)", lambda q: fl.search(q, k)),
             ("float 128-d", "faiss IndexFlatIP (exact)", lambda q: exact_float.search(q, k)),
             ("float 128-d", "numpy matmul", lambda q: numpy_float_knn(emb, q, k))]

    def recall(kind: str, fn) -> float:
        if kind.startswith("Hamming"):
            out = fn(qcodes)
            ids = out[1] if isinstance(out, tuple) else out
            kth = POPCOUNT[np.bitwise_xor(codes[ids[:, -1]], qcodes)].sum(-1)
            return float(np.mean(kth == exact_kth))
        out = fn(qemb)
        ids = out[1] if isinstance(out, tuple) else out
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact_ids)]))

    results = []
    for kind, name, fn in rows:
        single = ms_per_query(fn, (qcodes if kind.startswith("Hamming") else qemb)[:20], True)
        batched = ms_per_query(fn, qcodes if kind.startswith("Hamming") else qemb, False)
        results.append((kind, name, single, batched, recall(kind, fn)))
    print(f"{args.n:,} database items, {nq} queries, k={k}, {args.threads} threads, float data "
          f"{'uniform on the sphere' if args.uniform else 'in 2000 clusters'}")
    print(f"| data | method | ms/query (one at a time) | ms/query (batch of {nq}) | numpy / method (batched) "
          f"| recall@{k} |")
    print("|---|---|---|---|---|---|")
    for kind, name, single, batched, rec in results:
        base = next(r[3] for r in results if r[0] == kind and r[1].startswith("numpy"))
        print(f"| {kind} | {name} | {single:.2f} | {batched:.3f} | {base / batched:.1f}x | {rec:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
