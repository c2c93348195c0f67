"""Codes fitted on the archive (core/index/archive_codes.py): the index's codes and its queries' codes are the same
PCA-ITQ map of their embeddings, refitted at each update, kept through learning and undo; the model's own codes on
request, for small indexes and for models with more bits than dimensions."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from core.archive.gdal_open import open_raster
from core.archive.pixels import read_window
from core.archive.tiling import TileWindow
from core.cli import main
from core.encoder import Encoder
from core.errors import RsirError
from core.index import archive_codes, layout
from core.index.builder import BuildOptions, build_index
from core.index.reader import Index
from core.queries import query_from_array
from core.search import search
from tests.conftest import export_tiny
from tests.rasters import mosaic_with_twin, write_raster


@pytest.fixture(scope="module")
def model16(tmp_path_factory) -> str:
    """16-bit codes of a 32-d embedding: PCA-ITQ can fit them (at most one bit per dimension)."""
    return export_tiny(str(tmp_path_factory.mktemp("models") / "tiny16.onnx"), bits=16)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def _tile_pixels(index: Index, raster: str, tile_id: int) -> np.ndarray:
    t = index.tile(tile_id)
    return read_window(open_raster(raster), [1, 2, 3], TileWindow(t.x, t.y, t.w, t.h), 32)


def test_codes_are_fitted_on_the_archive_and_queries_get_the_same_map(tmp_path, model16):
    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    fitted_dir, model_dir = str(tmp_path / "fitted"), str(tmp_path / "model")
    build_index([raster], model16, fitted_dir, BuildOptions(tile=16))
    build_index([raster], model16, model_dir, BuildOptions(tile=16, model_codes=True))
    fitted, own = Index(fitted_dir), Index(model_dir)
    assert (fitted.manifest.code_source, fitted.manifest.format) == (archive_codes.SOURCE, 3)
    assert (own.manifest.code_source, own.manifest.format, own.archive_codes) == ("hash", 2, None)
    assert os.path.exists(fitted.data_path(layout.CODE_FIT)) and fitted.archive_codes.fitted_on == fitted.n == 256
    ids = np.arange(fitted.n)
    # every stored code is the map applied to the stored embedding
    assert np.array_equal(fitted.codes(ids), fitted.archive_codes.codes(fitted.embeddings(ids)))
    # the model's codes are the encoder's own
    encoder = Encoder(model16)
    pick = [0, 7, 100, 200]
    pixels = np.stack([_tile_pixels(own, raster, t) for t in pick])
    assert _hamming(encoder.encode(pixels)[1], own.codes(pick)).max() <= 1
    # ITQ balances the bits: the archive's codes tell its tiles apart far better than a random LSH head's
    distinct = [len({bytes(c) for c in ix.codes(ids)}) for ix in (fitted, own)]
    assert distinct[0] > distinct[1]
    # a query's code lands in the archive's code space: the tile read as an image is its own nearest hash hit
    for t in pick:
        q = query_from_array(fitted, encoder, _tile_pixels(fitted, raster, t))
        assert np.array_equal(q.code, fitted.archive_codes.codes(q.embedding[None])[0])
        assert _hamming(q.code, fitted.codes([t])[0]) <= 1
        hits = search(fitted, q, k=3, mode="hash")
        assert hits[0].tile_id == t and hits[0].hamming <= 1


def test_info_names_the_codes(tmp_path, model16, capsys):
    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    out = str(tmp_path / "idx")
    assert main(["index", raster, "--model", model16, "--out", out, "--tile", "16", "-q"]) == 0
    capsys.readouterr()
    assert main(["info", out]) == 0
    assert "16-bit codes fitted on this archive" in capsys.readouterr().out


def test_an_update_refits_on_every_tile_and_model_codes_cannot_follow(tmp_path, model16):
    a = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    b = write_raster(str(tmp_path / "b.tif"), mosaic_with_twin(seed=5))
    out = str(tmp_path / "idx")
    build_index([a], model16, out, BuildOptions(tile=16))
    first = Index(out).archive_codes
    with pytest.raises(RsirError, match="fitted on its archive.*without --model-codes"):
        build_index([b], model16, out, BuildOptions(tile=16, model_codes=True))
    build_index([b], model16, out, BuildOptions(tile=16))
    index = Index(out)
    ids = np.arange(index.n)
    assert index.n == 512 and index.archive_codes.fitted_on == 512
    assert not np.allclose(index.archive_codes.matrix, first.matrix)
    assert np.array_equal(index.codes(ids), index.archive_codes.codes(index.embeddings(ids)))


def test_small_indexes_and_wide_codes_keep_the_models(tmp_path, model16, tiny_model):
    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    small, wide = str(tmp_path / "small"), str(tmp_path / "wide")
    build_index([raster], model16, small, BuildOptions(tile=64))  # 16 tiles < 2 per bit
    build_index([raster], tiny_model, wide, BuildOptions(tile=16))  # 64 bits > 32 dimensions
    for folder, n in ((small, 16), (wide, 256)):
        index = Index(folder)
        assert (index.n, index.manifest.code_source, index.archive_codes) == (n, "hash", None)
    assert archive_codes.applies(32, 16, 32) and not archive_codes.applies(31, 16, 32)
    assert not archive_codes.applies(10_000, 64, 32) and not archive_codes.applies(10_000, 12, 32)


def test_learning_brings_its_own_codes_and_undo_refits_the_archives(tmp_path, model16):
    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    out, model = str(tmp_path / "idx"), str(tmp_path / "model.onnx")
    shutil.copy(model16, model)
    build_index([raster], model, out, BuildOptions(tile=16))
    before = Index(out)
    ids = np.arange(before.n)
    assert main(["adapt", out, "--out", str(tmp_path / "adapted.onnx"), "--sample", "100", "--epochs", "2"]) == 0
    adapted = Index(out)
    assert adapted.manifest.code_source == "hash" and adapted.archive_codes is None  # the adapted model's codes
    os.remove(model)  # undo needs the model from before learning: the index kept a copy of it
    assert main(["learn-labels", out, "--undo"]) == 0
    back = Index(out)
    assert back.manifest.code_source == archive_codes.SOURCE and back.model.path == before.model.path == model
    assert back.model_file == back.data_path(layout.MODEL_COPY)
    assert np.array_equal(back.codes(ids), back.archive_codes.codes(back.embeddings(ids)))
    assert _hamming(back.codes(ids), before.codes(ids)).mean() < 0.05


def test_a_damaged_code_map_is_named(tmp_path, model16):
    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    out = str(tmp_path / "idx")
    build_index([raster], model16, out, BuildOptions(tile=16))
    path = Index(out).data_path(layout.CODE_FIT)
    with open(path, "wb") as f:
        f.write(b"not a map")
    with pytest.raises(RsirError, match=r"codes_fit\.npz cannot be read.*damaged"):
        Index(out)


def test_fewer_bits_fitted_on_the_archive_carry_through_updates_learning_and_undo(tmp_path, model16, capsys):
    """--code-bits 8 on a 16-bit model: 8-bit codes everywhere (tables, binary index, queries), kept by an append,
    by learning (the adapted model's codes are fitted at the index's width) and by undo."""
    a = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    b = write_raster(str(tmp_path / "b.tif"), mosaic_with_twin(seed=5))
    out = str(tmp_path / "idx")
    assert main(["index", a, "--model", model16, "--out", out, "--tile", "16", "--code-bits", "8", "-q"]) == 0
    index = Index(out)
    assert (index.code_bits, index.codes([0]).shape, index.archive_codes.bits) == (8, (1, 1), 8)
    encoder = Encoder(model16)
    q = query_from_array(index, encoder, _tile_pixels(index, a, 77))
    assert q.code.shape == (1,) and search(index, q, k=1, mode="hash")[0].tile_id == 77
    build_index([b], model16, out, BuildOptions(tile=16))  # no --code-bits: the index keeps its 8
    index = Index(out)
    assert (index.n, index.code_bits, index.archive_codes.fitted_on) == (512, 8, 512)
    assert main(["adapt", out, "--out", str(tmp_path / "adapted.onnx"), "--sample", "100", "--epochs", "2"]) == 0
    assert Index(out).code_bits == 8 and Encoder(str(tmp_path / "adapted.onnx")).info.code_bits == 8
    assert main(["learn-labels", out, "--undo"]) == 0
    back = Index(out)
    assert (back.code_bits, back.manifest.code_source) == (8, archive_codes.SOURCE)
    ids = np.arange(back.n)
    assert np.array_equal(back.codes(ids), back.archive_codes.codes(back.embeddings(ids)))


def test_code_bits_that_cannot_be_fitted_are_refused(tmp_path, model16):
    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    with pytest.raises(RsirError, match=r"--code-bits 64: .* at most one bit per embedding dimension \(32\)"):
        build_index([raster], model16, str(tmp_path / "wide"), BuildOptions(tile=16, code_bits=64))
    with pytest.raises(RsirError, match=r"--code-bits 8: .*at least 2 tiles per bit \(16\); the index has 1"):
        build_index([raster], model16, str(tmp_path / "one"), BuildOptions(tile=256, code_bits=8))
    for bad, why in ((BuildOptions(code_bits=12), "multiple of 8"), (BuildOptions(code_bits=8, model_codes=True),
                                                                     "give one of them")):
        with pytest.raises(RsirError, match=why):
            build_index([raster], model16, str(tmp_path / "bad"), bad)
