"""Resolution-aware encoding: an index built with a model of dynamic input side encodes raster tiles at the tile
size and each patch at its own size (clamped to the model's range), records what it used, and reads queries the
same way, so a query of an indexed tile's pixels lands on that tile."""
from __future__ import annotations

import os

import numpy as np
import pytest

from core.archive.gdal_open import open_raster
from core.archive.pixels import read_window
from core.archive.tiling import TileWindow
from core.cli import main
from core.encoder import Encoder
from core.errors import RsirError
from core.index.builder import BuildOptions, build_index
from core.index.reader import Index
from core.queries import query_from_box, query_from_image
from tests.conftest import export_tiny
from tests.rasters import ORIGIN, class_image, write_raster


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory) -> str:
    return export_tiny(str(tmp_path_factory.mktemp("models") / "dynamic.onnx"), input_size=32,
                       input_size_range=(24, 64))


@pytest.fixture(scope="module")
def mixed_patches(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("patches")
    for c, size in ((0, 20), (1, 48), (2, 100)):  # below, inside and above the model's range 24-64
        os.makedirs(root / f"class{c}")
        for i in range(3):
            write_raster(str(root / f"class{c}" / f"{i}.tif"), class_image(c, 10 * c + i, size), epsg=None)
    return str(root)


def test_patches_are_encoded_near_their_own_size(dynamic_model, mixed_patches, tmp_path):
    out = str(tmp_path / "idx")
    build_index([mixed_patches], dynamic_model, out, BuildOptions())
    index = Index(out)
    sizes = {os.path.basename(os.path.dirname(s.path)): s.input_size for s in index.sources}
    assert sizes == {"class0": 24, "class1": 48, "class2": 64}
    enc = Encoder(dynamic_model)
    for tid in range(index.n):
        tile = index.tile(tid)
        entry = index.sources[tile.source_id]
        ds = open_raster(tile.source)
        side = entry.input_size
        expected, _ = enc.encode(read_window(ds, [1, 2, 3], TileWindow(0, 0, ds.RasterXSize, ds.RasterYSize),
                                             side)[None])
        assert float(index.embeddings([tid])[0] @ expected[0]) == pytest.approx(1.0, abs=1e-3)
        # a query with the same file is read the same way and finds itself at cosine 1
        q = query_from_image(index, enc, tile.source)
        assert q.pixels.shape[-1] == side
        assert float(q.embedding @ expected[0]) == pytest.approx(1.0, abs=1e-5)
    assert index.describe_input_sizes() == "24 px for 3 source(s); 48 px for 3 source(s); 64 px for 3 source(s)"


def test_raster_tiles_are_encoded_at_the_tile_size_and_boxes_read_alike(dynamic_model, tmp_path):
    img = np.concatenate([np.concatenate([class_image(c, c, 40) for c in row], axis=2) for row in ((0, 1), (2, 3))],
                         axis=1)
    raster = write_raster(str(tmp_path / "scene.tif"), img)
    out = str(tmp_path / "idx")
    build_index([raster], dynamic_model, out, BuildOptions(tile=40))
    index = Index(out)
    assert index.sources[0].input_size == 40 and index.n == 4
    enc = Encoder(dynamic_model)
    x0, y0 = ORIGIN
    box = (x0 + 400, y0 - 400, x0 + 800, y0)  # tile 1 (row 0, col 1), 10 m pixels
    q = query_from_box(index, enc, raster, box)
    assert q.pixels.shape[-1] == 40
    assert float(index.embeddings([1])[0] @ q.embedding) == pytest.approx(1.0, abs=1e-3)

    # a larger tile is clamped to the model's largest side; --input-size forces one side and the query follows
    big = str(tmp_path / "big")
    build_index([raster], dynamic_model, big, BuildOptions(tile=80))
    assert Index(big).sources[0].input_size == 64
    forced = str(tmp_path / "forced")
    build_index([raster], dynamic_model, forced, BuildOptions(tile=40, input_size=24))
    findex = Index(forced)
    assert findex.sources[0].input_size == 24 and findex.manifest.tiling.input_size == 24
    fq = query_from_box(findex, enc, raster, box)
    assert fq.pixels.shape[-1] == 24
    assert float(findex.embeddings([1])[0] @ fq.embedding) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(RsirError, match=r"--input-size 100: .*dynamic.onnx takes 24 to 64 px"):
        build_index([raster], dynamic_model, str(tmp_path / "bad"), BuildOptions(tile=40, input_size=100))
    assert not os.path.exists(str(tmp_path / "bad" / "manifest.json"))


def test_fixed_size_models_keep_their_one_size(tiny_model, mixed_patches, tmp_path, capsys):
    out = str(tmp_path / "idx")
    assert main(["index", mixed_patches, "--model", tiny_model, "--out", out, "-q"]) == 0
    index = Index(out)
    assert {s.input_size for s in index.sources} == {32}
    with pytest.raises(RsirError, match="takes 32 px only"):
        build_index([mixed_patches], tiny_model, str(tmp_path / "x"), BuildOptions(input_size=48))
    capsys.readouterr()
    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    assert "tiling     each patch is one tile, read whole" in text and "tile 64 px" not in text
    assert "encoded at 32 px for 9 source(s)" in text
