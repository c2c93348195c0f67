"""Archive reading and tiling on real GDAL files: windows, footprints in both CRSs, stacks, patches, nodata."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from osgeo import ogr

from core.archive.footprints import FootprintMaker
from core.archive.gdal_open import open_raster
from core.archive.pixels import invalid_fraction, read_window
from core.archive.sources import expand_archive, open_source, resolve_bands
from core.archive.tiling import TileWindow, grid_windows, plan_windows
from core.errors import RsirError
from tests.rasters import write_raster

# UTM 18N near the equator and the central meridian: metres per radian of longitude (prime vertical radius a)
# and of latitude (meridian radius a(1 - e^2)), both times the scale factor k0.
A_K0 = 6378137.0 * 0.9996
M_K0 = 6378137.0 * (1 - 0.00669437999014) * 0.9996


def test_grid_windows_cover_raster_with_edge_tile():
    wins = grid_windows(150, 100, 64, 64)
    assert [(w.x, w.y) for w in wins] == [(0, 0), (64, 0), (86, 0), (0, 36), (64, 36), (86, 36)]
    assert all((w.w, w.h) == (64, 64) for w in wins)
    overlap = grid_windows(128, 64, 64, 32)
    assert [w.x for w in overlap] == [0, 32, 64]
    assert grid_windows(40, 30, 64, 64) == [TileWindow(0, 0, 40, 30)]


def test_footprints_exact_in_source_crs_and_wgs84(tmp_path):
    path = write_raster(str(tmp_path / "r.tif"), np.ones((3, 128, 128), np.uint8))
    ds = open_raster(path)
    maker = FootprintMaker(ds)
    assert maker.crs == "EPSG:32618"
    src, geo = maker.polygons(TileWindow(0, 64, 64, 64))
    ring = src.GetGeometryRef(0)
    assert [ring.GetPoint_2D(i) for i in range(5)] == [
        (500000.0, 1920.0), (500640.0, 1920.0), (500640.0, 1280.0), (500000.0, 1280.0), (500000.0, 1920.0)]
    # On the central meridian easting 500000 is exactly -75 deg; 640 m east on (near) the equator is 640/(a k0) rad.
    lon_lat = [geo.GetGeometryRef(0).GetPoint_2D(i) for i in range(4)]
    assert lon_lat[0][0] == pytest.approx(-75.0, abs=1e-12)
    assert lon_lat[1][0] == pytest.approx(-75.0 + math.degrees(640.0 / A_K0), abs=1e-8)
    assert lon_lat[2][1] == pytest.approx(math.degrees(1280.0 / M_K0), abs=1e-8)


def test_band_stack_spec_stacks_files_in_spec_order(tmp_path):
    for i, name in enumerate(["B02", "B03", "B04"]):
        write_raster(str(tmp_path / f"{name}.tif"), np.full((1, 64, 64), (i + 1) * 100, np.uint16))
    spec = tmp_path / "stack.json"
    spec.write_text(json.dumps({"type": "rsir.band_stack", "scale": 10000, "bands": [
        {"name": "B04", "path": "B04.tif"}, {"name": "B03", "path": "B03.tif"}, {"name": "B02", "path": "B02.tif"}]}))
    (src,) = expand_archive([str(spec)])
    assert (src.kind, src.scale) == ("stack", 10000)
    ds = open_source(src)
    assert ds.RasterCount == 3
    assert resolve_bands(ds, ["B02", "b04"], str(spec)) == [3, 1]
    px = read_window(ds, [1, 2, 3], TileWindow(0, 0, 64, 64), 32)
    assert px.shape == (3, 32, 32) and px[:, 0, 0].tolist() == [300, 200, 100]


def test_patch_folder_labels_from_subfolders(tmp_path):
    for label in ["Forest", "River"]:
        os.makedirs(tmp_path / "eurosat" / label)
        for i in range(2):
            write_raster(str(tmp_path / "eurosat" / label / f"{label}_{i}.tif"), np.zeros((3, 64, 64), np.uint8))
    (tmp_path / "eurosat" / "README.txt").write_text("not an image")
    specs = expand_archive([str(tmp_path / "eurosat")])
    assert [(os.path.basename(s.path), s.label, s.kind) for s in specs] == [
        ("Forest_0.tif", "Forest", "patch"), ("Forest_1.tif", "Forest", "patch"),
        ("River_0.tif", "River", "patch"), ("River_1.tif", "River", "patch")]
    ds = open_source(specs[0])
    assert plan_windows(ds, "patch", 32, 32, None, specs[0].path) == [TileWindow(0, 0, 64, 64)]


def test_nodata_and_empty_fractions(tmp_path):
    data = np.full((3, 64, 128), 50, np.uint8)
    data[:, :, 64:] = 0
    data[:, :32, :32] = 0
    with_nodata = open_raster(write_raster(str(tmp_path / "nd.tif"), data, nodata=0))
    no_nodata = open_raster(write_raster(str(tmp_path / "plain.tif"), data))
    left, right = TileWindow(0, 0, 64, 64), TileWindow(64, 0, 64, 64)
    # the file's own nodata, or the value the user names for a file that declares none
    for ds, told in ((with_nodata, None), (with_nodata, 7), (no_nodata, 0)):
        assert invalid_fraction(ds, [1, 2, 3], left, read_window(ds, [1, 2, 3], left, 64), told) == \
            pytest.approx(0.25)
        assert invalid_fraction(ds, [1, 2, 3], right, read_window(ds, [1, 2, 3], right, 64), told) == 1.0
    # a file that declares none, and nothing named: zeros are data
    assert invalid_fraction(no_nodata, [1, 2, 3], right, read_window(no_nodata, [1, 2, 3], right, 64)) == 0.0


def test_gsd_resampling_converts_tile_size_to_source_pixels(tmp_path):
    ds = open_raster(write_raster(str(tmp_path / "r.tif"), np.zeros((3, 256, 256), np.uint8)))
    wins = plan_windows(ds, "raster", 64, 64, 20.0, "r.tif")  # 64 px at 20 m = 128 source px at 10 m
    assert [(w.x, w.y, w.w) for w in wins] == [(0, 0, 128), (128, 0, 128), (0, 128, 128), (128, 128, 128)]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(RsirError, match="nope.tif: no such file"):
        expand_archive([str(tmp_path / "nope.tif")])
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(RsirError, match=r"corrupt.tif: not a readable raster"):
        open_raster(str(bad))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(RsirError, match="empty archive"):
        expand_archive([str(tmp_path / "empty")])
    one_band = open_raster(write_raster(str(tmp_path / "gray.tif"), np.zeros((1, 8, 8), np.uint8)))
    with pytest.raises(RsirError, match=r"gray.tif: has 1 band\(s\) but band 2 is needed"):
        resolve_bands(one_band, [1, 2, 3], str(tmp_path / "gray.tif"))
    spec = tmp_path / "stack.json"
    spec.write_text(json.dumps({"type": "rsir.band_stack", "bands": [{"name": "B04", "path": "missing.tif"}]}))
    with pytest.raises(RsirError, match="missing.tif: no such file"):
        open_source(expand_archive([str(spec)])[0])
    assert ogr  # OGR is imported by the footprint code under test


def test_gdal_messages_print_once_each(capsys):
    """A GeoTIFF whose CRS keys differ from the EPSG registry made GDAL warn on every footprint and search: the
    command line prints each distinct message once."""
    from osgeo import gdal

    from core.archive.gdal_open import gdal_messages_once

    with gdal_messages_once():
        for _ in range(3):
            gdal.Error(gdal.CE_Warning, 1, "The definition of geographic CRS EPSG:4326 got from GeoTIFF keys ...")
        gdal.Error(gdal.CE_Warning, 1, "another warning")
        gdal.Error(gdal.CE_Debug, 1, "debug chatter")
    gdal.Error(gdal.CE_Warning, 1, "after the block: GDAL's own handler again")
    err = capsys.readouterr().err
    assert err.count("GDAL warning: The definition of geographic CRS EPSG:4326") == 1
    assert "GDAL warning: another warning" in err and "debug chatter" not in err and "after the block" not in err
