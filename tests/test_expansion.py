"""Query expansion (core/expansion.py): the formulas on hand-made vectors, and on a real index."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import RsirError
from core.expansion import expand_codes, expand_embeddings, expand_query
from core.index import BuildOptions, Index, build_index
from core.queries import query_from_tile
from core.search import search

TWIN_OF, TWIN_AT = 0, 3 * 4 + 2  # tests/rasters.py mosaic_with_twin: tile 14 copies tile 0


def test_alpha_qe_equals_the_formula():
    q = np.array([[1.0, 0.0, 0.0]], np.float32)
    nb = np.array([[[0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]], np.float32)
    # weights: 0.6^3 = 0.216, orthogonal 0, opposite clipped to 0
    want = np.array([1 + 0.216 * 0.6, 0.216 * 0.8, 0.0])
    np.testing.assert_allclose(expand_embeddings(q, nb), [want / np.linalg.norm(want)], rtol=1e-6)
    np.testing.assert_allclose(expand_embeddings(q, nb, alpha=1.0)[0],
                               np.array([1.36, 0.48, 0]) / np.hypot(1.36, 0.48), rtol=1e-6)


def test_code_majority_vote_keeps_the_query_bit_on_ties():
    q = np.packbits([[1, 0, 1, 0, 1, 1, 0, 0]], axis=1)
    nb = np.packbits([[[0, 0, 1, 1, 1, 0, 1, 0],
                       [0, 1, 0, 1, 1, 0, 1, 0],
                       [0, 1, 0, 1, 0, 1, 1, 0]]], axis=-1)
    # votes (query + 3): ones 1,2,2,3,3,2,3,0 of 4 -> 0, tie (query 0), tie (query 1), 1, 1, tie (query 1), 1, 0
    want = np.packbits([[0, 0, 1, 1, 1, 1, 1, 0]], axis=1)
    np.testing.assert_array_equal(expand_codes(q, nb), want)
    np.testing.assert_array_equal(expand_codes(q, nb[:, :2]), np.packbits([[0, 0, 1, 1, 1, 0, 1, 0]], axis=1))


@pytest.fixture()
def index(tmp_path, twin_raster, tiny_model) -> Index:
    out = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, out, BuildOptions(tile=64))
    return Index(out)


def test_expanded_float_query_is_alpha_qe_of_the_nearest_tiles(index):
    query = query_from_tile(index, 5)
    emb = index.embeddings(np.arange(index.n))
    sims = emb @ query.embedding
    sims[5] = -np.inf  # a tile query's own tile is not its neighbour
    nearest = np.argsort(-sims, kind="stable")[:4]
    expanded = expand_query(index, query, 4)
    np.testing.assert_allclose(expanded.embedding, expand_embeddings(query.embedding[None], emb[nearest][None])[0],
                               atol=1e-6)
    np.testing.assert_array_equal(expanded.code, expand_codes(query.code[None], index.codes(nearest)[None])[0])
    assert expanded.tile_id == 5 and "expanded with its 4 nearest tiles" in expanded.description
    hits = search(index, expanded, k=6)
    scores = emb @ expanded.embedding
    scores[5] = -np.inf
    assert [h.tile_id for h in hits] == np.argsort(-scores, kind="stable")[:6].tolist()
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:6], atol=1e-5)
    assert [h.tile_id for h in hits] != [h.tile_id for h in search(index, query, k=6)]  # it moved the ranking


def test_expanding_with_a_duplicate_changes_nothing(index):
    query = query_from_tile(index, TWIN_OF)
    once = expand_query(index, query, 1)  # its only neighbour is its copy: q + 1 * q, normalised, is q
    np.testing.assert_allclose(once.embedding, query.embedding, atol=1e-6)
    np.testing.assert_array_equal(once.code, query.code)
    assert [h.tile_id for h in search(index, once, k=5)] == [h.tile_id for h in search(index, query, k=5)]


def test_expanded_hash_query_votes_over_its_hamming_neighbours(index):
    query = query_from_tile(index, 7)
    expanded = expand_query(index, query, 5, mode="hash")
    _, ids = index.search_hamming(query.code[None], 6)
    nearest = [int(i) for i in ids[0] if i != 7][:5]
    np.testing.assert_array_equal(expanded.code, expand_codes(query.code[None], index.codes(nearest)[None])[0])
    hits = search(index, expanded, k=8, mode="hash")
    assert [h.hamming for h in hits] == index.hamming(expanded.code, [h.tile_id for h in hits]).tolist()
    assert [h.hamming for h in hits] == sorted(h.hamming for h in hits)


def test_no_expansion_and_bad_arguments(index):
    query = query_from_tile(index, 3)
    assert expand_query(index, query, 0) is query
    with pytest.raises(RsirError, match="n >= 0"):
        expand_query(index, query, -1)
    with pytest.raises(RsirError, match="unknown search mode"):
        expand_query(index, query, 2, mode="cosine")
