"""Multi-index hashing tables on disk (core/index/mih_tables.py): the builder writes them for hash factories, and
the reader's k-NN and radius searches through them equal an exact scan's (ties by id), with the scan taking over
for queries whose neighbours lie too far for probing to pay."""
from __future__ import annotations

import os

import numpy as np

from core.index import BuildOptions, Index, build_index, mih_tables
from core.index.hamming import scan_knn, scan_range
from tests.rasters import mosaic_with_twin, write_raster


def test_tables_equal_a_scan_for_knn_and_radius(tmp_path, tiny_model):
    raster = write_raster(str(tmp_path / "a.tif"), np.concatenate([mosaic_with_twin(seed=s) for s in range(3)], 2))
    out = str(tmp_path / "idx")
    build_index([raster], tiny_model, out, BuildOptions(tile=8, binary_factory="BHash4x16"))
    index = Index(out)
    assert os.path.isdir(index.data_path("mih")) and index.mih is not None and index.hamming_exact
    codes = np.asarray(index._codes)
    rng = np.random.default_rng(0)
    queries = np.concatenate([codes[rng.choice(index.n, 20, replace=False)],  # near many codes
                              rng.integers(0, 256, (5, codes.shape[1]), dtype=np.uint8)])  # far from all
    for k in (1, 7, 50):
        d, i = index.search_hamming(queries, k)
        ed, ei = scan_knn(codes, queries, k)
        assert np.array_equal(d, ed) and np.array_equal(i, ei), k
    for q in queries[:8]:
        for radius in (0, 3, 8, 20):
            d, i = index.range_hamming(q, radius)
            ed, ei = scan_range(codes, q, radius)
            order = np.lexsort((ei, ed))
            assert np.array_equal(d, ed[order]) and np.array_equal(i, ei[order]), radius


def test_tables_layout_and_candidates(tmp_path):
    """Each table's ids sorted by substring, bucket starts as a prefix sum; probing at 0 flips finds exactly the
    codes sharing a substring with the query."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (3000, 4), dtype=np.uint8)
    codes[100:110] = codes[5]  # duplicates of code 5
    mih_tables.write_tables(str(tmp_path), codes, 2, 16)
    codes.tofile(str(tmp_path / "codes.u8"))
    tables = mih_tables.MihTables(str(tmp_path), str(tmp_path / "codes.u8"), len(codes))
    d, i = tables.knn(codes[5], 11)
    assert d.tolist() == [0] * 11 and i.tolist() == [5] + list(range(100, 110))
    assert mih_tables.hash_layout("BHash11x23") == (11, 23) and mih_tables.hash_layout("BHash16") == (1, 16)
    assert mih_tables.hash_layout("BFlat") is None
    tables.close()
