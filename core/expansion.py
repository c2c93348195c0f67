"""Query expansion: move a query towards its nearest tiles and search again.

Float search uses alpha query expansion (Radenovic, Tolias & Chum, "Fine-tuning CNN image retrieval with no human
annotation", TPAMI 2018): the new query is the L2-normalised sum of the query and its n nearest database
embeddings, each weighted by its cosine similarity to the query raised to alpha. Hash search does the same in
Hamming space: each bit of the new code is the majority vote of the query's code and its n nearest codes (the
query's own bit breaks ties).

Expansion helps when the query's land cover has more than n matches in the archive and hurts when it has fewer:
the neighbours then come mostly from other classes and pull the query away (docs/results.md, "Query expansion").
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import RsirError
from .search import nearest_ids

DEFAULT_ALPHA = 3.0


def expand_embeddings(queries: np.ndarray, neighbours: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """alpha-QE of L2-normalised queries (m, D) with their neighbours' embeddings (m, n, D): normalise(q +
    sum_j max(cos(q, d_j), 0)^alpha d_j). Neighbours less similar than orthogonal add nothing."""
    q = np.asarray(queries, np.float32)
    nb = np.asarray(neighbours, np.float32)
    weights = np.clip(np.einsum("md,mnd->mn", q, nb), 0, None) ** alpha
    out = q + np.einsum("mn,mnd->md", weights, nb)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def expand_codes(queries: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Bit-wise majority vote of packed codes (m, B) and their neighbours' codes (m, n, B), the query counted once;
    a tied bit keeps the query's value. Returns packed codes (m, B)."""
    q = np.unpackbits(np.asarray(queries, np.uint8), axis=-1).astype(np.int32)
    nb = np.unpackbits(np.asarray(neighbours, np.uint8), axis=-1).astype(np.int32)
    votes = 2 * (q + nb.sum(axis=1)) - (1 + nb.shape[1])  # > 0: more ones than zeros
    bits = np.where(votes == 0, q, votes > 0)
    return np.packbits(bits.astype(np.uint8), axis=-1)


def expand_query(index, query, n: int, mode: str = "float", nprobe: int | None = None,
                 alpha: float = DEFAULT_ALPHA):
    """The query moved towards its `n` nearest tiles of `index` (a core.index.reader.Index) by `mode` ("float":
    cosine, "hash": Hamming); both its embedding (alpha-QE) and its code (majority vote) are expanded, so scores,
    Hamming distances and heat maps all refer to the expanded query. A tile query's own tile is not its own
    neighbour. n = 0 returns the query unchanged."""
    if n < 0:
        raise RsirError(f"query expansion needs n >= 0 neighbours, got {n}")
    if n == 0:
        return query
    ids = nearest_ids(index, query, n, mode, nprobe)
    if not ids:
        return query
    emb = expand_embeddings(query.embedding[None], index.embeddings(ids)[None], alpha)[0]
    code = expand_codes(query.code[None], index.codes(ids)[None])[0]
    return dataclasses.replace(query, embedding=emb, code=code,
                               description=f"{query.description}, expanded with its {len(ids)} nearest tiles")
