"""Relevance feedback: the analyst marks hits as relevant or not, and the query is refined for the next round.

Two refiners, both giving a new query (an embedding for float search and a code for hash search), so the rest of
the search (ranking, tie order, expansion, layers) is the same as for any query:

- Rocchio (Rocchio 1971): q' = a q + b mean(positives) - c mean(negatives), on the unit embeddings; on the codes
  the same sum over the +-1 bits, its sign as the new code (a zero keeps the query's bit). GeoVibes' query,
  2 mean(positives) - mean(negatives), is a = 0, b = 2, c = 1.
- Linear: an L2-regularised logistic regression fitted on the marked embeddings (the query counted as a positive,
  a fixed sample of the index's tiles as weakly weighted negatives: an analyst marks few negatives, and the
  archive at large is mostly not what they look for). Its weight vector w scores every tile in one pass: the
  embeddings are unit vectors, so ranking by w.x is ranking by cosine with w / |w|, one float search. For hash
  search a second regression on the +-1 code bits gives per-bit weights, and their signs are the new code.

Defaults were chosen with bench/feedback.py (docs/results.md, "Relevance feedback").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .encoder import l2_normalise
from .errors import RsirError

METHODS = ("rocchio", "linear")


@dataclass(frozen=True)
class RocchioWeights:
    query: float = 0.25     # a
    positive: float = 2.0   # b
    negative: float = 1.0   # c


@dataclass(frozen=True)
class LinearOptions:
    l2: float = 0.1               # penalty on |w|^2 (the embeddings are unit vectors)
    l2_codes: float = 10.0        # the same for the weights over +-1 code bits (|b|^2 = bits: more penalty)
    background: int = 256         # tiles of the index sampled as weak negatives
    background_weight: float = 2.0  # their total weight, relative to the explicit negatives' (at least one)
    seed: int = 0


@dataclass
class Marks:
    """What the analyst has marked: embeddings (n, D) and packed codes (n, B) of relevant and not relevant
    examples (hits of the index by tile id, or any encoded query: an image, a box)."""

    pos_emb: np.ndarray
    pos_codes: np.ndarray
    neg_emb: np.ndarray
    neg_codes: np.ndarray

    @classmethod
    def from_index(cls, index, positives=(), negatives=()) -> Marks:
        """Marks of tile ids of `index` (a core.index.reader.Index)."""
        pos, neg = np.asarray(list(positives), np.int64), np.asarray(list(negatives), np.int64)
        both = set(pos.tolist()) & set(neg.tolist())
        if both:
            raise RsirError(f"tile(s) {sorted(both)} marked both relevant and not relevant")
        return cls(index.embeddings(pos) if len(pos) else np.zeros((0, index.embedding_dim), np.float32),
                   index.codes(pos) if len(pos) else np.zeros((0, index.code_bytes), np.uint8),
                   index.embeddings(neg) if len(neg) else np.zeros((0, index.embedding_dim), np.float32),
                   index.codes(neg) if len(neg) else np.zeros((0, index.code_bytes), np.uint8))

    def add(self, embedding: np.ndarray, code: np.ndarray, relevant: bool) -> Marks:
        """These marks and one more example (e.g. an image file's query)."""
        e, c = np.asarray(embedding, np.float32)[None], np.asarray(code, np.uint8)[None]
        if relevant:
            return dataclasses.replace(self, pos_emb=np.concatenate([self.pos_emb, e]),
                                       pos_codes=np.concatenate([self.pos_codes, c]))
        return dataclasses.replace(self, neg_emb=np.concatenate([self.neg_emb, e]),
                                   neg_codes=np.concatenate([self.neg_codes, c]))

    @property
    def counts(self) -> tuple[int, int]:
        return len(self.pos_emb), len(self.neg_emb)


def pm1(codes: np.ndarray) -> np.ndarray:
    """Packed codes (n, B) as +-1 floats (n, 8B)."""
    return np.unpackbits(np.asarray(codes, np.uint8), axis=-1).astype(np.float32) * 2 - 1


def _pack(signs: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Packed code of the sign of `signs` (+-1 space); a zero takes the bit of `fallback` (+-1)."""
    bits = np.where(signs == 0, fallback, signs) > 0
    return np.packbits(bits.astype(np.uint8))


def rocchio(embedding: np.ndarray, code: np.ndarray, marks: Marks,
            weights: RocchioWeights = RocchioWeights()) -> tuple[np.ndarray, np.ndarray]:
    """(unit embedding, packed code) of a q + b mean(pos) - c mean(neg), in float and in +-1 code space."""
    q, qb = np.asarray(embedding, np.float32), pm1(code[None])[0]
    emb, bits = weights.query * q, weights.query * qb
    if len(marks.pos_emb):
        emb = emb + weights.positive * marks.pos_emb.mean(axis=0)
        bits = bits + weights.positive * pm1(marks.pos_codes).mean(axis=0)
    if len(marks.neg_emb):
        emb = emb - weights.negative * marks.neg_emb.mean(axis=0)
        bits = bits - weights.negative * pm1(marks.neg_codes).mean(axis=0)
    if not np.linalg.norm(emb) > 1e-9:
        raise RsirError("the marks cancel the query out: mark more relevant hits, or fewer not relevant ones")
    return l2_normalise(emb[None])[0], _pack(bits, qb)


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float = 1.0,
                 iterations: int = 25) -> tuple[np.ndarray, float]:
    """(w, b) of an L2-regularised logistic regression (labels 0/1, per-sample weights) by Newton's method: the
    problems here are small (tens to hundreds of samples, a few hundred dimensions), and numpy is all the plugin
    has. The bias is not penalised."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)
    theta = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(xa @ theta, -30, 30)))
        grad = xa.T @ (weight * (p - y)) + penalty * theta
        hess = (xa * (weight * p * (1 - p))[:, None]).T @ xa + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-6:
            break
    return theta[:-1], float(theta[-1])


