"""A linear head trained by contrast of augmented views (SimCLR's NT-Xent loss, Chen et al. 2020), in numpy so
the plugin can train it without torch: z = normalise(e @ W) for frozen embeddings e, views of one image pulled
together and every other image in the batch pushed away, W pulled towards the identity so the head stays a
correction of the model, not a new embedding. Gradients by hand (checked against torch in tests/test_adapt.py)."""
from __future__ import annotations

import numpy as np


def _normalise(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    return u / norm, norm


def nt_xent_grad(a: np.ndarray, b: np.ndarray, w: np.ndarray, temperature: float,
                 pull: float) -> tuple[float, np.ndarray]:
    """(loss, dloss/dW) of NT-Xent between the rows of a @ W and b @ W (row i of each: views of one image) plus
    pull * ||W - I||^2."""
    n = len(a)
    za, na = _normalise(a @ w)
    zb, nb = _normalise(b @ w)
    z = np.concatenate([za, zb])
    s = z @ z.T / temperature
    np.fill_diagonal(s, -np.inf)
    s_max = s.max(axis=1, keepdims=True)
    p = np.exp(s - s_max)
    p /= p.sum(axis=1, keepdims=True)
    target = np.concatenate([np.arange(n) + n, np.arange(n)])
    loss = float(-np.mean(np.log(np.maximum(p[np.arange(2 * n), target], 1e-30))))
    eye = np.eye(len(w))
    loss += pull * float(((w - eye) ** 2).sum())
    ds = p
    ds[np.arange(2 * n), target] -= 1.0
    ds /= 2 * n
    dz = (ds + ds.T) @ z / temperature
    dza, dzb = dz[:n], dz[n:]
    dua = (dza - za * (za * dza).sum(axis=1, keepdims=True)) / na
    dub = (dzb - zb * (zb * dzb).sum(axis=1, keepdims=True)) / nb
    return loss, a.T @ dua + b.T @ dub + 2 * pull * (w - eye)


def train_linear_head(views: np.ndarray, pull: float = 0.2, epochs: int = 40, temperature: float = 0.1,
                      batch: int = 256, lr: float = 1e-3, seed: int = 0, cancel=None) -> np.ndarray:
    """W (D, D) from `views` (N, V, D): unit embeddings of V >= 2 augmented views per image (each step contrasts
    two of them, drawn at random), Adam with the given learning rate."""
    rng = np.random.default_rng(seed)
    n, n_views, d = views.shape
    w = np.eye(d)
    m, v = np.zeros_like(w), np.zeros_like(w)
    step = 0
    for _ in range(epochs):
        if cancel is not None and cancel():
            from ..errors import Cancelled

            raise Cancelled("adapting cancelled; the index is as it was")
        order = rng.permutation(n)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            if len(idx) < 2:
                continue
            i, j = rng.choice(n_views, 2, replace=False)
            _, g = nt_xent_grad(views[idx, i].astype(np.float64), views[idx, j].astype(np.float64), w, temperature,
                                pull)
            step += 1
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            w -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return w.astype(np.float32)
