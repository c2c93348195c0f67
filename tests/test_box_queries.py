"""Query boxes larger than a tile: read as index-sized tiles whose embeddings are averaged (or, asked, as one
resampled image) - real GeoTIFFs, ORT and faiss."""
from __future__ import annotations

import numpy as np
import pytest

from core.archive.gdal_open import open_raster
from core.archive.pixels import read_window
from core.archive.tiling import TileWindow, cover_windows
from core.encoder import Encoder, l2_normalise
from core.errors import RsirError
from core.index import BuildOptions, Index, build_index
from core.queries import query_from_box
from core.search import search
from tests.rasters import ORIGIN, mosaic_with_twin, write_polygons, write_raster


def _box(row: int, col: int, rows: int = 1, cols: int = 1, tile_m: float = 640.0):
    x0, y1 = ORIGIN[0] + col * tile_m, ORIGIN[1] - row * tile_m
    return (x0, y1 - rows * tile_m, x0 + cols * tile_m, y1)


def test_cover_windows_spread_tiles_over_the_box():
    assert cover_windows(TileWindow(5, 7, 64, 64), 64) == [TileWindow(5, 7, 64, 64)]
    assert cover_windows(TileWindow(5, 7, 95, 90), 64) == [TileWindow(5, 7, 95, 90)]  # under 1.5 tiles: itself
    assert cover_windows(TileWindow(0, 0, 128, 64), 64) == [TileWindow(0, 0, 64, 64), TileWindow(64, 0, 64, 64)]
    # 1.5 tiles: two overlapping tiles flush with both edges, on both axes
    assert cover_windows(TileWindow(10, 20, 96, 96), 64) == [
        TileWindow(10, 20, 64, 64), TileWindow(42, 20, 64, 64), TileWindow(10, 52, 64, 64), TileWindow(42, 52, 64, 64)]
    # a thin box: tiles as high as the box
    assert cover_windows(TileWindow(0, 0, 200, 30), 64) == [TileWindow(x, 0, 64, 30) for x in (0, 45, 91, 136)]
    # a huge box is sampled by at most max_per_side tiles a side, first and last flush with its edges
    big = cover_windows(TileWindow(0, 0, 10_000, 10_000), 10, max_per_side=16)
    assert len(big) == 256 and big[0] == TileWindow(0, 0, 10, 10) and big[-1] == TileWindow(9990, 9990, 10, 10)
    with pytest.raises(ValueError):
        cover_windows(TileWindow(0, 0, 10, 10), 0)


@pytest.fixture()
def twin_index(tmp_path, twin_raster, tiny_model):
    out = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, out, BuildOptions(tile=64))
    return Index(out)


