"""Shallow hashing baselines on a small labelled set: ITQ and supervised KSLSH beat random-hyperplane LSH."""
from __future__ import annotations

import numpy as np

from core.metrics import map_at_k, relevance
from training.hash_baselines import KSLSH, itq_codes, lsh_codes


def _clusters(rng, centres, n, noise):
    y = rng.integers(0, len(centres), n)
    return (centres[y] + rng.normal(0, noise, (n, centres.shape[1]))).astype(np.float32), y


def _hamming_map(db, q, ydb, yq, k=100):
    dist = (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None]).sum(axis=2)
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return map_at_k(relevance(yq, ydb, ids), np.bincount(ydb, minlength=yq.max() + 1)[yq], k)


def test_itq_and_kslsh_beat_random_lsh():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (8, 64))
    xtr, ytr = _clusters(rng, centres, 1500, 1.5)
    xq, yq = _clusters(rng, centres, 200, 1.5)
    lsh = _hamming_map(*lsh_codes(xtr, xtr, xq, bits=32), ytr, yq)
    itq = _hamming_map(*itq_codes(xtr, xtr, xq, bits=32), ytr, yq)
    model = KSLSH(32, anchors=200, labelled=600).fit(xtr, ytr)
    kslsh = _hamming_map(model.encode(xtr), model.encode(xq), ytr, yq)
    assert itq > lsh + 0.05 and kslsh > lsh + 0.2, (lsh, itq, kslsh)
    codes = model.encode(xq)
    assert codes.shape == (200, 4) and codes.dtype == np.uint8
