"""`rsir spectral-labels`: per-pixel NDWI / NDVI rules, per-tile majority, the GeoPackage it writes, and the
paired-tile loader reading it back as labels."""
from __future__ import annotations

import numpy as np
import pytest
from osgeo import ogr

from core.cli import main
from core.errors import RsirError
from tests.rasters import GSD, ORIGIN, write_raster
from training.paired_data import cut_paired_tiles
from training.spectral_labels import (
    NDVI_CLASSES,
    NODATA,
    RGB_CLASSES,
    SpectralRules,
    pixel_classes,
    tile_class,
    write_spectral_labels,
)

T = 8  # tile side in px
# (green, red, nir) reflectance x 10000 of one pure pixel per class, with the indices they give:
WATER = (900, 600, 300)       # NDWI (900-300)/1200 = 0.5
DENSE = (800, 400, 3600)      # NDWI < 0, NDVI 3200/4000 = 0.8
SPARSE = (900, 1000, 2000)    # NDVI 1000/3000 = 0.33
BARE = (1500, 2000, 2400)     # NDVI 400/4400 = 0.09


def test_pixel_rules_match_the_indices():
    g, r, n = (np.array(v, np.uint16) for v in zip(WATER, DENSE, SPARSE, BARE, (0, 0, 0)))
    assert pixel_classes(g, r, n).tolist() == [0, 1, 2, 3, NODATA]
    # thresholds move the boundaries: NDVI 0.33 is "dense" above a 0.3 threshold; water needs NDWI > 0.6 here
    assert pixel_classes(g, r, n, SpectralRules(water_ndwi=0.6, dense_ndvi=0.3)).tolist()[:3] == [3, 1, 1]
    valid = np.array([True, False, True, True, True])
    assert pixel_classes(g, r, n, valid=valid).tolist() == [0, NODATA, 2, 3, NODATA]


def test_rgb_rules_use_green_share_and_brightness():
    # (red, green, blue) 8-bit: forest (dark green), meadow (light green), bare field, and the nodata pixel
    r, g, b = (np.array(v, np.uint8) for v in zip((60, 90, 50), (150, 200, 110), (200, 180, 150), (0, 0, 0)))
    # green shares 0.45, 0.43, 0.34; brightness 67/255 = 0.26, 153/255 = 0.60, 0.69
    rgb = SpectralRules(kind="rgb")
    assert [RGB_CLASSES[c] for c in pixel_classes(r, g, b, rgb)[:3]] == ["dark_vegetation", "light_vegetation",
                                                                      "non_vegetation"]
    assert pixel_classes(r, g, b, rgb)[3] == NODATA
    assert pixel_classes(r, g, b, SpectralRules(kind="rgb", dark=0.65)).tolist()[:2] == [0, 0]  # both "dark" now
    assert pixel_classes(r, g, b, SpectralRules(kind="rgb", green_share=0.44)).tolist()[:2] == [0, 2]
    # 16-bit data: the brightness threshold is a fraction of the scale
    assert pixel_classes(r * 257.0, g * 257.0, b * 257.0, SpectralRules(kind="rgb", scale=65535)).tolist()[:3] == \
        [0, 1, 2]


def test_tile_majority_needs_its_share():
    tile = np.array([[0, 0, 0, 1], [0, 0, 2, 3]], np.uint8)  # water 5 of 8
    assert tile_class(tile, 0.6) == (0, 0.625)
    assert tile_class(tile, 0.7) == (-1, 0.625)
    half_nodata = np.array([[0, 0, NODATA, NODATA]], np.uint8)  # nodata counts against the share
    assert tile_class(half_nodata, 0.6) == (-1, 0.5)