def test_a_two_tile_box_is_the_mean_of_its_tiles(twin_index, twin_raster, tiny_model):
    enc = Encoder(tiny_model)
    query = query_from_box(twin_index, enc, twin_raster, _box(0, 0, cols=2), "EPSG:32618")
    want = l2_normalise(twin_index.embeddings([0, 1]).mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(query.embedding, want, atol=2e-3)
    assert "(2 x 1 tiles of 64 px, 2 averaged)" in query.description
    bits = np.unpackbits(twin_index.codes([0, 1]), axis=1)
    agree = bits[0] == bits[1]  # where the two tiles' codes agree, the box's code has their bit
    assert (np.unpackbits(query.code)[agree] == bits[0][agree]).all()
    # asked, the whole box is resampled into one model input, as before 2026-11-30
    whole = query_from_box(twin_index, enc, twin_raster, _box(0, 0, cols=2), "EPSG:32618", whole=True)
    raw = read_window(open_raster(twin_raster), [1, 2, 3], TileWindow(0, 0, 128, 64), enc.info.input_size)
    np.testing.assert_allclose(whole.embedding, enc.encode(raw[None])[0][0], atol=1e-5)
    assert "tiles" not in whole.description.split(" on ")[0]
    # a 2 x 2 box over tile (0, 0) and its three neighbours: their mean, and the search runs on it
    square = query_from_box(twin_index, enc, twin_raster, _box(0, 0, 2, 2))
    np.testing.assert_allclose(square.embedding, l2_normalise(twin_index.embeddings([0, 1, 4, 5]).mean(
        axis=0, keepdims=True))[0], atol=2e-3)
    hits = search(twin_index, square, k=16)
    np.testing.assert_allclose([h.score for h in hits], np.sort(twin_index.embeddings(list(range(16)))
                                                                @ square.embedding)[::-1], atol=2e-3)


def test_nodata_tiles_of_a_box_are_left_out(tmp_path, tiny_model):
    img = mosaic_with_twin()
    img[:, :, 128:] = 0  # the right half is scene fill: the raster declares no nodata, the index run says 0
    raster = write_raster(str(tmp_path / "half.tif"), img)
    out = str(tmp_path / "idx")
    build_index([raster], tiny_model, out, BuildOptions(tile=64, nodata=0))
    index = Index(out)
    assert index.n == 8  # the empty tiles were skipped
    query = query_from_box(index, Encoder(tiny_model), raster, _box(0, 1, cols=2))  # tiles (0,1) and (0,2)
    tile_01 = next(t for t in range(index.n) if (index.tile(t).x, index.tile(t).y) == (64, 0))
    np.testing.assert_allclose(query.embedding, index.embeddings([tile_01])[0], atol=2e-3)
    assert "(2 x 1 tiles of 64 px, 1 averaged)" in query.description


def test_tile_size_follows_the_index_ground_resolution(tmp_path, tiny_model):
    """An index made with --gsd 20 has 64 px tiles of 20 m: 128 px of the 10 m query raster."""
    raster = write_raster(str(tmp_path / "r.tif"), np.tile(mosaic_with_twin(), (1, 2, 2)))
    out = str(tmp_path / "idx")
    build_index([raster], tiny_model, out, BuildOptions(tile=64, gsd=20.0))
    index, enc = Index(out), Encoder(tiny_model)
    one = query_from_box(index, enc, raster, _box(0, 0, 2, 2))  # 1280 m = one 20 m tile
    assert "tiles" not in one.description.split(" on ")[0]
    four = query_from_box(index, enc, raster, _box(0, 0, 4, 4))  # 2560 m = 2 x 2 such tiles
    assert "(2 x 2 tiles of 128 px, 4 averaged)" in four.description


def test_a_georeferenced_image_is_read_as_tiles_and_a_plain_one_whole(tmp_path, twin_index, twin_raster,
                                                                       tiny_model):
    from osgeo import gdal

    from core.queries import query_from_image

    enc = Encoder(tiny_model)
    pixels = gdal.Open(twin_raster).ReadAsArray(0, 0, 128, 64)  # tiles (0, 0) and (0, 1)
    geo = write_raster(str(tmp_path / "geo.tif"), pixels)
    plain = write_raster(str(tmp_path / "plain.tif"), pixels, epsg=None)
    tiled = query_from_image(twin_index, enc, geo)
    want = l2_normalise(twin_index.embeddings([0, 1]).mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(tiled.embedding, want, atol=2e-3)
    assert "(2 x 1 tiles of 64 px, 2 averaged)" in tiled.description
    for query in (query_from_image(twin_index, enc, plain), query_from_image(twin_index, enc, geo, whole=True)):
        raw = read_window(open_raster(geo), [1, 2, 3], TileWindow(0, 0, 128, 64), enc.info.input_size)
        np.testing.assert_allclose(query.embedding, enc.encode(raw[None])[0][0], atol=1e-5)
        assert "averaged" not in query.description


def test_only_tiles_inside_the_polygon_are_averaged(twin_index, twin_raster, tiny_model):
    """A polygon over tiles (0, 0), (0, 1) and (1, 0) in UTM: its bounding box spans 2 x 2 tiles, tile (1, 1) is
    left out; a polygon smaller than a tile keeps every tile of its box."""
    enc = Encoder(tiny_model)
    x0, y0 = ORIGIN
    ell = (f"POLYGON(({x0 + 1} {y0 - 1},{x0 + 1279} {y0 - 1},{x0 + 1279} {y0 - 639},{x0 + 639} {y0 - 639},"
           f"{x0 + 639} {y0 - 1279},{x0 + 1} {y0 - 1279},{x0 + 1} {y0 - 1}))")
    query = query_from_box(twin_index, enc, twin_raster, _box(0, 0, 2, 2), "EPSG:32618", within=ell)
    want = l2_normalise(twin_index.embeddings([0, 1, 4]).mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(query.embedding, want, atol=2e-3)
    assert query.description.startswith("polygon ") and "3 averaged" in query.description
    tiny = f"POLYGON(({x0 + 600} {y0 - 600},{x0 + 700} {y0 - 600},{x0 + 700} {y0 - 700},{x0 + 600} {y0 - 600}))"
    everything = query_from_box(twin_index, enc, twin_raster, _box(0, 0, 2, 2), "EPSG:32618", within=tiny)
    assert "4 averaged" in everything.description


def test_cli_polygon_query_from_a_vector_file(tmp_path, twin_index, twin_raster, capsys):
    from core.cli import main

    x0, y0 = ORIGIN
    path = write_polygons(str(tmp_path / "stand.gpkg"), [
        f"POLYGON(({x0 + 1} {y0 - 1},{x0 + 1279} {y0 - 1},{x0 + 1279} {y0 - 639},{x0 + 639} {y0 - 639},"
        f"{x0 + 639} {y0 - 1279},{x0 + 1} {y0 - 1279},{x0 + 1} {y0 - 1}))"], layer="stands")
    assert main(["search", str(twin_index.dir), "--polygon", path, "--raster", twin_raster, "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("query: polygon ") and "(2 x 2 tiles of 64 px, 3 averaged)" in out
    assert main(["search", str(twin_index.dir), "--polygon", path, "--raster", twin_raster, "--fid", "7"]) == 1
    assert "stand.gpkg: has no feature 7" in capsys.readouterr().err
    assert main(["search", str(twin_index.dir), "--polygon", path]) == 1
    assert "--polygon needs --raster" in capsys.readouterr().err
    assert main(["search", str(twin_index.dir), "--polygon", twin_raster, "--raster", twin_raster]) == 1
    assert "twin.tif: not a readable vector file" in capsys.readouterr().err


def test_several_polygons_are_one_query(twin_index, twin_raster, tiny_model):
    """Two fields, each two tiles wide, far apart: the four tiles averaged together."""
    from core.queries import query_from_polygons

    enc = Encoder(tiny_model)
    x0, y0 = ORIGIN

    def rect(col: int, row: int, cols: int) -> str:
        a, b = x0 + col * 640 + 5, y0 - row * 640 - 5
        c, d = x0 + (col + cols) * 640 - 5, y0 - (row + 1) * 640 + 5
        return f"POLYGON(({a} {b},{c} {b},{c} {d},{a} {d},{a} {b}))"

    query = query_from_polygons(twin_index, enc, twin_raster, [rect(0, 0, 2), rect(2, 3, 2)], "EPSG:32618")
    want = l2_normalise(twin_index.embeddings([0, 1, 14, 15]).mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(query.embedding, want, atol=2e-3)
    assert query.description.startswith("2 polygons on ") and query.description.endswith("(4 tiles averaged)")
    one = query_from_polygons(twin_index, enc, twin_raster, [rect(0, 0, 2)], "EPSG:32618")
    assert one.description.startswith("polygon ") and "2 averaged" in one.description
    with pytest.raises(RsirError, match="no polygons"):
        query_from_polygons(twin_index, enc, twin_raster, [], "EPSG:32618")
