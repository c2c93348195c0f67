"""`rsir eval`'s ranking: exact scores, and ties in Hamming space broken in random (seeded) order, not by the
dataset's listing."""
from __future__ import annotations

import numpy as np

from training.evaluate import score


def test_separated_codes_score_100_and_ties_do_not_favour_the_first_listed_class():
    db_y = np.repeat([0, 1], 100)  # listed class by class, as a folder-per-class dataset is
    q_y = np.array([0, 1])
    distinct = np.where(db_y[:, None] == 0, 1.0, -1.0) * np.ones((1, 8))
    q = np.array([[1.0] * 8, [-1.0] * 8])
    perfect = score("m", "hash", 8, q, distinct, q_y, db_y, ["a", "b"], k=100)
    assert perfect.map_k == 100 and perfect.per_class_ap == {"a": 100, "b": 100}

    # every database code equal: in listing order class "a" would take all 100 first places of both queries
    # (AP 100 for its queries, 0 for "b"'s); shuffled, both get about what a random ranking gets: ~50 hits at
    # precision ~0.5 over min(100, R) = 100, AP ~25
    tied = score("m", "hash", 8, q, np.ones((200, 8)), q_y, db_y, ["a", "b"], k=100)
    assert 10 < tied.per_class_ap["a"] < 40 and 10 < tied.per_class_ap["b"] < 40
    assert abs(tied.precision[100] - 50) < 1e-9  # 100 of the 200 are relevant to each query, 50 in the top 100
    again = score("m", "hash", 8, q, np.ones((200, 8)), q_y, db_y, ["a", "b"], k=100)
    assert again.map_k == tied.map_k  # seeded: the same report every run


def _unit(deg) -> np.ndarray:
    rad = np.radians(np.asarray(deg, float))
    return np.stack([np.cos(rad), np.sin(rad)], axis=-1).astype(np.float32)


def test_query_expansion_pulls_a_boundary_query_back_to_its_class():
    from training.evaluate import expand_query_set

    # class 0 around 0 degrees, class 1 around 90, and one class-1 outlier at 41 degrees next to a class-0 query at
    # 40: the outlier is its nearest item, but the next four are class 0, so the expanded query (~20 degrees) has
    # class-0 items nearest (the outlier falls to the top 10)
    db_deg = np.concatenate([np.linspace(0, 10, 10), np.linspace(80, 90, 10), [41.0]])
    db_y = np.array([0] * 10 + [1] * 10 + [1])
    db_e, q_e, q_y = _unit(db_deg), _unit([40.0]), np.array([0])
    codes = np.zeros((len(db_e), 1), np.uint8)  # the hash half is not under test here
    plain = score("m", "float", 0, q_e, db_e, q_y, db_y, ["a", "b"], k=10)
    e, _ = expand_query_set(q_e, np.zeros((1, 1), np.uint8), db_e, codes, n=5, bits=8)
    expanded = score("m", "float", 0, e, db_e, q_y, db_y, ["a", "b"], k=10)
    assert plain.precision[1] == 0 and expanded.precision[1] == 100
    assert expanded.map_k > plain.map_k + 15
    assert 10 < np.degrees(np.arctan2(e[0, 1], e[0, 0])) < 30