def _background(index, options: LinearOptions) -> np.ndarray:
    """Tile ids sampled from the whole index (fixed seed: the same round gives the same answer)."""
    rng = np.random.default_rng(options.seed)
    n = min(options.background, index.n)
    return np.sort(rng.choice(index.n, size=n, replace=False)) if n else np.zeros(0, np.int64)


def linear(embedding: np.ndarray, code: np.ndarray, marks: Marks, background_emb: np.ndarray,
           background_codes: np.ndarray, options: LinearOptions = LinearOptions()
           ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, float]]:
    """(unit direction of w, packed code of the signs of the bit weights, (w, b)) of logistic regressions on the
    query and the marks (positives 1, negatives 0) plus `background_*` tiles as weak negatives, in float and in
    +-1 code space."""
    n_pos, n_neg = marks.counts
    pos_w = 1.0
    neg_total = max(n_neg, 1)
    bg_w = options.background_weight * neg_total / max(len(background_emb), 1)
    x = np.concatenate([embedding[None], marks.pos_emb, marks.neg_emb, background_emb])
    xb = np.concatenate([pm1(code[None]), pm1(marks.pos_codes), pm1(marks.neg_codes), pm1(background_codes)])
    y = np.concatenate([np.ones(1 + n_pos), np.zeros(n_neg + len(background_emb))])
    weight = np.concatenate([np.full(1 + n_pos, pos_w), np.ones(n_neg), np.full(len(background_emb), bg_w)])
    w, b = fit_logistic(x, y, weight, options.l2)
    wb, _ = fit_logistic(xb, y, weight, options.l2_codes)
    if not np.linalg.norm(w) > 1e-12:
        raise RsirError("the marks give no direction to search in: mark more hits")
    return l2_normalise(w[None].astype(np.float32))[0], _pack(wb, pm1(code[None])[0]), (w, b)


def refine(index, query, marks: Marks, method: str = "rocchio", rocchio_weights: RocchioWeights = RocchioWeights(),
           linear_options: LinearOptions = LinearOptions()):
    """The query (core.queries.Query) refined by the analyst's marks: a new embedding and code to search with,
    the original query's footprint and pixels kept. `index`: a core.index.reader.Index (its tiles sampled as weak
    negatives by the linear refiner)."""
    if method not in METHODS:
        raise RsirError(f"feedback method {method!r}: choose one of {', '.join(METHODS)}")
    n_pos, n_neg = marks.counts
    if not n_pos and not n_neg:
        return query
    if method == "rocchio":
        emb, code = rocchio(query.embedding, query.code, marks, rocchio_weights)
    else:
        ids = _background(index, linear_options)
        emb, code, _ = linear(query.embedding, query.code, marks, index.embeddings(ids), index.codes(ids),
                              linear_options)
    return dataclasses.replace(query, embedding=emb, code=code,
                               description=f"refined ({method}) with {n_pos} relevant and {n_neg} not relevant: "
                                           f"{query.description}")
