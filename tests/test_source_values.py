"""How raw pixel values become model input: a band-stack spec's `scale` and `add_offset`, `--scale` and
`--add-offset`, and queries read from sources that are not in the index - real GDAL files, ORT and faiss."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from osgeo import gdal

from core.archive.sources import expand_archive
from core.cli import main
from core.encoder import Encoder
from core.errors import RsirError
from core.index import BuildOptions, Index, build_index
from core.queries import query_from_box
from core.search import search
from tests.rasters import ORIGIN, mosaic_with_twin, write_raster

TWIN_OF, TWIN_AT = 0, 3 * 4 + 2
BOX_00 = (ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1])  # tile (row 0, col 0)


def _stack(folder, name: str, data: np.ndarray, **values) -> str:
    """A band-stack spec over one single-band GeoTIFF per band of `data`, with `values` (scale, add_offset)."""
    os.makedirs(folder, exist_ok=True)
    bands = []
    for i, band in enumerate(data):
        path = write_raster(os.path.join(folder, f"{name}_b{i + 1}.tif"), band[None])
        bands.append({"name": f"B{i + 1}", "path": os.path.basename(path)})
    spec = os.path.join(folder, f"{name}.json")
    with open(spec, "w") as f:
        json.dump({"type": "rsir.band_stack", "bands": bands, **values}, f)
    return spec


@pytest.fixture()
def plain_index(tmp_path, twin_raster, tiny_model):
    out = str(tmp_path / "plain")
    build_index([twin_raster], tiny_model, out, BuildOptions(tile=64))
    return Index(out)


def test_spec_values_are_read_and_checked(tmp_path):
    img = mosaic_with_twin().astype(np.uint16)
    spec = _stack(tmp_path, "s", img, scale=2550, add_offset=-1000)
    (src,) = expand_archive([spec])
    assert (src.scale, src.add_offset) == (2550, -1000)
    for values, problem in (({"scale": 0}, '"scale" must be a positive number'),
                            ({"scale": "3000"}, '"scale" must be a positive number'),
                            ({"add_offset": "-1000"}, '"add_offset" must be a number'),
                            ({"add_offset": True}, '"add_offset" must be a number')):
        bad = _stack(tmp_path / "bad", "bad", img[:1], **values)
        with pytest.raises(RsirError, match=problem) as err:
            expand_archive([bad])
        assert "bad.json" in str(err.value)


def test_offset_and_scale_make_two_encodings_of_one_scene_equal(tmp_path, tiny_model, plain_index):
    """The same scene stored as DN = 10 x v (old products) and DN = 10 x v + 1000 (Sentinel-2 baseline 04.00+):
    with scale 2550 and add_offset -1000 both index to the vectors of the 8-bit scene under the model's 255."""
    img = mosaic_with_twin().astype(np.uint16)
    old = _stack(tmp_path / "old", "old", img * 10, scale=2550)
    new = _stack(tmp_path / "new", "new", img * 10 + 1000, scale=2550, add_offset=-1000)
    out = str(tmp_path / "idx")
    build_index([old, new], tiny_model, out, BuildOptions(tile=64))
    index = Index(out)
    assert index.n == 32 and [s.add_offset for s in index.sources] == [0.0, -1000.0]
    emb = index.embeddings(list(range(32)))
    np.testing.assert_allclose(emb[:16], plain_index.embeddings(list(range(16))), atol=2e-3)
    np.testing.assert_allclose(emb[16:], emb[:16], atol=2e-3)
    # a box on the newer product finds the same place in both, and its twin, at cosine 1
    enc = Encoder(tiny_model)
    hits = search(index, query_from_box(index, enc, new, BOX_00), k=5)
    assert {h.tile_id for h in hits[:4]} == {TWIN_OF, TWIN_AT, 16 + TWIN_OF, 16 + TWIN_AT}
    assert all(h.score == pytest.approx(1.0, abs=3e-3) for h in hits[:4]) and hits[4].score < 0.999
    # without the offset the newer product reads as another scene and the box finds another place
    unfixed = _stack(tmp_path / "unfixed", "unfixed", img * 10 + 1000, scale=2550)
    query = query_from_box(index, enc, unfixed, BOX_00)
    assert float(query.embedding @ emb[TWIN_OF]) < 0.99
    assert search(index, query, k=1)[0].tile_id not in {TWIN_OF, TWIN_AT, 16 + TWIN_OF, 16 + TWIN_AT}


