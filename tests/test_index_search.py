"""Index build, round trip, search by tile/box/image, Hamming radius, append and resume - real faiss and ORT."""
from __future__ import annotations

import os

import numpy as np
import pytest
from osgeo import ogr

from core.archive.gdal_open import open_raster
from core.archive.pixels import read_window
from core.archive.tiling import TileWindow
from core.encoder import Encoder
from core.errors import Cancelled
from core.index import BuildOptions, Index, build_index
from core.queries import query_from_array, query_from_box, query_from_image, query_from_tile
from core.search import search
from tests.rasters import ORIGIN, mosaic_with_twin, write_raster

TWIN_OF, TWIN_AT = 0, 3 * 4 + 2  # tile ids (row-major, 4 x 4 grid)


@pytest.fixture()
def built(tmp_path, twin_raster, tiny_model):
    out = str(tmp_path / "idx")
    report = build_index([twin_raster], tiny_model, out, BuildOptions(tile=64))
    return report, Index(out)


def _box(row: int, col: int, size: int = 64, gsd: float = 10.0):
    x0, y1 = ORIGIN[0] + col * size * gsd, ORIGIN[1] - row * size * gsd
    return (x0, y1 - size * gsd, x0 + size * gsd, y1)


def test_round_trip_ids_windows_and_vectors(built, twin_raster, tiny_model):
    report, index = built
    assert (report.tiles_added, report.skipped, index.n) == (16, 0, 16)
    assert index.float_index.ntotal == index.binary_index.ntotal == 16
    t = index.tile(TWIN_AT)
    assert (t.x, t.y, t.w, t.h, t.source) == (128, 192, 64, 64, os.path.abspath(twin_raster))
    src = ogr.CreateGeometryFromWkt(t.src_wkt).GetEnvelope()
    assert src == (ORIGIN[0] + 1280, ORIGIN[0] + 1920, ORIGIN[1] - 2560, ORIGIN[1] - 1920)
    assert t.src_crs == "EPSG:32618" and t.footprint_wkt.startswith("POLYGON")
    # stored vectors equal a fresh encoding of the same window
    enc = Encoder(tiny_model)
    raw = read_window(open_raster(twin_raster), [1, 2, 3], TileWindow(128, 192, 64, 64), enc.info.input_size)
    emb, code = enc.encode(raw[None])
    np.testing.assert_allclose(index.embeddings([TWIN_AT])[0], emb[0], atol=2e-3)  # float16 storage
    assert index.codes([TWIN_AT])[0].tolist() == code[0].tolist()
    assert (index.manifest.tiles, index.manifest.skipped, len(index.manifest.sources)) == (16, 0, 1)


def test_box_search_finds_duplicate_at_rank_1_or_2(built, twin_raster, tiny_model):
    _, index = built
    query = query_from_box(index, Encoder(tiny_model), twin_raster, _box(0, 0), "EPSG:32618")
    hits = search(index, query, k=5)
    assert {hits[0].tile_id, hits[1].tile_id} == {TWIN_OF, TWIN_AT}
    assert hits[0].score == pytest.approx(1.0, abs=2e-3) and hits[1].score == pytest.approx(1.0, abs=2e-3)
    assert hits[2].score < 0.999
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    # the same box given in lon/lat is reprojected onto the raster and gives the same pixels
    from osgeo import osr
    ct = osr.CoordinateTransformation(*_srs_pair())
    xmin, ymin, xmax, ymax = _box(0, 0)
    (lon0, lat0, _), (lon1, lat1, _) = ct.TransformPoint(xmin + 1, ymin + 1), ct.TransformPoint(xmax - 1, ymax - 1)
    q2 = query_from_box(index, Encoder(tiny_model), twin_raster, (lon0, lat0, lon1, lat1), "EPSG:4326")
    assert {h.tile_id for h in search(index, q2, k=2)} == {TWIN_OF, TWIN_AT}


def _srs_pair():
    from osgeo import osr
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromEPSG(32618)
    b.ImportFromEPSG(4326)
    for s in (a, b):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return a, b


