"""Multi-index hashing tables on disk (Norouzi, Punjani & Fleet, CVPR 2012), for binary indexes of millions of
codes: per table, the tile ids sorted by their b-bit substring of the code (int32) and where each substring's
bucket starts (uint32, 2^b + 1 entries). A search reads the buckets it probes and its candidates' codes with
pread, so they live in the page cache, not in the searching process: faiss's own hash index (IndexBinaryMultiHash)
rebuilds its tables in memory when read, 1.9 GB and 4 s for 10M x 256-bit codes (docs/benchmarks.md).

The builder writes them (IDX/gen-N/mih/) beside codes.faiss when the binary factory is a hash index; the reader
answers k-NN and radius searches from them, exactly as faiss's tables would."""
from __future__ import annotations

import json
import os
from itertools import combinations
from math import comb

import numpy as np

FOLDER = "mih"
MAX_BITS = 24              # per table: 2^b + 1 bucket starts (64 MB at 24 bits); wider tables stay with faiss
PREAD_COST = 400           # one pread (a bucket's bounds, a candidate's code), in units of one code distance in a
                           # scan (~1.5 us vs ~4 ns)
POPCOUNT = np.array([i.bit_count() for i in range(256)], np.uint8)


def hash_layout(factory: str) -> tuple[int, int] | None:
    """(tables, bits per table) of a faiss hash factory string ("BHash11x23", "BHash16"), else None."""
    if not factory.startswith("BHash"):
        return None
    spec = factory[len("BHash"):]
    try:
        nhash, b = (int(v) for v in spec.split("x")) if "x" in spec else (1, int(spec))
    except ValueError:
        return None
    return nhash, b


