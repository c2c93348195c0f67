"""Linear maps fitted on stored embeddings, in numpy: within-class whitening (the first step of LDA, keeping every
dimension; Radenovic et al., TPAMI 2019, with class labels in place of matching pairs) and PCA-ITQ hash codes of
the whitened embedding (Gong & Lazebnik 2011, through faiss's ITQTransform). Training whitens a model on its
labelled data with them (training/whitening.py); an analyst's labels adapt an index's model with them
(core/adapt/from_labels.py) - the second without torch, so the plugin can do it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoder import l2_normalise

EIGEN_FLOOR = 1e-6  # relative to the mean eigenvalue: directions with no within-class spread are not blown up


@dataclass
class Whitening:
    mean: np.ndarray  # (D,) float32, subtracted from the L2-normalised embedding
    projection: np.ndarray  # (D, D) float32, applied after centring
    shrinkage: float

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """What the appended graph computes, in numpy: L2-normalised whitened embeddings."""
        return l2_normalise((l2_normalise(embeddings) - self.mean) @ self.projection)


@dataclass
class ClassStats:
    """Sufficient statistics of a labelled set for within-class whitening, normalised to a total weight of 1: the
    pooled within-class scatter (D, D) and the mean (D,) of its L2-normalised embeddings. A model's training data
    shipped this way (core/adapt/prior.py) joins an analyst's labels without the data itself."""
    scatter: np.ndarray
    mean: np.ndarray
    classes: int = 0


def class_stats(embeddings: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> ClassStats:
    """ClassStats of L2-normalised `embeddings` (N, D) with class indices `labels` (N,); `weights` (N,): how much
    each item counts (e.g. so that datasets of different sizes weigh the same; the same within a class)."""
    x = l2_normalise(np.asarray(embeddings, np.float64))
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(x):
        raise ValueError("within-class whitening needs one class index per embedding (single-label data)")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    dim = x.shape[1]
    scatter = np.zeros((dim, dim))
    classes = np.unique(labels)
    for c in classes:
        xc, wc = x[labels == c], w[labels == c]
        centred = xc - (wc[:, None] * xc).sum(axis=0) / wc.sum()
        scatter += (centred * wc[:, None]).T @ centred
    return ClassStats(scatter / w.sum(), (w[:, None] * x).sum(axis=0) / w.sum(), len(classes))


def fit_within_class(embeddings: np.ndarray, labels: np.ndarray, shrinkage: float = 0.0,
                     weights: np.ndarray | None = None, prior: ClassStats | None = None,
                     prior_weight: float = 0.0) -> Whitening:
    """Inverse square root of the pooled within-class covariance of L2-normalised `embeddings` (N, D) with class
    indices `labels` (N,), shrunk towards its mean eigenvalue by `shrinkage` (0..1). `weights` (N,): how much
    each item counts. `prior` (another labelled set's statistics, its classes apart from these) counts
    `prior_weight` times as much as all of `embeddings` together."""
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    own = class_stats(embeddings, labels, weights)
    if own.classes + (prior.classes if prior is not None and prior_weight > 0 else 0) < 2:
        raise ValueError(f"within-class whitening needs at least 2 classes, got {own.classes}")
    scatter, mean = own.scatter, own.mean
    if prior is not None and prior_weight > 0:
        scatter = (scatter + prior_weight * prior.scatter) / (1.0 + prior_weight)
        mean = (mean + prior_weight * prior.mean) / (1.0 + prior_weight)
    dim = scatter.shape[0]
    level = np.trace(scatter) / dim
    scatter = (1.0 - shrinkage) * scatter + shrinkage * level * np.eye(dim)
    values, vectors = np.linalg.eigh(scatter)
    values = np.maximum(values, EIGEN_FLOOR * level)
    projection = (vectors / np.sqrt(values)) @ vectors.T
    return Whitening(mean.astype(np.float32), projection.astype(np.float32), shrinkage)


@dataclass
class CodeProjection:
    """Hash logits of the whitened embedding z: (z - mean) @ matrix, signs = the codes."""
    mean: np.ndarray  # (D,) float32
    matrix: np.ndarray  # (D, bits) float32

    def logits(self, whitened: np.ndarray) -> np.ndarray:
        return (whitened - self.mean) @ self.matrix


def fit_itq(whitened: np.ndarray, bits: int, seed: int = 123) -> CodeProjection:
    """PCA of the whitened training embeddings to `bits` dimensions, then the ITQ rotation (faiss ITQTransform;
    `seed` draws its random starting rotation, 123 = faiss's default), as one affine map."""
    import faiss

    dim = whitened.shape[1]
    if bits <= 0 or bits % 8 or bits > dim:
        raise ValueError(f"code bits must be a positive multiple of 8 up to the embedding size {dim}, got {bits}")
    itq = faiss.ITQTransform(dim, bits, True)
    itq.itq.seed = seed
    itq.train(np.ascontiguousarray(whitened, np.float32))
    lin = itq.pca_then_itq
    matrix = faiss.vector_to_array(lin.A).reshape(lin.d_out, lin.d_in).T
    return CodeProjection(faiss.vector_to_array(itq.mean).astype(np.float32), np.ascontiguousarray(matrix, np.float32))