def test_tile_and_hash_search(built):
    _, index = built
    hits = search(index, query_from_tile(index, TWIN_OF), k=3)
    assert hits[0].tile_id == TWIN_AT and TWIN_OF not in [h.tile_id for h in hits]  # query tile left out
    all_d = index.hamming(index.codes([TWIN_OF])[0], np.arange(index.n))
    assert sorted(np.flatnonzero(all_d == 0).tolist()) == [TWIN_OF, TWIN_AT]  # the codes discriminate
    hhits = search(index, query_from_tile(index, TWIN_OF), k=3, mode="hash")
    assert hhits[0].tile_id == TWIN_AT and hhits[0].hamming == 0
    assert hhits[0].bucket == index.codes([TWIN_OF])[0].tobytes().hex()
    assert [h.hamming for h in hhits] == sorted(h.hamming for h in hhits)


def _by_distance_then_cosine(index, query, all_d, radius) -> list[tuple[int, int]]:
    """Brute force: every tile within `radius`, ordered by Hamming distance, then by cosine (highest first)."""
    cosine = index.embeddings(np.arange(index.n)) @ query.embedding
    return [(int(all_d[i]), int(i)) for i in sorted(np.flatnonzero(all_d <= radius), key=lambda i: (all_d[i],
                                                                                                  -cosine[i]))]


def test_radius_search_equals_brute_force(built):
    _, index = built
    code = index.codes([5])[0]
    all_d = index.hamming(code, np.arange(index.n))
    for radius in (0, 8, 14, 20, 32):
        query = query_from_tile(index, 5)
        hits = search(index, query, mode="hash", radius=radius, exclude_query_tile=False)
        assert [(h.hamming, h.tile_id) for h in hits] == _by_distance_then_cosine(index, query, all_d, radius)
        # within one distance, the most similar first (was: by tile id)
        for a, b in zip(hits, hits[1:]):
            assert a.hamming < b.hamming or (a.hamming == b.hamming and a.score >= b.score - 1e-6)


def test_image_and_array_queries(built, tmp_path, tiny_model):
    _, index = built
    twin = mosaic_with_twin()[:, :64, :64]
    img = write_raster(str(tmp_path / "query.tif"), np.repeat(np.repeat(twin, 2, 1), 2, 2), epsg=None)  # 128 px
    enc = Encoder(tiny_model)
    for query in (query_from_image(index, enc, img), query_from_array(index, enc, twin)):
        assert {h.tile_id for h in search(index, query, k=2)} == {TWIN_OF, TWIN_AT}


def test_append_new_source_continues_ids(built, tmp_path, tiny_model):
    _, index = built
    second = write_raster(str(tmp_path / "second.tif"), mosaic_with_twin(seed=7)[:, :128, :128])
    report = build_index([str(tmp_path / "twin.tif"), second], tiny_model, index.dir, BuildOptions(tile=64))
    assert (report.sources_already, report.tiles_added, report.total_tiles) == (1, 4, 20)
    grown = Index(index.dir)
    assert grown.n == 20 and grown.float_index.ntotal == 20
    assert grown.tile(16).source == os.path.abspath(second) and grown.tile(16).source_id == 1
    np.testing.assert_array_equal(grown.codes(np.arange(16)), index.codes(np.arange(16)))
    again = build_index([second], tiny_model, index.dir, BuildOptions(tile=64))
    assert again.tiles_added == 0 and "already" in again.notes[0]


def _snapshot(idx_dir: str) -> dict:
    index = Index(idx_dir)
    q = index.embeddings(np.arange(index.n))
    _, ids = index.search_float(q, 5)
    _, hids = index.search_hamming(index.codes(np.arange(index.n)), 5)
    gpkg = ogr.Open(index.tiles_path())  # keep the datasource alive while its layer is read
    layer = gpkg.GetLayer(0)
    rows = sorted((f.GetFID(), f.GetField("x"), f.GetField("y"), f.GetGeometryRef().ExportToWkt()) for f in layer)
    return {"emb": open(index.data_path("embeddings.f16"), "rb").read(),
            "codes": open(index.data_path("codes.u8"), "rb").read(), "ids": ids.tolist(),
            "hids": hids.tolist(), "rows": rows, "counts": (index.manifest.tiles, index.manifest.skipped),
            "sources": [s.to_dict() for s in index.sources]}


