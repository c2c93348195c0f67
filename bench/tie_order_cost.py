"""Cost of ordering Hamming ties by cosine (core.search.hamming_ids) over the plain k-NN of the binary index, on
1M x 64-bit codes with float16 embeddings, one query at a time (the plugin's case).

    .venv/bin/python bench/tie_order_cost.py
"""
import os
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.index import hamming  # noqa: E402
from core.queries import Query  # noqa: E402
from core.search import hamming_ids  # noqa: E402


class Shim:
    """The parts of core.index.Index that hamming_ids reads, over in-memory tables (a 1M-tile index folder
    would take hours to encode here)."""

    def __init__(self, codes, emb):
        self.n, self._codes, self.emb = len(codes), codes, emb
        self.binary_index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        self.binary_index.add(codes)
        self.hamming_exact = True

    def search_hamming(self, q, k, nprobe=None):
        return hamming.scan_knn(hamming.flat_codes(self.binary_index), q, min(k, self.n))

    def range_hamming(self, code, r):
        return hamming.range_search(self.binary_index, self._codes, code, r)

    def embeddings(self, ids):
        return self.emb[np.asarray(ids)].astype(np.float32)


rng = np.random.default_rng(0)
n = 1_000_000
for name, codes in [("uniform", rng.integers(0, 256, (n, 8), dtype=np.uint8)),
                    ("clustered (2000 centres, 3 bit flips)", None)]:
    if codes is None:
        centres = rng.integers(0, 2, (2000, 64), dtype=np.uint8)
        bits = centres[rng.integers(0, 2000, n)]
        flips = rng.random((n, 64)) < 3 / 64
        codes = np.packbits(bits ^ flips, axis=1)
    emb = rng.normal(size=(n, 128)).astype(np.float16)
    ix = Shim(codes, emb)
    qs = rng.integers(0, n, 200)
    plain = lambda: [ix.search_hamming(codes[i][None], 21) for i in qs]  # noqa: E731
    ordered = lambda: [hamming_ids(ix, Query("tile", "", emb[i].astype(np.float32), codes[i],  # noqa: E731
                                               tile_id=int(i)), 21) for i in qs]
    best = {}
    for _ in range(3):  # the host is noisy: best of three, alternating
        for label, fn in (("plain", plain), ("ordered", ordered)):
            t = time.perf_counter()
            fn()
            best[label] = min(best.get(label, 1e9), (time.perf_counter() - t) / len(qs) * 1e3)
    a, b = best["plain"], best["ordered"]
    print(f"{name}: k-NN 21 {a:.2f} ms, with ties by cosine {b:.2f} ms ({b / a:.1f}x)")