def test_query_from_a_spec_that_is_not_indexed_uses_its_own_values(tmp_path, tiny_model, plain_index):
    """Until 2026-11-30 such a query was read with the index's scale (here the model's 255), not its own."""
    img = mosaic_with_twin().astype(np.uint16)
    other = _stack(tmp_path / "other", "other", img * 10 + 1000, scale=2550, add_offset=-1000)
    query = query_from_box(plain_index, Encoder(tiny_model), other, BOX_00)
    np.testing.assert_allclose(query.embedding, plain_index.embeddings([TWIN_OF])[0], atol=2e-3)
    assert {h.tile_id for h in search(plain_index, query, k=2)} == {TWIN_OF, TWIN_AT}


def test_cli_add_offset_for_plain_rasters(tmp_path, tiny_model, plain_index, capsys):
    shifted = write_raster(str(tmp_path / "shifted.tif"), mosaic_with_twin().astype(np.uint16) + 1000)
    out = tmp_path / "idx"
    assert main(["index", shifted, "--model", tiny_model, "--out", str(out), "--scale", "255",
                 "--add-offset", "-1000", "-q"]) == 0
    index = Index(str(out))
    np.testing.assert_allclose(index.embeddings(list(range(16))), plain_index.embeddings(list(range(16))),
                               atol=2e-3)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "scale 255.0, add_offset -1000" in info and "values     (raw-1000) / 255 for 1 source(s)" in info
    # a box on the indexed raster is read with the offset it was indexed with
    box = ",".join(str(v) for v in BOX_00)
    assert main(["search", str(out), "--bbox", box, "--raster", shifted, "-k", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:4]]
    assert {r[1] for r in rows} == {str(TWIN_OF), str(TWIN_AT)} and all(float(r[2]) > 0.997 for r in rows)
    # adding to it needs the same options
    assert main(["index", shifted, "--model", tiny_model, "--out", str(out), "--scale", "255", "-q"]) == 1
    assert "add_offset" in capsys.readouterr().err


def test_rasters_not_in_the_index_are_read_as_the_archive_was(tmp_path, tiny_model):
    """An analyst indexes a band-stack spec, then draws the box on a raster layer of the same bands (QGIS cannot
    open the spec), or picks an exported 16-bit chip, or an 8-bit PNG of it: each finds the place at cosine 1."""
    from osgeo import gdal

    from core.queries import query_from_image

    img = mosaic_with_twin().astype(np.uint16)
    spec = _stack(tmp_path / "s2", "s2", img * 10, scale=2550)
    out = str(tmp_path / "idx")
    build_index([spec], tiny_model, out, BuildOptions(tile=64))
    index, enc = Index(out), Encoder(tiny_model)
    layer = write_raster(str(tmp_path / "layer.tif"), img * 10)         # the same values, not a spec
    chip16 = write_raster(str(tmp_path / "chip16.tif"), img[:, :64, :64] * 10, epsg=None)
    chip8 = str(tmp_path / "chip8.png")
    gdal.Translate(chip8, write_raster(str(tmp_path / "chip8.tif"), img[:, :64, :64].astype(np.uint8)),
                   format="PNG")
    queries = [query_from_box(index, enc, layer, BOX_00), query_from_image(index, enc, chip16),
               query_from_image(index, enc, chip8)]
    for query in queries:
        hits = search(index, query, k=2)
        assert {h.tile_id for h in hits} == {TWIN_OF, TWIN_AT}, query.description
        assert hits[1].score == pytest.approx(1.0, abs=3e-3) and not query.warnings


