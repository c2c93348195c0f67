"""Hamming search against numpy brute force, for every faiss binary index type rsir can build."""
import numpy as np
import pytest

from core.index import hamming
from core.index.faiss_build import build_binary_index

FACTORIES = ["BFlat", "BIVF16", "BHNSW16", "BHash16", "BHash4x16", "BHash8x8"]


def _codes(n: int = 4000, seed: int = 0) -> np.ndarray:
    """64-bit codes in 40 clusters (a trained model's codes cluster by class) plus uniform noise codes."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (40, 64), dtype=np.uint8)
    bits = centres[rng.integers(0, 40, n)]
    bits ^= (rng.random((n, 64)) < 0.08).astype(np.uint8)
    bits[: n // 10] = rng.integers(0, 2, (n // 10, 64), dtype=np.uint8)
    return np.packbits(bits, axis=1)


def _brute(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(codes, query[None]), axis=1).sum(axis=1)


@pytest.fixture(scope="module")
def codes():
    return _codes()


@pytest.mark.parametrize("force_tables", [False, True])
@pytest.mark.parametrize("factory", FACTORIES)
def test_radius_search_is_exact_for_every_index_type(codes, factory, force_tables, monkeypatch):
    if force_tables:  # probe the hash tables even where the cost model would scan (small test tables)
        monkeypatch.setattr(hamming, "hash_radius_wins", lambda index, r: hamming.hash_tables(index) is not None)
    index = build_binary_index(codes, 64, factory)
    for qi in (0, 7, 1234, 3999):
        d_all = _brute(codes, codes[qi])
        for radius in (0, 3, 9, 17, 30):
            dist, ids = hamming.range_search(index, codes, codes[qi], radius)
            want = np.flatnonzero(d_all <= radius)
            want = want[np.lexsort((want, d_all[want]))]
            assert ids.tolist() == want.tolist(), (factory, qi, radius)
            assert dist.tolist() == d_all[want].tolist()


@pytest.mark.parametrize("force_tables", [False, True])
@pytest.mark.parametrize("factory", ["BHash16", "BHash4x16", "BHash8x8"])
def test_multi_index_hashing_knn_equals_brute_force(codes, factory, force_tables, monkeypatch):
    if force_tables:  # probe every radius round even where the cost model would scan
        monkeypatch.setattr(hamming, "probe_cost", lambda index, flips: 0.0)
    index = build_binary_index(codes, 64, factory)
    rng = np.random.default_rng(1)
    queries = np.concatenate([codes[[3, 500, 3999]], rng.integers(0, 256, (3, 8), dtype=np.uint8)])
    for q in queries:
        d_all = _brute(codes, q)
        want = np.lexsort((np.arange(len(codes)), d_all))[:25]
        dist, ids = hamming.mih_knn(index, codes, q, 25)
        assert ids.tolist() == want.tolist()
        assert dist.tolist() == d_all[want].tolist()


def test_flat_knn_distances_equal_brute_force(codes):
    index = build_binary_index(codes, 64, "BFlat")
    rng = np.random.default_rng(2)
    queries = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    dist, ids = index.search(queries, 10)
    for q, d, i in zip(queries, dist, ids):
        d_all = _brute(codes, q)
        assert d.tolist() == np.sort(d_all)[:10].tolist()  # the k smallest distances, ties in any order
        assert (d_all[i] == d).all()


@pytest.mark.parametrize("variant", ["mc", "hc"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_scan_knn_in_shards_equals_brute_force_ties_by_id(codes, threads, variant, monkeypatch, tmp_path):
    monkeypatch.setattr(hamming, "SHARD_MIN", 100)  # several shards even on a small table
    short = np.ascontiguousarray(codes[:, :2])  # 16-bit codes: many ties at every distance
    on_disk = np.memmap(tmp_path / "codes.u8", np.uint8, "w+", shape=short.shape)
    on_disk[:] = short
    rng = np.random.default_rng(3)
    queries = np.concatenate([short[[42, 7]], rng.integers(0, 256, (4, 2), dtype=np.uint8)])
    for table in (short, on_disk):
        dist, ids = hamming.scan_knn(table, queries, 30, threads=threads, variant=variant)
        assert dist.shape == ids.shape == (6, 30)
        for q, d, i in zip(queries, dist, ids):
            d_all = _brute(short, q)
            want = np.lexsort((np.arange(len(short)), d_all))[:30]
            assert i.tolist() == want.tolist()  # the same ids, in (distance, id) order
            assert d.tolist() == d_all[want].tolist()
    # fewer codes than k: padded with -1
    dist, ids = hamming.scan_knn(codes[:5], codes[42], 8, threads=threads, variant=variant)
    assert ids[0].tolist()[5:] == [-1, -1, -1] and sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]
    assert dist[0].tolist()[5:] == [-1, -1, -1]


@pytest.mark.parametrize("nbytes", [3, 5, 16])
def test_scan_knn_counting_kernel_any_code_width(nbytes):
    """faiss's counting kernel has code-size specialisations; widths without one take its generic path."""
    rng = np.random.default_rng(nbytes)
    table = rng.integers(0, 256, (500, nbytes), dtype=np.uint8)
    table[:, 1:] = 0  # only 8 bits vary: ties at every distance
    query = rng.integers(0, 256, nbytes, dtype=np.uint8)
    dist, ids = hamming.scan_knn(table, query, 40)
    d_all = _brute(table, query)
    want = np.lexsort((np.arange(len(table)), d_all))[:40]
    assert ids[0].tolist() == want.tolist() and dist[0].tolist() == d_all[want].tolist()


def test_flat_codes_is_the_index_table_and_search_uses_it(codes):
    index = build_binary_index(codes, 64, "BFlat")
    view = hamming.flat_codes(index)
    assert view.shape == codes.shape and (view == codes).all()
    assert hamming.flat_codes(build_binary_index(codes[:0], 64, "BFlat")).shape == (0, 8)
    dist, ids = hamming.scan_knn(view, codes[[3, 900]], 5)
    assert ids[:, 0].tolist() == [3, 900] and dist[:, 0].tolist() == [0, 0]


def test_exact_flips_pigeonhole():
    multi = build_binary_index(_codes(100), 64, "BHash4x16")
    single = build_binary_index(_codes(100), 64, "BHash16")
    assert [hamming.exact_flips(multi, r) for r in (0, 3, 4, 9)] == [0, 0, 1, 2]
    assert [hamming.exact_flips(single, r) for r in (0, 3, 20)] == [0, 3, 16]
    assert hamming.exact_flips(build_binary_index(_codes(100), 64, "BFlat"), 5) is None
    assert hamming.probes(multi, 1) == 4 * 17


def test_default_binary_factory_by_size():
    from core.index.faiss_build import FLAT_MAX_BINARY, default_binary_factory

    assert default_binary_factory(1000, 64) == "BFlat" and default_binary_factory(FLAT_MAX_BINARY, 64) == "BFlat"
    assert default_binary_factory(10_000_000, 64) == "BHash3x21"  # ~log2(n)-bit substrings
    for bits in (16, 32, 64, 128, 256):
        factory = default_binary_factory(5_000_000, bits)
        index = build_binary_index(np.zeros((2, bits // 8), np.uint8), bits, factory)
        nhash, b = hamming.hash_tables(index)
        assert nhash * b <= bits and b >= 16
