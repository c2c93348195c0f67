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
