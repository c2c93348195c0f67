"""Ranking: the hits of a query (core/queries.py) in an index, by cosine similarity or Hamming distance."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encoder import code_hex
from .errors import RsirError
from .index.reader import Index
from .queries import Query


@dataclass
class Hit:
    rank: int
    tile_id: int
    score: float      # cosine similarity of the embeddings
    hamming: int      # Hamming distance of the codes
    bucket: str       # the hit's code in hex: its hash bucket
    source_id: int    # index of the source in the manifest's `sources`
    source: str
    x: int
    y: int
    w: int
    h: int
    label: str
    footprint_wkt: str | None


# Most tiles read to order one Hamming shell (the tiles at one distance) by cosine similarity; a larger shell is
# ordered only as far as the candidates fetched reach.
TIE_SHELL_MAX = 50_000


def hamming_ids(index: Index, query: Query, n: int, nprobe: int | None = None) -> np.ndarray:
    """Ids of the n nearest tiles by Hamming distance, tiles at equal distance ordered by the cosine similarity of
    their embeddings (see _hamming_ranked)."""
    return _hamming_ranked(index, query, n, nprobe)[0]


def _hamming_ranked(index: Index, query: Query, n: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, cosine similarities) of the n nearest tiles by Hamming distance, tiles at equal distance ordered by
    the cosine similarity of their embeddings. Codes of a trained hashing model tie a lot (whole classes share a
    code), and faiss orders ties by tile id, which is where the tile lies in the archive, not how similar it is.
    For exact indexes the whole shell at the n-th distance is fetched (up to TIE_SHELL_MAX tiles), so the n kept
    are the most similar of every tile at that distance; approximate indexes (IVF, HNSW) order the candidates
    they return."""
    want = min(index.n, max(4 * n, n + 64))
    dist, ids = index.search_hamming(query.code[None], want, nprobe)
    keep = ids[0] >= 0
    dist, ids = dist[0][keep], ids[0][keep]
    if not len(ids):
        return ids, np.zeros(0, np.float32)
    last = int(dist[min(n, len(dist)) - 1])
    if len(ids) == want < index.n and int(dist[-1]) == last and index.hamming_exact:
        # the shell at the n-th distance may go on past the candidates: fetch it whole if it is not too large
        shell_dist, shell_ids = index.range_hamming(query.code, last)
        if len(shell_ids) <= TIE_SHELL_MAX:
            dist, ids = shell_dist, shell_ids
    cosine = index.embeddings(ids) @ query.embedding
    order = np.lexsort((-cosine, dist))[:n]
    return ids[order], cosine[order]


def nearest_ids(index: Index, query: Query, k: int, mode: str = "float", nprobe: int | None = None,
                exclude_query_tile: bool = True, rerank: int = 0) -> list[int]:
    """Ids of the k nearest tiles to `query` by `mode` ("float": cosine, "hash": Hamming, ties by cosine),
    nearest first; a tile query's own tile is left out unless `exclude_query_tile` is False. With `rerank` R
    (hash mode), the R nearest by Hamming distance are ranked again by cosine similarity: hash search finds the
    candidates at archive scale, the embeddings order them."""
    if rerank < 0:
        raise RsirError(f"re-ranking needs a positive number of candidates, got {rerank}")
    extra = 1 if exclude_query_tile and query.tile_id is not None else 0
    if mode == "float":
        if rerank:
            raise RsirError("re-ranking by cosine applies to hash search (--hash); float search is ranked by it")
        # candidates re-ranked by the exact cosine of the stored embeddings: a compressed float index (IVF-PQ)
        # orders them by its approximation, and the hits' scores are the exact ones (an analyst read the mismatch
        # as a bug); with exact indexes this changes nothing
        _, ids = index.search_float(query.embedding[None], 2 * (k + extra), nprobe)
        ids = ids[0][ids[0] >= 0]
        ids = ids[np.argsort(-(index.embeddings(ids) @ query.embedding), kind="stable")][:k + extra]
    elif mode == "hash":
        ids, cosine = _hamming_ranked(index, query, max(k, rerank) + extra, nprobe)
        if rerank:  # the candidates' similarities are already at hand
            ids = ids[np.argsort(-cosine, kind="stable")]
    else:
        raise RsirError(f"unknown search mode {mode!r}; use float or hash")
    return [int(i) for i in ids if i >= 0 and not (extra and i == query.tile_id)][:k]


def ranking_name(mode: str, rerank: int = 0) -> str:
    """How hits were ranked, in words, for listings and layer names."""
    if mode != "hash":
        return "cosine"
    return f"Hamming, top {rerank} re-ranked by cosine" if rerank else "Hamming"


def search(index: Index, query: Query, k: int = 20, mode: str = "float", radius: int | None = None,
           exclude_query_tile: bool = True, nprobe: int | None = None, max_radius_hits: int = 100_000,
           rerank: int = 0) -> list[Hit]:
    """Rank tiles for `query`. `mode` "float" (cosine) or "hash" (Hamming; with `rerank` R, its R nearest ranked
    again by cosine). With `radius` (hash mode), return every tile within that Hamming distance (up to
    `max_radius_hits`), else the k nearest."""
    if k <= 0:
        raise RsirError(f"k must be positive, got {k}")
    index.refresh()  # an update installed since the index was opened (tile ids only grow: the query stays valid)
    if radius is None:
        ids = nearest_ids(index, query, k, mode, nprobe, exclude_query_tile, rerank)
    elif rerank:
        raise RsirError("a Hamming radius returns every tile within it; re-ranking applies to the k nearest")
    elif mode == "float":
        raise RsirError("a Hamming radius needs hash search (--hash)")
    elif mode == "hash":
        if radius < 0:
            raise RsirError(f"Hamming radius must be >= 0, got {radius}")
        extra = 1 if exclude_query_tile and query.tile_id is not None else 0
        dist, found = index.range_hamming(query.code, radius)
        keep = found >= 0
        dist, found = dist[keep], found[keep]
        # nearest first, and within one distance the most similar first (as k-NN orders its shells)
        order = np.lexsort((-(index.embeddings(found) @ query.embedding), dist)) if len(found) else []
        ids = [int(i) for i in found[order][:max_radius_hits + extra] if not (extra and i == query.tile_id)]
    else:
        raise RsirError(f"unknown search mode {mode!r}; use float or hash")
    if not ids:
        return []
    scores = index.embeddings(ids) @ query.embedding
    hamming = index.hamming(query.code, ids)
    codes = index.codes(ids)
    hits = []
    for rank, (tid, score, ham, code) in enumerate(zip(ids, scores, hamming, codes), 1):
        t = index.tile(tid)
        hits.append(Hit(rank, tid, float(score), int(ham), code_hex(code), t.source_id, t.source, t.x, t.y, t.w,
                        t.h, t.label, t.footprint_wkt))
    return hits

