"""Retrieval metrics against hand-computed values."""
import numpy as np
import pytest

from core.metrics import average_precision_at_k, map_at_k, pr_curve, precision_at_k, recall_at_k, relevance


def test_ap_by_hand():
    # ranks 1..5 relevant pattern 1,0,1,0,0 with 4 relevant items in the database
    rel = np.array([[1, 0, 1, 0, 0]], bool)
    # P@1 = 1, P@3 = 2/3 -> sum 5/3; min(k=5, R=4) = 4 -> 5/12; "retrieved" divides by 2 -> 5/6
    assert average_precision_at_k(rel, np.array([4]), 5)[0] == pytest.approx(5 / 12)
    assert average_precision_at_k(rel, np.array([4]), 5, "retrieved")[0] == pytest.approx(5 / 6)
    assert average_precision_at_k(rel, np.array([4]), 2)[0] == pytest.approx(1 / 2)  # min(2, 4) = 2
    assert average_precision_at_k(np.zeros((1, 5), bool), np.array([3]), 5)[0] == 0.0


def test_map_precision_recall_and_pr_curve():
    q = np.array([0, 1])
    db = np.array([0, 0, 1, 1, 1])
    ranked = np.array([[0, 2, 1], [2, 3, 0]])
    rel = relevance(q, db, ranked)
    assert rel.tolist() == [[True, False, True], [True, True, False]]
    n_rel = np.array([2, 3])
    # q0: (1 + 2/3) / min(3, 2) = 5/6 ; q1: (1 + 1) / min(3, 3) = 2/3
    assert map_at_k(rel, n_rel, 3) == pytest.approx((5 / 6 + 2 / 3) / 2)
    assert precision_at_k(rel, 2) == pytest.approx((1 / 2 + 1) / 2)
    assert recall_at_k(rel, n_rel, 3) == pytest.approx((1 + 2 / 3) / 2)
    precision, recall = pr_curve(rel, n_rel)
    assert precision.tolist() == pytest.approx([1.0, 0.75, 2 / 3])
    assert recall.tolist() == pytest.approx([(1 / 2 + 1 / 3) / 2, (1 / 2 + 2 / 3) / 2, (1 + 2 / 3) / 2])


def test_same_place_ranks_on_a_constructed_case():
    from core.metrics import same_place_ranks, same_place_summary

    # three places seen by two sensors; place 1's radar tile is a near-copy of place 0's (a hub), and place 2's
    # partner is orthogonal to it
    optical = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    radar = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0]], float)
    ranks = same_place_ranks(optical, radar)
    # place 0: its partner scores 1 and place 1's 0.8: rank 1; place 1: partner 0.6, place 2's 1.0 above: rank 2;
    # place 2: partner 0 and every tile scores 0: all tie, ties count against it: rank 3
    assert ranks.tolist() == [1, 2, 3]
    assert same_place_summary(ranks, ks=(1, 2)) == pytest.approx({"same-place R@1": 100 / 3,
                                                                  "same-place R@2": 200 / 3, "median rank": 2.0})