def test_a_mixed_archive_warns_when_a_query_raster_is_not_in_it(tmp_path, tiny_model):
    img = mosaic_with_twin().astype(np.uint16)
    old = _stack(tmp_path / "old", "old", img * 10, scale=2550)
    new = _stack(tmp_path / "new", "new", img * 10 + 1000, scale=2550, add_offset=-1000)
    out = str(tmp_path / "idx")
    build_index([old, new], tiny_model, out, BuildOptions(tile=64))
    index, enc = Index(out), Encoder(tiny_model)
    layer = write_raster(str(tmp_path / "layer.tif"), img * 10 + 1000)
    query = query_from_box(index, enc, layer, BOX_00)
    assert len(query.warnings) == 1 and "layer.tif is not in the index" in query.warnings[0]
    assert "--add-offset" in query.warnings[0]
    fixed = query_from_box(index, enc, layer, BOX_00, add_offset=-1000)  # what the warning says to do
    assert not fixed.warnings
    assert search(index, fixed, k=1)[0].score == pytest.approx(1.0, abs=3e-3)


def test_heat_map_and_values_of_a_vrt_over_indexed_band_files(tmp_path, tiny_model):
    """The QGIS view of a band-stack spec is a VRT of its files: the heat map over it is the spec's heat map, and
    in a mixed archive its box is read with the spec's own values (found by pixel grid), with no warning."""
    from osgeo import gdal

    from core.archive.gdal_open import open_raster
    from core.heatmap import similarity_heatmap

    img = mosaic_with_twin().astype(np.uint16)
    new = _stack(tmp_path / "new", "new", img * 10 + 1000, scale=2550, add_offset=-1000)
    other = write_raster(str(tmp_path / "other.tif"), mosaic_with_twin(seed=5), origin=(ORIGIN[0] + 5000, ORIGIN[1]))
    out = str(tmp_path / "idx")
    build_index([new, other], tiny_model, out, BuildOptions(tile=64))
    index, enc = Index(out), Encoder(tiny_model)
    assert [s.scale for s in index.sources] == [2550, 255] and index.sources[0].geotransform is not None
    vrt = str(tmp_path / "new.vrt")
    gdal.BuildVRT(vrt, sorted(str(p) for p in (tmp_path / "new").glob("new_b*.tif")), separate=True).FlushCache()
    assert [s.path for s in index.same_grid_sources(open_raster(vrt), vrt)] == [os.path.abspath(new)]
    query = query_from_box(index, enc, vrt, BOX_00)
    assert not query.warnings
    hits = search(index, query, k=2)
    assert {h.tile_id for h in hits} == {TWIN_OF, TWIN_AT} and hits[1].score == pytest.approx(1.0, abs=3e-3)
    grids = [gdal.Open(similarity_heatmap(index, query.embedding, path, str(tmp_path / f"heat{i}.tif"))[0])
             .ReadAsArray() for i, path in enumerate((new, vrt))]
    np.testing.assert_array_equal(grids[0], grids[1])
    assert grids[0].shape == (4, 4) and grids[0][0, 0] == pytest.approx(1.0, abs=3e-3)
    # indexes made before the manifest recorded geotransforms: the source is opened to compare
    index.manifest = index.manifest.replace(sources=tuple(s.__class__(**{**s.__dict__, "geotransform": None})
                                                           for s in index.sources))
    assert [s.path for s in index.same_grid_sources(open_raster(vrt), vrt)] == [os.path.abspath(new)]
    shifted = write_raster(str(tmp_path / "shifted.tif"), img, origin=(ORIGIN[0] + 10, ORIGIN[1]))
    assert index.same_grid_sources(open_raster(shifted), shifted) == []
    with pytest.raises(RsirError, match="nor on the pixel grid of a raster that is"):
        similarity_heatmap(index, query.embedding, shifted, str(tmp_path / "no.tif"))