def write_tables(folder: str, codes: np.ndarray, nhash: int, b: int, chunk: int = 1 << 20) -> None:
    """The tables of `codes` ((n, bytes), a memmap is fine) in `folder`/mih/, one table in memory at a time."""
    n, nbytes = codes.shape
    out = os.path.join(folder, FOLDER)
    os.makedirs(out, exist_ok=True)
    weights = (1 << np.arange(b - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    for t in range(nhash):
        keys = np.empty(n, np.uint32)
        lo, hi = t * b // 8, ((t + 1) * b + 7) // 8  # only the bytes this table's bits are in
        for start in range(0, n, chunk):
            bits = np.unpackbits(np.asarray(codes[start:start + chunk, lo:hi]), axis=1)
            keys[start:start + len(bits)] = bits[:, t * b - 8 * lo:(t + 1) * b - 8 * lo].astype(np.uint64) @ weights
        order = np.argsort(keys, kind="stable").astype(np.int32)
        starts = np.zeros((1 << b) + 1, np.uint32)
        np.cumsum(np.bincount(keys, minlength=1 << b), out=starts[1:])
        order.tofile(os.path.join(out, f"t{t:02d}.ids.i32"))
        starts.tofile(os.path.join(out, f"t{t:02d}.starts.u32"))
    with open(os.path.join(out, "mih.json"), "w") as f:
        json.dump({"n": int(n), "bits": int(nbytes * 8), "nhash": nhash, "b": b}, f)


def pread_rows(fd: int, ids, row_bytes: int, dtype, width: int) -> np.ndarray:
    """Rows `ids` of a row-major table file, read with pread (each run of consecutive ids in one call), in the
    order of `ids`: small reads that fill the page cache, not this process's memory as a memory map's pages do."""
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    if not len(ids):
        return np.zeros((0, width), dtype)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.concatenate([[0], np.flatnonzero(np.diff(sorted_ids) != 1) + 1])
    if len(first) > len(ids) // 2:  # mostly scattered rows: one call each, without the bookkeeping of runs
        blob = b"".join([os.pread(fd, row_bytes, i * row_bytes) for i in sorted_ids.tolist()])
    else:
        counts = np.diff(np.concatenate([first, [len(ids)]]))
        blob = b"".join([os.pread(fd, c * row_bytes, s * row_bytes)
                         for s, c in zip(sorted_ids[first].tolist(), counts.tolist())])
    out = np.empty((len(ids), width), dtype)
    out[order] = np.frombuffer(blob, dtype).reshape(len(ids), width)
    return out


class MihTables:
    """Exact Hamming k-NN and radius search over the tables in `folder`/mih/ and the codes table `codes_path`."""

    def __init__(self, folder: str, codes_path: str, n: int):
        out = os.path.join(folder, FOLDER)
        with open(os.path.join(out, "mih.json")) as f:
            meta = json.load(f)
        if meta["n"] != n:
            raise ValueError(f"{out}: tables of {meta['n']} codes, the index has {n}")
        self.nhash, self.b, self.bits, self.n = meta["nhash"], meta["b"], meta["bits"], n
        self.code_bytes = self.bits // 8
        self._fds = [os.open(os.path.join(out, f"t{t:02d}.{kind}"), os.O_RDONLY | getattr(os, "O_BINARY", 0))
                     for t in range(self.nhash) for kind in ("ids.i32", "starts.u32")]
        self._codes = os.open(codes_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._weights = (1 << np.arange(self.b - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
        self._masks: dict[int, list[int]] = {}

    def close(self) -> None:
        for fd in self._fds + [self._codes]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def __del__(self):
        self.close()

    def _flip_masks(self, flips: int) -> list[int]:
        if flips not in self._masks:
            self._masks[flips] = [sum(1 << j for j in c) for c in combinations(range(self.b), flips)]
        return self._masks[flips]

    def _substrings(self, code: np.ndarray) -> list[int]:
        bits = np.unpackbits(np.asarray(code, np.uint8).reshape(-1))
        return [int(bits[t * self.b:(t + 1) * self.b].astype(np.uint64) @ self._weights) for t in range(self.nhash)]

    def _candidates(self, subs: list[int], flips: int) -> np.ndarray:
        """Ids in the buckets at exactly `flips` bit flips of each table's substring."""
        found = []
        for t in range(self.nhash):
            ids_fd, starts_fd = self._fds[2 * t], self._fds[2 * t + 1]
            for mask in self._flip_masks(flips):
                lo, hi = np.frombuffer(os.pread(starts_fd, 8, 4 * (subs[t] ^ mask)), "<u4").tolist()
                if hi > lo:
                    found.append(np.frombuffer(os.pread(ids_fd, 4 * (hi - lo), 4 * lo), "<i4"))
        return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)

    def distances(self, code: np.ndarray, ids: np.ndarray) -> np.ndarray:
        rows = pread_rows(self._codes, ids, self.code_bytes, np.uint8, self.code_bytes)
        return POPCOUNT[np.bitwise_xor(rows, np.asarray(code, np.uint8).reshape(1, -1))].sum(1, dtype=np.int32)

    def probe_cost(self, flips: int) -> float:
        """A round of `flips` flips in scanned-code units: its bucket reads and its expected candidates."""
        probes = self.nhash * comb(self.b, flips)
        return probes * PREAD_COST * (1.0 + self.n / 2.0 ** self.b)

    def knn(self, code: np.ndarray, k: int):
        """(distances, ids) of the k nearest codes, ties by id, as faiss's tables give them; None when probing
        would cost more than a scan of every code (the caller scans)."""
        subs = self._substrings(code)
        seen, dist = np.zeros(0, np.int64), np.zeros(0, np.int32)
        spent = 0.0
        for flips in range(self.b + 1):
            spent += self.probe_cost(flips)
            if spent >= self.n:
                return None
            radius = self.bits if flips == self.b else min(self.bits, (flips + 1) * self.nhash - 1)
            new = np.setdiff1d(self._candidates(subs, flips), seen)
            seen, dist = np.concatenate([seen, new]), np.concatenate([dist, self.distances(code, new)])
            inside = dist <= radius
            if inside.sum() >= min(k, self.n):
                d, i = dist[inside], seen[inside]
                order = np.lexsort((i, d))[:k]
                return d[order], i[order]
        return None

    def exact_flips(self, radius: int) -> int:
        """Flips per table that find every code within `radius` (pigeonhole over the tables)."""
        return min(radius, self.b) if self.nhash == 1 else min(radius // self.nhash, self.b)

    def range_wins(self, radius: int) -> bool:
        """Whether probing for `radius` costs less than half a scan."""
        return sum(self.probe_cost(f) for f in range(self.exact_flips(radius) + 1)) < self.n / 2

    def range(self, code: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Every code within `radius`, sorted by distance then id."""
        subs = self._substrings(code)
        cand = np.unique(np.concatenate([self._candidates(subs, f) for f in range(self.exact_flips(radius) + 1)]))
        d = self.distances(code, cand)
        keep = d <= radius
        d, i = d[keep], cand[keep]
        order = np.lexsort((i, d))
        return d[order], i[order]