def _scene(tmp_path) -> str:
    """3 x 2 tiles: water, dense, sparse / bare, a 50-50 water-dense mix, nodata; bands named B03, B04, B08."""
    img = np.zeros((3, 2 * T, 3 * T), np.uint16)
    for (r, c), px in {(0, 0): WATER, (0, 1): DENSE, (0, 2): SPARSE, (1, 0): BARE}.items():
        img[:, r * T:(r + 1) * T, c * T:(c + 1) * T] = np.array(px, np.uint16)[:, None, None]
    img[:, T:2 * T, T:T + T // 2] = np.array(WATER, np.uint16)[:, None, None]
    img[:, T:2 * T, T + T // 2:2 * T] = np.array(DENSE, np.uint16)[:, None, None]
    img[:, T - 1, :T] = np.array(DENSE, np.uint16)[:, None]  # one row of the water tile is vegetation: 7/8 water
    return write_raster(str(tmp_path / "scene.tif"), img, nodata=0, names=["B03", "B04", "B08"])


def test_label_layer_has_one_square_per_pure_tile_and_trains_paired_tiles(tmp_path):
    scene = _scene(tmp_path)
    out = str(tmp_path / "labels.gpkg")
    assert main(["spectral-labels", scene, "--bands", "B03,B04,B08", "--tile", str(T), "--out", out]) == 0
    vec = ogr.Open(out)  # kept: a layer outlives its dataset only as long as the dataset object lives
    layer = vec.GetLayerByName("labels")
    found = {}
    for f in layer:
        xmin, xmax, ymin, ymax = f.GetGeometryRef().GetEnvelope()
        col, row = round((xmin - ORIGIN[0]) / (T * GSD)), round((ORIGIN[1] - ymax) / (T * GSD))
        assert (xmax - xmin, ymax - ymin) == (T * GSD, T * GSD)
        found[(row, col)] = (f.GetField("class"), f.GetField("share"))
    assert found == {(0, 0): ("water", 0.875), (0, 1): ("dense_vegetation", 1.0),
                     (0, 2): ("sparse_vegetation", 1.0), (1, 0): ("bare_or_built", 1.0)}
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32618"
    # a lower share labels the 50-50 tile too (ties go to the first class, water)
    main(["spectral-labels", scene, "--bands", "1,2,3", "--tile", str(T), "--min-share", "0.5", "--out", out])
    vec = ogr.Open(out)
    assert vec.GetLayer(0).GetFeatureCount() == 5
    vec = None

    # the layer labels the pairs cut on the same grid: the mixed and nodata tiles drop out
    main(["spectral-labels", scene, "--bands", "B03,B04,B08", "--tile", str(T), "--out", out])
    pairs = cut_paired_tiles(scene, scene, [1, 2, 3], [3], T, T, labels=out)
    named = {tid: pairs.class_names[y] for tid, y in zip(pairs.ids, pairs.labels)}
    assert named == {"0,0": "water", f"{T},0": "dense_vegetation", f"{2 * T},0": "sparse_vegetation",
                     f"0,{T}": "bare_or_built"}
    assert set(pairs.class_names) <= set(NDVI_CLASSES)

    # --rules rgb reads the bands as red, green, blue: the pure tiles get the class their colours give
    main(["spectral-labels", scene, "--rules", "rgb", "--bands", "B04,B03,B08", "--tile", str(T), "--scale", "10000",
          "--out", out])
    vec = ogr.Open(out)
    classes = sorted(f.GetField("class") for f in vec.GetLayer(0))
    vec = None
    # water (600, 900, 300): green share 0.5, dark -> dark vegetation (a rule set without NIR cannot tell);
    # dense (400, 800, 3600) and bare (2000, 1500, 2400): green share 0.17 / 0.25 -> non-vegetation;
    # sparse (1000, 900, 2000): 0.23 -> non-vegetation
    assert classes == ["dark_vegetation"] + ["non_vegetation"] * 3


def test_bad_input_names_the_problem(tmp_path, capsys):
    scene = _scene(tmp_path)
    out = str(tmp_path / "labels.gpkg")
    folder = tmp_path / "patches"
    folder.mkdir()
    write_raster(str(folder / "a.tif"), np.ones((3, T, T), np.uint8), epsg=None)
    for raster, bands, extra, message in [
            (scene, "B03,B04,B8A", [], "scene.tif: has no band named 'B8A'"),
            (scene, "B03,B04", [], "give three bands (green, red, near infrared)"),
            (scene, "1,2,3", ["--min-share", "0"], "min_share must be in (0, 1]"),
            (str(folder), "1,2,3", [], "patches: is a patch folder"),
            (str(folder / "a.tif"), "1,2,3", [], "a.tif: has no CRS")]:
        assert main(["spectral-labels", raster, "--bands", bands, "--tile", str(T), "--out", out, *extra]) != 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "labels.gpkg").exists()
    assert main(["spectral-labels", scene, "--rules", "rgb", "--bands", "1,2", "--tile", str(T), "--out", out]) != 0
    assert "give three bands (red, green, blue)" in capsys.readouterr().err
    with pytest.raises(RsirError, match="three bands"):  # the library raises what the CLI prints
        write_spectral_labels(scene, [1, 2], out, T)