def test_zero_pixels_are_data_unless_declared_nodata(tmp_path, tiny_model):
    """Calibrated radar is 0 over open water: a raster without nodata keeps its zero-heavy tiles (a lake query must
    find them); the declared nodata value, or --nodata for a fill value the file does not declare, makes them
    empty."""
    data = mosaic_with_twin()
    data[:, :64, :64] = 0                 # tile (0, 0): all zero, like a radar lake
    data[:, 64:128, :48] = 0              # tile (1, 0): its left three quarters zero
    raster = write_raster(str(tmp_path / "radar.tif"), data)
    plain = build_index([raster], tiny_model, str(tmp_path / "plain"), BuildOptions(tile=64))
    assert (plain.tiles_added, plain.skipped) == (16, 0)
    assert Index(str(tmp_path / "plain")).manifest.tiling.nodata is None
    told = build_index([raster], tiny_model, str(tmp_path / "told"), BuildOptions(tile=64, nodata=0))
    assert (told.tiles_added, told.skipped) == (14, 2)
    assert Index(str(tmp_path / "told")).manifest.tiling.nodata == 0
    declared = write_raster(str(tmp_path / "declared.tif"), data, nodata=0)
    own = build_index([declared], tiny_model, str(tmp_path / "own"), BuildOptions(tile=64))
    assert (own.tiles_added, own.skipped) == (14, 2)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, tiny_model):
    data = np.concatenate([mosaic_with_twin(seed=s) for s in range(3)], axis=1)  # 768 x 256: 48 tiles
    data[:, 256:320, :] = 0  # one row of empty tiles, skipped
    raster = write_raster(str(tmp_path / "big.tif"), data, nodata=0)
    opts = BuildOptions(tile=64, checkpoint_every=8, batch_size=4)
    whole = build_index([raster], tiny_model, str(tmp_path / "whole"), opts)
    assert (whole.tiles_added, whole.skipped) == (44, 4)

    calls = {"n": 0}

    def cancel_midway() -> bool:
        calls["n"] += 1
        return calls["n"] > 7  # stop during the third checkpoint chunk

    part = str(tmp_path / "part")
    with pytest.raises(Cancelled, match="rerun the same command to resume"):
        build_index([raster], tiny_model, part, opts, cancel=cancel_midway)
    assert not os.path.exists(os.path.join(part, "manifest.json"))  # nothing half-written in place
    with pytest.raises(Exception, match="indexing has not finished"):
        Index(part)
    resumed = build_index([raster], tiny_model, part, opts)
    assert resumed.resumed_windows == 28 and resumed.windows_this_run == 20
    a, b = _snapshot(str(tmp_path / "whole")), _snapshot(part)
    assert a == b
    assert not os.path.exists(os.path.join(part, ".partial"))


def test_different_options_do_not_resume(tmp_path, twin_raster, tiny_model):
    out = str(tmp_path / "idx")
    with pytest.raises(Cancelled):
        build_index([twin_raster], tiny_model, out, BuildOptions(tile=64, checkpoint_every=4, batch_size=4),
                    cancel=lambda: True)
    with pytest.raises(Exception, match="unfinished indexing run with other inputs"):
        build_index([twin_raster], tiny_model, out, BuildOptions(tile=32))
    report = build_index([twin_raster], tiny_model, out, BuildOptions(tile=32), restart=True)
    assert report.tiles_added == 64


def test_forced_factories_ivf(tmp_path, twin_raster, tiny_model):
    out = str(tmp_path / "ivf")
    data = np.concatenate([mosaic_with_twin(seed=s) for s in range(4)], axis=2)
    raster = write_raster(str(tmp_path / "wide.tif"), data)
    build_index([raster], tiny_model, out, BuildOptions(tile=16, float_factory="IVF4,Flat", binary_factory="BIVF4"))
    index = Index(out)
    assert (index.manifest.float_factory, index.manifest.binary_factory) == ("IVF4,Flat", "BIVF4")
    assert index.n == 1024
    _, ids = index.search_float(index.embeddings([100]), 1, nprobe=4)
    assert ids[0][0] == 100