def test_a_band_stack_tile_vrt_refers_to_its_band_files(tmp_path):
    """A hit on a band-stack source as a VRT window: it must name real files (a window of the in-memory stack had
    an empty SourceFilename, and QGIS showed "Unavailable layer")."""
    from core.tile_vrt import write_tile_vrt

    data = mosaic_with_twin().astype(np.uint16) * 40
    spec = _stack(str(tmp_path / "scene"), "s2", data)
    out = str(tmp_path / "results" / "rank001_tile3.vrt")
    write_tile_vrt(spec, "stack", [3, 2, 1], 192, 0, 64, 64, out)
    text = open(out).read()
    assert "<SourceFilename" in text and "<SourceFilename relativeToVRT=\"0\"></SourceFilename>" not in text
    stack_vrt = str(tmp_path / "results" / "s2.stack.vrt")
    assert os.path.abspath(str(tmp_path / "scene" / "s2_b1.tif")) in open(stack_vrt).read()
    ds = gdal.Open(out)  # a fresh open by path, as QGIS does
    np.testing.assert_array_equal(ds.ReadAsArray(), data[[2, 1, 0], 0:64, 192:256])


def test_a_16_bit_scene_read_with_an_8_bit_scale_is_refused_with_the_fix(tiny_model, tmp_path, capsys):
    """Reflectance-like values (1000-4000) divided by the model's 255: every tile would look alike (the issue's
    hits at cosine 1.0000, Hamming 0). Refused before anything is written, with the scale to give."""
    from core.archive.value_check import nice_scale

    data = (mosaic_with_twin().astype(np.uint16) * 12 + 1000)  # 1000 .. 4060
    raster = write_raster(str(tmp_path / "s2_16bit.tif"), data)
    out = str(tmp_path / "idx")
    assert main(["index", raster, "--model", tiny_model, "--out", out, "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{raster}: read as (raw) / 255, 100 % of its pixels are far above the model's range" in err
    assert "--scale 3000 (rsir index)" in err and not os.path.exists(out)  # reflectance-like: the demo's scale
    # the user's own scale is respected, with the warning kept in the output; a sensible one is silent
    assert main(["index", raster, "--model", tiny_model, "--out", out, "-q", "--scale", "255"]) == 0
    assert "far above the model's range" in capsys.readouterr().out
    assert main(["index", raster, "--model", tiny_model, "--out", str(tmp_path / "ok"), "-q", "--scale",
                 "5000"]) == 0
    assert "far above" not in capsys.readouterr().out
    assert [nice_scale(v) for v in (2870, 41000, 255, 0.7)] == [3000, 50000, 300, 0.75]


def test_the_suggested_scale_reads_reflectance_alike_and_other_values_by_their_bright_end(tmp_path):
    """Integers whose bright end lies at 300-4000 read like reflectance x 10000: 3000 whatever the scene holds (a
    scene of open water, 98 % below 1,410 like the demo's, would otherwise be read twice as bright as land);
    brighter integers, 8-bit and float values: the bright end mapped near 1."""
    from core.archive.value_check import sample_reading
    from core.archive.values import ValueScaling

    rng = np.random.default_rng(0)
    water = rng.normal(950, 60, (3, 64, 64))
    water[:, :4] = 1500  # a strip of beach
    cases = {"water": (np.clip(water, 1, None).astype(np.uint16), 3000, "reflectance"),
             "bright": (rng.integers(4000, 6500, (3, 64, 64)).astype(np.uint16), 7500, "bright end"),
             "byte": (rng.integers(1, 250, (3, 64, 64)).astype(np.uint8), 300, "bright end"),
             "float": (rng.uniform(0.01, 0.7, (3, 64, 64)).astype(np.float32), 1.0, "bright end")}
    for name, (data, scale, basis) in cases.items():
        ds = gdal.Open(write_raster(str(tmp_path / f"{name}.tif"), data))
        reading = sample_reading(ds, [1, 2, 3], ValueScaling(255.0), name)
        assert (reading.suggested_scale, basis in reading.basis) == (pytest.approx(scale), True), name
