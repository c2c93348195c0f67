"""The `rsir` command line end to end, and every bad input of the foundation issue: clear message naming the
file and the problem, exit code 1, and no index left behind."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from osgeo import gdal, ogr

from core.cli import main
from tests.rasters import ORIGIN, write_raster

BOX_00 = f"{ORIGIN[0]},{ORIGIN[1] - 640},{ORIGIN[0] + 640},{ORIGIN[1]}"  # tile (row 0, col 0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def cli_index(tmp_path, twin_raster, tiny_model, capsys):
    out = tmp_path / "idx"
    code, stdout, _ = run(capsys, "index", twin_raster, "--model", tiny_model, "--out", out, "-q")
    assert code == 0 and "indexed 16 tiles from 1 source(s), skipped 0" in stdout
    return out


def test_index_info_search_outputs(cli_index, twin_raster, tmp_path, capsys):
    code, stdout, _ = run(capsys, "info", cli_index)
    assert code == 0 and "16 indexed" in stdout and "EPSG:32618" in stdout and "64-bit codes" in stdout
    assert "tile 64 px (640 m), stride 64 px" in stdout
    gpkg, png = tmp_path / "hits.gpkg", tmp_path / "hits.png"
    code, stdout, _ = run(capsys, "search", cli_index, "--bbox", BOX_00, "--crs", "EPSG:32618", "--raster",
                          twin_raster, "-k", "4", "--out", gpkg, "--png", png)
    assert code == 0
    rows = [line.split() for line in stdout.splitlines()[2:6]]
    assert {rows[0][1], rows[1][1]} == {"0", "14"} and [r[0] for r in rows] == ["1", "2", "3", "4"]
    ds = ogr.Open(str(gpkg))
    hits = ds.GetLayerByName("hits")
    feats = sorted((f.GetField("rank"), f.GetField("tile_id"), f.GetField("hamming")) for f in hits)
    assert [f[0] for f in feats] == [1, 2, 3, 4] and {feats[0][1], feats[1][1]} == {0, 14}
    assert feats[0][2] == 0 and hits.GetSpatialRef().GetAuthorityCode(None) == "4326"
    assert ds.GetLayerByName("query").GetFeatureCount() == 1
    img = gdal.Open(str(png)).ReadAsArray()
    assert img.shape == (3, 6 + 134, 6 + 5 * 134)  # query + 4 hits in one row of 128 px cells
    assert tuple(img[:, 4, 4]) == (220, 30, 30)  # the query's red frame
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial.gpkg") or f.endswith(".partial.png")]


def test_search_by_tile_and_hash(cli_index, capsys):
    code, stdout, _ = run(capsys, "search", cli_index, "--tile", 0, "--hash", "-k", "1")
    assert code == 0 and stdout.splitlines()[2].split()[:4] == ["1", "14", "1.0000", "0"]
    code, stdout, _ = run(capsys, "search", cli_index, "--tile", 0, "--hash", "--radius", "0")
    assert code == 0 and [line.split()[1] for line in stdout.splitlines()[2:]] == ["14"]
    code, stdout, _ = run(capsys, "search", cli_index, "--tile", 0, "-k", "1", "--expand", "1")  # with its copy
    assert code == 0 and "expanded with its 1 nearest tiles" in stdout.splitlines()[0]
    assert stdout.splitlines()[2].split()[:3] == ["1", "14", "1.0000"]
    code, stdout, _ = run(capsys, "search", cli_index, "--tile", 0, "--hash", "-k", "3", "--rerank", "8")
    assert code == 0 and "Hamming, top 8 re-ranked by cosine" in stdout.splitlines()[0]
    scores = [float(line.split()[2]) for line in stdout.splitlines()[2:]]
    assert len(scores) == 3 and scores[0] == 1.0 and all(a >= b - 1e-4 for a, b in zip(scores, scores[1:]))
    _assert_error(capsys, ["search", cli_index, "--tile", 0, "--rerank", "8"], "--rerank re-ranks hash search")


def _assert_error(capsys, argv, *fragments, no_dir=None):
    code, _, err = run(capsys, *argv)
    assert code == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    if no_dir is not None:
        assert not os.path.exists(os.path.join(no_dir, "manifest.json"))


def test_bad_inputs_give_clear_errors(tmp_path, twin_raster, tiny_model, other_tiny_model, capsys):
    out = tmp_path / "idx"
    _assert_error(capsys, ["index", tmp_path / "missing.tif", "--model", tiny_model, "--out", out, "-q"],
                  "missing.tif: no such file", no_dir=out)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 64)
    _assert_error(capsys, ["index", twin_raster, corrupt, "--model", tiny_model, "--out", out, "-q"],
                  "corrupt.tif: not a readable raster", no_dir=out)
    gray = write_raster(str(tmp_path / "gray.tif"), np.zeros((1, 64, 64), np.uint8))
    _assert_error(capsys, ["index", gray, "--model", tiny_model, "--out", out, "-q"],
                  "gray.tif: has 1 band(s) but band 2 is needed", no_dir=out)
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("this is not a model")
    _assert_error(capsys, ["index", twin_raster, "--model", not_onnx, "--out", out, "-q"],
                  "model.onnx: not a valid ONNX model", no_dir=out)
    bare = _bare_onnx(tmp_path / "bare.onnx")
    _assert_error(capsys, ["index", twin_raster, "--model", bare, "--out", out, "-q"],
                  "bare.onnx: ONNX model lacks rsir metadata", no_dir=out)
    os.makedirs(tmp_path / "empty")
    _assert_error(capsys, ["index", tmp_path / "empty", "--model", tiny_model, "--out", out, "-q"],
                  "empty archive", no_dir=out)
    assert not os.path.exists(out)  # no bad run left anything behind

    assert run(capsys, "index", twin_raster, "--model", tiny_model, "--out", out, "-q")[0] == 0
    _assert_error(capsys, ["index", twin_raster, "--model", other_tiny_model, "--out", out, "-q"],
                  "was built with model", "tiny.onnx", "not", "tiny_other.onnx")
    _assert_error(capsys, ["search", out, "--bbox", BOX_00, "--raster", twin_raster, "--model", other_tiny_model],
                  "tiny_other.onnx: is not the model index")
    far = f"{ORIGIN[0] + 10000},{ORIGIN[1]},{ORIGIN[0] + 10640},{ORIGIN[1] + 640}"
    _assert_error(capsys, ["search", out, "--bbox", far, "--crs", "EPSG:32618", "--raster", twin_raster],
                  "lies outside raster", "twin.tif")
    partly = f"{ORIGIN[0] - 320},{ORIGIN[1] - 640},{ORIGIN[0] + 320},{ORIGIN[1]}"
    _assert_error(capsys, ["search", out, "--bbox", partly, "--raster", twin_raster], "extends beyond raster")
    _assert_error(capsys, ["search", tmp_path, "--tile", "0"], "not an rsir index")
    _assert_error(capsys, ["search", out, "--tile", "99"], "no tile 99")
    _assert_error(capsys, ["search", out, "--tile", "1", "--radius", "3"], "needs hash search")
    # argument errors are found before the index is read: a missing index is not what they report
    _assert_error(capsys, ["search", tmp_path / "nowhere", "--tile", "1", "--rerank", "5"], "--rerank", "add --hash")
    _assert_error(capsys, ["search", tmp_path / "nowhere", "--bbox", BOX_00], "--bbox needs --raster")


def test_all_tiles_nodata_writes_nothing(tmp_path, tiny_model, capsys):
    blank = write_raster(str(tmp_path / "blank.tif"), np.zeros((3, 128, 128), np.uint8), nodata=0)
    out = tmp_path / "idx"
    _assert_error(capsys, ["index", blank, "--model", tiny_model, "--out", out, "-q"],
                  "blank.tif: no valid tiles: all 4 tile(s)")
    assert not os.path.exists(out / "manifest.json") and not os.path.exists(out / ".partial")


def _bare_onnx(path) -> str:
    """A valid ONNX model without rsir metadata."""
    import torch

    torch.onnx.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=True,
                      external_data=False, verbose=False, input_names=["input"], output_names=["embedding"])
    return str(path)


def test_index_without_a_model_uses_the_shipped_default(twin_raster, tmp_path, capsys):
    from core.default_model import default_model_path
    from core.index.reader import Index

    out = str(tmp_path / "idx")
    code, stdout, _ = run(capsys, "index", twin_raster, "--out", out, "-q")
    assert code == 0 and f"model: {default_model_path()} (the default" in stdout
    assert os.path.basename(default_model_path()).endswith(".onnx")
    assert Index(out).model.path == os.path.abspath(default_model_path()) and Index(out).n == 16


def test_boxes_west_of_greenwich_and_south_of_the_equator_parse_as_written(tiny_model, tmp_path, capsys):
    from tests.rasters import mosaic_with_twin

    # a lon/lat raster whose top-left corner is at 60 W, 30 S: every coordinate is negative
    raster = write_raster(str(tmp_path / "south_west.tif"), mosaic_with_twin(), origin=(-60.0, -30.0), gsd=0.0001,
                          epsg=4326)
    out = tmp_path / "idx"
    assert run(capsys, "index", raster, "--model", tiny_model, "--out", out, "-q")[0] == 0
    box = "-60.0,-30.0064,-59.9936,-30.0"  # tile (row 0, col 0), as a user types it
    code, stdout, err = run(capsys, "search", out, "--bbox", box, "--crs", "EPSG:4326", "--raster", raster, "-k", "2")
    assert code == 0, err
    assert "query: box -60,-30.0064,-59.9936,-30 on" in stdout
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    # tile 0 itself and its twin (row 3, col 2), both at cosine 1
    assert {rows[0][1], rows[1][1]} == {"0", "14"} and min(float(rows[0][2]), float(rows[1][2])) > 0.999


def test_output_piped_to_head_ends_quietly(cli_index, tmp_path):
    """`rsir search IDX ... | head -3` printed a BrokenPipeError traceback: here the reader leaves at once."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); from core.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "search", cli_index, "--tile", "0", "-k", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like head after its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def test_more_bad_inputs_one_line_each(cli_index, tmp_path, twin_raster, tiny_model, capsys):
    """Issue 27's list: numbers out of range are refused as they are read, writes that fail name the file,
    garbage inputs are refused instead of indexed or searched."""
    for argv, fragment in (
            (["search", cli_index, "--tile", "99999999999999999999"], "out of range"),
            (["search", cli_index, "--tile", "0", "--nprobe", "-4"], "-4 is out of range"),
            (["search", cli_index, "--tile", "0", "-k", "0"], "0 is out of range"),
            (["index", twin_raster, "--model", tiny_model, "--out", tmp_path / "x", "--tile", "-3"], "out of range")):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        assert exit_info.value.code == 2 and fragment in capsys.readouterr().err
    _assert_error(capsys, ["index", twin_raster, "--model", tiny_model, "--out", tmp_path / "f", "--float-factory",
                           "IVF", "-q"], "--float-factory 'IVF': not a valid faiss float index factory")
    assert not os.path.exists(tmp_path / "f")
    # a write that fails: one line naming the file, no traceback
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _assert_error(capsys, ["search", cli_index, "--tile", "0", "--png", a_file / "hits.png"], "a_file")
    _assert_error(capsys, ["index", twin_raster, "--model", tiny_model, "--out", a_file, "-q"],
                  "is a file, not an index folder")
    _assert_error(capsys, ["index", twin_raster, "--model", tiny_model, "--out", a_file / "idx", "-q"],
                  "cannot create the index folder")
    # --gsd in metres on a raster in degrees would make the whole raster one tile
    degrees = write_raster(str(tmp_path / "deg.tif"), np.zeros((3, 256, 256), np.uint8) + 7, origin=(-75.0, 35.0),
                           gsd=0.0001, epsg=4326)
    _assert_error(capsys, ["index", degrees, "--model", tiny_model, "--out", tmp_path / "g", "--gsd", "10", "-q"],
                  "deg.tif: --gsd 10 is in the raster's CRS units (degrees", "give --gsd in degrees")
    # a truncated JPEG in a patch folder is not indexed as grey garbage
    patches = tmp_path / "patches" / "forest"
    patches.mkdir(parents=True)
    drv = gdal.GetDriverByName("JPEG")
    for i in range(2):
        drv.CreateCopy(str(patches / f"p{i}.jpg"), gdal.Open(write_raster(
            str(tmp_path / f"p{i}.tif"), (np.random.default_rng(i).random((3, 64, 64)) * 255).astype(np.uint8),
            epsg=None)))
    raw = (patches / "p1.jpg").read_bytes()
    (patches / "p1.jpg").write_bytes(raw[: len(raw) // 2])
    _assert_error(capsys, ["index", tmp_path / "patches", "--model", tiny_model, "--out", tmp_path / "j", "-q"],
                  "p1.jpg: reading pixels failed", "Premature end of JPEG file")
    assert not os.path.exists(tmp_path / "j")
    # image queries: too small to mean anything, too large to decode whole
    tiny = write_raster(str(tmp_path / "one.tif"), np.zeros((3, 1, 1), np.uint8), epsg=None)
    _assert_error(capsys, ["search", cli_index, "--image", tiny], "one.tif: is 1 x 1 px, too small")
    huge = str(tmp_path / "huge.tif")
    gdal.GetDriverByName("GTiff").Create(huge, 20000, 20000, 3, gdal.GDT_Byte, ["SPARSE_OK=TRUE", "TILED=YES"])
    _assert_error(capsys, ["search", cli_index, "--image", huge], "huge.tif: is 20000 x 20000 px without a "
                  "georeference, too large to read whole")


def test_an_index_keeps_its_model_and_says_what_to_do_without_it(tmp_path, twin_raster, tiny_model,
                                                                  other_tiny_model, capsys):
    # e.g. an index built with a default model that a newer release replaced
    model = tmp_path / "old_default.onnx"
    shutil.copy(tiny_model, model)
    out = tmp_path / "idx"
    assert run(capsys, "index", twin_raster, "--model", model, "--out", out, "-q")[0] == 0
    from core.index.reader import Index

    box = ["search", out, "--bbox", BOX_00, "--crs", "EPSG:32618", "--raster", twin_raster, "-k", "2"]
    code, before, _ = run(capsys, *box)
    copy = Index(str(out)).data_path("model.onnx")
    assert code == 0 and open(copy, "rb").read() == open(model, "rb").read()
    shutil.copy(other_tiny_model, model)  # replaced by another model of the same name, then gone altogether
    for _ in range(2):
        assert Index(str(out)).model_file == copy
        code, after, _ = run(capsys, *box)
        assert code == 0 and after.splitlines()[2:] == before.splitlines()[2:]
        if os.path.exists(model):
            os.remove(model)
    os.remove(copy)  # an index from before indexes kept their model
    _assert_error(capsys, ["search", out, "--bbox", BOX_00, "--crs", "EPSG:32618", "--raster", twin_raster],
                  f"{model}: the model this index was built with (sha256 ", "is not there any more; put it back "
                  "there, pass it with --model, or rebuild the index with the shipped model (",
                  "Searching by one of the index's tiles still works.")
    code, stdout, _ = run(capsys, "search", out, "--tile", 0, "-k", "1")  # as it says
    assert code == 0 and stdout.splitlines()[2].split()[:3] == ["1", "14", "1.0000"]
    # the plugin's session says the same when a box is drawn
    from core.errors import RsirError
    from rsir_qgis_plugin.controller import RetrievalSession, SearchRequest

    session = RetrievalSession(str(out))
    with pytest.raises(RsirError, match="is not there any more; put it back there or rebuild the index with"):
        session.search_box(twin_raster, tuple(float(v) for v in BOX_00.split(",")), "EPSG:32618", SearchRequest())
    assert session.search_tile(0, SearchRequest(k=1)).hits[0].tile_id == 14