@pytest.mark.parametrize("factory", ["BHash4x16", "BHNSW16"])
def test_hash_and_graph_binary_indexes_search_like_flat(tmp_path, twin_raster, tiny_model, factory):
    """Multi-index hashing answers k-NN and radius queries exactly; HNSW radius queries fall back to a scan."""
    flat_dir, other_dir = str(tmp_path / "flat"), str(tmp_path / factory)
    build_index([twin_raster], tiny_model, flat_dir, BuildOptions(tile=16))
    build_index([twin_raster], tiny_model, other_dir, BuildOptions(tile=16, binary_factory=factory))
    flat, other = Index(flat_dir), Index(other_dir)
    assert other.manifest.binary_factory == factory and other.n == flat.n == 256
    for tile in (0, 77, 255):
        q = query_from_tile(flat, tile)
        all_d = flat.hamming(q.code, np.arange(flat.n))
        for radius in (0, 6, 12):
            hits = search(other, query_from_tile(other, tile), mode="hash", radius=radius, exclude_query_tile=False)
            assert [(h.hamming, h.tile_id) for h in hits] == _by_distance_then_cosine(flat, q, all_d, radius)
        if factory.startswith("BHash"):
            d, ids = other.search_hamming(q.code[None], 10)
            assert ids[0].tolist() == np.lexsort((np.arange(flat.n), all_d))[:10].tolist()
            assert d[0].tolist() == np.sort(all_d)[:10].tolist()


@pytest.mark.parametrize("factory", [None, "BHash2x4", "BIVF2"])
def test_hash_ties_are_ordered_by_cosine(tmp_path, twin_raster, factory):
    """8-bit codes of a random tiny model: the 256 tiles share 6 codes. Hamming k-NN keeps the tiles of each
    distance shell that are most similar by embedding, not the lowest ids, even when the shell at the k-th distance
    runs past the candidates the binary index returns (exact indexes); IVF orders the candidates it finds."""
    from core.search import nearest_ids
    from tests.conftest import export_tiny

    model = export_tiny(str(tmp_path / "m8.onnx"), bits=8)
    out = str(tmp_path / "idx")
    build_index([twin_raster], model, out, BuildOptions(tile=16, binary_factory=factory, model_codes=True))
    index = Index(out)
    everything = np.arange(index.n)
    for tile in (0, 77, 255):
        q = query_from_tile(index, tile)
        dist = index.hamming(q.code, everything).astype(int)
        cosine = index.embeddings(everything) @ q.embedding
        order = [int(i) for i in np.lexsort((-cosine, dist)) if i != tile]
        hits = search(index, q, k=10, mode="hash")
        got = [h.tile_id for h in hits]
        assert [h.hamming for h in hits] == sorted(h.hamming for h in hits)
        for a, b in zip(hits, hits[1:]):  # within a shell, by cosine
            assert a.hamming < b.hamming or a.score >= b.score
        if factory != "BIVF2":
            assert got == order[:10]
            if tile == 0:  # its shell at distance 0 holds more tiles than the 11 + 64 candidates fetched first
                assert (dist == dist[order[9]]).sum() > 11 + 64
            assert nearest_ids(index, q, 30, "hash") == order[:30]


