"""Shallow hashing baselines over float features: random-hyperplane LSH and PCA-ITQ (both from faiss) and
kernel-based supervised LSH (KSLSH, Demir & Bruzzone, TGRS 2016), written here: K hash functions
h_k(x) = sign(sum_j a_kj (kappa(x, anchor_j) - mu_j)) over m anchor images with an RBF kernel, the weights learned
bit by bit from labels so that code inner products fit the pairwise similarity (+1 same class, -1 otherwise),
with the spectral relaxation of kernel-based supervised hashing (Liu et al., CVPR 2012)."""
from __future__ import annotations

import numpy as np

from core.encoder import pack_signs


def lsh_codes(train: np.ndarray, *xs: np.ndarray, bits: int) -> list[np.ndarray]:
    """faiss IndexLSH: random rotation, thresholds at the training median of each projection."""
    import faiss

    lsh = faiss.IndexLSH(train.shape[1], bits, True, True)
    lsh.train(np.ascontiguousarray(train, np.float32))
    return [lsh.sa_encode(np.ascontiguousarray(x, np.float32)) for x in xs]


def itq_codes(train: np.ndarray, *xs: np.ndarray, bits: int) -> list[np.ndarray]:
    """PCA to `bits` dimensions + iterative quantisation rotation (Gong & Lazebnik 2011; faiss ITQTransform)."""
    import faiss

    itq = faiss.ITQTransform(train.shape[1], bits, True)
    itq.train(np.ascontiguousarray(train, np.float32))
    return [pack_signs(itq.apply(np.ascontiguousarray(x, np.float32))) for x in xs]


class KSLSH:
    """Kernel-based supervised LSH. `fit(features, labels)`, then `encode(features)` -> packed codes."""

    def __init__(self, bits: int, anchors: int = 300, labelled: int = 1000, seed: int = 0):
        self.bits, self.m, self.l, self.seed = bits, anchors, labelled, seed

    def _kernel(self, x: np.ndarray) -> np.ndarray:
        d2 = (x ** 2).sum(1)[:, None] + (self.anchors ** 2).sum(1)[None] - 2 * x @ self.anchors.T
        return np.exp(-np.maximum(d2, 0) / (2 * self.sigma ** 2)) - self.mu

    def fit(self, x: np.ndarray, y: np.ndarray) -> KSLSH:
        from scipy.linalg import eigh

        rng = np.random.default_rng(self.seed)
        x = np.asarray(x, np.float64)
        self.anchors = x[rng.choice(len(x), min(self.m, len(x)), replace=False)]
        sample = rng.choice(len(x), min(2000, len(x)), replace=False)
        d2 = ((x[sample, None, :] - self.anchors[None, :50]) ** 2).sum(-1)
        self.sigma = float(np.sqrt(d2).mean()) or 1.0  # all features equal: any width gives the same codes
        self.mu = np.zeros(len(self.anchors))
        self.mu = self._kernel(x[sample]).mean(axis=0)
        pick = rng.choice(len(x), min(self.l, len(x)), replace=False)
        k = self._kernel(x[pick])  # (l, m), centred
        s = np.where(y[pick, None] == y[None, pick], 1.0, -1.0)
        residual = self.bits * s
        gram = k.T @ k + 1e-6 * np.eye(k.shape[1])
        weights = []
        for _ in range(self.bits):
            # maximise a' K' R K a subject to a' K' K a = l: the top generalised eigenvector
            _, vecs = eigh(k.T @ residual @ k, gram)
            a = vecs[:, -1] * np.sqrt(len(pick))
            h = np.sign(k @ a)
            h[h == 0] = 1
            residual = residual - np.outer(h, h)
            weights.append(a)
        self.weights = np.stack(weights, axis=1)  # (m, bits)
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        return pack_signs(self._kernel(np.asarray(x, np.float64)) @ self.weights)
