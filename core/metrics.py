"""Retrieval metrics over ranked lists with single-label relevance.

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