def test_hash_search_reranked_by_cosine(tmp_path, twin_raster):
    """--rerank R: the R nearest by Hamming distance (ties by cosine), ranked again by cosine similarity."""
    from core.errors import RsirError
    from tests.conftest import export_tiny

    model = export_tiny(str(tmp_path / "m8.onnx"), bits=8)
    out = str(tmp_path / "idx")
    build_index([twin_raster], model, out, BuildOptions(tile=16))
    index = Index(out)
    everything = np.arange(index.n)
    differ = 0
    for tile in range(0, index.n, 5):
        q = query_from_tile(index, tile)
        dist = index.hamming(q.code, everything).astype(int)
        cosine = index.embeddings(everything) @ q.embedding
        by_hamming = [int(i) for i in np.lexsort((-cosine, dist)) if i != tile]
        for rerank in (10, 40, 120):
            want = sorted(by_hamming[:rerank], key=lambda i: -cosine[i])[:10]
            hits = search(index, q, k=10, mode="hash", rerank=rerank)
            assert [h.tile_id for h in hits] == want
            assert all(a.score >= b.score - 1e-6 for a, b in zip(hits, hits[1:]))  # float32 dot products
        differ += want != by_hamming[:10]
    # a pool beyond the nearest Hamming shells reaches tiles that plain hash search ranks lower
    assert differ >= 5
    for kwargs, message in [({"mode": "float", "rerank": 5}, "applies to hash search"),
                            ({"mode": "hash", "rerank": 5, "radius": 2}, "re-ranking applies to the k nearest"),
                            ({"mode": "hash", "rerank": -1}, "positive number")]:
        with pytest.raises(RsirError, match=message):
            search(index, q, k=10, **kwargs)


def test_heat_map_averages_overlapping_tiles_cell_by_cell(tmp_path, twin_raster, tiny_model):
    """The vectorised heat map equals the straightforward per-tile sum on an index of overlapping tiles."""
    import math
    from functools import reduce

    from osgeo import gdal

    from core.heatmap import NODATA, similarity_heatmap

    out = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, out, BuildOptions(tile=64, stride=48))
    index = Index(out)
    q = index.embeddings([5])[0].astype(np.float32)
    path, best, _ = similarity_heatmap(index, q, twin_raster, str(tmp_path / "heat.tif"))
    got = gdal.Open(path).ReadAsArray()
    ids, windows = index.source_windows(0)
    assert ids.tolist() == list(range(index.n)) and windows.shape == (index.n, 4)
    cell = reduce(math.gcd, windows.ravel().tolist())
    total, count = np.zeros(got.shape), np.zeros(got.shape)
    for (x, y, w, h), s in zip(windows, index.embeddings(ids) @ q):
        total[y // cell:(y + h) // cell, x // cell:(x + w) // cell] += s
        count[y // cell:(y + h) // cell, x // cell:(x + w) // cell] += 1
    want = np.where(count > 0, total / np.maximum(count, 1), NODATA)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert best == pytest.approx(want.max(), abs=1e-5)
    # a point inside tile 5's footprint finds tile 5 (or an overlapping tile whose centre is nearer)
    from osgeo import ogr

    centre = ogr.CreateGeometryFromWkt(index.tile(5).footprint_wkt).Centroid()
    assert index.tile_at(centre.GetX(), centre.GetY()) == 5
    assert index.tile_at(0.0, 0.0) is None


def test_source_windows_from_the_windows_table_and_from_sql(tmp_path, tiny_model):
    """windows.i32 (source id and pixel window per tile) gives a source's windows without reading tiles.gpkg row by
    row; appended sources extend it; an index without it (older rsir) reads the same from SQL."""
    import os

    from core.index import layout

    a = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    b = write_raster(str(tmp_path / "b.tif"), mosaic_with_twin(seed=1))
    out = str(tmp_path / "idx")
    build_index([a], tiny_model, out, BuildOptions(tile=64))
    build_index([b], tiny_model, out, BuildOptions(tile=64))
    index = Index(out)
    assert os.path.exists(index.data_path(layout.WINDOWS))
    from_file = [index.source_windows(s) for s in (0, 1)]
    os.remove(index.data_path(layout.WINDOWS))
    again = Index(out)
    from_sql = [again.source_windows(s) for s in (0, 1)]
    for (i1, w1), (i2, w2) in zip(from_file, from_sql):
        assert np.array_equal(i1, i2) and np.array_equal(w1, w2)
    assert from_file[1][0].tolist() == list(range(16, 32)) and from_file[0][1][1].tolist() == [64, 0, 64, 64]
