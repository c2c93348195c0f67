"""Retrieval metrics over ranked lists: single-label relevance, and for multi-label sets the shared-label counts
behind WMAP (ACG-weighted AP, Zhao et al. CVPR 2015), NDCG@k, and the classifier's Hamming loss.

mAP@k normalisation (the standard one, as in Kang et al.): AP@k = (1 / min(k, R)) * sum_{i<=k} P@i * rel_i, where
R is the number of relevant items in the database. `normalise="retrieved"` divides instead by the number of
relevant items among the top k (it gives higher numbers; say which one you report).
"""
from __future__ import annotations

import numpy as np


def relevance(query_labels: np.ndarray, db_labels: np.ndarray, ranked_ids: np.ndarray) -> np.ndarray:
    """(nq, k) boolean: is the i-th ranked database item of the same class as the query."""
    return np.asarray(db_labels)[np.asarray(ranked_ids)] == np.asarray(query_labels)[:, None]


def average_precision_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int, normalise: str = "min") -> np.ndarray:
    """AP@k per query from a (nq, >=k) relevance matrix and the count of relevant items in the database."""
    rel = np.asarray(rel[:, :k], dtype=np.float64)
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    total = (prec * rel).sum(axis=1)
    if normalise == "min":
        denom = np.minimum(k, np.asarray(n_relevant))
    elif normalise == "retrieved":
        denom = rel.sum(axis=1)
    else:
        raise ValueError(f"unknown normalisation {normalise!r}")
    return np.where(denom > 0, total / np.maximum(denom, 1), 0.0)


def map_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int = 100, normalise: str = "min") -> float:
    return float(np.mean(average_precision_at_k(rel, n_relevant, k, normalise)))


def precision_at_k(rel: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(rel[:, :k], dtype=np.float64).sum(axis=1) / k))


def recall_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    got = np.asarray(rel[:, :k], dtype=np.float64).sum(axis=1)
    return float(np.mean(np.where(n_relevant > 0, got / np.maximum(n_relevant, 1), 0.0)))


def pr_curve(rel: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall after each rank 1..K of the given ranking (K = rel.shape[1])."""
    rel = np.asarray(rel, dtype=np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = (hits / np.arange(1, rel.shape[1] + 1)).mean(axis=0)
    recall = (hits / np.maximum(np.asarray(n_relevant), 1)[:, None]).mean(axis=0)
    return precision, recall


def shared_labels(query_labels: np.ndarray, db_labels: np.ndarray, ranked_ids: np.ndarray) -> np.ndarray:
    """(nq, k) number of labels the i-th ranked database item shares with its query ((N, C) 0/1 matrices)."""
    q = np.asarray(query_labels, np.int32)
    db = np.asarray(db_labels, np.int32)[np.asarray(ranked_ids)]  # (nq, k, C)
    return np.einsum("qc,qkc->qk", q, db)


def shares_a_label(query_labels: np.ndarray, db_labels: np.ndarray, ranked_ids: np.ndarray) -> np.ndarray:
    """(nq, k) boolean multi-label relevance: the ranked item shares at least one label with the query."""
    return shared_labels(query_labels, db_labels, ranked_ids) > 0


def weighted_average_precision(shared: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """WAP@k per query (Zhao et al. 2015): (1 / min(k, R)) * sum_{n<=k} [r_n > 0] * ACG@n, where r_n is the
    number of labels shared with the n-th item and ACG@n = mean(r_1..r_n). Same normalisation as mAP@k."""
    r = np.asarray(shared[:, :k], np.float64)
    acg = np.cumsum(r, axis=1) / np.arange(1, r.shape[1] + 1)
    total = ((r > 0) * acg).sum(axis=1)
    denom = np.minimum(k, np.asarray(n_relevant))
    return np.where(denom > 0, total / np.maximum(denom, 1), 0.0)


def ndcg_at_k(shared: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k per query with gains 2^r - 1 and discount log2(1 + rank); `ideal` holds each query's best
    possible shared counts in decreasing order (the database sorted by shared labels)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = ((2.0 ** np.asarray(shared[:, :k], np.float64) - 1) * disc[: min(k, shared.shape[1])]).sum(axis=1)
    idcg = ((2.0 ** np.asarray(ideal[:, :k], np.float64) - 1) * disc[: min(k, ideal.shape[1])]).sum(axis=1)
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)


def hamming_loss(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of (image, label) decisions the classifier gets wrong: mean of predicted XOR true (0/1 matrices)."""
    return float(np.mean(np.asarray(predicted, bool) != np.asarray(truth, bool)))


def same_place_ranks(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """1-based rank of each query's own item (row i of `database` belongs to query i: the same place seen by the
    other sensor) when the database is ranked by cosine similarity (rows L2-normalised). Ties count against the
    query: a hub tile that scores as high as the true partner is ranked first."""
    scores = queries @ database.T
    own = np.einsum("ij,ij->i", queries, database)
    return (scores >= own[:, None] - 1e-6).sum(axis=1)  # the own item counts itself: rank 1 when none beats it


def same_place_summary(ranks: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Recall@k of the own place (share of queries whose partner ranks k or better, in %) and the median rank."""
    out = {f"same-place R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["median rank"] = float(np.median(ranks))
    return out
